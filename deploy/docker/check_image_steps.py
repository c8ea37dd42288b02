"""Run the container image's build and start steps without a container daemon, and check its health.

    python deploy/docker/check_image_steps.py [--keep] [--pip-cache]

Reads ``deploy/docker/Dockerfile`` and carries out, in a scratch directory, what ``docker build`` and
``docker run`` would: every stage's ``ARG``/``ENV``/``WORKDIR``/``COPY`` (honouring
``Dockerfile.dockerignore``)/``RUN`` step, then the final stage's ``ENTRYPOINT`` + ``CMD`` as the
image's ``USER``, then its ``HEALTHCHECK`` command until it passes, then ``STOPSIGNAL``. The
differences from a real build, each printed as it happens:

* the base image is this machine (its ``python3``, ``sh``), not ``python:3.11-slim``;
* absolute paths of the image (``/src``, ``/wheels``, ``/opt``, ``/var/lib/powerbandit``) live under
  the scratch directory, one root per stage;
* ``groupadd``/``useradd``/``chown`` are not run (they would change this machine's users); the
  state directory is given to the image's numeric ``USER`` instead, and the server runs as that
  uid through ``setpriv`` when this script runs as root;
* the server listens on a free loopback port instead of ``0.0.0.0:50051`` (no traffic leaves loopback);
* with ``--pip-cache`` pip may use its cache (the image sets ``PIP_NO_CACHE_DIR=1``).

Exit status 0 when every step ran and the server came up healthy, served metrics and stopped cleanly.
"""

from __future__ import annotations

import argparse
import fnmatch
import json
import os
import re
import shlex
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path

HERE = Path(__file__).resolve().parent
REPO_ROOT = HERE.parent.parent
DOCKERFILE = HERE / "Dockerfile"
MAPPED_ROOTS = ("/src", "/wheels", "/opt", "/var/lib/powerbandit")
NOT_RUN = ("groupadd", "useradd", "chown")
STEP_TIMEOUT_S = 900


@dataclass
class Instruction:
    """One Dockerfile instruction: keyword and its raw argument text."""

    keyword: str
    args: str
    line: int


@dataclass
class Stage:
    """A build stage as carried out: its name, scratch root, environment and working directory."""

    name: str
    root: Path
    env: dict[str, str] = field(default_factory=dict)
    workdir: str = "/"
    user: str | None = None
    entrypoint: list[str] = field(default_factory=list)
    cmd: list[str] = field(default_factory=list)
    healthcheck: list[str] = field(default_factory=list)
    healthcheck_options: dict[str, str] = field(default_factory=dict)
    stopsignal: str = "SIGTERM"
    exposed: list[str] = field(default_factory=list)


def parse_dockerfile(text: str) -> list[Instruction]:
    """Instructions of a Dockerfile (comments dropped, ``\\`` continuations joined)."""
    out: list[Instruction] = []
    pending, start = "", 0
    for number, raw in enumerate(text.splitlines(), start=1):
        stripped = raw.strip()
        if not pending and (not stripped or stripped.startswith("#")):
            continue
        if pending and stripped.startswith("#"):
            continue
        if not pending:
            start = number
        if stripped.endswith("\\"):
            pending += stripped[:-1].rstrip() + " "
            continue
        full = (pending + stripped).strip()
        pending = ""
        keyword, _, args = full.partition(" ")
        out.append(Instruction(keyword.upper(), args.strip(), start))
    if pending:
        raise ValueError("Dockerfile ends inside a continued line")
    return out


def expand(text: str, env: dict[str, str]) -> str:
    """``$VAR`` and ``${VAR}`` from ``env`` (unknown ones become empty, as in Docker)."""
    return re.sub(r"\$\{(\w+)\}|\$(\w+)", lambda m: env.get(m.group(1) or m.group(2), ""), text)


def parse_env(args: str, env: dict[str, str]) -> dict[str, str]:
    """``ENV K=V K2="V 2"`` (values expanded against ``env`` as it was before the instruction)."""
    pairs = {}
    for token in shlex.split(args):
        key, sep, value = token.partition("=")
        if not sep:
            raise ValueError(f"ENV {args!r}: only the KEY=VALUE form is supported")
        pairs[key] = expand(value, env)
    return pairs


def exec_form(args: str) -> list[str]:
    """A JSON exec-form argument list (``["powerbandit", "serve"]``)."""
    value = json.loads(args)
    if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
        raise ValueError(f"{args!r} is not an exec-form list of strings")
    return value


