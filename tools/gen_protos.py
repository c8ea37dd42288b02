"""Regenerate the Python gRPC code from ``protos/`` (the one way it is produced).

Usage: ``python tools/gen_protos.py`` (writes ``powerbandit/v1/*_pb2*.py``), or
``python tools/gen_protos.py --check`` (exits 1 when the committed code is out of date).
The generated files are committed so that installing the package needs no code generator.
"""

from __future__ import annotations

import argparse
import filecmp
import shutil
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
PROTO_ROOT = ROOT / "protos"
OUT_ROOT = ROOT  # protos/powerbandit/v1/x.proto -> powerbandit/v1/x_pb2.py


def generate(out_root: Path) -> list[Path]:
    """Run protoc (from grpcio-tools) on every .proto, writing under ``out_root``."""
    from grpc_tools import protoc  # dev dependency, pinned in pyproject.toml

    protos = sorted(PROTO_ROOT.rglob("*.proto"))
    include = Path(protoc.__file__).parent / "_proto"
    args = [
        "protoc",
        f"-I{PROTO_ROOT}",
        f"-I{include}",
        f"--python_out={out_root}",
        f"--pyi_out={out_root}",
        f"--grpc_python_out={out_root}",
        *[str(p) for p in protos],
    ]
    if protoc.main(args) != 0:
        raise SystemExit("protoc failed")
    return sorted(p.relative_to(out_root) for p in out_root.rglob("*_pb2*.py*"))


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--check", action="store_true", help="fail if the committed code is stale")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        files = generate(Path(tmp))
        stale = [
            f
            for f in files
            if not (OUT_ROOT / f).exists() or not filecmp.cmp(Path(tmp) / f, OUT_ROOT / f, shallow=False)
        ]
        if args.check:
            if stale:
                print("generated protobuf code is out of date: " + ", ".join(map(str, stale)))
                print("run: python tools/gen_protos.py")
                return 1
            print("generated protobuf code is up to date")
            return 0
        for f in files:
            (OUT_ROOT / f).parent.mkdir(parents=True, exist_ok=True)
            shutil.copyfile(Path(tmp) / f, OUT_ROOT / f)
            print(f"wrote {f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
