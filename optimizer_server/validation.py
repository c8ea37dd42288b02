"""Validation at the edge: protobuf requests to trusted domain values, or ``InvalidArgumentError``.

Every message names the field and says what would be accepted, so a user can fix the call.
"""

from __future__ import annotations

import math
import unicodedata
from collections.abc import Sequence

from optimizer_server.errors import InvalidArgumentError
from optimizer_server.policy import JobSpec, PolicyRegistry
from optimizer_server.policy.base import DEFAULT_BETA, DEFAULT_ETA
from optimizer_server.service import RunGpu
from powerbandit.domain import MAX_SLOWDOWN
from powerbandit.v1 import optimizer_pb2 as pb

MAX_ID_LENGTH = 200
MAX_TEXT_LENGTH = 2000
MAX_BATCH_SIZES = 64
MAX_POWER_LIMITS = 64
MAX_EPOCHS_LIMIT = 1_000_000
MAX_GPU_COUNT = 4096
MAX_POWER_LIMIT_W = 10_000.0
MAX_MEASUREMENT = 1e15  # joules or seconds: far beyond any real run, guards against overflow
# Physical ranges of a power profile's measurements. A GPU under load draws watts, not zero (an
# average of 0 W means the power reading failed), and no training step takes under a microsecond:
# below these a profile's epoch cost would be 0 and every later decision would divide by it.
MIN_AVERAGE_POWER_W = 1.0
MAX_AVERAGE_POWER_W = 1e6  # summed over the run's GPUs
MIN_TIME_PER_STEP_S = 1e-6
MAX_TIME_PER_STEP_S = 1e5
MIN_STEPS_PER_EPOCH = 1.0
MAX_STEPS_PER_EPOCH = 1e9


METRIC_DIRECTIONS = frozenset(pb.MetricDirection.values())


def identifier(value: str, field: str) -> str:
    """A job/run/request id: 1-200 printable characters."""
    if not value:
        raise InvalidArgumentError(f"{field} is empty; give a non-empty id")
    if len(value) > MAX_ID_LENGTH:
        raise InvalidArgumentError(f"{field} is {len(value)} characters long; the limit is {MAX_ID_LENGTH}")
    if not value.isprintable() and any(unicodedata.category(ch)[0] == "C" for ch in value):
        raise InvalidArgumentError(f"{field} contains control or unassigned characters; use printable text")
    return value


def optional_identifier(value: str, field: str) -> str:
    """Like :func:`identifier`, but the empty string is allowed."""
    return identifier(value, field) if value else ""


def text(value: str, field: str) -> str:
    """Free text up to 2000 characters."""
    if len(value) > MAX_TEXT_LENGTH:
        raise InvalidArgumentError(f"{field} is {len(value)} characters long; the limit is {MAX_TEXT_LENGTH}")
    return value


def finite(value: float, field: str, *, low: float | None = None, high: float | None = None) -> float:
    """A finite float within ``[low, high]``."""
    if not math.isfinite(value):
        raise InvalidArgumentError(f"{field} must be a finite number, got {value}")
    if low is not None and value < low:
        raise InvalidArgumentError(f"{field} must be >= {low:g}, got {value:g}")
    if high is not None and value > high:
        raise InvalidArgumentError(f"{field} must be <= {high:g}, got {value:g}")
    return value + 0.0  # -0.0 becomes 0.0: the store keeps no sign on zero, so answers would differ


def reported_power_limit(value: float, field: str = "power_limit_w") -> float:
    """The per-GPU power limit a run reports it ran at: 0 (not reported) or 1..10,000 W."""
    return finite(value, field, low=1.0, high=MAX_POWER_LIMIT_W) if value != 0 else 0.0


def measurement(value: float, field: str) -> float:
    """A non-negative, finite measurement (energy, time, epochs)."""
    return finite(value, field, low=0.0, high=MAX_MEASUREMENT)


