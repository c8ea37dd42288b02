"""LeaseManager and Journal in-process: the rules without gRPC (simulated GPUs, a settable clock)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from client_sdk.devices.simulated import SimulatedBackend, create_state
from powerbandit.agent.entitlement import Caller, env_gpus, start_time
from powerbandit.agent.errors import FailedPreconditionError, NotFoundError, PermissionDeniedError
from powerbandit.agent.leases import Journal, LeaseManager


class Clock:
    def __init__(self) -> None:
        self.t = 1000.0

    def __call__(self) -> float:
        return self.t


@pytest.fixture
def hw(tmp_path: Path) -> SimulatedBackend:
    create_state(tmp_path / "gpus.json", 2, range_w=(100, 300))
    backend = SimulatedBackend(tmp_path / "gpus.json", privileged=True)
    backend.set_compute_pids(0, [os.getpid()])  # this test process is entitled to GPU 0
    return backend


def manager(hw: SimulatedBackend, tmp_path: Path, clock: Clock, **kw: object) -> LeaseManager:
    return LeaseManager(hw, Journal(tmp_path / "originals.json"), clock=clock, **kw)  # type: ignore[arg-type]


ME = Caller(os.getpid(), os.getuid(), os.getgid())


def test_validate_only_changes_nothing_and_lapse_restores(hw: SimulatedBackend, tmp_path: Path) -> None:
    clock = Clock()
    m = manager(hw, tmp_path, clock)
    lease, applied = m.set_limit(ME, ["0"], 150, 10, validate_only=True)
    assert applied == [] and hw.power_limit_mw(0) == 300_000 and not (tmp_path / "originals.json").exists()
    lease, applied = m.set_limit(ME, ["0"], 150, 10, lease_id="a")
    assert applied == [(0, hw.uuid(0), 150_000)] and lease.holder_pid == os.getpid()
    assert lease.holder_started == start_time(os.getpid())
    journal = json.loads((tmp_path / "originals.json").read_text())["originals"]
    assert journal[hw.uuid(0)]["original_mw"] == 300_000
    clock.t += 9.9
    m.expire()
    assert hw.power_limit_mw(0) == 150_000
    m.renew(ME, "a", 10)
    clock.t += 9.9
    m.expire()
    assert hw.power_limit_mw(0) == 150_000  # renewed
    clock.t += 0.2
    m.expire()
    assert hw.power_limit_mw(0) == 300_000
    with pytest.raises(NotFoundError, match="lapsed"):
        m.renew(ME, "a", 10)
    assert m.release(ME, "a") is False  # idempotent after the end


def test_recover_restores_what_a_killed_agent_left(hw: SimulatedBackend, tmp_path: Path) -> None:
    m = manager(hw, tmp_path, Clock())
    m.set_limit(ME, ["0"], 120, 60)
    assert hw.power_limit_mw(0) == 120_000
    fresh = manager(hw, tmp_path, Clock())  # a new agent process, same journal and hardware
    assert fresh.recover() == [hw.uuid(0)]
    assert hw.power_limit_mw(0) == 300_000 and Journal(tmp_path / "originals.json").entries() == {}


def test_other_users_and_other_processes(hw: SimulatedBackend, tmp_path: Path) -> None:
    m = manager(hw, tmp_path, Clock())
    m.set_limit(ME, ["0"], 150, 60, lease_id="mine")
    stranger = Caller(ME.pid, 4321, 4321)  # same pid cannot happen; a different uid must not manage
    sleeper = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(30)"])
    try:
        other = Caller(sleeper.pid, 4321, 4321)
        hw.set_compute_pids(0, [os.getpid(), sleeper.pid])
        with pytest.raises(FailedPreconditionError, match=f"pid {os.getpid()}"):
            m.set_limit(other, ["0"], 200, 60)
        with pytest.raises(PermissionDeniedError, match=f"lease mine is held by pid {os.getpid()}"):
            m.set_limit(other, ["0"], 200, 60, lease_id="mine")  # a lease id is no capability
        with pytest.raises(PermissionDeniedError, match="may not change it"):
            m.release(other, "mine")
    finally:
        sleeper.kill()
        sleeper.wait()
    assert m.release(stranger, "mine") is True  # the holder's own pid may
    assert hw.power_limit_mw(0) == 300_000


def test_allow_gid_and_parent_holder(hw: SimulatedBackend, tmp_path: Path) -> None:
    m = manager(hw, tmp_path, Clock(), allow_gids=[os.getgid()])
    lease, _ = m.set_limit(ME, ["0"], 150, 60, parent_holds=True)
    assert lease.holder_pid == os.getppid()
    m.holder_exited(os.getppid())
    assert hw.power_limit_mw(0) == 300_000
    denied = manager(hw, tmp_path, Clock(), allow_gids=[4242])
    with pytest.raises(PermissionDeniedError, match="--allow-gid"):
        denied.set_limit(ME, ["0"], 150, 60)


def test_env_entitlement_rules() -> None:
    uuids = ["GPU-aaa", "GPU-bbb", "GPU-ccc"]
    assert env_gpus({}, uuids) == (set(), "")
    assert env_gpus({"CUDA_VISIBLE_DEVICES": "2,0"}, uuids) == ({0, 2}, "CUDA_VISIBLE_DEVICES")
    assert env_gpus({"NVIDIA_VISIBLE_DEVICES": "all"}, uuids)[0] == {0, 1, 2}
    assert env_gpus({"NVIDIA_VISIBLE_DEVICES": "void"}, uuids)[0] == set()
    # In a container CUDA indices count within the runtime's devices.
    assert env_gpus({"NVIDIA_VISIBLE_DEVICES": "GPU-ccc,1", "CUDA_VISIBLE_DEVICES": "1"}, uuids)[0] == {1}
    assert env_gpus({"CUDA_VISIBLE_DEVICES": "MIG-x"}, uuids)[0] == set()
