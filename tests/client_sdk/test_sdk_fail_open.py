"""The SDK with the server out of reach: fail-open trains at the default configuration, measured.

Real gRPC calls to a closed loopback port or to a real server that is stopped mid-run; the only fake
is the GPU (the replay GPU), whose energy and time counters make the measured numbers exact.
"""

from __future__ import annotations

import logging
import socket
from pathlib import Path

import grpc
import pytest

from client_sdk.client import FAIL_OPEN_ENV, OptimizerClient, OptimizerClientError
from client_sdk.replay import ReplayGpu
from optimizer_server.server import EmbeddedServer
from tests.helpers import SMALL_TABLE, small_job

STEPS = 12  # steps per epoch


def closed_port() -> int:
    """A loopback port nothing listens on."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def sdk_warnings(caplog: pytest.LogCaptureFixture) -> list[str]:
    return [r.getMessage() for r in caplog.records if r.name.startswith("powerbandit.sdk") and r.levelno >= logging.WARNING]


def train(run, epochs_to_target: int, max_epochs: int = 20) -> int:  # noqa: ANN001
    """A training loop: ``STEPS`` steps per epoch, the target reached at ``epochs_to_target``."""
    for epoch in range(1, max_epochs + 1):
        for _ in range(STEPS):
            run.step()
        if run.epoch_end(0.95 if epoch == epochs_to_target else 0.5):
            return epoch
    return max_epochs


@pytest.mark.parametrize("switch", ["argument", "environment"])
def test_fail_open_trains_at_the_default_configuration(
    switch: str, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    address = f"127.0.0.1:{closed_port()}"
    if switch == "environment":
        monkeypatch.setenv(FAIL_OPEN_ENV, "1")
        client = OptimizerClient(address, timeout_s=5)
    else:
        monkeypatch.delenv(FAIL_OPEN_ENV, raising=False)
        client = OptimizerClient(address, timeout_s=5, fail_open=True)
    gpu = ReplayGpu(SMALL_TABLE, model="Replay A40")
    gpu.set_power_limit(200.0)  # the limit in force before the run: fail-open leaves it alone
    caplog.set_level(logging.INFO)
    with client, client.run(small_job(), gpu, steps_per_epoch=STEPS) as run:
        assert run.offline and run.batch_size == 64  # small_job's default batch size
        assert run.power_limit_w == 200.0 and not run.profiling
        epochs = train(run, epochs_to_target=3)
    assert epochs == 3 and run.completed_run is None
    result = run.offline_result
    assert result is not None and result.batch_size == 64 and result.power_limit_w == 200.0
    assert result.epochs == 3 and result.reached_target
    # SMALL_TABLE: batch size 64 at 200 W draws 180 W for 12 s an epoch.
    assert result.time_s == pytest.approx(3 * 12.0) and result.energy_j == pytest.approx(3 * 180.0 * 12.0)
    warnings = sdk_warnings(caplog)
    assert len(warnings) == 1, warnings
    assert "fail-open" in warnings[0] and address in warnings[0] and "batch size 64" in warnings[0]


def test_without_fail_open_an_unreachable_server_stops_before_training(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv(FAIL_OPEN_ENV, raising=False)
    trained = False
    with OptimizerClient(f"127.0.0.1:{closed_port()}", timeout_s=5) as client:
        assert not client.fail_open
        with pytest.raises(OptimizerClientError) as caught, client.run(small_job(), ReplayGpu(SMALL_TABLE)):
            trained = True
    assert caught.value.code == grpc.StatusCode.UNAVAILABLE and not trained


def test_fail_open_does_not_hide_a_refusal(tmp_path: Path) -> None:
    with (
        EmbeddedServer(f"sqlite:///{tmp_path / 'x.db'}") as server,
        OptimizerClient(server.address, timeout_s=5, fail_open=True) as client,
        pytest.raises(OptimizerClientError) as caught,
        client.run(small_job(default_batch_size=48), ReplayGpu(SMALL_TABLE)),
    ):
        pass
    assert caught.value.code == grpc.StatusCode.INVALID_ARGUMENT


def test_server_lost_mid_run_the_run_goes_on(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.INFO)
    server = EmbeddedServer(f"sqlite:///{tmp_path / 'x.db'}").start()
    try:
        client = OptimizerClient(server.address, timeout_s=5, fail_open=True)
        with client, client.run(small_job(), ReplayGpu(SMALL_TABLE), steps_per_epoch=STEPS, heartbeat=False) as run:
            assert not run.offline
            batch_size = run.batch_size
            for _ in range(STEPS):
                run.step()
            assert run.epoch_end(0.5) is False  # reported: the server is there
            server.stop()
            assert run.epoch_end(0.5) is False  # not reported: the run goes on offline
            assert run.offline
            assert run.epoch_end(0.95) is True  # the target still ends it
    finally:
        server.stop()
    result = run.offline_result
    assert result is not None and result.batch_size == batch_size and result.epochs == 3 and result.reached_target
    assert result.energy_j > 0 and result.time_s > 0 and run.completed_run is None
    warnings = sdk_warnings(caplog)
    assert len(warnings) == 1 and "fail-open" in warnings[0], warnings


def test_the_torch_training_loop_fails_open(monkeypatch: pytest.MonkeyPatch) -> None:
    pytest.importorskip("torch")
    from client_sdk.torch_helpers import train_with_powerbandit

    monkeypatch.setenv(FAIL_OPEN_ENV, "yes")
    metrics = iter([0.5, 0.95])
    with OptimizerClient(f"127.0.0.1:{closed_port()}", timeout_s=5) as client:
        result = train_with_powerbandit(
            client,
            small_job(),
            make_loader=lambda batch_size: [batch_size] * 4,
            train_step=lambda batch: None,
            evaluate=lambda: next(metrics),
            gpu=ReplayGpu(SMALL_TABLE),
            heartbeat=False,
            distributed=False,
        )
    # The replay GPU starts at its highest limit, 300 W: batch size 64 draws 250 W for 11 s an epoch.
    assert (result.run_id, result.batch_size, result.power_limit_w, result.epochs) == ("", 64, 300.0, 2)
    assert result.reached_target and result.final_metric == 0.95 and not result.profiled
    assert result.energy_j == pytest.approx(2 * 250.0 * 11.0) and result.time_s == pytest.approx(22.0)
    assert result.cost == pytest.approx(0.5 * 5500.0 + 0.5 * 300.0 * 22.0)
