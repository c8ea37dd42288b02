"""The documentation: the site builds in strict mode (broken links and anchors fail) and the README's links resolve."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import pytest

from tests.helpers import REPO_ROOT

README = REPO_ROOT / "README.md"


def test_docs_site_builds_in_strict_mode(tmp_path: Path) -> None:
    pytest.importorskip("mkdocs", reason="the dev extra installs mkdocs")
    done = subprocess.run(
        [sys.executable, "-m", "mkdocs", "build", "--strict", "--site-dir", str(tmp_path / "site")],
        cwd=REPO_ROOT,
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )
    assert done.returncode == 0, done.stderr[-4000:]
    for page in ("design", "architecture", "internals", "capacity", "deployment", "operations", "node-agent"):
        assert (tmp_path / "site" / page / "index.html").exists(), page
    assert (tmp_path / "site" / "index.html").exists()


def test_every_docs_page_is_in_the_nav() -> None:
    nav = (REPO_ROOT / "mkdocs.yml").read_text()
    for page in (REPO_ROOT / "docs").glob("*.md"):
        assert f": {page.name}" in nav, f"{page.name} is not in mkdocs.yml's nav"


def test_readme_relative_links_resolve() -> None:
    text = README.read_text()
    links = re.findall(r"\]\(([^)#\s]+)(?:#[^)]*)?\)", text)
    local = [link for link in links if "://" not in link and not link.startswith("mailto:")]
    assert local, "the README links to no page of docs/"
    for link in local:
        assert (REPO_ROOT / link).exists(), f"README links to {link}, which does not exist"
    assert "../shared" not in text  # a user has no shared/ directory


def test_readme_keeps_the_two_commands_first_and_the_ci_block() -> None:
    text = README.read_text()
    blocks = re.findall(r"```bash\n(.*?)\n```", text, re.S)
    assert blocks[0].startswith("python3 -m venv .venv") and blocks[0].endswith("powerbandit demo")
    assert "[server]" in blocks[0]
    match = re.search(r"<!-- test-command -->\n```bash\n(.+?)\n```\n<!-- /test-command -->", text, re.S)
    assert match and match.group(1) == blocks[1] and "\n" not in match.group(1)
    assert text.index("<!-- test-command -->") < text.index("\n## ")  # both before any section
