"""One run of a recurring job: ``start``, ``step``/``epoch_end``, then ``complete`` or ``fail``.

The explicit lifecycle (``run = client.start_run(job, gpu)``, ``run.complete(metric)``,
``run.fail(reason)``) is what framework callbacks and ``powerbandit run`` use; the context manager
is built on it: ``with client.run(job, gpu) as run:`` asks the server for a configuration, applies its power limit,
measures energy and time through the :class:`~client_sdk.gpu.Gpu`, profiles power limits during the
first epoch when the server asks for it (call :meth:`TrainingRun.step` after every training step;
the profile starts once steps are known to come, at ``steps_per_epoch`` or the first step, so a run
without steps stays at the limit in force; ``profile=False`` says no steps will come),
reports progress at each :meth:`TrainingRun.epoch_end` (whose answer says whether to stop), and at
the end completes the run, or fails it when the block raised. The original power limit is always
restored.

With fail-open on (:class:`~client_sdk.client.OptimizerClient` ``fail_open``) and the server out of
reach, the run is *offline*: it trains at the job's default batch size with the power limit left as
it is, measures energy and time into :attr:`TrainingRun.offline_result`, logs one warning and
reports nothing.
"""

from __future__ import annotations

import logging
import math
import threading
import uuid
from dataclasses import dataclass
from typing import TYPE_CHECKING, TypeVar

from client_sdk.errors import OptimizerClientError, RunStateError
from client_sdk.gpu import Gpu
from powerbandit.domain import energy_time_cost, power_time_cost, stops_profiling

if TYPE_CHECKING:
    from collections.abc import Callable

    from client_sdk.api import ApiClient
    from client_sdk.job import Job
    from powerbandit.v1 import optimizer_pb2 as pb

log = logging.getLogger("powerbandit.sdk.run")

T = TypeVar("T")

DEFAULT_WARMUP_STEPS = 5
DEFAULT_MEASURE_STEPS = 20
#: The shortest measured window per profiled power limit, where the first epoch leaves room: NVML's
#: energy counter moves in 100 ms ticks (an H200), so a 1 s window reads power within about 4 % (sd).
DEFAULT_MIN_PROFILE_WINDOW_S = 1.0
#: A profile measures at least this many limits (the first and last listed and one between), in
#: shorter windows when the first epoch is too short for ``DEFAULT_MIN_PROFILE_WINDOW_S`` each, unless
#: it stops earlier (the suggestion's ``profile_stop_ratio``).
_MIN_PROFILED_LIMITS = 3


@dataclass(frozen=True)
class OfflineRun:
    """What an offline (fail-open) run measured: its configuration, energy and time, never reported."""

    batch_size: int
    power_limit_w: float
    epochs: int
    energy_j: float
    time_s: float
    reached_target: bool
    cost: float  # eta * energy_j + (1 - eta) * MAX_POWER_W * time_s, as the server would have counted it
    reason: str


@dataclass(frozen=True)
class ProfileMeasurement:
    """One power limit's profile: per-GPU limit, average power (all GPUs), seconds per step."""

    power_limit_w: float
    average_power_w: float
    time_per_step_s: float


def cheapest_power_limit(
    measurements: list[ProfileMeasurement], eta: float, max_power_w: float, max_slowdown: float | None = None
) -> float:
    """The limit minimising the cost of a step (same rule as the server's; highest limit on ties).

    With a slowdown budget, only limits whose steps take at most ``max_slowdown`` times as long as
    at the highest measured limit (that limit when none other does).
    """

    def step_cost(m: ProfileMeasurement) -> float:
        return power_time_cost(eta, m.average_power_w, m.time_per_step_s, max_power_w)

    if max_slowdown:
        top = max(measurements, key=lambda m: m.power_limit_w)
        allowed = max_slowdown * top.time_per_step_s * (1 + 1e-12)
        measurements = [m for m in measurements if m.time_per_step_s <= allowed] or [top]
    return min(measurements, key=lambda m: (step_cost(m), -m.power_limit_w)).power_limit_w


