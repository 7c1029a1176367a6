"""Fixtures for browser tests: a real `streamlit run app.py` on a temporary store, and Chromium.

The server runs in its own session so it can be stopped as a group; the training workers it
starts run in sessions of their own, so the finalizer also stops every worker process that was
started on this test's store (found by the store path on their command line) and marks nothing
else. Chromium is Debian's (/usr/bin/chromium): Playwright's own browser download is not used.
"""

from __future__ import annotations

import contextlib
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from dataclasses import dataclass
from pathlib import Path

import pytest

REPO_ROOT = Path(__file__).resolve().parents[2]
CHROMIUM = os.environ.get("E2E_CHROMIUM", "/usr/bin/chromium")
CHROMIUM_ARGS = [
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--no-first-run",
]
HEALTH_TIMEOUT_S = 60.0


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def wait_healthy(url: str, process: subprocess.Popen, log: Path, timeout_s: float) -> None:
    """Poll GET /_stcore/health until it answers `ok`; fail with the server log otherwise."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise RuntimeError(f"streamlit exited with {process.returncode}:\n{log.read_text()}")
        with (
            contextlib.suppress(OSError),
            urllib.request.urlopen(f"{url}/_stcore/health", timeout=2) as response,
        ):
            if response.read().decode().strip() == "ok":
                return
        time.sleep(0.25)
    raise TimeoutError(f"streamlit was not healthy after {timeout_s:.0f} s:\n{log.read_text()}")


def worker_pids(store_root: Path) -> list[int]:
    """Live `python -m vae.worker --store <store_root>` processes (this test's workers only)."""
    wanted = str(store_root).encode()
    pids = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            argv = (entry / "cmdline").read_bytes().split(b"\0")
        except OSError:
            continue
        if b"vae.worker" in argv and wanted in argv:
            pids.append(int(entry.name))
    return pids


def stop_process_group(pid: int, grace_s: float) -> None:
    """SIGTERM the group led by `pid`, then SIGKILL whatever is still there after `grace_s`."""
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(pid, signal.SIGTERM)
    deadline = time.monotonic() + grace_s
    while time.monotonic() < deadline:
        try:
            os.killpg(pid, 0)
        except (ProcessLookupError, PermissionError):
            return
        time.sleep(0.1)
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(pid, signal.SIGKILL)


def stop_workers(store_root: Path) -> None:
    """Stop what still trains on this store: every run whose status.json says `running` (by the
    pid written there, once /proc confirms it is a worker on this store), and any other worker
    process started on it (one that had not written its pid yet)."""
    from vae.store import RunStore, StoreError

    live = set(worker_pids(store_root))
    pids = set()
    if store_root.is_dir():
        store = RunStore(store_root)
        for record in store.list_runs(with_metrics=False):
            with contextlib.suppress(StoreError):
                status = store.read_status(record.run_id)
                if status.get("state") == "running" and status.get("pid") in live:
                    pids.add(status["pid"])
    for pid in sorted(pids) + sorted(live - pids):
        stop_process_group(pid, grace_s=10.0)  # workers lead their own session: pid == pgid


@dataclass
class AppServer:
    url: str
    store_root: Path
    process: subprocess.Popen
    log: Path


@pytest.fixture
def app_server(tmp_path):
    """`streamlit run app.py` on a free port with VAE_STORE=<tmp_path>/runs; stopped afterwards."""
    store_root = tmp_path / "runs"
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    log = tmp_path / "streamlit.log"
    env = dict(os.environ)
    env.update(
        VAE_STORE=str(store_root),
        VAE_MAX_JOBS="3",  # the three runs of the sweep train side by side, one thread each
        OMP_NUM_THREADS="1",
        PYTHONUNBUFFERED="1",
    )
    command = [
        sys.executable, "-m", "streamlit", "run", "app.py",
        "--server.headless", "true",
        "--server.address", "127.0.0.1",
        "--server.port", str(port),
        "--server.fileWatcherType", "none",
        "--browser.gatherUsageStats", "false",
    ]  # fmt: skip
    with open(log, "wb") as handle:
        process = subprocess.Popen(
            command, cwd=REPO_ROOT, env=env, stdin=subprocess.DEVNULL,
            stdout=handle, stderr=subprocess.STDOUT, start_new_session=True,
        )  # fmt: skip
    try:
        wait_healthy(url, process, log, HEALTH_TIMEOUT_S)
        yield AppServer(url, store_root, process, log)
    finally:
        stop_process_group(process.pid, grace_s=15.0)
        with contextlib.suppress(subprocess.TimeoutExpired):
            process.wait(timeout=5)
        stop_workers(store_root)


@pytest.fixture
def browser():
    if not Path(CHROMIUM).exists():
        pytest.skip(f"no Chromium at {CHROMIUM} (set E2E_CHROMIUM)")
    sync_api = pytest.importorskip("playwright.sync_api")
    with sync_api.sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
        try:
            yield browser
        finally:
            browser.close()


@pytest.fixture
def page(browser, tmp_path, request):
    """A 1400×1000 page with downloads enabled; on failure a screenshot lands in tmp_path."""
    context = browser.new_context(viewport={"width": 1400, "height": 1000}, accept_downloads=True)
    context.set_default_timeout(30_000)
    page = context.new_page()
    yield page
    report = getattr(request.node, "rep_call", None)
    if report is not None and report.failed:
        with contextlib.suppress(Exception):
            shot = tmp_path / "failure.png"
            page.screenshot(path=str(shot), full_page=True)
            print(f"screenshot of the failing page: {shot}")
    context.close()


@pytest.hookimpl(wrapper=True, tryfirst=True)
def pytest_runtest_makereport(item, call):
    report = yield
    if report.when == "call":
        item.rep_call = report
    return report
