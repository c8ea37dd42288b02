"""The import structure holds: no cycles between modules, and the layering rules of
``tools/import_graph.py`` (the domain model standard library only, nothing below the application
importing it, pure policies)."""

from __future__ import annotations

import importlib.util
import sys

from tests.helpers import REPO_ROOT


def _import_graph():  # type: ignore[no-untyped-def]
    spec = importlib.util.spec_from_file_location("import_graph", REPO_ROOT / "tools" / "import_graph.py")
    assert spec and spec.loader
    module = importlib.util.module_from_spec(spec)
    sys.modules["import_graph"] = module  # dataclasses resolve their module by name
    spec.loader.exec_module(module)
    return module


def test_no_import_cycles_between_modules() -> None:
    graph = _import_graph()
    edges, _ = graph.import_graph()
    assert graph.cycles(edges) == []


def test_no_layering_rule_is_broken() -> None:
    graph = _import_graph()
    edges, raw = graph.import_graph()
    assert graph.broken_rules(edges, raw) == []


def test_the_checker_finds_a_cycle_and_a_broken_rule() -> None:
    """The checks can fail: a two-module cycle and an SDK import of the application are reported."""
    graph = _import_graph()
    edges = {"client_sdk.a": {"client_sdk.b"}, "client_sdk.b": {"client_sdk.a"}, "client_sdk.c": set()}
    assert graph.cycles(edges) == [["client_sdk.a", "client_sdk.b"]]
    raw = {"client_sdk.a": {"powerbandit.cli.main"}, "client_sdk.b": set(), "client_sdk.c": set()}
    assert graph.broken_rules(edges, raw) == [
        "client_sdk.a imports powerbandit.cli.main: the SDK never imports the application"
    ]