class _Profiler:
    """Steps through candidate power limits: ``warmup`` steps to settle, then a measured window.

    A window lasts at least ``measure`` steps and, where the epoch leaves room, ``min_window_s``
    seconds: NVML's energy counter moves in ~100 ms ticks, so a window of a few ticks measures power
    with an error of tens of percent. ``steps_left`` (the first epoch's steps still to come, ``None``
    when unknown) bounds the profile: after each window the remaining candidates are re-planned from
    the measured time per step, and when they do not all fit at ``min_window_s``, an evenly spread
    subset (the last listed included) is measured instead, at least ``_MIN_PROFILED_LIMITS`` in all.
    With ``stop_ratio`` above 0 the profile ends after the first limit whose cost per step (``eta``,
    ``max_power_w``: the cost formula's) exceeds that multiple of the cheapest measured so far
    (:func:`~powerbandit.domain.profiles.stops_profiling`): the server lists the limits from the
    highest down, and past the cheapest the lower limits only cost more.
    """

    def __init__(
        self,
        run: TrainingRun,
        limits: tuple[float, ...],
        warmup: int,
        measure: int,
        *,
        min_window_s: float = 0.0,
        steps_left: int | None = None,
        stop_ratio: float = 0.0,
        eta: float = 0.0,
        max_power_w: float = 0.0,
    ) -> None:
        self.run = run
        self.limits = limits
        self.stop_ratio = stop_ratio
        self.eta = eta
        self.max_power_w = max_power_w
        self.warmup = warmup
        self.measure = measure
        self.min_window_s = min_window_s
        self.steps_left = steps_left
        self.index = 0
        self.step_in_slice = 0
        self.window_steps = measure  # steps of the current window; grows once to reach min_window_s
        self.extended = False
        self.start: tuple[float, float] | None = None
        self._totals: dict[int, tuple[float, float, int]] = {}  # limit in force mW -> energy J, time s, steps
        self.done = False
        self._enter_slice()

    def _enter_slice(self) -> None:
        self.in_force = self.run.gpu.set_power_limit(self.limits[self.index])
        self.step_in_slice = 0
        self.window_steps, self.extended = self.measure, False
        self.start = self.run.read_counters() if self.warmup == 0 else None

    def on_step(self) -> None:
        self.step_in_slice += 1
        if self.steps_left is not None:
            self.steps_left -= 1
        if self.step_in_slice == self.warmup:
            self.start = self.run.read_counters()
        if self.step_in_slice < self.warmup + self.window_steps:
            return
        energy, clock = self.run.read_counters()
        assert self.start is not None
        elapsed = clock - self.start[1]
        if elapsed > 0 and not self.extended and elapsed < self.min_window_s and self._extend(elapsed):
            return  # measured on to the minimum window (the counters are read again at its end)
        if elapsed > 0:
            self._record(self.in_force, energy - self.start[0], elapsed, self.window_steps)
        self.index += 1
        if self.index < len(self.limits) and elapsed > 0:
            if self._stops():
                self.limits = self.limits[: self.index]
            else:
                self._replan(elapsed / self.window_steps)
        if self.index < len(self.limits):
            self._enter_slice()
        else:
            self.done = True

    def _stops(self) -> bool:
        """Whether the limit just measured (and recorded) ends the profile (see the class docstring);
        logs why."""
        if self.stop_ratio <= 0.0:
            return False
        costs = {
            m.power_limit_w: power_time_cost(self.eta, m.average_power_w, m.time_per_step_s, self.max_power_w)
            for m in self.measurements
        }
        key = round(self.in_force * 1000) / 1000  # the limit in force, as _record filed its window
        cheapest = min(costs, key=lambda p: costs[p])
        if not stops_profiling(costs[key], costs[cheapest], self.stop_ratio):
            return False
        log.info(
            "run %s: %g W costs %.0f%% more per step than %g W; not profiling the %d lower limit(s) left (%s W)",
            self.run.run_id, key, 100 * (costs[key] / costs[cheapest] - 1), cheapest,
            len(self.limits) - self.index, ", ".join(f"{w:g}" for w in self.limits[self.index :]),
        )  # fmt: skip
        return True

    def _steps_for(self, step_s: float) -> int:
        """Measured steps a window needs at ``step_s`` seconds per step."""
        return max(self.measure, math.ceil(self.min_window_s / step_s))

    def _extend(self, elapsed_s: float) -> bool:
        """Lengthen the current window towards ``min_window_s`` where the epoch has room; True if it did.

        Room is kept for at least two more candidates (or all that are left, if fewer) at full windows.
        """
        step_s = elapsed_s / self.window_steps
        extra = self._steps_for(step_s) - self.window_steps
        if self.steps_left is not None:
            later = min(2, len(self.limits) - self.index - 1)
            extra = min(extra, self.steps_left - later * (self.warmup + self._steps_for(step_s)))
        if extra <= 0:
            return False
        self.window_steps += extra
        self.extended = True
        return True

    def _replan(self, step_s: float) -> None:
        """Fit the remaining candidates into the steps left (at ``step_s`` s per step): fewer if need be."""
        if self.steps_left is None:
            return
        remaining = self.limits[self.index :]
        fit = self.steps_left // (self.warmup + self._steps_for(step_s))
        fit = max(fit, min(len(remaining), _MIN_PROFILED_LIMITS - self.index))  # shorter windows, then
        if fit <= 0:
            self.limits = self.limits[: self.index]  # enough limits measured, and no room for more
            return
        if fit < len(remaining):  # evenly spaced after the last limit measured, the last listed included
            last = len(remaining) - 1
            remaining = tuple(remaining[i] for i in sorted({round((k + 1) * last / fit) for k in range(fit)}))
            log.info(
                "run %s: the first epoch leaves room for %d of %d remaining candidate limits at %g s each; "
                "profiling %s W",
                self.run.run_id, fit, len(self.limits) - self.index, self.min_window_s,
                ", ".join(f"{w:g}" for w in remaining),
            )  # fmt: skip
        self.limits = self.limits[: self.index] + remaining
        self.measure = max(1, self.steps_left // len(remaining) - self.warmup)  # the epoch's rest, in equal windows

    def _record(self, in_force_w: float, energy_j: float, elapsed_s: float, steps: int) -> None:
        """Add one slice's measurement, merged with an earlier slice that ran at the same limit in force.

        Two candidates end up at one limit when the GPU enforces another limit than the one asked for
        (a lower limit set elsewhere holds it): the profile names each limit once.
        """
        key_mw = round(in_force_w * 1000)
        before_j, before_s, before_steps = self._totals.get(key_mw, (0.0, 0.0, 0))
        self._totals[key_mw] = (before_j + energy_j, before_s + elapsed_s, before_steps + steps)

    @property
    def measurements(self) -> list[ProfileMeasurement]:
        """One measurement per limit in force, in the order first measured."""
        return [ProfileMeasurement(mw / 1000, j / s, s / n) for mw, (j, s, n) in self._totals.items()]


class TrainingRun:
    """The state of one run; see the module docstring. Create it with ``OptimizerClient.run``."""

    def __init__(
        self,
        client: ApiClient,
        job: Job,
        gpu: Gpu,
        *,
        steps_per_epoch: int | None = None,
        heartbeat: bool = True,
        warmup_steps: int = DEFAULT_WARMUP_STEPS,
        measure_steps: int = DEFAULT_MEASURE_STEPS,
        min_profile_window_s: float = DEFAULT_MIN_PROFILE_WINDOW_S,
        unreachable: OptimizerClientError | None = None,
        profile: bool = True,
    ) -> None:
        if steps_per_epoch is not None and steps_per_epoch <= 0:
            raise ValueError(f"steps_per_epoch must be positive, got {steps_per_epoch}")
        self.client = client
        self.job = job
        self.gpu = gpu
        self.steps_per_epoch = steps_per_epoch
        self._heartbeat_enabled = heartbeat
        self._warmup_steps = warmup_steps
        self._measure_steps = measure_steps
        self._min_profile_window_s = min_profile_window_s
        self.suggestion: pb.SuggestResponse | None = None
        self.epochs = 0
        self.reached_target = False
        self.last_metric: float | None = None
        self.stop_reason = ""
        self.completed_run: pb.Run | None = None
        self.offline_result: OfflineRun | None = None
        self._unreachable = unreachable  # set: offline (fail-open), nothing more is sent
        self._steps_in_epoch = 0
        self._profile_enabled = profile  # False: the caller sees no steps (``powerbandit run``)
        self._pending_profile: tuple[float, ...] = ()  # limits to profile, from the first step()
        self._limit_before_profile_w: float | None = None
        self._profiler: _Profiler | None = None
        self._profile_reported = False
        self._origin = (0.0, 0.0)
        self._stop_heartbeat = threading.Event()
        self._heartbeat_thread: threading.Thread | None = None
        self._state = "new"
        self._last_counters = (0.0, 0.0)

    # ---------------------------------------------------------------------------- accessors
    @property
    def run_id(self) -> str:
        """The server's id of this run."""
        return self._require().run_id

    @property
    def batch_size(self) -> int:
        """The batch size to train with."""
        return self._require().batch_size

    @property
    def power_limit_w(self) -> float:
        """The per-GPU power limit in force now."""
        return self.gpu.power_limit_w()

    @property
    def offline(self) -> bool:
        """True when the server was out of reach and fail-open let the run go on without it."""
        return self._unreachable is not None

    @property
    def profiling(self) -> bool:
        """True while candidate power limits are to be measured (from the first step) or being measured."""
        return bool(self._pending_profile) or (self._profiler is not None and not self._profiler.done)

    @property
    def state(self) -> str:
        """``"new"`` (not started), ``"running"``, ``"completed"`` or ``"failed"``."""
        return self._state

    @property
    def ended(self) -> bool:
        """True once :meth:`complete` or :meth:`fail` ran."""
        return self._state in ("completed", "failed")

    def _require(self) -> pb.SuggestResponse:
        if self.suggestion is None:
            raise RunStateError(
                "the run has not started: use `with client.run(job) as run:` or `run = client.start_run(job)`"
            )
        return self.suggestion

    def read_counters(self) -> tuple[float, float]:
        """``(energy J, time s)`` since the run started."""
        counters = self.gpu.energy_j() - self._origin[0], self.gpu.now_s() - self._origin[1]
        self._last_counters = counters
        return counters

    @property
    def phase(self) -> str:
        """``"profiling"`` (measuring candidate power limits), ``"training"`` or ``"offline"`` (fail-open)."""
        if self.offline:
            return "offline"
        return "profiling" if self.profiling else "training"

    def tracker_metrics(self, *, fresh: bool = True) -> dict[str, float]:
        """The run's numbers for an experiment tracker (W&B, MLflow, TensorBoard), keys ``powerbandit/...``.

        Energy (J, all the run's GPUs) and time (s) since the run started, average power (W), the
        per-GPU power limit (W), the batch size, epochs reported and the phase (``powerbandit/profiling``
        1 while power limits are profiled, else 0). ``fresh=False`` uses the newest counters read
        (no GPU reading, no DDP collective: for hooks that not every rank reaches together).
        """
        energy, elapsed = self.read_counters() if fresh else self._last_counters
        s = self._require()
        return {
            "powerbandit/energy_j": energy,
            "powerbandit/time_s": elapsed,
            "powerbandit/average_power_w": energy / elapsed if elapsed > 0 else 0.0,
            "powerbandit/power_limit_w": self.gpu.power_limit_w(),
            "powerbandit/batch_size": float(s.batch_size),
            "powerbandit/epochs": float(self.epochs),
            "powerbandit/profiling": 1.0 if self.phase == "profiling" else 0.0,
        }

    # ---------------------------------------------------------------------------- lifecycle
    def __enter__(self) -> TrainingRun:
        return self.start()

    def start(self) -> TrainingRun:
        """Ask the server for a configuration and apply it; returns self (``client.start_run`` calls it).

        Raises :class:`~client_sdk.errors.RunStateError` when the run was already started.
        """
        if self._state != "new":
            raise RunStateError(f"the run was already started (it is {self._state})")
        self._state = "running"
        try:
            return self._start()
        except BaseException as exc:
            if self.suggestion is None:  # the server was not asked, or refused: nothing to end
                self._state = "new"
            elif self._unreachable is None:  # the server started a run: end it now, not at lease expiry
                if getattr(self.gpu, "local_only", None) is False:  # a DDP rank: the others may not be there
                    self.gpu.local_only = True  # type: ignore[attr-defined]
                try:
                    self.fail(exc)
                except Exception as report_exc:
                    log.warning("run %s: reporting its failed start failed too: %s", self.run_id, report_exc)
            else:
                self._state = "failed"
            raise

    def _start(self) -> TrainingRun:
        info = self.gpu.info()
        if self._unreachable is None:
            self.suggestion = self._send(
                lambda: self.client.suggest(self.job.job_id, info, request_id=uuid.uuid4().hex)
            )
        if self._unreachable is not None:
            return self._enter_offline()
        s = self._require()
        self.gpu.begin_run(s.batch_size)
        self._origin = (self.gpu.energy_j(), self.gpu.now_s())
        if s.profile_power_limits_w and info.can_set_power_limit and self._profile_enabled:
            # measured once the steps are known to come (steps_per_epoch, or the first step()): until
            # then, and in a run without steps, the limit in force holds
            self._pending_profile = tuple(s.profile_power_limits_w)
            log.info(
                "run %s: batch size %d, profiling %d power limits %s",
                s.run_id, s.batch_size, len(s.profile_power_limits_w),
                "now" if self.steps_per_epoch else "from the first step",
            )  # fmt: skip
            if self.steps_per_epoch:
                self._begin_profile()
        elif s.profile_power_limits_w and not self._profile_enabled:
            log.info(
                "run %s: batch size %d at the limit in force, %g W (not profiled: the run reports no steps)",
                s.run_id, s.batch_size, self.gpu.power_limit_w(),
            )  # fmt: skip
        elif s.profile_power_limits_w:
            log.warning(
                "run %s: cannot set power limits here; staying at %g W and reporting that limit",
                s.run_id,
                self.gpu.power_limit_w(),
            )
        else:
            in_force = self.gpu.set_power_limit(s.power_limit_w)
            log.info("run %s: batch size %d at %g W (%s)", s.run_id, s.batch_size, in_force, s.explanation)
        if self._heartbeat_enabled and s.lease_s > 0:
            self._heartbeat_thread = threading.Thread(
                target=self._heartbeat_loop, args=(s.lease_s / 3,), name="powerbandit-heartbeat", daemon=True
            )
            self._heartbeat_thread.start()
        return self

    def _send(self, call: Callable[[], T]) -> T | None:
        """Make a server call; with fail-open, an unreachable server makes the run offline (None)."""
        if self._unreachable is not None:
            return None
        try:
            return call()
        except OptimizerClientError as exc:
            # getattr: under DDP the client is a per-rank proxy without fail-open (not supported there)
            if not (getattr(self.client, "fail_open", False) and exc.unreachable):
                raise
            self._unreachable = exc
            if self.suggestion is not None:  # lost mid-run: say it once, train on
                log.warning(
                    "run %s: %s; fail-open: training goes on at batch size %d, %g W, and is not reported",
                    self.suggestion.run_id, exc, self.suggestion.batch_size, self.gpu.power_limit_w(),
                )  # fmt: skip
            return None

    def _enter_offline(self) -> TrainingRun:
        """Start an offline run at the job's default configuration (fail-open; see the module docstring)."""
        from powerbandit.v1 import optimizer_pb2 as pb

        info = self.gpu.info()
        batch_size = self.job.default_batch_size
        self.suggestion = pb.SuggestResponse(
            run_id="",
            batch_size=batch_size,
            power_limit_w=self.gpu.power_limit_w(),
            explanation="fail-open: the server is out of reach; the job's default configuration",
            max_epochs=self.job.max_epochs,
            max_power_w=info.max_power_limit_w * info.count,
            eta=self.job.eta,
        )
        self.gpu.begin_run(batch_size)
        self._origin = (self.gpu.energy_j(), self.gpu.now_s())
        log.warning(
            "%s; fail-open: training %s at its default configuration (batch size %d, power limit left at %g W); "
            "energy and time are measured but this run is not reported",
            self._unreachable, self.job.job_id, batch_size, self.gpu.power_limit_w(),
        )  # fmt: skip
        return self

    def _finish_offline(self, energy_j: float, time_s: float) -> None:
        """Keep what an offline run measured (:attr:`offline_result`); nothing is sent."""
        s = self._require()
        self.offline_result = OfflineRun(
            batch_size=s.batch_size,
            power_limit_w=self.gpu.power_limit_w(),
            epochs=self.epochs,
            energy_j=energy_j,
            time_s=time_s,
            reached_target=self.reached_target,
            cost=energy_time_cost(s.eta, energy_j, time_s, s.max_power_w),
            reason=str(self._unreachable),
        )
        log.info(
            "offline run of %s: batch size %d, %g W, %d epochs, %.0f J, %.0f s (not reported)",
            self.job.job_id, s.batch_size, self.offline_result.power_limit_w, self.epochs, energy_j, time_s,
        )  # fmt: skip

    def _begin_profile(self) -> None:
        """Start measuring the pending candidate limits (remembering the limit to go back to)."""
        self._limit_before_profile_w = self.gpu.power_limit_w()
        self._plan_profile(self._pending_profile)
        self._pending_profile = ()

    def _plan_profile(self, limits: tuple[float, ...]) -> None:
        warmup, measure = self._warmup_steps, self._measure_steps
        steps_left = None
        if self.steps_per_epoch:  # fit the profile into the rest of the first epoch, in equal slices
            steps_left = self.steps_per_epoch - self._steps_in_epoch
            per_limit = max(1, steps_left // len(limits))
            warmup = min(warmup, per_limit // 4)
            measure = max(1, per_limit - warmup)
        s = self._require()
        self._profiler = _Profiler(
            self,
            limits,
            warmup,
            measure,
            min_window_s=self._min_profile_window_s,
            steps_left=steps_left,
            # a ratio under 1 would stop after the first limit whatever it measured: taken as none
            stop_ratio=s.profile_stop_ratio if s.profile_stop_ratio >= 1.0 and s.max_power_w > 0 else 0.0,
            eta=s.eta,
            max_power_w=s.max_power_w,
        )

    def set_steps_per_epoch(self, steps_per_epoch: int) -> None:
        """Say how many ``step()`` calls an epoch has, once the batch size is known.

        Call it before the first ``step()`` (for example with ``len(loader)`` of the loader built
        for ``run.batch_size``); a pending power profile is then planned to fill the first epoch.
        """
        self._require()
        if steps_per_epoch <= 0:
            raise ValueError(f"steps_per_epoch must be positive, got {steps_per_epoch}")
        if self._steps_in_epoch or self.epochs:
            raise RuntimeError("set_steps_per_epoch() must be called before the first run.step()")
        self.steps_per_epoch = steps_per_epoch
        if self._pending_profile:
            self._begin_profile()
        elif self._profiler is not None and not self._profiler.done:  # re-planned for the new epoch length
            self._plan_profile(self._profiler.limits)

    def _power_limit_control(self) -> str:
        """How this run's limit was applied (reported with its end); "" when the GPU cannot say."""
        try:
            return self.gpu.power_limit_control()
        except Exception as exc:
            log.warning("run %s: cannot tell how its power limit was applied: %s", self.run_id, exc)
            return ""

    def _heartbeat_loop(self, interval_s: float) -> None:
        while not self._stop_heartbeat.wait(interval_s):
            try:  # the node agent's lease on the power limit lives with the run
                self.gpu.renew_power_limit_lease()
            except Exception as exc:
                log.warning("renewing the power-limit lease of run %s failed: %s", self.run_id, exc)
            if self._unreachable is not None:  # fail-open took the run offline
                return
            try:
                self.client.heartbeat(self.job.job_id, self.run_id)
            except Exception as exc:  # the run goes on; the next beat may succeed
                log.warning("heartbeat for run %s failed: %s", self.run_id, exc)

    def step(self) -> None:
        """Call after every training step: drives in-run power profiling (and replay time)."""
        self._require()
        self._steps_in_epoch += 1
        if self.steps_per_epoch:
            self.gpu.advance(1.0 / self.steps_per_epoch)
        if self._pending_profile:  # this step ran at the limit in force; the profile starts after it
            self._begin_profile()
            return
        if self._profiler is not None and not self._profiler.done:
            self._profiler.on_step()
            if self._profiler.done:
                self._finish_profile()

    def _finish_profile(self) -> None:
        assert self._profiler is not None
        measurements = self._profiler.measurements
        s = self._require()
        if not measurements:
            log.warning(
                "run %s: power profile measured nothing; keeping %g W", s.run_id, self.gpu.power_limit_w()
            )
            return
        best = cheapest_power_limit(measurements, s.eta, s.max_power_w, self.job.max_slowdown)
        self.gpu.set_power_limit(best)
        if self.steps_per_epoch:
            self._report_profile(self.steps_per_epoch)

    def _report_profile(self, steps_per_epoch: float) -> None:
        assert self._profiler is not None
        s = self._require()
        measurements = [
            (m.power_limit_w, m.average_power_w, m.time_per_step_s) for m in self._profiler.measurements
        ]
        answer = self._send(
            lambda: self.client.report_profile(self.job.job_id, s.run_id, steps_per_epoch, measurements)
        )
        self._profile_reported = True
        if answer is None:  # offline: keep the limit this run measured as cheapest
            return
        if answer.power_limit_w != self.gpu.power_limit_w():
            self.gpu.set_power_limit(answer.power_limit_w)
        log.info("run %s: profiled; using %g W", s.run_id, self.gpu.power_limit_w())

    def epoch_end(self, metric: float | None = None) -> bool:
        """Call after every epoch with the validation metric (if measured). Returns True to stop."""
        s = self._require()
        if self.steps_per_epoch:
            remaining = self.steps_per_epoch - self._steps_in_epoch
            if remaining > 0:
                self.gpu.advance(remaining / self.steps_per_epoch)
        elif self._steps_in_epoch == 0:  # no step() calls: the epoch is the unit of progress
            self.gpu.advance(1.0)
        if self._profiler is not None and self._profiler.done and not self._profile_reported:
            if self._profiler.measurements and self._steps_in_epoch > 0:
                self._report_profile(self._steps_in_epoch)
        elif self._profiler is not None and not self._profiler.done:
            if self._limit_before_profile_w is not None:  # never train on at a candidate limit
                self.gpu.set_power_limit(self._limit_before_profile_w)
            log.warning(
                "run %s: the first epoch ended before power profiling finished (too few run.step() calls); "
                "back at %g W, the limit in force before profiling",
                s.run_id,
                self.gpu.power_limit_w(),
            )
            self._profiler.done = True
            self._profile_reported = True
        elif self._pending_profile:  # an epoch without steps: nothing to profile with, the limit stays
            log.info("run %s: no run.step() calls in the first epoch; not profiled", s.run_id)
            self._pending_profile = ()
            self._profile_reported = True
        self._steps_in_epoch = 0
        self.epochs += 1
        if metric is not None and math.isfinite(metric):
            self.last_metric = metric
            if self.job.reached(metric):
                self.reached_target = True
        energy, elapsed = self.read_counters()
        verdict = self._send(
            lambda: self.client.report_progress(self.job.job_id, s.run_id, self.epochs, energy, elapsed, metric)
        )
        if verdict is None:  # offline: no early stop but the target and the training loop's own end
            return self.reached_target
        if verdict.stop:
            self.stop_reason = verdict.message
            if not self.reached_target:
                log.info("run %s: the server asks to stop: %s", s.run_id, verdict.message)
        return bool(verdict.stop) or self.reached_target

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: object) -> None:
        if self._state != "running":  # never started, or already ended by complete() / fail() in the block
            return
        if exc is not None:
            self.fail(f"{exc_type.__name__ if exc_type else 'error'}: {exc}")
        else:
            self.complete()

    def _begin_end(self, verb: str) -> None:
        if self._state == "new":
            raise RunStateError(f"cannot {verb} a run that was not started")
        if self._state != "running":
            raise RunStateError(f"cannot {verb} the run: it already {self._state}")
        self._state = "ending"
        self._stop_heartbeat.set()

    def complete(self, metric: float | None = None, *, epochs: float | None = None) -> pb.Run | None:
        """End the run as trained: report its energy, time, epochs and whether it reached the target.

        ``metric``: the final validation metric (compared with the job's target; the best of it and
        the epochs' metrics counts as reached). ``epochs``: epochs trained, for code that did not call
        :meth:`epoch_end` (the replay GPU advances by the difference). Returns the server's record
        of the run (:attr:`completed_run`), or None for an offline (fail-open) run. Restores the
        power limit. Raises :class:`~client_sdk.errors.RunStateError` when the run is not running.
        """
        self._begin_end("complete")
        try:
            if epochs is not None:
                if not (math.isfinite(epochs) and epochs >= 0):
                    raise ValueError(f"epochs must be a finite number >= 0, got {epochs}")
                if epochs > self.epochs:
                    self.gpu.advance(epochs - self.epochs)
                self.epochs = epochs  # type: ignore[assignment]
            if metric is not None and math.isfinite(metric):
                self.last_metric = metric
                if self.job.reached(metric):
                    self.reached_target = True
            energy, elapsed = self.read_counters()
            if self._unreachable is not None:
                self._finish_offline(energy, elapsed)
                return None
            response = self._send(
                lambda: self.client.complete_run(
                    self.job.job_id,
                    self.run_id,
                    energy_j=energy,
                    time_s=elapsed,
                    epochs=self.epochs,
                    reached_target=self.reached_target,
                    power_limit_w=self.gpu.power_limit_w(),
                    final_metric=self.last_metric,
                    power_limit_control=self._power_limit_control(),
                )
            )
            if response is None:  # the server went away at the very end
                self._finish_offline(energy, elapsed)
                return None
            self.completed_run = response.run
            return self.completed_run
        finally:
            self._state = "completed"
            self._release()

    def fail(self, reason: str | BaseException) -> None:
        """End the run as crashed: reported failed (not evidence against its configuration).

        The energy and time so far are reported with it; the power limit is restored. Raises
        :class:`~client_sdk.errors.RunStateError` when the run is not running.
        """
        self._begin_end("fail")
        if isinstance(reason, BaseException):
            reason = f"{type(reason).__name__}: {reason}"
        try:
            energy, elapsed = self.read_counters()
            if self._unreachable is not None:
                self._finish_offline(energy, elapsed)
                return
            self._send(
                lambda: self.client.fail_run(
                    self.job.job_id, self.run_id, str(reason), energy, elapsed, self.epochs,
                    power_limit_control=self._power_limit_control(), power_limit_w=self.gpu.power_limit_w(),
                )  # fmt: skip
            )
            log.warning("run %s failed: %s", self.run_id, reason)
        finally:
            self._state = "failed"
            self._release()

    def _release(self) -> None:
        try:
            self.gpu.restore_power_limit()
        finally:
            if self._heartbeat_thread is not None:
                self._heartbeat_thread.join(timeout=5)
