"""``powerbandit health`` with TLS mistakes: its own one line on stderr, none of the gRPC C-core's log lines.

Real servers on 127.0.0.1 (EmbeddedServer over SQLite, one plaintext and one with a self-signed
certificate made by openssl), the command as a subprocess, ``GRPC_*`` settings removed from its
environment as on a machine that never set them.
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from optimizer_server.server import EmbeddedServer
from tests.helpers import REPO_ROOT, self_signed_certificate

C_CORE_LINE = re.compile(r"^[IWEF]\d{4} \d\d:\d\d:\d\d\.\d+ +\d+ \S+:\d+\]", re.MULTILINE)
"""A line the gRPC C-core logs (``I1127 15:41:40.426499  12618 ssl_transport_security.cc:2563] ...``)."""


def health(*args: str, **env: str) -> subprocess.CompletedProcess[str]:
    clean = {k: v for k, v in os.environ.items() if not k.startswith(("GRPC_", "POWERBANDIT_TLS"))}
    return subprocess.run(
        [sys.executable, "-m", "powerbandit", "health", "--timeout-s", "5", *args],
        cwd=REPO_ROOT, env={**clean, **env}, capture_output=True, text=True, timeout=60, check=False,
    )  # fmt: skip


def assert_only_its_own_line(done: subprocess.CompletedProcess[str], expected: str, code: int = 1) -> None:
    assert done.returncode == code, done.stderr
    assert not C_CORE_LINE.search(done.stderr), done.stderr
    assert done.stderr.splitlines() == [expected], done.stderr
    assert done.stdout == ""


@pytest.fixture(scope="module")
def plaintext(tmp_path_factory: pytest.TempPathFactory) -> Iterator[EmbeddedServer]:
    with EmbeddedServer(f"sqlite:///{tmp_path_factory.mktemp('plain') / 'p.db'}") as server:
        yield server


@pytest.fixture(scope="module")
def certificate(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    return self_signed_certificate(tmp_path_factory.mktemp("cert"))


@pytest.fixture(scope="module")
def tls_server(tmp_path_factory: pytest.TempPathFactory, certificate: tuple[Path, Path]) -> Iterator[EmbeddedServer]:
    cert, key = certificate
    db = tmp_path_factory.mktemp("tls") / "t.db"
    with EmbeddedServer(f"sqlite:///{db}", tls_cert=str(cert), tls_key=str(key)) as server:
        yield server


def test_tls_against_a_plaintext_server_says_so_without_c_core_lines(plaintext: EmbeddedServer) -> None:
    done = health("--tls", "--server", plaintext.address)
    assert_only_its_own_line(
        done,
        f"error: TLS handshake failed: the server at {plaintext.address} does not speak TLS "
        f"(is it plaintext? drop --tls)",
    )


def test_a_root_certificate_against_a_plaintext_server(plaintext: EmbeddedServer, certificate: tuple[Path, Path]) -> None:
    done = health("--tls-root-cert", str(certificate[0]), "--server", plaintext.address)
    assert_only_its_own_line(
        done,
        f"error: TLS handshake failed: the server at {plaintext.address} does not speak TLS "
        f"(is it plaintext? drop --tls)",
    )


def test_an_untrusted_certificate(tls_server: EmbeddedServer) -> None:
    done = health("--tls", "--server", tls_server.address)  # the system roots do not know a self-signed one
    assert_only_its_own_line(
        done,
        f"error: TLS handshake failed: the certificate of the server at {tls_server.address} is not trusted "
        f"(self signed certificate); pass the certificate that signed it with --tls-root-cert",
    )


def test_a_certificate_for_another_name(tls_server: EmbeddedServer, certificate: tuple[Path, Path]) -> None:
    done = health("--tls-root-cert", str(certificate[0]), "--tls-server-name", "other.example",
                  "--server", tls_server.address)  # fmt: skip
    assert_only_its_own_line(
        done,
        f"error: TLS handshake failed: the certificate of the server at {tls_server.address} is not for "
        f"'other.example'; give the name it is for with --tls-server-name",
    )


def test_a_root_certificate_file_that_is_no_certificate(tls_server: EmbeddedServer, tmp_path: Path) -> None:
    garbage = tmp_path / "garbage.pem"
    garbage.write_text("not a certificate\n")
    done = health("--tls-root-cert", str(garbage), "--server", tls_server.address)
    assert_only_its_own_line(
        done, f"error: --tls-root-cert {garbage} holds no PEM certificate (-----BEGIN CERTIFICATE-----)", code=2
    )


def test_plaintext_against_a_tls_server_hints_at_tls(tls_server: EmbeddedServer) -> None:
    done = health("--server", tls_server.address)
    assert done.returncode == 1 and not C_CORE_LINE.search(done.stderr), done.stderr
    (line,) = done.stderr.splitlines()
    assert line.startswith(f"error: {tls_server.address}: unreachable (UNAVAILABLE")
    assert line.endswith("(if the server uses TLS, add --tls)")


def test_tls_that_works_and_plaintext_that_works(
    plaintext: EmbeddedServer, tls_server: EmbeddedServer, certificate: tuple[Path, Path]
) -> None:
    done = health("--tls-root-cert", str(certificate[0]), "--server", tls_server.address)
    assert done.returncode == 0 and done.stdout == f"{tls_server.address}: SERVING\n" and done.stderr == ""
    done = health("--server", plaintext.address)
    assert done.returncode == 0 and done.stdout == f"{plaintext.address}: SERVING\n" and done.stderr == ""


def test_a_grpc_verbosity_the_user_set_still_wins(plaintext: EmbeddedServer) -> None:
    done = health("--tls", "--server", plaintext.address, GRPC_VERBOSITY="INFO")
    assert done.returncode == 1
    assert "WRONG_VERSION_NUMBER" in done.stderr and C_CORE_LINE.search(done.stderr), done.stderr
    assert done.stderr.splitlines()[-1].startswith("error: TLS handshake failed")


def test_the_entry_point_imports_no_grpc_before_it_quiets_it() -> None:
    """``GRPC_VERBOSITY`` counts only before ``grpc`` is first imported: importing the CLI must not import it."""
    code = "import sys, powerbandit.cli.main; print('grpc' in sys.modules)"
    done = subprocess.run([sys.executable, "-c", code], cwd=REPO_ROOT, capture_output=True, text=True, timeout=60)
    assert done.returncode == 0 and done.stdout.strip() == "False", done.stdout + done.stderr
