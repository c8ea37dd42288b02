"""``powerbandit run``: real wrapper and child processes, the replay GPU, a real server on loopback.

The wrapper runs as ``python -m powerbandit run`` with the server extra blocked (as in a slim SDK
install: no numpy); the server is the real one (EmbeddedServer) over a SQLite file.
"""

from __future__ import annotations

import json
import signal
import subprocess
import sys
from pathlib import Path

import pytest

from client_sdk.client import OptimizerClient
from client_sdk.replay import ReplayGpu
from optimizer_server.server import EmbeddedServer
from powerbandit.cli.run_wrapper import ChildReport, load_replay_table, parse_report_line
from powerbandit.v1 import optimizer_pb2 as pb
from tests.helpers import BLOCK_SERVER_EXTRA, REPO_ROOT, SMALL_TABLE, SPEC, _env, _runs, _wrapper, small_job


def test_wrapper_substitutes_the_batch_size_and_completes_with_the_printed_metric(
    server: EmbeddedServer, files: dict[str, Path]
) -> None:
    done = subprocess.run(_wrapper(server, files, *SPEC), env=_env(files), capture_output=True, text=True,
                          timeout=60, stdin=subprocess.DEVNULL)  # fmt: skip
    assert done.returncode == 0, done.stderr
    assert "epoch 1 loss 0.3" in done.stdout  # the command's output passes through
    (run,) = _runs(server)
    record = json.loads(files["record"].read_text())
    assert record["argv"] == ["--batch-size", str(run.batch_size), f"--id={run.run_id}"]
    env = record["env"]
    assert env["POWERBANDIT_BATCH_SIZE"] == str(run.batch_size) and env["POWERBANDIT_RUN_ID"] == run.run_id
    assert env["POWERBANDIT_JOB_ID"] == "team/wrapped" and env["POWERBANDIT_METRIC_FILE"]
    assert not Path(env["POWERBANDIT_METRIC_FILE"]).exists()  # the temporary metric file is removed
    assert run.state == pb.RUN_STATE_COMPLETED and run.reached_target and run.epochs == 3
    assert run.power_limit_control == pb.POWER_LIMIT_CONTROL_SIMULATED
    power_w, epoch_s = SMALL_TABLE[run.batch_size][run.power_limit_w]  # the replay trace at the limit in force
    assert run.energy_j == pytest.approx(3 * power_w * epoch_s) and run.time_s == pytest.approx(3 * epoch_s)
    assert f"run {run.run_id} completed: 3 epochs" in done.stderr and "target reached" in done.stderr


def test_wrapper_uses_the_registered_job_and_the_metric_file(server: EmbeddedServer, files: dict[str, Path]) -> None:
    with OptimizerClient(server.address, timeout_s=10) as client:
        client.register_job(small_job("team/wrapped", target_metric=0.9))
    done = subprocess.run(_wrapper(server, files, mode="file"), env=_env(files), capture_output=True, text=True,
                          timeout=60, stdin=subprocess.DEVNULL)  # fmt: skip
    assert done.returncode == 0, done.stderr
    (run,) = _runs(server)
    assert run.state == pb.RUN_STATE_COMPLETED and not run.reached_target and run.epochs == 2
    assert "target not reached" in done.stderr


def test_wrapper_fails_the_run_and_returns_the_commands_exit_status(
    server: EmbeddedServer, files: dict[str, Path]
) -> None:
    done = subprocess.run(_wrapper(server, files, *SPEC, mode="crash"), env=_env(files), capture_output=True,
                          text=True, timeout=60, stdin=subprocess.DEVNULL)  # fmt: skip
    assert done.returncode == 3
    assert "CUDA out of memory" in done.stderr  # the command's stderr is its own
    (run,) = _runs(server)
    assert run.state == pb.RUN_STATE_FAILED and run.reason == "the command exited with status 3"