class Emulator:
    """Carries out the Dockerfile's steps under ``scratch``; ``log`` says what ran and what did not."""

    def __init__(self, scratch: Path, pip_cache: bool) -> None:
        self.scratch = scratch
        self.pip_cache = pip_cache
        self.stages: dict[str, Stage] = {}
        self.args: dict[str, str] = {}
        self.bin = scratch / "base-image-bin"  # what the base image puts on PATH: python
        self.bin.mkdir(parents=True)
        base_python = Path(getattr(sys, "_base_executable", sys.executable))
        for name in ("python", "python3"):
            (self.bin / name).symlink_to(base_python)

    def log(self, status: str, text: str) -> None:
        """One line of the report."""
        print(f"[{status:>9}] {text}", flush=True)

    def map_paths(self, text: str, stage: Stage) -> str:
        """Image paths (``/opt/...``) -> paths under the stage's scratch root."""
        pattern = r"(?<![\w.\-])(" + "|".join(re.escape(r) for r in MAPPED_ROOTS) + r")(?=[/\"'\s\[:]|$)"
        return re.sub(pattern, lambda m: str(stage.root) + m.group(1), text)

    def run_env(self, stage: Stage) -> dict[str, str]:
        """The environment a RUN step or the container process sees."""
        env = {"HOME": str(stage.root / "root"), "LANG": "C.UTF-8"}
        for key, value in stage.env.items():
            env[key] = self.map_paths(value, stage)
        if self.pip_cache:
            env.pop("PIP_NO_CACHE_DIR", None)
        for key in ("PIP_INDEX_URL", "PIP_EXTRA_INDEX_URL", "PIP_FIND_LINKS", "PIP_CERT", "SSL_CERT_FILE"):
            if key in os.environ and key not in env:  # this machine's way to the package index
                env[key] = os.environ[key]
        return env

    def build(self, instructions: list[Instruction]) -> Stage:
        """Every instruction of every stage; returns the final stage."""
        stage: Stage | None = None
        for ins in instructions:
            if ins.keyword == "ARG":
                name, _, default = ins.args.partition("=")
                target = stage.env if stage else self.args
                target[name] = expand(default, {**self.args, **(stage.env if stage else {})})
                self.log("ran", f"line {ins.line}: ARG {ins.args}")
                continue
            if ins.keyword == "FROM":
                words = expand(ins.args, self.args).split()
                name = (
                    words[2] if len(words) == 3 and words[1].upper() == "AS" else f"stage{len(self.stages)}"
                )
                stage = Stage(name, self.scratch / f"stage-{name}")
                stage.env["PATH"] = (
                    f"{self.bin}:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"  # the base image's
                )
                stage.root.mkdir()
                (stage.root / "root").mkdir()
                self.stages[name] = stage
                self.log("emulated", f"line {ins.line}: FROM {words[0]} AS {name}: this machine's python3 "
                                     f"({sys.version.split()[0]}), root {stage.root}")  # fmt: skip
                continue
            if stage is None:
                raise ValueError(f"line {ins.line}: {ins.keyword} before FROM")
            self.step(stage, ins)
        if stage is None:
            raise ValueError("the Dockerfile has no FROM")
        return stage

    def step(self, stage: Stage, ins: Instruction) -> None:
        """One instruction of ``stage``."""
        k = ins.keyword
        where = f"line {ins.line}: {k}"
        if k == "ENV":
            stage.env.update(parse_env(ins.args, stage.env))
            self.log("ran", f"{where} {ins.args}")
        elif k == "WORKDIR":
            stage.workdir = expand(ins.args, stage.env)
            Path(self.map_paths(stage.workdir, stage)).mkdir(parents=True, exist_ok=True)
            self.log("ran", f"{where} {stage.workdir}")
        elif k == "COPY":
            self.copy(stage, ins)
        elif k == "RUN":
            self.run(stage, ins)
        elif k == "USER":
            stage.user = ins.args
            self.log("recorded", f"{where} {ins.args} (the start step runs as this user)")
        elif k in ("ENTRYPOINT", "CMD"):
            setattr(stage, k.lower(), exec_form(ins.args))
            self.log("recorded", f"{where} {ins.args}")
        elif k == "HEALTHCHECK":
            options, _, command = ins.args.partition("CMD ")
            stage.healthcheck = exec_form(command)
            stage.healthcheck_options = dict(o.lstrip("-").split("=", 1) for o in options.split())
            self.log("recorded", f"{where} {ins.args}")
        elif k == "STOPSIGNAL":
            stage.stopsignal = ins.args
            self.log("recorded", f"{where} {ins.args}")
        elif k == "EXPOSE":
            stage.exposed = ins.args.split()
            self.log("recorded", f"{where} {ins.args} (the start step listens on loopback instead)")
        elif k == "VOLUME":
            for path in exec_form(ins.args) if ins.args.startswith("[") else ins.args.split():
                Path(self.map_paths(path, stage)).mkdir(parents=True, exist_ok=True)
            self.log("ran", f"{where} {ins.args} (a directory under the stage root)")
        elif k == "LABEL":
            self.log("recorded", f"{where} {ins.args}")
        else:
            raise ValueError(f"{where}: instruction not supported by this check")

    def copy(self, stage: Stage, ins: Instruction) -> None:
        """``COPY [--from=STAGE] SRC DEST``."""
        words = ins.args.split()
        source_stage = None
        if words[0].startswith("--from="):
            source_stage = self.stages[words[0].split("=", 1)[1]]
            words = words[1:]
        src, dest = words
        target = Path(self.map_paths(dest, stage))
        if source_stage is not None:
            shutil.copytree(Path(self.map_paths(src, source_stage)), target, dirs_exist_ok=True)
            self.log("ran", f"line {ins.line}: COPY --from={source_stage.name} {src} {dest}")
            return
        context = REPO_ROOT / src
        ignore = dockerignore_patterns()

        def ignored(directory: str, names: list[str]) -> set[str]:
            rel_dir = Path(directory).relative_to(context)
            return {n for n in names if is_ignored((rel_dir / n).as_posix(), ignore)}

        shutil.copytree(context, target, ignore=ignored, dirs_exist_ok=True, symlinks=True)
        self.log(
            "ran",
            f"line {ins.line}: COPY {src} {dest} (build context: the checkout, minus Dockerfile.dockerignore)",
        )

    def run(self, stage: Stage, ins: Instruction) -> None:
        """``RUN`` in ``sh``, with the user-changing commands replaced by a line saying they were skipped."""
        prelude = "".join(
            f'{cmd}() {{ echo "[  skipped] {cmd} $* (would change this machine\'s users)"; }}; '
            for cmd in NOT_RUN
        )
        command = self.map_paths(ins.args, stage)  # sh expands $VARIABLES from the stage's ENV
        cwd = Path(self.map_paths(stage.workdir, stage)) if stage.workdir != "/" else stage.root
        self.log("running", f"line {ins.line}: RUN {ins.args}")
        started = time.monotonic()
        done = subprocess.run(
            ["sh", "-ec", prelude + command], cwd=cwd, env=self.run_env(stage), timeout=STEP_TIMEOUT_S,
            capture_output=True, text=True, check=False,
        )  # fmt: skip
        for line in done.stdout.splitlines():
            if line.startswith("[  skipped]"):
                print(line, flush=True)
        if done.returncode != 0:
            raise RuntimeError(
                f"line {ins.line}: RUN failed ({done.returncode}):\n{done.stdout[-3000:]}{done.stderr[-3000:]}"
            )
        self.log("ran", f"line {ins.line}: RUN finished in {time.monotonic() - started:.0f} s")


