"""Starting and stopping servers: a taken port, listen addresses, clean embedded shutdown.

Real servers (``powerbandit serve`` subprocesses and embedded servers) on loopback ports; every
process a test starts is stopped by it.
"""

from __future__ import annotations

import logging
import os
import re
import subprocess
import sys
import textwrap
import threading
import time
import weakref
from collections.abc import Iterator
from pathlib import Path

import grpc
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc

from optimizer_server.errors import InvalidArgumentError
from optimizer_server.server import EmbeddedServer, ListenError, parse_listen
from powerbandit.cli.main import main
from tests.helpers import REPO_ROOT

CLI = [sys.executable, "-m", "powerbandit"]


@pytest.fixture
def served(tmp_path: Path) -> Iterator[str]:
    """A ``powerbandit serve`` subprocess on an ephemeral port; yields its address."""
    proc = subprocess.Popen(
        [*CLI, "serve", "--db", f"sqlite:///{tmp_path / 'first.db'}", "--listen", "127.0.0.1:0", "--grace-s", "1"],
        stderr=subprocess.PIPE,
        text=True,
        env={**os.environ, "POWERBANDIT_LOG_FORMAT": "text"},
    )
    try:
        assert proc.stderr is not None
        address = None
        deadline = time.monotonic() + 30
        while address is None and time.monotonic() < deadline:
            line = proc.stderr.readline()
            if not line:
                break
            match = re.search(r"serving on (127\.0\.0\.1:\d+)", line)
            address = match.group(1) if match else None
        assert address, "the first server did not start"
        yield address
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
        if proc.stderr is not None:
            proc.stderr.close()


def serving(address: str) -> bool:
    with grpc.insecure_channel(address) as channel:
        answer = health_pb2_grpc.HealthStub(channel).Check(health_pb2.HealthCheckRequest(), timeout=5)
    return answer.status == health_pb2.HealthCheckResponse.SERVING


