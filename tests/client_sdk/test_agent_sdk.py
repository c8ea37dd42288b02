"""The SDK through the node agent: ``NvmlGpu`` on simulated GPUs, end to end against a real server.

The agent is a real process on a real Unix socket; the training runs in a real process (as
``nobody`` where ``setpriv`` exists) that may not set limits itself; the optimizer server is the real
embedded one. The simulated GPUs (a JSON file) are the only fake.
"""

from __future__ import annotations

import json
import logging
import os
import shutil
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest

from client_sdk.devices.simulated import SimulatedBackend, create_state
from client_sdk.nvml import NvmlGpu
from optimizer_server.server import EmbeddedServer
from powerbandit.v1 import optimizer_pb2 as pb
from tests.helpers import NOBODY, REPO_ROOT, limits_w, start_agent, stop

TRAIN = textwrap.dedent(
    """
    import json, sys, time
    sys.path.insert(0, {repo!r})
    from client_sdk.client import Job, OptimizerClient
    from client_sdk.nvml import NvmlGpu
    from client_sdk.devices.simulated import SimulatedBackend

    seen = []
    hw = SimulatedBackend({gpus!r})
    job = Job(job_id="team/agent-e2e", batch_sizes=(32, 64), default_batch_size=64, target_metric=0.9,
              max_epochs=5, seed=3)
    with OptimizerClient({address!r}, timeout_s=10) as client, NvmlGpu(power_limit_step_w=100) as gpu:
        info = gpu.info()
        with client.run(job, gpu, steps_per_epoch=6) as run:
            for epoch in range(2):
                for _ in range(6):
                    time.sleep(0.01)
                    seen.append(hw.power_limit_mw(1) / 1000)
                    run.step()
                if run.epoch_end(0.5 + 0.3 * epoch):
                    break
        print(json.dumps({{
            "control": gpu.power_limit_control(), "lease_after": gpu.agent_lease_id,
            "can_set": info.can_set_power_limit, "range": [info.min_power_limit_w, info.max_power_limit_w],
            "seen": seen, "run_id": run.run_id,
            "reported": int(run.completed_run.power_limit_control),
        }}), flush=True)
    """
)


def test_training_run_limits_applied_by_the_agent_end_to_end(root: Path, tmp_path: Path) -> None:
    agent = start_agent(root, "--max-watts", "250")
    try:
        with EmbeddedServer(f"sqlite:///{tmp_path / 'pb.db'}") as server:
            code = TRAIN.format(repo=str(REPO_ROOT), gpus=str(agent.gpus_file), address=server.address)
            cmd = [sys.executable, "-c", code]
            as_nobody = shutil.which("setpriv") is not None and os.geteuid() == 0
            if as_nobody:
                cmd = ["setpriv", f"--reuid={NOBODY}", f"--regid={NOBODY}", "--clear-groups", *cmd]
            env = {k: v for k, v in os.environ.items() if k != "NVIDIA_VISIBLE_DEVICES"}
            env.update(
                CUDA_VISIBLE_DEVICES="1",
                POWERBANDIT_AGENT_SOCKET=agent.socket,
                POWERBANDIT_SIMULATED_GPUS=str(agent.gpus_file),
                HOME="/tmp",
            )
            proc = subprocess.run(cmd, capture_output=True, text=True, timeout=120, env=env)
            assert proc.returncode == 0, proc.stderr
            out = json.loads(proc.stdout.strip().splitlines()[-1])
            from client_sdk.client import OptimizerClient

            with OptimizerClient(server.address) as client:
                job = client.get_job("team/agent-e2e", max_runs=10)
        assert out["control"] == "agent" and out["can_set"] is True
        assert out["reported"] == pb.POWER_LIMIT_CONTROL_AGENT
        assert out["range"] == [100.0, 250.0]  # the operator's --max-watts narrows the candidates
        assert {100.0, 150.0, 250.0} <= set(out["seen"])  # the profile (250 W down in 100 W steps)'s limits reached the (simulated) GPU
        assert out["lease_after"] == ""  # released at the end
        assert job.runs[-1].power_limit_control == pb.POWER_LIMIT_CONTROL_AGENT
        assert limits_w(agent.gpus_file) == [300.0, 300.0]  # nothing left capped
    finally:
        stop(agent.proc)