def dockerignore_patterns() -> list[str]:
    """Patterns of ``Dockerfile.dockerignore`` (the build context's exclusions)."""
    path = DOCKERFILE.with_name(DOCKERFILE.name + ".dockerignore")
    lines = path.read_text().splitlines() if path.exists() else []
    return [line.strip() for line in lines if line.strip() and not line.strip().startswith("#")]


def is_ignored(rel: str, patterns: list[str]) -> bool:
    """Whether ``rel`` (a path in the build context) or a directory above it matches one of ``patterns``."""
    parts = Path(rel).parts
    for depth in range(1, len(parts) + 1):
        prefix, name = "/".join(parts[:depth]), parts[depth - 1]
        for pattern in patterns:
            bare = pattern.removeprefix("**/")
            if fnmatch.fnmatch(prefix, pattern) or (pattern != bare and fnmatch.fnmatch(name, bare)):
                return True
    return False


def free_port() -> int:
    """A free TCP port on 127.0.0.1."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def start(emulator: Emulator, stage: Stage, deadline_s: float) -> None:
    """Run ENTRYPOINT + CMD as the image's user, wait for HEALTHCHECK, scrape metrics, stop with STOPSIGNAL."""
    env = emulator.run_env(stage)
    port, metrics_port = free_port(), free_port()
    env.update(POWERBANDIT_LISTEN=f"127.0.0.1:{port}", POWERBANDIT_METRICS_HOST="127.0.0.1",
               POWERBANDIT_METRICS_PORT=str(metrics_port), POWERBANDIT_AUTH_TOKENS="image-check-token *")  # fmt: skip
    emulator.log("emulated", f"start: POWERBANDIT_LISTEN=127.0.0.1:{port}, metrics on 127.0.0.1:{metrics_port}, "
                             "one bearer token (the image's ENV says 0.0.0.0:50051 and :9464)")  # fmt: skip
    workdir = Path(emulator.map_paths(stage.workdir, stage))
    prefix: list[str] = []
    if stage.user:
        uid, _, gid = stage.user.partition(":")
        if os.geteuid() == 0:
            for path in [workdir, *workdir.parents]:  # the image's chown of its state directory
                if path == emulator.scratch.parent.parent:
                    break
                os.chmod(path, os.stat(path).st_mode | 0o755)
            shutil.chown(workdir, int(uid), int(gid or uid))
            prefix = ["setpriv", f"--reuid={uid}", f"--regid={gid or uid}", "--clear-groups"]
            emulator.log("emulated", f"USER {stage.user}: running as uid {uid} through setpriv; state directory "
                                     f"{workdir} given to it (for the image's chown)")  # fmt: skip
        else:
            emulator.log("skipped", f"USER {stage.user}: not root, so the server runs as uid {os.geteuid()}")
    command = [*stage.entrypoint, *stage.cmd]
    emulator.log("running", f"start: {' '.join(command)} in {workdir}")
    proc = subprocess.Popen(
        [*prefix, *command],
        cwd=workdir,
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        health = [*prefix, *stage.healthcheck]
        interval_s = min(1.0, float(stage.healthcheck_options.get("interval", "1s").rstrip("s")))
        until = time.monotonic() + deadline_s
        while True:
            check = subprocess.run(
                health, cwd=workdir, env=env, capture_output=True, text=True, timeout=30, check=False
            )
            if check.returncode == 0:
                emulator.log("ran", f"HEALTHCHECK {' '.join(stage.healthcheck)}: {check.stdout.strip()}")
                break
            if proc.poll() is not None:
                raise RuntimeError(
                    f"the server exited with {proc.returncode}: {proc.stderr.read()[-3000:] if proc.stderr else ''}"
                )
            if time.monotonic() > until:
                raise RuntimeError(f"not healthy within {deadline_s:g} s: {check.stderr.strip()}")
            time.sleep(interval_s)
        with urllib.request.urlopen(f"http://127.0.0.1:{metrics_port}/metrics", timeout=10) as reply:
            body = reply.read().decode()
        if "powerbandit_jobs" not in body:
            raise RuntimeError("the metrics endpoint answered without powerbandit_jobs")
        emulator.log("ran", f"metrics: GET http://127.0.0.1:{metrics_port}/metrics ({len(body)} bytes)")
        database = workdir / "powerbandit.db"
        if not database.exists():
            raise RuntimeError(f"no database at {database} (the image's POWERBANDIT_DB)")
        owner = database.stat().st_uid
        emulator.log("ran", f"database {database} created, owned by uid {owner}")
        if stage.user and os.geteuid() == 0 and owner != int(stage.user.partition(":")[0]):
            raise RuntimeError(f"the database belongs to uid {owner}, not to the image's USER {stage.user}")
    finally:
        if proc.poll() is None:
            proc.send_signal(getattr(signal, stage.stopsignal))
        try:
            code = proc.wait(timeout=60)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(timeout=30)
            raise RuntimeError(f"the server did not stop within 60 s of {stage.stopsignal}") from None
    if code != 0:
        raise RuntimeError(f"the server exited with {code} after {stage.stopsignal}")
    emulator.log("ran", f"STOPSIGNAL {stage.stopsignal}: the server stopped cleanly (exit 0)")


def main(argv: list[str] | None = None) -> int:
    """Build and start the image's steps; returns the exit code."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--keep", action="store_true", help="keep the scratch directory")
    parser.add_argument(
        "--pip-cache", action="store_true", help="let pip use its cache (faster; the image does not)"
    )
    parser.add_argument(
        "--health-deadline-s", type=float, default=60.0, help="seconds to wait for health (60)"
    )
    args = parser.parse_args(argv)
    scratch = Path(tempfile.mkdtemp(prefix="powerbandit-image-"))
    try:
        emulator = Emulator(scratch / "image", args.pip_cache)
        started = time.monotonic()
        final = emulator.build(parse_dockerfile(DOCKERFILE.read_text()))
        emulator.log("ran", f"build steps done in {time.monotonic() - started:.0f} s")
        start(emulator, final, args.health_deadline_s)
    except (RuntimeError, ValueError, OSError, subprocess.SubprocessError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    finally:
        if args.keep:
            print(f"scratch directory kept: {scratch}")
        else:
            shutil.rmtree(scratch, ignore_errors=True)
    print("image steps: OK")
    return 0


if __name__ == "__main__":
    sys.exit(main())