# ------------------------------------------------------------------------------------ item 8
def test_a_second_serve_on_a_taken_port_refuses_to_start(served: str, tmp_path: Path) -> None:
    second = subprocess.run(
        [*CLI, "serve", "--db", f"sqlite:///{tmp_path / 'second.db'}", "--listen", served],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert second.returncode == 1
    assert f"error: cannot listen on {served}: port {served.rsplit(':', 1)[1]} is already in use" in second.stderr
    assert "serving on" not in second.stderr and "Traceback" not in second.stderr
    assert serving(served)  # the first server is untouched


def test_an_embedded_server_on_a_taken_port_refuses_to_start(served: str, tmp_path: Path) -> None:
    threads = threading.active_count()
    with pytest.raises(ListenError, match="already in use"):
        EmbeddedServer(f"sqlite:///{tmp_path / 'e.db'}", listen=served).start()
    assert threading.active_count() <= threads  # its loop thread was stopped
    with EmbeddedServer(f"sqlite:///{tmp_path / 'a.db'}") as first:  # two embedded servers, one port
        with pytest.raises(ListenError, match="already in use"):
            EmbeddedServer(f"sqlite:///{tmp_path / 'b.db'}", listen=first.address).start()
        assert serving(first.address)
    assert serving(served)


def test_grpc_itself_refuses_a_taken_port(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    # Without the bind probe (a port taken between the probe and gRPC's bind), gRPC must refuse
    # too: with its default SO_REUSEPORT it would bind the taken port and share its traffic.
    import optimizer_server.server as server_module

    monkeypatch.setattr(server_module, "_check_port_free", lambda address, listen: None)
    with EmbeddedServer(f"sqlite:///{tmp_path / 'a.db'}") as first:
        with pytest.raises(ListenError, match="Failed to bind"):
            EmbeddedServer(f"sqlite:///{tmp_path / 'b.db'}", listen=first.address).start()
        assert serving(first.address)


# ------------------------------------------------------------------------------------ item 9
BAD_ADDRESSES = {
    "127.0.0.1:99999": "port must be a number from 0 to 65535",
    "127.0.0.1:-1": "port must be a number from 0 to 65535",
    "127.0.0.1:http": "port must be a number from 0 to 65535",
    "127.0.0.1": "no port",
    "127.0.0.1:": "port must be a number",
    ":50051": "no host",
    "::1:50051": "IPv6 address in brackets",
    "[::1]": "needs a port",
    "nohost.invalid:50051": "host 'nohost.invalid' does not resolve",
}


@pytest.mark.parametrize("address", sorted(BAD_ADDRESSES))
def test_serve_refuses_a_bad_listen_address(address: str, capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as done:
        main(["serve", "--db", "sqlite:///unused.db", "--listen", address])
    err = capsys.readouterr().err
    assert done.value.code == 2 and f"invalid listen address {address!r}" in err and BAD_ADDRESSES[address] in err
    assert "authentication" not in err and "Traceback" not in err
    assert not Path("unused.db").exists()


@pytest.mark.parametrize("address", sorted(BAD_ADDRESSES))
def test_embedded_server_refuses_a_bad_listen_address(address: str, tmp_path: Path) -> None:
    with pytest.raises(InvalidArgumentError, match=re.escape(BAD_ADDRESSES[address])):
        EmbeddedServer(f"sqlite:///{tmp_path / 'x.db'}", listen=address)


def test_good_listen_addresses() -> None:
    assert parse_listen("127.0.0.1:0").port == 0 and parse_listen("127.0.0.1:0").is_loopback
    v6 = parse_listen("[::1]:50051")
    assert (v6.host, v6.port, v6.with_port(1)) == ("::1", 50051, "[::1]:1") and v6.is_loopback
    assert parse_listen("localhost:65535").is_loopback
    assert not parse_listen("0.0.0.0:1").is_loopback


def test_a_remote_address_is_blamed_on_authentication_only_when_valid(tmp_path: Path) -> None:
    with pytest.raises(InvalidArgumentError, match="without authentication"):
        EmbeddedServer(f"sqlite:///{tmp_path / 'x.db'}", listen="0.0.0.0:0").start()


# ------------------------------------------------------------------------------------ item 12
def test_embedded_server_logs_its_bound_port(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.INFO, logger="powerbandit.server")
    with EmbeddedServer(f"sqlite:///{tmp_path / 'x.db'}") as server:
        port = server.address.rsplit(":", 1)[1]
    messages = [r.getMessage() for r in caplog.records if r.name == "powerbandit.server"]
    assert port != "0"
    assert any(f"listening on 127.0.0.1:{port} only" in m for m in messages), messages
    assert not any("127.0.0.1:0" in m for m in messages), messages


CYCLES = textwrap.dedent(
    """
    import sys, tempfile
    from client_sdk.client import OptimizerClient
    from optimizer_server.server import EmbeddedServer
    from tests.helpers import small_job

    with tempfile.TemporaryDirectory() as tmp:
        for i in range(int(sys.argv[1])):
            with EmbeddedServer(f"sqlite:///{tmp}/{i}.db") as server, OptimizerClient(server.address) as client:
                client.register_job(small_job("cycle/job"))
    print("cycles done")
    """
)


def test_embedded_server_frees_grpc_only_after_its_loop_stopped(tmp_path: Path) -> None:
    # gRPC's asyncio layer shuts down when its last server object is freed: it removes its reader
    # from the event loop and closes the reader's socket. Freed while the loop thread still ran,
    # the loop could be dispatching that reader at that moment: "OSError: [Errno 9] Bad file
    # descriptor" logged from PollerCompletionQueue._handle_events (about 1 stop in 100-300).
    server = EmbeddedServer(f"sqlite:///{tmp_path / 'x.db'}").start()
    loop, thread = server._loop, server._thread
    seen: list[tuple[bool, bool]] = []
    weakref.finalize(server.running.server, lambda: seen.append((loop.is_running(), thread.is_alive())))
    server.stop()
    assert seen == [(False, False)]  # freed, and with no loop running to dispatch its reader


def test_embedded_start_stop_leaves_no_traceback() -> None:
    # End to end: many start/stop cycles with a call each, stderr free of tracebacks. (Before the
    # fix 400 cycles logged the "Bad file descriptor" traceback 1 to 6 times on this machine.)
    done = subprocess.run(
        [sys.executable, "-c", CYCLES, "400"],
        capture_output=True,
        text=True,
        timeout=300,
        cwd=REPO_ROOT,
        env={**os.environ, "PYTHONPATH": str(REPO_ROOT)},
        check=False,
    )
    assert done.returncode == 0 and "cycles done" in done.stdout, done.stderr[-2000:]
    assert "Traceback" not in done.stderr and "Bad file descriptor" not in done.stderr, done.stderr[-2000:]
