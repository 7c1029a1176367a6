"""Local processes: is the process that a status file names still the same, live process? And
the environment in which this project's own modules start as processes (`python -m vae...`).

A pid alone can be recycled by the kernel, so a process is named by (pid, kernel start time), read
from /proc/<pid>/stat in one place.
"""

from __future__ import annotations

import contextlib
import os
import signal
import socket
from collections.abc import Mapping
from pathlib import Path

PROJECT_ROOT = Path(__file__).resolve().parent.parent.parent


def project_env(env: Mapping[str, str]) -> dict[str, str]:
    """A copy of `env` in which `python -m vae...` imports this project from any folder."""
    paths = [str(PROJECT_ROOT), env.get("PYTHONPATH")]
    return {**env, "PYTHONPATH": os.pathsep.join(filter(None, paths))}


def _stat_fields(pid: int) -> list[str] | None:
    """The fields of /proc/<pid>/stat after the command name, or None if there is no such process."""
    try:
        with open(f"/proc/{pid}/stat") as handle:
            return handle.read().rsplit(")", 1)[1].split()
    except (OSError, IndexError):
        return None


def process_start_time(pid: int) -> str | None:
    """Kernel start time of a process (guards against a recycled pid); None where unknown."""
    fields = _stat_fields(pid)
    return fields[19] if fields and len(fields) > 19 else None


def is_running(pid: int, start_time: str | None) -> bool:
    """True while `pid` is that same process and has not ended (a zombie has ended)."""
    fields = _stat_fields(pid)
    if not fields or fields[0] == "Z" or len(fields) <= 19:
        return False
    return start_time is None or fields[19] == start_time


def this_host() -> str:
    return socket.gethostname()


def local_ref(pid: int | None = None) -> dict:
    """The job ref (vae.execution.backend) of a local process: host, pid and kernel start time."""
    pid = pid or os.getpid()
    return {
        "backend": "local",
        "host": this_host(),
        "pid": pid,
        "pid_start": process_start_time(pid),
    }


def signal_process(pid: int, sig: int, group: bool = False) -> None:
    """Send `sig` to a process (or, with group=True, to the session it leads); ignore if gone."""
    with contextlib.suppress(ProcessLookupError, PermissionError):
        if group:
            try:
                os.killpg(pid, sig)
                return
            except (ProcessLookupError, PermissionError):
                pass
        os.kill(pid, sig)


def describe_signal(code: int | None) -> str:
    """A worker's exit code as words."""
    if code is not None and code < 0:
        return f"the worker process was killed by signal {-code} ({signal.Signals(-code).name})"
    return f"the worker process exited with code {code} without finishing the run"
