"""The ``powerbandit`` policy state: typed records, their JSON form, and upgrades of old versions.

The store keeps a job's state as a JSON dict (:func:`encode` writes it, :func:`decode` reads it):

.. code-block:: text

    {"version": 3,
     "arms": {"32": [ok_n, ok_sum, ok_sumsq, ok_max, fail_n, fail_sum, fail_sumsq, fail_max,
                     cost_n, cost_sum, never_ran], ...},     # one ArmSums per batch size
     "epoch_cost": {"V100": {"32": 41.5, ...}, ...},          # GPU model -> batch size -> cost
     "observations": 12,
     "recurrence_cost": 0.0, "min_recurrence_cost": 812.0, "min_recurrence_cost_by_gpu": {...},
     "tails": {"32": [[ok...], [fail...], [cost...]], ...}}   # only with a window, once filled

The policy works on the decoded form (:class:`PowerBanditState`, batch sizes as ``int``, one
:class:`ArmSums` and :class:`ArmTails` record per batch size). The records are named tuples: the
state is decoded on every suggestion, and a named tuple is built from its JSON list at the cost of
a tuple. Every record is immutable; a change makes a new one (:meth:`ArmSums.with_ok` ...).

Version 3 keeps one flat list of running sums per batch size (bounded, and cheap to encode, which
the server does after every run); version 2 kept the same sums as nested objects; version 1 kept
every sample. :func:`upgrade` converts versions 1 and 2; only the current version is ever decoded.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping, Sequence
from functools import partial
from typing import Any, NamedTuple

STATE_VERSION = 3
"""The version :func:`encode` writes and :func:`decode` reads."""

MIN_EPOCHS = 1e-3
"""Epoch counts are floored here before taking logs (a report of 1e-200 epochs must not dominate)."""


class StateVersionError(ValueError):
    """A state that is not in the current version reached code that reads only the current one."""


class ArmSums(NamedTuple):
    """Running sums of one batch size (the state keeps sums, not samples: its size stays bounded).

    ``ok_*``: log epochs of the runs that reached the target (count, sum, sum of squares, maximum);
    ``fail_*``: the same for the runs that did not; ``cost_*``: count and sum of the costs of the runs
    that reached the target; ``never_ran``: runs that ended before their first epoch.
    """

    ok_n: int = 0
    ok_sum: float = 0.0
    ok_sumsq: float = 0.0
    ok_max: float | None = None
    fail_n: int = 0
    fail_sum: float = 0.0
    fail_sumsq: float = 0.0
    fail_max: float | None = None
    cost_n: int = 0
    cost_sum: float = 0.0
    never_ran: int = 0

    # each update builds the new tuple in one go (``_replace`` costs several times as much, and
    # one of these runs after every run)

    def with_ok(self, log_epochs: float, cost: float) -> ArmSums:
        """The sums with one more run that reached the target after ``exp(log_epochs)`` epochs, at ``cost``."""
        ok_n, ok_sum, ok_sumsq, top, fail_n, fail_sum, fail_sumsq, fail_max, cost_n, cost_sum, never_ran = self
        return _arm((
            ok_n + 1, ok_sum + log_epochs, ok_sumsq + log_epochs * log_epochs,
            log_epochs if top is None else max(top, log_epochs),
            fail_n, fail_sum, fail_sumsq, fail_max,
            cost_n + 1, cost_sum + cost,
            never_ran,
        ))  # fmt: skip

    def with_fail(self, log_epochs: float) -> ArmSums:
        """The sums with one more run that stopped after ``exp(log_epochs)`` epochs short of the target."""
        ok_n, ok_sum, ok_sumsq, ok_max, fail_n, fail_sum, fail_sumsq, top, cost_n, cost_sum, never_ran = self
        return _arm((
            ok_n, ok_sum, ok_sumsq, ok_max,
            fail_n + 1, fail_sum + log_epochs, fail_sumsq + log_epochs * log_epochs,
            log_epochs if top is None else max(top, log_epochs),
            cost_n, cost_sum,
            never_ran,
        ))  # fmt: skip

    def with_never_ran(self) -> ArmSums:
        """The sums with one more run that never ran an epoch."""
        return _arm((*self[:10], self.never_ran + 1))


_arm = partial(tuple.__new__, ArmSums)
"""An :class:`ArmSums` from its 11 values in order (its JSON list): the cheapest way to build one
(no length check: a malformed list fails where a field is first read)."""

EMPTY_ARM = ArmSums()
"""The sums of a batch size with nothing observed."""


def pushed(values: Sequence[float], value: float, window: int) -> list[float]:
    """The last ``window`` (> 0) values of ``values`` followed by ``value`` (a new list)."""
    return [*values[-(window - 1) :], value] if window > 1 else [value]


class ArmTails(NamedTuple):
    """The last ``window`` values of one batch size's series (kept only for a job with a window):
    log epochs of the runs that reached the target, of those that did not, and the costs of the
    former. Decoding keeps the stored lists as they are (read-only, like every part of a state)."""

    ok: Sequence[float] = ()
    fail: Sequence[float] = ()
    cost: Sequence[float] = ()


EMPTY_TAILS = ArmTails()
"""The tails of a batch size with nothing observed."""

_tails = partial(tuple.__new__, ArmTails)
"""An :class:`ArmTails` from its stored ``[ok, fail, cost]`` (the lists themselves, not copies)."""


def tail_stats(values: Sequence[float]) -> tuple[int, float, float, float]:
    """``(n, sum, sum of squares, max)`` of a tail (``(0, 0.0, 0.0, -inf)`` when empty)."""
    if not values:
        return 0, 0.0, 0.0, -math.inf
    return len(values), math.fsum(values), math.fsum([x * x for x in values]), max(values)


class PowerBanditState(NamedTuple):
    """A job's ``powerbandit`` state, decoded (see the module docstring for its JSON form).

    ``arms`` and ``tails`` are keyed by batch size, ``epoch_cost`` by GPU model and then batch size
    (the cost of one epoch at the power limit a run settled on); the recurrence fields are the
    bookkeeping every policy keeps (:func:`optimizer_server.policy.base.fold_recurrence`).
    Treat the mappings as read-only: a change builds a new state.
    """

    arms: Mapping[int, ArmSums]
    tails: Mapping[int, ArmTails]
    epoch_cost: Mapping[str, Mapping[int, float]]
    observations: int
    recurrence_cost: float
    min_recurrence_cost: float | None
    min_recurrence_cost_by_gpu: Mapping[str, float]



def new_state(batch_sizes: Iterable[int], recurrence: Mapping[str, Any]) -> PowerBanditState:
    """Nothing observed: every batch size unexplored; ``recurrence`` is
    :func:`~optimizer_server.policy.base.new_recurrence_state`."""
    return PowerBanditState(
        arms={int(b): EMPTY_ARM for b in sorted(batch_sizes)},
        tails={},
        epoch_cost={},
        observations=0,
        recurrence_cost=recurrence["recurrence_cost"],
        min_recurrence_cost=recurrence["min_recurrence_cost"],
        min_recurrence_cost_by_gpu=dict(recurrence["min_recurrence_cost_by_gpu"]),
    )


def state_version(state: Mapping[str, Any]) -> Any:
    """The version a stored state says it has (states of version 1 did not say)."""
    return state.get("version", 1)


def require_current(state: Mapping[str, Any]) -> None:
    """Raise :class:`StateVersionError` unless ``state`` is in the current version."""
    version = state_version(state)
    if version != STATE_VERSION:
        raise StateVersionError(
            f"a powerbandit state of version {version!r} reached code that reads version {STATE_VERSION} "
            "only: load stored states through PowerBanditPolicy.upgrade_state"
        )


def decode(state: Mapping[str, Any]) -> PowerBanditState:
    """The typed form of a current-version JSON state, for reading (``state`` is not changed).

    Raises :class:`StateVersionError` for any other version: old states are converted once, where
    they are loaded (:func:`upgrade`), never on a read path.
    """
    if state.get("version") != STATE_VERSION:
        require_current(state)
    arms = state["arms"]
    tails = state.get("tails")
    return PowerBanditState(
        {int(key): _arm(arm) for key, arm in arms.items()},
        {int(key): _tails(series) for key, series in tails.items()} if tails else {},
        # the costs are floats already: with_run and upgrade store them so
        {gpu: {int(key): cost for key, cost in per_gpu.items()} for gpu, per_gpu in state["epoch_cost"].items()},
        state["observations"],
        state["recurrence_cost"],
        state["min_recurrence_cost"],
        state.get("min_recurrence_cost_by_gpu", {}),
    )


def encode(state: PowerBanditState) -> dict[str, Any]:
    """The JSON form the store keeps (new containers throughout; ``tails`` only when there are any)."""
    out: dict[str, Any] = {
        "version": STATE_VERSION,
        "arms": {str(b): list(arm) for b, arm in state.arms.items()},
        "epoch_cost": {
            gpu: {str(b): cost for b, cost in per_gpu.items()} for gpu, per_gpu in state.epoch_cost.items()
        },
        "observations": state.observations,
        "recurrence_cost": state.recurrence_cost,
        "min_recurrence_cost": state.min_recurrence_cost,
        "min_recurrence_cost_by_gpu": dict(state.min_recurrence_cost_by_gpu),
    }
    if state.tails:
        out["tails"] = {str(b): [list(t.ok), list(t.fail), list(t.cost)] for b, t in state.tails.items()}
    return out


def success_costs(state: Mapping[str, Any], window: int, batch_size: int | None = None) -> list[tuple[int, float]]:
    """Count and sum of the costs of the runs that reached the target, per batch size of a
    current-version JSON state in its order (of the last ``window`` of them when ``window > 0``);
    with ``batch_size``, of that batch size alone (``[]`` when the state has no arm for it).

    Reads those arms only: the early-stop bound asks after every run (no full :func:`decode`).
    """
    if state.get("version") != STATE_VERSION:
        require_current(state)
    arms = state["arms"]
    if batch_size is None:
        keys = list(arms)
    else:
        key = str(int(batch_size))
        keys = [key] if key in arms else []
    if window > 0:
        all_tails = state.get("tails", {})
        out = []
        for key in keys:
            tail = _tails(all_tails[key]).cost if key in all_tails else ()
            out.append((len(tail), math.fsum(tail)) if tail else (0, 0.0))
        return out
    return [(int(arm.cost_n), float(arm.cost_sum)) for arm in (_arm(arms[key]) for key in keys)]


def gpu_models(state: Mapping[str, Any]) -> set[str]:
    """The GPU models a JSON state has a finished recurrence or an epoch cost of."""
    return set(state.get("min_recurrence_cost_by_gpu", {})) | set(state.get("epoch_cost", {}))


def with_run(
    state: Mapping[str, Any],
    batch_size: int,
    reached_target: bool,
    epochs: float,
    cost: float,
    epoch_cost: float | None,
    gpu_model: str,
    window: int,
) -> dict[str, Any]:
    """A new current-version JSON state with one finished run of ``batch_size`` added: its log
    epochs (to the target, or short of it when ``epochs > 0``; else a run that never ran), the
    ``cost`` of a run that reached the target, and the ``epoch_cost`` on ``gpu_model`` when known.
    The recurrence fields are left to the caller.

    ``state`` is not changed. Only the batch size the run used is decoded and encoded again: the
    new state shares the other batch sizes' lists with ``state`` (this runs after every run; no
    policy changes a state in place).
    """
    if state.get("version") != STATE_VERSION:
        require_current(state)
    key = str(int(batch_size))
    old_arm = state["arms"].get(key)
    arm = EMPTY_ARM if old_arm is None else _arm(old_arm)
    log_epochs = math.log(max(epochs, MIN_EPOCHS)) if reached_target or epochs > 0 else 0.0
    if reached_target:
        arm = arm.with_ok(log_epochs, cost)
    elif epochs > 0:
        arm = arm.with_fail(log_epochs)
    else:
        arm = arm.with_never_ran()
    out = dict(state)
    out["arms"] = {**state["arms"], key: list(arm)}
    if epoch_cost is not None:
        out["epoch_cost"] = _with_epoch_cost(state, gpu_model, key, epoch_cost)
    out["observations"] = state["observations"] + 1
    if window > 0 and (reached_target or epochs > 0):
        all_tails = state.get("tails", {})
        old_tails = all_tails.get(key)
        tails = EMPTY_TAILS if old_tails is None else _tails(old_tails)
        if reached_target:
            series = [pushed(tails.ok, log_epochs, window), list(tails.fail), pushed(tails.cost, cost, window)]
        else:
            series = [list(tails.ok), pushed(tails.fail, log_epochs, window), list(tails.cost)]
        out["tails"] = {**all_tails, key: series}
    return out


def with_called_off_run(
    state: Mapping[str, Any], batch_size: int, epoch_cost: float | None, gpu_model: str
) -> dict[str, Any]:
    """A new current-version JSON state with one run the policy called off after profiling: it
    counts as a run of the job and its ``epoch_cost`` on ``gpu_model`` is kept, but the arm's
    statistics do not change (the run says nothing about epochs-to-target). ``state`` is not
    changed; the recurrence fields are left to the caller."""
    if state.get("version") != STATE_VERSION:
        require_current(state)
    out = dict(state)
    if epoch_cost is not None:
        out["epoch_cost"] = _with_epoch_cost(state, gpu_model, str(int(batch_size)), epoch_cost)
    out["observations"] = state["observations"] + 1
    return out


def _with_epoch_cost(state: Mapping[str, Any], gpu_model: str, key: str, epoch_cost: float) -> dict[str, Any]:
    """``state``'s epoch costs with ``key``'s on ``gpu_model`` set (new dicts, ``state``'s untouched)."""
    per_gpu = state["epoch_cost"]
    return {**per_gpu, gpu_model: {**per_gpu.get(gpu_model, {}), key: float(epoch_cost)}}


def upgrade(state: Mapping[str, Any], window: int) -> dict[str, Any]:
    """``state`` in the current version, as a new dict (``state`` is not changed).

    A current state comes back as a copy with the same content (a new top-level dict; the values
    are shared, and no policy changes a state in place). Version 1 (every sample kept) is replayed
    into running sums, keeping the last ``window`` values of each series when ``window > 0``;
    version 2 (the same sums as nested objects) is re-laid out. Other versions raise
    :class:`StateVersionError`.
    """
    version = state_version(state)
    if version == STATE_VERSION:
        return dict(state)
    if version not in (1, 2):
        raise StateVersionError(
            f"a powerbandit state of version {version!r}: this server reads versions 1 to {STATE_VERSION}"
        )
    arms: dict[int, ArmSums] = {}
    all_tails: dict[int, ArmTails] = {}
    for key, old in state["arms"].items():
        arm, tails = _upgrade_arm_v1(old, window) if version == 1 else _upgrade_arm_v2(old)
        arms[int(key)] = arm._replace(never_ran=int(old.get("never_ran", 0)))
        if any(tails):
            all_tails[int(key)] = tails
    current = PowerBanditState(
        arms=arms,
        tails=all_tails,
        epoch_cost={gpu: {int(k): float(v) for k, v in per.items()} for gpu, per in state["epoch_cost"].items()},
        observations=state["observations"],
        recurrence_cost=state["recurrence_cost"],
        min_recurrence_cost=state["min_recurrence_cost"],
        min_recurrence_cost_by_gpu=dict(state.get("min_recurrence_cost_by_gpu", {})),
    )
    return encode(current)


def _upgrade_arm_v1(old: Mapping[str, Any], window: int) -> tuple[ArmSums, ArmTails]:
    """A version-1 arm (every sample) replayed into running sums, in the order it was observed."""
    arm, tails = EMPTY_ARM, EMPTY_TAILS
    for value in old.get("log_epochs", []):
        arm = arm.with_ok(float(value), 0.0)  # the costs are summed below, in the order they were kept
        if window > 0:
            tails = tails._replace(ok=pushed(tails.ok, float(value), window))
    for epochs in old.get("fail_epochs", []):
        log_epochs = math.log(max(float(epochs), MIN_EPOCHS))
        arm = arm.with_fail(log_epochs)
        if window > 0:
            tails = tails._replace(fail=pushed(tails.fail, log_epochs, window))
    cost_n, cost_sum = 0, 0.0
    for cost in old.get("ok_costs", []):
        cost_n, cost_sum = cost_n + 1, cost_sum + float(cost)
        if window > 0:
            tails = tails._replace(cost=pushed(tails.cost, float(cost), window))
    return arm._replace(cost_n=cost_n, cost_sum=cost_sum), tails


def _upgrade_arm_v2(old: Mapping[str, Any]) -> tuple[ArmSums, ArmTails]:
    """A version-2 arm (nested running sums) in the current layout."""
    ok, fail, cost = old["ok"], old["fail"], old["cost"]
    arm = ArmSums(
        int(ok["n"]), float(ok["sum"]), float(ok.get("sumsq", 0.0)), ok.get("max"),
        int(fail["n"]), float(fail["sum"]), float(fail.get("sumsq", 0.0)), fail.get("max"),
        int(cost["n"]), float(cost["sum"]),
    )  # fmt: skip
    tails = ArmTails(*([float(x) for x in series.get("tail", ())] for series in (ok, fail, cost)))
    return arm, tails
