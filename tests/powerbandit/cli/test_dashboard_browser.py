"""The dashboard end to end in headless Chromium, against a real server holding replayed jobs.

The cluster page lists the jobs, sorts and filters them; a mouse click opens a job whose cost
chart has one point per finished run; the arrow keys step through the runs; the page refreshes
by itself when a run finishes; screenshots show the series in their colours. Skips with the
reason where no Chromium is installed (``.ci/run`` installs it).

The browser is driven over the DevTools protocol on a pipe (``--remote-debugging-pipe``), with the
standard library only: it reads commands from file descriptor 3 and writes answers and events to
descriptor 4, one JSON message per NUL-terminated chunk.
"""

from __future__ import annotations

import base64
import contextlib
import io
import json
import os
import select
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from typing import Any

import pytest
from PIL import Image

from client_sdk.client import OptimizerClient
from optimizer_server.server import EmbeddedServer
from tests.helpers import NO_DEFAULT, PINNED, SYNTH, TRACE, Dashboard, replay

CHROMIUM_NAMES = ("chromium", "chromium-browser", "google-chrome", "google-chrome-stable")


def find_chromium() -> str | None:
    """The path of a Chromium or Chrome binary, or ``None``."""
    for name in CHROMIUM_NAMES:
        path = shutil.which(name)
        if path:
            return path
    return None


_TRAMPOLINE = """
import fcntl, os, sys
commands, answers = (fcntl.fcntl(int(fd), fcntl.F_DUPFD, 10) for fd in sys.argv[1:3])
os.dup2(commands, 3)
os.dup2(answers, 4)
os.execvp(sys.argv[3], sys.argv[3:])
"""
"""Runs as ``python -c``: the browser's DevTools pipe ends onto descriptors 3 and 4, then exec."""


class Browser:
    """One headless browser with one page; every call waits at most ``timeout_s``."""

    def __init__(self, binary: str, *, width: int = 1280, height: int = 1800, timeout_s: float = 30.0) -> None:
        self.timeout_s = timeout_s
        self._profile = tempfile.TemporaryDirectory(prefix="pb-chromium-")
        to_browser_r, self._to_browser = os.pipe()
        self._from_browser, from_browser_w = os.pipe()

        # Chromium reads DevTools commands on descriptor 3 and writes on 4. A fresh Python moves our
        # pipe ends there and execs it: no code runs between fork and exec in this process (a
        # preexec_fn in a process with gRPC threads can crash the child, as it did under load).
        self.proc = subprocess.Popen(
            [sys.executable, "-c", _TRAMPOLINE, str(to_browser_r), str(from_browser_w),
             binary, "--headless", "--no-sandbox", "--disable-background-networking", "--disable-gpu",
             "--disable-dev-shm-usage", "--no-first-run", "--remote-debugging-pipe",
             f"--user-data-dir={self._profile.name}", f"--window-size={width},{height}", "about:blank"],
            stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
            close_fds=True, pass_fds=(to_browser_r, from_browser_w),
        )  # fmt: skip
        os.close(to_browser_r)
        os.close(from_browser_w)
        self._buffer = b""
        self._next_id = 0
        target = self.call("Target.createTarget", url="about:blank")["targetId"]
        self.session = self.call("Target.attachToTarget", targetId=target, flatten=True)["sessionId"]
        self.call("Page.enable", session=True)
        self.call("Runtime.enable", session=True)
        self.call("Emulation.setDeviceMetricsOverride", session=True, width=width, height=height,
                  deviceScaleFactor=1, mobile=False)  # fmt: skip

    def _read_message(self, deadline: float) -> dict[str, Any]:
        while b"\0" not in self._buffer:
            left = deadline - time.monotonic()
            if left <= 0:
                raise TimeoutError("the browser did not answer in time")
            ready, _, _ = select.select([self._from_browser], [], [], left)
            if ready:
                chunk = os.read(self._from_browser, 1 << 20)
                if not chunk:
                    raise RuntimeError("the browser closed its DevTools pipe")
                self._buffer += chunk
        message, _, self._buffer = self._buffer.partition(b"\0")
        return json.loads(message)  # type: ignore[no-any-return]

    def call(self, method: str, *, session: bool = False, **params: Any) -> dict[str, Any]:
        """Send one DevTools command and return its result (raises on a protocol error)."""
        self._next_id += 1
        message: dict[str, Any] = {"id": self._next_id, "method": method, "params": params}
        if session:
            message["sessionId"] = self.session
        os.write(self._to_browser, json.dumps(message).encode() + b"\0")
        deadline = time.monotonic() + self.timeout_s
        while True:
            answer = self._read_message(deadline)
            if answer.get("id") == self._next_id:
                if "error" in answer:
                    raise RuntimeError(f"{method}: {answer['error']}")
                return answer.get("result", {})  # type: ignore[no-any-return]

    def evaluate(self, expression: str) -> Any:
        """The value of a JavaScript expression in the page (promises awaited)."""
        result = self.call("Runtime.evaluate", session=True, expression=expression, returnByValue=True,
                           awaitPromise=True)  # fmt: skip
        if "exceptionDetails" in result:
            raise RuntimeError(f"{expression}: {result['exceptionDetails']}")
        return result["result"].get("value")

    def navigate(self, url: str) -> None:
        """Open ``url`` in the page."""
        self.call("Page.navigate", session=True, url=url)

    def wait_for(self, expression: str, timeout_s: float = 20.0) -> Any:
        """Poll until ``expression`` is truthy in the page; returns its value."""
        deadline = time.monotonic() + timeout_s
        value = None
        while time.monotonic() < deadline:
            try:
                value = self.evaluate(expression)
            except RuntimeError:  # the page is between documents
                value = None
            if value:
                return value
            time.sleep(0.1)
        raise TimeoutError(f"still false after {timeout_s} s: {expression}")

    def click(self, selector: str) -> None:
        """A real mouse click (press and release) at the middle of the element ``selector``."""
        box = self.evaluate(
            f"(() => {{ const e = document.querySelector({json.dumps(selector)}); e.scrollIntoView();"
            " const r = e.getBoundingClientRect(); return [r.x + r.width / 2, r.y + r.height / 2]; })()"
        )
        for kind in ("mousePressed", "mouseReleased"):
            self.call("Input.dispatchMouseEvent", session=True, type=kind, x=box[0], y=box[1], button="left",
                      clickCount=1)  # fmt: skip

    def key(self, key: str, code: str, key_code: int) -> None:
        """Press and release one key (e.g. ``ArrowRight``)."""
        for kind in ("keyDown", "keyUp"):
            self.call("Input.dispatchKeyEvent", session=True, type=kind, key=key, code=code,
                      windowsVirtualKeyCode=key_code)  # fmt: skip

    def screenshot(self) -> bytes:
        """A PNG of the viewport."""
        return base64.b64decode(self.call("Page.captureScreenshot", session=True, format="png")["data"])

    def close(self) -> None:
        """Close the browser and wait for it (killed if it does not exit in 10 s)."""
        with contextlib.suppress(RuntimeError, TimeoutError, OSError):
            self.call("Browser.close")
        try:
            self.proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait(timeout=10)
        os.close(self._to_browser)
        os.close(self._from_browser)
        self._profile.cleanup()


