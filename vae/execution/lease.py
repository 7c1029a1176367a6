"""One owner per run: the process that trains a run holds its lease.

The lease is an OS lock (flock) on `<run>/lease`, taken without waiting and held until the run's
outcome is written; the kernel drops it when the holder dies, however it dies. So any process can
tell whether some live process owns a run (`is_held`), and no two processes ever train one run:
a second worker cannot take the lease and leaves the run alone. The holder also touches the file
every few seconds while it trains (its heartbeat): a held lease whose file has not been touched
for a while means a live but stuck process (`heartbeat_age`), which the pages show as stalled.
"""

from __future__ import annotations

import contextlib
import fcntl
import os
import time
from pathlib import Path

HEARTBEAT_S = 2.0  # how often the holder touches the lease file, at most
STALL_AFTER_S = 60.0  # a held lease untouched this long: its holder is stalled


class Lease:
    """An exclusive hold on one run folder's lease file, taken by `acquire`."""

    def __init__(self, run_dir: Path):
        self.path = Path(run_dir) / "lease"
        self._fd: int | None = None
        self._beat_at = 0.0

    def acquire(self) -> bool:
        """Take the lease now, or return False when another process holds it."""
        fd = os.open(self.path, os.O_RDWR | os.O_CREAT | os.O_NOFOLLOW, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            os.close(fd)
            return False
        self._fd = fd
        self.beat(force=True)
        return True

    def beat(self, force: bool = False) -> None:
        """Touch the lease file (rate-limited): the holder is alive and making progress."""
        now = time.monotonic()
        if self._fd is not None and (force or now - self._beat_at >= HEARTBEAT_S):
            self._beat_at = now
            with contextlib.suppress(OSError):
                os.utime(self._fd)

    def release(self) -> None:
        if self._fd is not None:
            with contextlib.suppress(OSError):
                fcntl.flock(self._fd, fcntl.LOCK_UN)
            os.close(self._fd)
            self._fd = None


def is_held(run_dir: Path) -> bool:
    """Whether a live process holds this run's lease (a missing file: nobody ever took it)."""
    try:
        fd = os.open(Path(run_dir) / "lease", os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK)
    except OSError:
        return False
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        return True
    except OSError:
        return False
    else:
        fcntl.flock(fd, fcntl.LOCK_UN)
        return False
    finally:
        os.close(fd)


CLOCK_SLACK_S = 5.0  # a heartbeat this far in the future is not trusted


def heartbeat_age(run_dir: Path) -> float | None:
    """Seconds since the lease holder last touched the lease file; None if there is none."""
    try:
        info = os.stat(Path(run_dir) / "lease", follow_symlinks=False)
    except OSError:
        return None
    now = time.time()
    if info.st_mtime > now + CLOCK_SLACK_S:
        # Dated in the future (a clock set back, a hand-edited time): a live holder would have
        # touched it since. The inode's change time, which no one can set, says when that was.
        return max(0.0, now - info.st_ctime)
    return max(0.0, now - info.st_mtime)


def stalled_for(run_dir: Path) -> float | None:
    """Seconds since the last sign of life of a live but silent lease holder, else None."""
    age = heartbeat_age(run_dir)
    if age is None or age < STALL_AFTER_S or not is_held(run_dir):
        return None
    return age