def job_spec(msg: pb.JobSpec, policies: PolicyRegistry) -> JobSpec:
    """A validated :class:`JobSpec` from its message, defaults filled in.

    ``spec.policy`` must name one of ``policies`` (empty: the registry's default).
    """
    job_id = identifier(msg.job_id, "spec.job_id")
    if not msg.batch_sizes:
        raise InvalidArgumentError("spec.batch_sizes is empty; list the batch sizes the job may use")
    if len(msg.batch_sizes) > MAX_BATCH_SIZES:
        raise InvalidArgumentError(
            f"spec.batch_sizes has {len(msg.batch_sizes)} entries; the limit is {MAX_BATCH_SIZES}"
        )
    if any(b <= 0 for b in msg.batch_sizes):
        raise InvalidArgumentError(f"spec.batch_sizes must all be positive, got {list(msg.batch_sizes)}")
    if len(set(msg.batch_sizes)) != len(msg.batch_sizes):
        raise InvalidArgumentError(f"spec.batch_sizes has duplicates: {list(msg.batch_sizes)}")
    if msg.default_batch_size not in msg.batch_sizes:
        raise InvalidArgumentError(
            f"spec.default_batch_size {msg.default_batch_size} is not one of spec.batch_sizes {sorted(msg.batch_sizes)}"
        )
    if not 0 < msg.max_epochs <= MAX_EPOCHS_LIMIT:
        raise InvalidArgumentError(f"spec.max_epochs must be in 1..{MAX_EPOCHS_LIMIT}, got {msg.max_epochs}")
    eta = finite(msg.eta, "spec.eta", low=0.0, high=1.0) if msg.HasField("eta") else DEFAULT_ETA
    beta = finite(msg.beta, "spec.beta", low=1.0, high=1e6) if msg.HasField("beta") else DEFAULT_BETA
    policy = msg.policy or policies.default_name
    if policy not in policies:
        raise InvalidArgumentError(f"spec.policy {policy!r} is unknown; use one of {', '.join(policies.names)}")
    if msg.metric_direction not in METRIC_DIRECTIONS:
        raise InvalidArgumentError(
            f"spec.metric_direction {msg.metric_direction} is not a known direction; use "
            "METRIC_DIRECTION_HIGHER_IS_BETTER (1) or METRIC_DIRECTION_LOWER_IS_BETTER (2), or leave it "
            "unset (higher is better)"
        )
    if msg.window < 0:
        raise InvalidArgumentError(f"spec.window must be >= 0 (0 = all observations), got {msg.window}")
    max_slowdown = 0.0
    if msg.HasField("max_slowdown"):
        max_slowdown = finite(msg.max_slowdown, "spec.max_slowdown", low=1.0, high=MAX_SLOWDOWN)
        if msg.HasField("eta") and msg.eta != 1.0:
            raise InvalidArgumentError(
                f"spec.max_slowdown ({max_slowdown:g}) and spec.eta ({msg.eta:g}) are alternatives: a slowdown "
                "budget minimises energy (eta 1); give one of them"
            )
        if policy != "powerbandit":
            raise InvalidArgumentError(
                f"spec.max_slowdown needs the powerbandit policy; policy {policy!r} has no slowdown budget"
            )
        eta = 1.0
    return JobSpec(
        job_id=job_id,
        batch_sizes=tuple(sorted(int(b) for b in msg.batch_sizes)),
        default_batch_size=int(msg.default_batch_size),
        target_metric=finite(msg.target_metric, "spec.target_metric"),
        max_epochs=int(msg.max_epochs),
        eta=eta,
        beta=beta,
        higher_is_better=msg.metric_direction != pb.METRIC_DIRECTION_LOWER_IS_BETTER,
        policy=policy,
        window=int(msg.window),
        seed=int(msg.seed) & 0x7FFFFFFFFFFFFFFF,
        max_slowdown=max_slowdown,
    )


