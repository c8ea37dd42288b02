"""Reading the published trace format (``simulations/data/zeus_nsdi23/README.md``) into simulation jobs.

A :class:`TraceJob` is one (GPU, workload, target metric) with everything the run accounting needs:
the training seeds' ``target_epoch`` per batch size and the power profile per (batch size, power
limit). Expected costs for the oracle and the default configuration are computed here too.
"""

from __future__ import annotations

import csv
import math
import os
from collections import defaultdict
from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass, field, replace
from pathlib import Path

from powerbandit.domain import DEFAULT_BETA, DEFAULT_ETA, ProfilePoint, power_time_cost

GPUS: tuple[str, ...] = ("v100", "a40", "rtx6000", "p100")


class TraceError(ValueError):
    """A trace file that cannot be read or does not have the published format; the message names it."""


TRAIN_COLUMNS = ("dataset", "network", "optimizer", "batch_size", "target_metric", "target_epoch")
POWER_COLUMNS = ("dataset", "network", "optimizer", "batch_size", "power_limit", "average_power", "time_per_epoch")


def _read_rows(path: Path, columns: tuple[str, ...]) -> Iterator[tuple[int, dict[str, str]]]:
    """``(line number, row)`` of a trace CSV; :class:`TraceError` when it cannot be read or lacks ``columns``."""
    try:
        with open(path, newline="") as f:
            reader = csv.DictReader(f)
            missing = [c for c in columns if c not in (reader.fieldnames or ())]
            if missing:
                raise TraceError(
                    f"{path} is not a trace file: no column {', '.join(missing)} in its header "
                    f"(expected {', '.join(columns)}; see simulations/data/zeus_nsdi23/README.md)"
                )
            for row in reader:
                yield reader.line_num, row
    except (OSError, UnicodeDecodeError, csv.Error) as exc:
        raise TraceError(f"cannot read trace file {path}: {exc}") from None


def _positive(text: str) -> float:
    value = float(text)
    if not (math.isfinite(value) and value > 0):
        raise ValueError(f"{text!r} is not a positive number")
    return value


@dataclass(frozen=True)
class Workload:
    """A canonical workload of the traces (the paper's settings)."""

    dataset: str
    network: str
    optimizer: str
    target_metric: float
    max_epochs: int
    default_batch_size: int
    higher_is_better: bool = True


CANONICAL: dict[str, Workload] = {
    w.dataset: w
    for w in (
        Workload("cifar100", "shufflenetv2", "adadelta", 0.6, 100, 1024),
        Workload("imagenet", "resnet50", "adadelta", 0.65, 100, 256),
        Workload("squad", "bert_base_uncased", "adamw", 84.0, 6, 32),
        Workload("librispeech", "deepspeech2", "adamw", 40.0, 16, 256, higher_is_better=False),
        Workload("movielens-1m", "ncf", "adam", 0.41, 100, 1024, higher_is_better=False),
        Workload("sentiment140", "bert_base_uncased", "adamw", 0.84, 10, 128),
    )
}
"""Workload name (the trace's ``dataset``) -> its canonical setting."""


