"""Fixtures of ``powerbandit run``'s tests: a SQLite-only server and the files the wrapped child uses."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path

import pytest

from optimizer_server.server import EmbeddedServer
from tests.helpers import CHILD, SMALL_TABLE


@pytest.fixture
def server(tmp_path: Path) -> Iterator[EmbeddedServer]:
    """The real server over a SQLite file (the wrapper needs no PostgreSQL variant)."""
    with EmbeddedServer(f"sqlite:///{tmp_path / 'pb.db'}") as running:
        yield running


@pytest.fixture
def files(tmp_path: Path) -> dict[str, Path]:
    child = tmp_path / "child.py"
    child.write_text(CHILD)
    table = tmp_path / "table.json"
    table.write_text(json.dumps({"model": "Replay A40", "table": SMALL_TABLE}))
    return {"child": child, "table": table, "record": tmp_path / "record.json"}