def run_gpu(msg: pb.GpuInfo, present: bool) -> RunGpu:
    """A validated :class:`RunGpu` from a Suggest request's ``gpu`` field."""
    if not present:
        raise InvalidArgumentError(
            "gpu is missing; say which GPUs the run uses (model, count, power-limit range)"
        )
    model = identifier(msg.model, "gpu.model")
    if not 1 <= msg.count <= MAX_GPU_COUNT:
        raise InvalidArgumentError(f"gpu.count must be in 1..{MAX_GPU_COUNT}, got {msg.count}")
    low = finite(msg.min_power_limit_w, "gpu.min_power_limit_w", low=1.0, high=MAX_POWER_LIMIT_W)
    high = finite(msg.max_power_limit_w, "gpu.max_power_limit_w", low=low, high=MAX_POWER_LIMIT_W)
    if len(msg.power_limits_w) > MAX_POWER_LIMITS:
        raise InvalidArgumentError(
            f"gpu.power_limits_w has {len(msg.power_limits_w)} entries; the limit is {MAX_POWER_LIMITS}"
        )
    limits = tuple(finite(p, "gpu.power_limits_w", low=low, high=high) for p in msg.power_limits_w)
    return RunGpu(model, int(msg.count), low, high, limits)


def steps_per_epoch(value: float) -> float:
    """A profile's steps per epoch: at least one, at most a billion."""
    return finite(value, "steps_per_epoch", low=MIN_STEPS_PER_EPOCH, high=MAX_STEPS_PER_EPOCH)


def completion(energy_j: float, time_s: float, epochs: float, reached_target: bool) -> tuple[float, float, float]:
    """A completed run's ``(energy_j, time_s, epochs)``.

    A run that reached its target trained: its energy, time and epochs must all be positive (a 0
    means a measurement failed, and a zero-cost run would make every later run look too dear).
    """
    energy_j = measurement(energy_j, "energy_j")
    time_s = measurement(time_s, "time_s")
    epochs = measurement(epochs, "epochs")
    if reached_target:
        for name, value in (("energy_j", energy_j), ("time_s", time_s), ("epochs", epochs)):
            if value <= 0:
                raise InvalidArgumentError(
                    f"{name} is 0 but reached_target is true: a run that reached its target reports the "
                    "energy, time and epochs it used, all > 0 (was it measured? report a crashed run "
                    "with FailRun instead)"
                )
    return energy_j, time_s, epochs


def profile_measurements(msgs: Sequence[pb.ProfileMeasurement]) -> list[tuple[float, float, float]]:
    """``(power limit, average power, seconds per step)`` per measurement, validated.

    Average power and step time must lie in physical ranges (see ``MIN_AVERAGE_POWER_W`` and
    ``MIN_TIME_PER_STEP_S``): every profiled epoch cost is then positive.
    """
    if not msgs:
        raise InvalidArgumentError("measurements is empty; report at least one power limit")
    if len(msgs) > MAX_POWER_LIMITS:
        raise InvalidArgumentError(f"{len(msgs)} measurements; the limit is {MAX_POWER_LIMITS}")
    out = []
    seen: set[float] = set()
    for i, m in enumerate(msgs):
        limit = finite(m.power_limit_w, f"measurements[{i}].power_limit_w", low=1.0, high=MAX_POWER_LIMIT_W)
        if limit in seen:
            raise InvalidArgumentError(f"measurements[{i}].power_limit_w {limit:g} W is reported twice")
        seen.add(limit)
        power = finite(
            m.average_power_w,
            f"measurements[{i}].average_power_w",
            low=MIN_AVERAGE_POWER_W,
            high=MAX_AVERAGE_POWER_W,
        )
        step = finite(
            m.time_per_step_s,
            f"measurements[{i}].time_per_step_s",
            low=MIN_TIME_PER_STEP_S,
            high=MAX_TIME_PER_STEP_S,
        )
        out.append((limit, power, step))
    return out


_SEQ_TOKEN_PREFIX = "after-run-"


def seq_page_token(seq: int) -> str:
    """The page token of a page of runs that ended with run number ``seq``."""
    return f"{_SEQ_TOKEN_PREFIX}{seq}"


def page_token_seq(token: str, field: str) -> int:
    """The run number a runs page token points after (-1 for the empty token: the first page)."""
    if not token:
        return -1
    number = token.removeprefix(_SEQ_TOKEN_PREFIX)
    if number == token or not number.isdigit() or len(number) > 18:
        raise InvalidArgumentError(
            f"{field} {token[:40]!r} is not a page token this server gave out; pass next_page_token "
            "from the previous answer, or leave it empty for the first page"
        )
    return int(number)