CHROMIUM = find_chromium()
pytestmark = pytest.mark.skipif(
    CHROMIUM is None, reason="no Chromium installed (apt-get install chromium): the browser test cannot run"
)
PALETTE = ["#1f77b4", "#ff7f0e", "#2ca02c", "#d62728", "#9467bd"]  # common.js PB.PALETTE, in order


@pytest.fixture(scope="module")
def site(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[EmbeddedServer, Dashboard, Browser]]:
    db = tmp_path_factory.mktemp("browser") / "b.db"
    with EmbeddedServer(f"sqlite:///{db}") as server, OptimizerClient(server.address, timeout_s=10) as client:
        replay(client, SYNTH, TRACE, 12, "Replay A")
        replay(client, SYNTH, TRACE, 3, "Replay B")
        replay(client, NO_DEFAULT, TRACE, 4, "Replay A")
        replay(client, PINNED, TRACE, 3, "Replay A", can_set=False)
        dashboard = Dashboard(server.address)
        browser = Browser(CHROMIUM or "", width=1280, height=1400)
        try:
            yield server, dashboard, browser
        finally:
            browser.close()
            dashboard.close()


def _rgb(hex_color: str) -> tuple[int, int, int]:
    return int(hex_color[1:3], 16), int(hex_color[3:5], 16), int(hex_color[5:7], 16)


def _colour_pixels(png: bytes, box: list[float], hex_color: str, tolerance: int = 12) -> int:
    """How many pixels inside ``box`` (x, y, width, height in CSS px) have ``hex_color``."""
    image = Image.open(io.BytesIO(png)).convert("RGB")
    x, y, w, h = (round(v) for v in box)
    crop = image.crop((x, y, x + w, y + h))
    want = _rgb(hex_color)
    return sum(
        count
        for count, pixel in crop.getcolors(maxcolors=w * h)  # type: ignore[union-attr]
        if all(abs(a - b) <= tolerance for a, b in zip(pixel, want, strict=True))
    )


def _box(browser: Browser, selector: str) -> list[float]:
    return browser.evaluate(  # type: ignore[no-any-return]
        f"(() => {{ const e = document.querySelector({json.dumps(selector)}); e.scrollIntoView();"
        " const r = e.getBoundingClientRect(); return [r.x, r.y, r.width, r.height]; })()"
    )


def _rows(browser: Browser) -> list[str]:
    return browser.evaluate(  # type: ignore[no-any-return]
        'Array.from(document.querySelectorAll("#jobs tbody tr"), (tr) => tr.dataset.job)'
    )


