"""Every ``--max-slowdown`` flag takes a slowdown budget as the server does: a factor from 1 to 100.

A value below 1 is answered with an example that is a budget (1.1 = at most 10 % slower), not the
``e.g. 2`` of the early-stop multiple ``--beta``.
"""

from __future__ import annotations

import subprocess
import sys

import pytest

from optimizer_server.validation import MAX_SLOWDOWN as SERVER_MAX_SLOWDOWN
from powerbandit.cli.argtypes import MAX_SLOWDOWN, slowdown_factor
from tests.helpers import REPO_ROOT, all_parsers


def test_every_max_slowdown_flag_takes_a_slowdown_factor() -> None:
    found = [
        (name, action.type)
        for name, parser in all_parsers()
        for action in parser._actions
        if "--max-slowdown" in action.option_strings
    ]
    assert {name for name, _ in found} >= {"powerbandit run", "powerbandit simulate"}
    assert all(kind is slowdown_factor for _, kind in found), found


def test_the_cli_and_the_server_agree_on_the_largest_budget() -> None:
    assert MAX_SLOWDOWN == SERVER_MAX_SLOWDOWN


@pytest.mark.parametrize("good", ["1", "1.1", "100"])
def test_slowdown_factor_accepts_a_budget(good: str) -> None:
    assert slowdown_factor(good) == float(good)


@pytest.mark.parametrize(
    ("value", "message"),
    [
        ("0.9", "0.9 is below 1: a slowdown budget is a factor >= 1, e.g. 1.1 (at most 10 % slower)"),
        ("100.5", "100.5 is above 100: a slowdown budget is a factor from 1 to 100, e.g. 1.1"),
        ("fast", "'fast' is not a number (expected a slowdown factor from 1 to 100, e.g. 1.1)"),
        ("inf", "'inf' is not a finite number"),
    ],
)
def test_simulate_refuses_a_bad_budget_with_a_budget_example(value: str, message: str) -> None:
    done = subprocess.run(
        [sys.executable, "-m", "powerbandit", "simulate", "--max-slowdown", value],
        cwd=REPO_ROOT, capture_output=True, text=True, timeout=120, check=False,
    )  # fmt: skip
    assert done.returncode == 2, done.stderr
    assert "Traceback" not in done.stderr
    (error,) = [line for line in done.stderr.splitlines() if "error:" in line]
    assert f"argument --max-slowdown: {message}" in error
    assert "e.g. 2" not in done.stderr