@dataclass(frozen=True)
class TraceJob:
    """One simulated recurring job: a workload at one target metric on one GPU model.

    ``target_epochs[b]`` holds one entry per training seed of batch size ``b``: the epoch at which
    it reached the target, or ``None`` if it never did. ``power[b][p]`` is the measured profile.
    """

    gpu: str
    workload: str
    target_metric: float
    max_epochs: int
    default_batch_size: int
    batch_sizes: tuple[int, ...]
    power_limits: tuple[float, ...]
    target_epochs: Mapping[int, tuple[int | None, ...]]
    power: Mapping[int, Mapping[float, ProfilePoint]]
    eta: float = DEFAULT_ETA
    beta: float = DEFAULT_BETA
    higher_is_better: bool = True
    recurrences: int = 0
    _cache: dict[str, object] = field(default_factory=dict, compare=False, repr=False)

    @property
    def name(self) -> str:
        """``workload@gpu``, e.g. ``cifar100@v100``."""
        return f"{self.workload}@{self.gpu}"

    @property
    def max_power(self) -> float:
        """The job's ``MAX_POWER``: the largest power limit in its GPU's file."""
        return max(self.power_limits)

    def with_knobs(self, eta: float | None = None, beta: float | None = None) -> TraceJob:
        """A copy with another ``eta`` or ``beta``."""
        return replace(
            self, eta=self.eta if eta is None else eta, beta=self.beta if beta is None else beta, _cache={}
        )

    def epoch_cost(self, b: int, p: float) -> float:
        """``eta * energy_per_epoch + (1 - eta) * MAX_POWER * time_per_epoch`` at ``(b, p)``."""
        point = self.power[b][p]
        return power_time_cost(self.eta, point.average_power_w, point.time_per_epoch_s, self.max_power)

    def best_power_limit(self, b: int, limits: Iterable[float] | None = None) -> float:
        """``argmin_p epoch_cost(b, p)`` over ``limits`` (every limit of ``b`` when ``None``), the
        highest limit on ties (what profiling those limits finds)."""
        return min(self.power[b] if limits is None else limits, key=lambda p: (self.epoch_cost(b, p), -p))

    def all_reach(self, b: int) -> bool:
        """Whether every trace seed of ``b`` reaches the target within ``max_epochs``."""
        seeds = self.target_epochs[b]
        return bool(seeds) and all(k is not None and k <= self.max_epochs for k in seeds)

    def mean_epochs(self, b: int) -> float:
        """Mean ``target_epoch`` over the seeds of ``b`` (NaN if one never reaches)."""
        seeds = self.target_epochs[b]
        if not seeds or any(k is None for k in seeds):
            return math.nan
        return sum(k for k in seeds if k is not None) / len(seeds)

    def expected_cost(self, b: int, p: float) -> float:
        """Mean over seeds of the cost of one run at ``(b, p)`` without early stopping."""
        return self.mean_epochs(b) * self.epoch_cost(b, p)

    def expected_energy(self, b: int, p: float) -> float:
        """Mean over seeds of the energy of one run at ``(b, p)``."""
        point = self.power[b][p]
        return self.mean_epochs(b) * point.average_power_w * point.time_per_epoch_s

    def oracle(self) -> tuple[int, float]:
        """The ``(b, p)`` whose every seed reaches the target with the lowest expected cost."""
        cached = self._cache.get("oracle")
        if cached is None:
            candidates = [(b, p) for b in self.batch_sizes if self.all_reach(b) for p in self.power[b]]
            if not candidates:
                raise ValueError(f"{self.name}: no batch size reaches the target on every seed")
            cached = min(candidates, key=lambda bp: (self.expected_cost(*bp), bp[0], -bp[1]))
            self._cache["oracle"] = cached
        return cached  # type: ignore[return-value]


def _float(text: str) -> float | None:
    text = text.strip()
    if not text:
        return None
    value = float(text)
    return None if math.isnan(value) else value


TRACE_DIR_ENV = "POWERBANDIT_TRACE_DIR"
"""Environment variable naming another trace directory (``--trace-dir`` still wins over it)."""


def packaged_trace_dir() -> Path:
    """The published traces shipped inside the package (``simulations/data/zeus_nsdi23``)."""
    return Path(__file__).resolve().parent / "data" / "zeus_nsdi23"


def default_trace_dir() -> Path:
    """Where traces are read when no ``--trace-dir`` is given: ``$POWERBANDIT_TRACE_DIR``, else the shipped copy.

    The one lookup used by ``powerbandit simulate``, ``powerbandit demo``, the benchmarks and the tests.
    """
    override = os.environ.get(TRACE_DIR_ENV, "").strip()
    return Path(override).expanduser() if override else packaged_trace_dir()


def resolve_trace_dir(path: str | Path | None) -> Path:
    """The directory holding ``summary_train.csv``: ``path`` itself or its ``zeus_nsdi23``."""
    base = default_trace_dir() if path is None else Path(path)
    if not (base / "summary_train.csv").exists() and (base / "zeus_nsdi23" / "summary_train.csv").exists():
        base = base / "zeus_nsdi23"
    if not (base / "summary_train.csv").exists():
        raise FileNotFoundError(f"no summary_train.csv under {base} (the format: simulations/data/zeus_nsdi23/README.md)")
    return base


