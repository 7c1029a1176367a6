"""Local processes: is the process that a status file names still the same, live process? And
the environment in which this project's own modules start as processes (`python -m vae...`).

A pid alone can be recycled by the kernel, so a process is named by (pid, kernel start time), read
from /proc/<pid>/stat in one place.
"""

from __future__ import annotations

import contextlib
import ctypes
import functools
import os
import random
import signal
import socket
import sys
import time
from collections.abc import Mapping
from pathlib import Path

PROJECT_ROOT = Path(__file__).resolve().parent.parent.parent


# Keep glibc from returning each step's temporaries to the OS (page faults cost ~25%).
TRAINING_ENV = {"MALLOC_TRIM_THRESHOLD_": "268435456", "MALLOC_MMAP_THRESHOLD_": "268435456"}


def project_env(env: Mapping[str, str]) -> dict[str, str]:
    """A copy of `env` in which `python -m vae...` imports this project from any folder, tuned
    for training (TRAINING_ENV)."""
    paths = [str(PROJECT_ROOT), env.get("PYTHONPATH")]
    return {**TRAINING_ENV, **env, "PYTHONPATH": os.pathsep.join(filter(None, paths))}


@functools.cache
def keep_freed_memory() -> bool:
    """Stop glibc from handing each step's freed temporaries back to the OS (once per process).

    With glibc's default thresholds the large per-step buffers are unmapped or trimmed when freed
    and page-faulted back in on the next step, which costs up to a quarter of a CPU step. Raising
    the trim and mmap thresholds to 256 MB, as TRAINING_ENV does for the processes this project
    starts, keeps them; this does the same for a process that trains in itself (the worker, the
    CLI's `train`). Skipped when the environment already sets them, and off glibc.
    """
    if not sys.platform.startswith("linux") or "MALLOC_TRIM_THRESHOLD_" in os.environ:
        return False
    try:
        mallopt = ctypes.CDLL("libc.so.6").mallopt
    except (OSError, AttributeError):
        return False
    m_trim_threshold, m_mmap_threshold = -1, -3  # from glibc's malloc.h
    return bool(mallopt(m_trim_threshold, 256 << 20)) & bool(mallopt(m_mmap_threshold, 256 << 20))


# How long a process waits for its turn to set its session's nice (see lower_priority).
AUTOGROUP_WAIT_S = 3.0


def lower_priority(increment: int) -> bool:
    """Make this process yield the CPU to interactive work (the app, the browser): nice it by
    `increment` (to at most 19).

    Where the kernel shares CPU time out by session first (sched_autogroup, on in many
    distributions and on the machine this was measured on), nice ranks a process only among
    those of its own session. A worker started in a session of its own (so that it can be
    stopped as a group) then weighs as much as the browser whatever its nice: measured here, a
    nice-0 process kept 60 % of a core beside two such workers, 97 % once their sessions were
    niced too. So a process that leads its own session sets its session's nice as well
    (/proc/self/autogroup). Returns whether it did (False: no autogroup here, or a session
    shared with other processes).

    Without CAP_SYS_ADMIN (any user but root) the kernel takes one such write per 100 ms from the
    whole machine and refuses the rest with EAGAIN: workers started together then take turns.
    """
    niceness = os.nice(max(0, min(increment, 19)))  # the kernel stops at 19
    if os.getsid(0) != os.getpid():  # others share this session: theirs to set, not ours
        return False
    deadline = time.monotonic() + AUTOGROUP_WAIT_S
    while True:
        try:
            with open("/proc/self/autogroup", "w") as handle:
                handle.write(str(niceness))
            return True
        except BlockingIOError:  # another process's turn in this 100 ms
            if time.monotonic() > deadline:
                return False
            time.sleep(random.uniform(0.02, 0.11))
        except OSError:  # no autogroup in this kernel, or not allowed
            return False


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