@pytest.mark.parametrize("signum", [signal.SIGTERM, signal.SIGINT])
def test_a_signal_reaches_the_command_once_and_the_run_is_failed(
    server: EmbeddedServer, files: dict[str, Path], signum: signal.Signals
) -> None:
    wrapper = subprocess.Popen(_wrapper(server, files, *SPEC, mode="wait"), env=_env(files), text=True,
                               stdout=subprocess.PIPE, stderr=subprocess.PIPE, stdin=subprocess.DEVNULL)  # fmt: skip
    try:
        assert wrapper.stdout is not None
        assert wrapper.stdout.readline().strip() == "ready"
        wrapper.send_signal(signum)
        _, stderr = wrapper.communicate(timeout=30)
    finally:
        if wrapper.poll() is None:
            wrapper.kill()
            wrapper.wait()
    assert wrapper.returncode == 128 + signum, stderr
    assert json.loads(Path(str(files["record"]) + ".signals").read_text()) == [signum.name]  # exactly once
    (run,) = _runs(server)
    assert run.state == pb.RUN_STATE_FAILED and run.reason.startswith(f"interrupted by {signum.name}")
    assert f"interrupted by {signum.name}: reported failed" in stderr


@pytest.mark.parametrize(
    ("flags", "command", "code", "message"),
    [
        ([], None, 1, "error: job team/wrapped is not registered"),
        (["--batch-sizes", "32,64"], None, 2, "missing: --default-batch-size, --target-metric, --max-epochs"),
        (SPEC, ["/nonexistent/train"], 127, "error: cannot run '/nonexistent/train'"),
        (["--batch-sizes", "32,x"], None, 2, "expected comma-separated integers"),
    ],
)
def test_wrapper_mistakes_are_one_error_line(
    server: EmbeddedServer, files: dict[str, Path], flags: list[str], command: list[str] | None, code: int,
    message: str,
) -> None:  # fmt: skip
    done = subprocess.run(_wrapper(server, files, *flags, command=command), env=_env(files), capture_output=True,
                          text=True, timeout=60, stdin=subprocess.DEVNULL)  # fmt: skip
    assert done.returncode == code and message in done.stderr, done.stderr
    assert "Traceback" not in done.stderr
    if code == 127:
        (run,) = _runs(server)
        assert run.state == pb.RUN_STATE_FAILED and "could not be started" in run.reason


def test_report_lines_and_replay_tables(tmp_path: Path) -> None:
    report = ChildReport()
    for line in (b"powerbandit-metric: 0.7\n", b"  powerbandit-epochs : 4 \n", b"metric 0.1\n", b"powerbandit-metric: x\n"):
        parse_report_line(line, report)
    # the last metric line is garbage: it makes the report unusable (the run is failed, not completed)
    assert report == ChildReport(metric=0.7, epochs=4.0, unusable={"metric": "'powerbandit-metric: x' (not a number)"})
    parse_report_line(b"powerbandit-metric: 0.8\n", report)  # a later usable line corrects it
    assert report == ChildReport(metric=0.8, epochs=4.0)
    path = tmp_path / "t.json"
    path.write_text(json.dumps({"64": {"300": [250, 11]}}))
    table, model, count = load_replay_table(str(path))
    assert table == {64: {300.0: (250.0, 11.0)}} and model == "Replay GPU" and count == 1
    assert ReplayGpu(table).info().max_power_limit_w == 300.0
    path.write_text(json.dumps({"table": {"64": {}}}))
    with pytest.raises(Exception, match="power limit W"):
        load_replay_table(str(path))



