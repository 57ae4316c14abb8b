"""Shared plumbing of the browser tests: headless Chromium through Playwright, uvicorn in a
thread, pages that collect their errors, screenshots.

Needs Playwright for Python (``pip install playwright``: the wheel bundles its driver; no
``playwright install`` — the tests launch the system Chromium, Debian's ``chromium``). Without
a browser the tests are skipped locally and FAIL when the ``CI`` environment variable is set.
Set ``ATTNKIT_SCREENSHOT_DIR`` to keep the screenshots.
"""

from __future__ import annotations

import os
import shutil
import socket
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest

CHROMIUM_ARGS = ["--headless=new", "--no-sandbox", "--disable-gpu", "--disable-quic",
                 "--no-first-run", "--disable-background-networking",
                 "--disable-component-update", "--disable-sync"]


def unavailable(reason: str) -> None:
    """Skip, or fail when CI is set (there the browser tests must run)."""
    if os.environ.get("CI"):
        pytest.fail(f"{reason} — CI is set, so the browser test must run")
    pytest.skip(reason)


def launch_browser() -> Iterator:
    """Start Playwright and the system Chromium; yields the browser (skips without one)."""
    try:
        from playwright.sync_api import sync_playwright
    except ImportError as e:
        unavailable(f"Playwright for Python is not installed ({e}); pip install playwright")
    exe = shutil.which("chromium") or shutil.which("chromium-browser")
    if exe is None:
        unavailable("no chromium on PATH (Debian: apt-get install -y chromium)")
    pw = sync_playwright().start()
    try:
        b = pw.chromium.launch(executable_path=exe, args=CHROMIUM_ARGS, timeout=30_000)
    except Exception as e:  # any launch failure means "no browser"
        pw.stop()
        unavailable(f"chromium ({exe}) did not start: {e}")
    yield b
    b.close()
    pw.stop()


@contextmanager
def serving(app) -> Iterator[str]:
    """uvicorn serving ``app`` on a free port of 127.0.0.1, in a thread; yields the base URL."""
    import uvicorn

    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    port = sock.getsockname()[1]
    srv = uvicorn.Server(uvicorn.Config(app, log_level="warning"))
    th = threading.Thread(target=srv.run, kwargs={"sockets": [sock]}, daemon=True)
    th.start()
    deadline = time.monotonic() + 20
    while not srv.started:
        if not th.is_alive() or time.monotonic() > deadline:
            pytest.fail("uvicorn did not start")
        time.sleep(0.02)
    try:
        yield f"http://127.0.0.1:{port}"
    finally:
        srv.should_exit = True
        th.join(10)
        sock.close()


def new_page(browser, errors: list[str]):
    """A page whose JS errors and console errors are appended to ``errors``."""
    page = browser.new_page(viewport={"width": 1100, "height": 820})
    page.set_default_timeout(15_000)
    page.on("pageerror", lambda e: errors.append(f"pageerror: {e}"))
    page.on("console", lambda m: errors.append(f"console: {m.text}") if m.type == "error"
            else None)
    return page


def screenshot(page, tmp_path: Path, name: str) -> Path:
    """A full-page PNG in ``tmp_path`` (and in $ATTNKIT_SCREENSHOT_DIR when set)."""
    out = page.screenshot(path=str(tmp_path / name), full_page=True)
    assert out[:8] == b"\x89PNG\r\n\x1a\n"
    extra = os.environ.get("ATTNKIT_SCREENSHOT_DIR")
    if extra:
        Path(extra).mkdir(parents=True, exist_ok=True)
        (Path(extra) / name).write_bytes(out)
    return tmp_path / name


