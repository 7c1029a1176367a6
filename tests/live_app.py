"""A real `streamlit run app.py` on a temporary store, for browser tests and the screenshot script.

The server runs in a session of its own, so it can be killed alone (a crash) or stopped as a
group, and it is sent SIGTERM when the process that started it ends however it ends (a killed
pytest would otherwise leave a server behind); the training workers it starts lead sessions of
their own and are found by the store path on their command line. Chromium is Debian's
(/usr/bin/chromium): Playwright's download is not used.
"""

from __future__ import annotations

import contextlib
import ctypes
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parent.parent
CHROMIUM = os.environ.get("E2E_CHROMIUM", "/usr/bin/chromium")
CHROMIUM_ARGS = [
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--no-first-run",
]
LIBC = ctypes.CDLL(None, use_errno=True)  # loaded here: a forked child must not load libraries
PR_SET_PDEATHSIG = 1  # from <linux/prctl.h>


def _end_with_the_starter() -> None:
    """In the server's process before exec: SIGTERM when the starting thread ends."""
    LIBC.prctl(PR_SET_PDEATHSIG, signal.SIGTERM, 0, 0, 0)


IDLE = "[data-testid='stApp'][data-test-script-state='notRunning']"  # a script run has ended


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def alive(pid: int) -> bool:
    """True for a running process (a zombie or a missing pid is not alive)."""
    try:
        with open(f"/proc/{pid}/stat") as handle:
            return handle.read().rsplit(")", 1)[1].split()[0] != "Z"
    except (OSError, IndexError):
        return False


class LiveApp:
    """`python -m streamlit run app.py` on a free loopback port with VAE_STORE=store_root."""

    def __init__(
        self, store_root: Path, log: Path, max_jobs: int = 2, extra_flags: tuple[str, ...] = ()
    ):
        self.store_root = Path(store_root)
        self.log = Path(log)
        port = free_port()
        self.url = f"http://127.0.0.1:{port}"
        env = {
            **os.environ,
            "VAE_STORE": str(store_root),
            "VAE_MAX_JOBS": str(max_jobs),
            "OMP_NUM_THREADS": "1",
            "PYTHONUNBUFFERED": "1",
        }
        command = [
            sys.executable, "-m", "streamlit", "run", "app.py",
            "--server.headless", "true",
            "--server.address", "127.0.0.1",
            "--server.port", str(port),
            "--server.fileWatcherType", "none",
            "--browser.gatherUsageStats", "false",
            *extra_flags,
        ]  # fmt: skip
        with open(self.log, "ab") as handle:
            self.process = subprocess.Popen(
                command, cwd=REPO_ROOT, env=env, stdin=subprocess.DEVNULL,
                stdout=handle, stderr=subprocess.STDOUT, start_new_session=True,
                preexec_fn=_end_with_the_starter,
            )  # fmt: skip
        try:
            self._wait_healthy(timeout_s=90)
        except BaseException:
            self.stop()
            raise

    def _wait_healthy(self, timeout_s: float) -> None:
        """Poll GET /_stcore/health until it answers `ok`; fail with the server log otherwise."""
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise RuntimeError(f"streamlit exited:\n{self.log.read_text()}")
            health = f"{self.url}/_stcore/health"
            with contextlib.suppress(OSError), urllib.request.urlopen(health, timeout=2) as answer:
                if answer.read().strip() == b"ok":
                    return
            time.sleep(0.25)
        raise TimeoutError(
            f"streamlit not healthy after {timeout_s:.0f} s:\n{self.log.read_text()}"
        )

    def kill(self) -> None:
        """SIGKILL the server process only, as a crash would (its workers live on)."""
        with contextlib.suppress(ProcessLookupError):
            os.kill(self.process.pid, signal.SIGKILL)
        self.process.wait(timeout=30)

    def stop(self) -> None:
        """Stop the server's process group: SIGTERM, then SIGKILL after a grace period."""
        stop_process_group(self.process.pid, grace_s=15.0)
        with contextlib.suppress(subprocess.TimeoutExpired):
            self.process.wait(timeout=5)


def worker_pids(store_root: Path, run_id: str | None = None) -> list[int]:
    """Live `python -m vae.execution.worker --store <store_root>` processes (optionally: training run_id)."""
    found = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit() or not alive(int(entry.name)):
            continue
        with contextlib.suppress(OSError):
            argv = (entry / "cmdline").read_bytes().split(b"\0")
            ours = b"vae.execution.worker" in argv and str(store_root).encode() in argv
            if ours and (run_id is None or run_id.encode() in argv):
                found.append(int(entry.name))
    return found


def stop_process_group(pid: int, grace_s: float) -> None:
    """SIGTERM the group led by `pid` (SIGCONT too, in case it was stopped), then SIGKILL."""
    for sig in (signal.SIGCONT, signal.SIGTERM):
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(pid, sig)
    deadline = time.monotonic() + grace_s
    while time.monotonic() < deadline:
        try:
            os.killpg(pid, 0)
        except (ProcessLookupError, PermissionError):
            return
        time.sleep(0.1)
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(pid, signal.SIGKILL)


def stop_workers(store_root: Path, grace_s: float = 10.0) -> None:
    """Stop every worker still training on this store (they lead their own session)."""
    for pid in worker_pids(store_root):
        stop_process_group(pid, grace_s)


def launch_chromium(playwright):
    """Debian's Chromium under Playwright; a missing browser fails the test (CI installs it)."""
    import pytest

    if not Path(CHROMIUM).exists():
        pytest.fail(f"no Chromium at {CHROMIUM}: apt-get install -y chromium (or set E2E_CHROMIUM)")
    return playwright.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