def test_sdk_in_process_lease_renewal_survives_an_agent_restart(root: Path) -> None:
    agent = start_agent(root, "--min-watts", "120")
    gpu = None
    try:
        SimulatedBackend(agent.gpus_file).set_compute_pids(0, [os.getpid()])  # entitled by a compute context
        gpu = NvmlGpu(device_indices=[0], backend=SimulatedBackend(agent.gpus_file, privileged=False),
                      agent_socket=agent.socket, agent_lease_s=30)  # fmt: skip
        info = gpu.info()
        assert info.can_set_power_limit and info.min_power_limit_w == 120.0
        assert gpu.set_power_limit(150) == 150.0
        lease = gpu.agent_lease_id
        assert lease and gpu.power_limit_control() == "agent"
        gpu.renew_power_limit_lease()
        stop(agent.proc, signal.SIGKILL)
        agent = start_agent(root, "--min-watts", "120")  # restores at start-up: the lease is gone
        assert limits_w(agent.gpus_file)[0] == 300.0
        gpu.renew_power_limit_lease()  # NOT_FOUND -> applied again under the same lease id
        assert limits_w(agent.gpus_file)[0] == 150.0 and gpu.agent_lease_id == lease
        gpu.close()
        gpu = None
        assert limits_w(agent.gpus_file) == [300.0, 300.0]
    finally:
        if gpu is not None:
            gpu.close()
        stop(agent.proc)


def test_sdk_without_agent_or_permission_reports_none(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    state = tmp_path / "gpus.json"
    create_state(state, 1, model="Sim A", range_w=(100, 300))
    unprivileged = SimulatedBackend(state, privileged=False)
    with caplog.at_level(logging.WARNING, logger="powerbandit.sdk.nvml"), NvmlGpu(backend=unprivileged, agent_socket="") as gpu:
        assert gpu.set_power_limit(150) == 300.0
        assert gpu.power_limit_control() == "none" and gpu.info().can_set_power_limit is False
    assert "may not set GPU power limits" in caplog.text and "POWERBANDIT_AGENT_SOCKET" in caplog.text
    with NvmlGpu(backend=SimulatedBackend(state, privileged=True), agent_socket="") as gpu:
        assert gpu.set_power_limit(150) == 150.0 and gpu.power_limit_control() == "simulated"
    assert limits_w(state) == [300.0]  # restored on close


def test_simulated_device_enforces_nvml_constraints(tmp_path: Path) -> None:
    from client_sdk.devices.errors import DeviceInvalidArgumentError, DeviceNotSupportedError

    state = tmp_path / "gpus.json"
    create_state(state, 2, range_w=(100, 300), mig_indices=(1,))
    hw = SimulatedBackend(state, privileged=True)
    with pytest.raises(DeviceInvalidArgumentError):
        hw.set_power_limit_mw(0, 99_000)
    with pytest.raises(DeviceNotSupportedError, match="MIG"):
        hw.set_power_limit_mw(1, 150_000)
    e0 = hw.total_energy_mj(0)
    hw.set_power_limit_mw(0, 200_000)
    again = SimulatedBackend(state)  # a second process's view: the file is the hardware
    assert again.power_limit_mw(0) == 200_000 and again.power_usage_mw(0) == 160_000
    assert again.total_energy_mj(0) >= e0 and again.describe(1).mig_enabled


def test_reading_energy_keeps_the_lease_of_a_run_without_heartbeats(root: Path) -> None:
    agent = start_agent(root)
    try:
        SimulatedBackend(agent.gpus_file).set_compute_pids(1, [os.getpid()])
        with NvmlGpu(device_indices=[1], backend=SimulatedBackend(agent.gpus_file, privileged=False),
                     agent_socket=agent.socket, agent_lease_s=0.6) as gpu:  # fmt: skip
            assert gpu.set_power_limit(160) == 160.0
            for _ in range(6):  # 1.2 s in all, twice the lease: energy reads renew it
                time.sleep(0.2)
                gpu.energy_j()
            assert limits_w(agent.gpus_file) == [300.0, 160.0]
            time.sleep(1.0)  # no reads: the lease lapses and the agent restores the limit
            assert limits_w(agent.gpus_file) == [300.0, 300.0]
    finally:
        stop(agent.proc)
