"""Build hook: put the ``.proto`` contract into the wheel next to its generated code.

``protos/powerbandit/v1/optimizer.proto`` is installed as ``powerbandit/v1/optimizer.proto``, so
site-packages is a protoc include root (``import "powerbandit/v1/optimizer.proto";``). Everything
else is declared in ``pyproject.toml``.
"""

from __future__ import annotations

from pathlib import Path

from setuptools import setup
from setuptools.command.build_py import build_py

PROTO_ROOT = Path(__file__).resolve().parent / "protos"


class BuildPyWithProtos(build_py):
    """``build_py`` that also copies every ``protos/**/*.proto`` into the build tree."""

    def run(self) -> None:
        """Build the packages, then copy the .proto files beside their ``*_pb2.py``."""
        super().run()
        for proto in sorted(PROTO_ROOT.rglob("*.proto")):
            target = Path(self.build_lib) / proto.relative_to(PROTO_ROOT)
            self.mkpath(str(target.parent))
            self.copy_file(str(proto), str(target))


setup(cmdclass={"build_py": BuildPyWithProtos})