def test_wrapper_holds_the_power_limit_on_the_simulated_gpu_for_the_commands_lifetime(
    server: EmbeddedServer, files: dict[str, Path], tmp_path: Path
) -> None:
    """No --replay: NvmlGpu on the simulated device (a JSON file the command reads), as on a real GPU."""
    from client_sdk.devices.simulated import create_state

    gpus = tmp_path / "gpus.json"
    create_state(gpus, 1, model="Simulated GPU", range_w=(100, 300))
    job = small_job("team/wrapped", batch_sizes=(64,), default_batch_size=64)
    with OptimizerClient(server.address, timeout_s=10) as client:  # an SDK run leaves a power profile
        run = client.start_run(job, gpu=ReplayGpu(SMALL_TABLE, model="Simulated GPU"), steps_per_epoch=6,
                               heartbeat=False)  # fmt: skip
        for _ in range(6):
            run.step()
        run.epoch_end(0.5)
        run.complete()
    reader = tmp_path / "reader.py"
    reader.write_text(
        "import json, os, sys, time\n"
        "limit = json.load(open(sys.argv[1]))['gpus'][0]['limit_mw']\n"
        "time.sleep(0.3)\n"
        "print(f'limit {limit}')\n"
        "print('powerbandit-metric: 0.95')\n"
        "print('powerbandit-epochs: 1')\n"
    )
    env = {**_env(files), "POWERBANDIT_SIMULATED_GPUS": str(gpus), "POWERBANDIT_AGENT_SOCKET": ""}
    command = [sys.executable, "-c", BLOCK_SERVER_EXTRA, "run", "--job", "team/wrapped", "--server", server.address,
               "--", sys.executable, str(reader), str(gpus)]  # fmt: skip
    done = subprocess.run(command, env=env, capture_output=True, text=True, timeout=60, stdin=subprocess.DEVNULL)
    assert done.returncode == 0, done.stderr
    assert "limit 200000" in done.stdout  # the profile's cheapest limit (eta 0.5) was in force for the command
    assert json.loads(gpus.read_text())["gpus"][0]["limit_mw"] == 300000  # restored after it
    wrapped = _runs(server)[-1]
    assert wrapped.state == pb.RUN_STATE_COMPLETED and wrapped.power_limit_w == 200
    assert wrapped.power_limit_control == pb.POWER_LIMIT_CONTROL_SIMULATED  # set directly on the simulated device
    assert wrapped.time_s >= 0.3 and wrapped.energy_j > 0  # the simulated counter over the command's wall time


def test_fail_open_runs_the_command_at_the_default_batch_size(files: dict[str, Path]) -> None:
    import socket

    with socket.socket() as probe:  # a loopback port nothing listens on
        probe.bind(("127.0.0.1", 0))
        address = f"127.0.0.1:{probe.getsockname()[1]}"
    command = [sys.executable, "-c", BLOCK_SERVER_EXTRA, "run", "--job", "team/wrapped", "--server", address,
               "--timeout-s", "2", "--replay", str(files["table"]), "--fail-open", *SPEC, "--",
               sys.executable, str(files["child"]), "print", "--batch-size", "{batch_size}"]  # fmt: skip
    done = subprocess.run(command, env=_env(files), capture_output=True, text=True, timeout=60, stdin=subprocess.DEVNULL)
    assert done.returncode == 0, done.stderr
    record = json.loads(files["record"].read_text())
    assert record["argv"] == ["--batch-size", "64"] and record["env"]["POWERBANDIT_RUN_ID"] == ""
    assert "completed: 3 epochs" in done.stderr and "(offline, not reported)" in done.stderr
    assert "fail-open" in done.stderr  # the SDK's one warning says why


def test_energy_and_errors_modules_need_only_the_slim_sdk() -> None:
    code = (
        "import sys\n"
        "import client_sdk.energy, client_sdk.errors, powerbandit.cli.run_wrapper\n"
        "print(sorted(m for m in ('numpy', 'torch', 'transformers', 'lightning') if m in sys.modules))\n"
    )
    done = subprocess.run([sys.executable, "-c", code], cwd=REPO_ROOT, capture_output=True, text=True, timeout=60)
    assert done.returncode == 0 and done.stdout.strip() == "[]", done.stderr