def test_cluster_page_lists_sorts_and_filters(site: tuple[EmbeddedServer, Dashboard, Browser]) -> None:
    _, dashboard, browser = site
    browser.navigate(dashboard.url + "/")
    assert browser.wait_for("document.body.dataset.loaded") == "3"
    assert _rows(browser) == [NO_DEFAULT.job_id, PINNED.job_id, SYNTH.job_id]
    cells = browser.evaluate(
        'Array.from(document.querySelectorAll("#jobs tbody tr:last-child td"), (td) => td.textContent)'
    )
    assert cells[0] == SYNTH.job_id and cells[1] == "15" and cells[-1].endswith(("%)", "partial"))
    browser.click('#jobs th[data-key="finished_runs"] button')  # most runs first
    assert _rows(browser)[0] == SYNTH.job_id
    assert browser.evaluate('document.querySelector(\'th[data-key="finished_runs"]\').getAttribute("aria-sort")') == (
        "descending"
    )
    browser.click("#prefix")
    browser.call("Input.insertText", session=True, text="team/p")
    browser.wait_for("document.querySelectorAll('#jobs tbody tr').length === 1")
    assert _rows(browser) == [PINNED.job_id]
    browser.evaluate('(() => { const i = document.getElementById("prefix"); i.value = "";'
                     ' i.dispatchEvent(new Event("input")); })()')  # fmt: skip
    browser.wait_for("document.querySelectorAll('#jobs tbody tr').length === 3")
    # energy used over time: one line per GPU model in its colour
    box = _box(browser, "#used-chart canvas")
    png = browser.screenshot()
    assert _colour_pixels(png, box, PALETTE[0]) > 200  # Replay A
    assert _colour_pixels(png, box, PALETTE[1]) > 200  # Replay B
    assert "Replay A" in browser.evaluate('document.getElementById("used-chart").textContent')


def test_click_opens_a_job_with_one_point_per_run(site: tuple[EmbeddedServer, Dashboard, Browser]) -> None:
    server, dashboard, browser = site
    browser.navigate(dashboard.url + "/")
    browser.wait_for("document.body.dataset.loaded")
    browser.click(f'#jobs tr[data-job="{SYNTH.job_id}"] a')
    assert browser.wait_for("location.pathname === '/job' && document.body.dataset.loaded") == "15"
    assert browser.evaluate("document.getElementById('title').textContent") == SYNTH.job_id
    assert browser.evaluate("document.getElementById('cost-chart').dataset.points") == "15"
    assert browser.evaluate("document.querySelectorAll('#runs tbody tr').length") == 15
    assert browser.evaluate("document.getElementById('outlook').textContent").startswith("next run on")
    assert browser.evaluate("document.querySelectorAll('#profiles canvas').length") == 2  # Replay A and B
    # the chart's batch-size series hold one point per run, at the run's cost
    drawn = browser.evaluate(
        "(() => { const u = document.getElementById('cost-chart').pbChart;"
        " return u.series.map((s, i) => [s.label, u.data[i]]); })()"
    )
    with OptimizerClient(server.address) as client:
        runs = client.get_job(SYNTH.job_id).runs
    points = [
        (x, label) for label, ys in drawn if label.startswith("batch size")
        for x, y in zip(drawn[0][1], ys, strict=True) if y is not None
    ]  # fmt: skip
    assert sorted(x for x, _ in points) == list(range(1, 16))
    for x, label in points:
        assert label.startswith(f"batch size {runs[x - 1].batch_size}")
    # screenshot: each batch size that ran is drawn in its colour inside the cost chart
    box = _box(browser, "#cost-chart canvas")
    png = browser.screenshot()
    for b in sorted({r.batch_size for r in runs}):
        colour = PALETTE[SYNTH.batch_sizes.index(b)]
        assert _colour_pixels(png, box, colour) >= 20, f"batch size {b} ({colour}) not drawn"
    posterior = _box(browser, "#posterior-chart canvas")
    assert _colour_pixels(png, posterior, PALETTE[0]) > 50  # posterior means
    # keyboard: focus the chart, step to the first run and read what it was
    browser.evaluate("document.getElementById('cost-chart').focus()")
    browser.key("ArrowRight", "ArrowRight", 39)
    first = runs[0]
    text = browser.wait_for("document.getElementById('cost-readout').textContent.startsWith('run 1')")
    readout = browser.evaluate("document.getElementById('cost-readout').textContent")
    assert text and f"batch size {first.batch_size}, power limit {first.power_limit_w:g} W" in readout


def test_job_page_refreshes_while_jobs_run(site: tuple[EmbeddedServer, Dashboard, Browser]) -> None:
    server, dashboard, browser = site
    browser.navigate(f"{dashboard.url}/job?id={SYNTH.job_id}")
    before = int(browser.wait_for("document.body.dataset.loaded"))
    with OptimizerClient(server.address, timeout_s=10) as client:
        replay(client, SYNTH, TRACE, 1, "Replay A", seed=9)
    after = before + 1
    browser.wait_for(f"document.getElementById('cost-chart').dataset.points === '{after}'", timeout_s=20)
    assert browser.evaluate("document.querySelectorAll('#runs tbody tr').length") == after