class TraceSet:
    """The trace files of one directory, loaded once."""

    def __init__(self, trace_dir: str | Path | None = None) -> None:
        self.dir = resolve_trace_dir(trace_dir)
        # (dataset, network, optimizer) -> target -> b -> [target_epoch...]
        self.train: dict[tuple[str, str, str], dict[float, dict[int, list[int | None]]]] = defaultdict(
            lambda: defaultdict(lambda: defaultdict(list))
        )
        train_path = self.dir / "summary_train.csv"
        for line, row in _read_rows(train_path, TRAIN_COLUMNS):
            try:
                key = (row["dataset"], row["network"], row["optimizer"])
                k = _float(row["target_epoch"])
                self.train[key][float(row["target_metric"])][int(row["batch_size"])].append(
                    None if k is None else int(k)
                )
            except (TypeError, ValueError) as exc:  # a field missing or not a number
                raise TraceError(f"{train_path}, line {line}: {exc}") from None
        self.power: dict[str, dict[tuple[str, str, str], dict[int, dict[float, ProfilePoint]]]] = {}
        self.power_limits: dict[str, tuple[float, ...]] = {}
        for gpu in GPUS:
            path = self.dir / f"summary_power_{gpu}.csv"
            if not path.exists():
                continue
            table: dict[tuple[str, str, str], dict[int, dict[float, ProfilePoint]]] = defaultdict(dict)
            limits: set[float] = set()
            for line, row in _read_rows(path, POWER_COLUMNS):
                try:
                    key = (row["dataset"], row["network"], row["optimizer"])
                    p = _positive(row["power_limit"])
                    point = ProfilePoint(p, _positive(row["average_power"]), _positive(row["time_per_epoch"]))
                    table[key].setdefault(int(row["batch_size"]), {})[p] = point
                    limits.add(p)
                except (TypeError, ValueError) as exc:
                    raise TraceError(f"{path}, line {line}: {exc}") from None
            self.power[gpu] = dict(table)
            self.power_limits[gpu] = tuple(sorted(limits))

    @property
    def gpus(self) -> tuple[str, ...]:
        """GPU models with a power file."""
        return tuple(g for g in GPUS if g in self.power)

    def targets(self, workload: str) -> list[float]:
        """Target metrics listed for a canonical workload."""
        w = CANONICAL[workload]
        return sorted(self.train.get((w.dataset, w.network, w.optimizer), {}))

    def job(
        self,
        gpu: str,
        workload: str,
        target_metric: float | None = None,
        eta: float = DEFAULT_ETA,
        beta: float = DEFAULT_BETA,
    ) -> TraceJob:
        """The job of ``workload`` on ``gpu`` (canonical target unless ``target_metric`` is given)."""
        w = CANONICAL[workload]
        key = (w.dataset, w.network, w.optimizer)
        target = w.target_metric if target_metric is None else float(target_metric)
        by_target = self.train.get(key, {})
        match = [t for t in by_target if math.isclose(t, target, rel_tol=1e-9, abs_tol=1e-9)]
        if not match:
            raise TraceError(f"{workload}: no target {target}; the trace lists {sorted(by_target)}")
        train = by_target[match[0]]
        if gpu not in self.power:
            raise TraceError(f"no power file for GPU {gpu!r} in {self.dir}; it has {', '.join(self.gpus) or 'none'}")
        power = self.power[gpu].get(key, {})
        batch_sizes = tuple(sorted(b for b in train if b in power))
        if not batch_sizes:
            raise TraceError(f"{workload} has no batch size in both the train and the {gpu} power file")
        limits = self.power_limits[gpu]
        b0 = min(w.default_batch_size, max(power))
        if b0 not in batch_sizes:
            b0 = max(b for b in batch_sizes if b <= b0) if any(b <= b0 for b in batch_sizes) else batch_sizes[0]
        n_limits = len({p for b in batch_sizes for p in power[b]})
        return TraceJob(
            gpu=gpu,
            workload=workload,
            target_metric=target,
            max_epochs=w.max_epochs,
            default_batch_size=b0,
            batch_sizes=batch_sizes,
            power_limits=limits,
            target_epochs={b: tuple(train[b]) for b in batch_sizes},
            power={b: dict(power[b]) for b in batch_sizes},
            eta=eta,
            beta=beta,
            higher_is_better=w.higher_is_better,
            recurrences=2 * len(batch_sizes) * n_limits,
        )

    def jobs(
        self,
        gpus: Iterable[str] | None = None,
        workloads: Iterable[str] | None = None,
        targets: Mapping[str, float] | None = None,
        eta: float = DEFAULT_ETA,
        beta: float = DEFAULT_BETA,
    ) -> list[TraceJob]:
        """Jobs for every (GPU, workload) selected, in canonical order."""
        targets = targets or {}
        out = []
        for workload in workloads or CANONICAL:
            for gpu in gpus or self.gpus:
                out.append(self.job(gpu, workload, targets.get(workload), eta, beta))
        return out
