"""Careful opens for the files at the store root (and the per-machine layout cache).

The run folders' files go through `safe_read`; the few files beside them (`.scheduler.lock`,
`.changes`, the index) are opened here. Anything may sit at those names: a named pipe (a plain
open() for writing blocks until a reader comes, for good), a device, a link, a folder. So a root
file is opened without following links and without blocking, checked with fstat, and when it is
not a plain file it is reported (once per process) and replaced by a fresh, empty one: never
trusted, never waited on.
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import os
import stat
import sys
import threading
import time
from pathlib import Path

from vae.execution.safe_read import _kind

_FLAGS = os.O_CREAT | os.O_NOFOLLOW | os.O_NONBLOCK | getattr(os, "O_CLOEXEC", 0)
LOG_MAX_BYTES = 64 * 1024**2  # the workers' shared log: started afresh beyond this
_reported: set[str] = set()
_problems: list[tuple[Path, str]] = []  # (the folder it was found in, what was wrong)
_lock = threading.Lock()


def report(path: str | os.PathLike, problem: str) -> None:
    """Say once per process (on stderr, and in `problems()` for a page) what was wrong."""
    text = f"{Path(path).name} in {Path(path).parent}: {problem}"
    with _lock:
        if text in _reported:
            return
        _reported.add(text)
        _problems.append((Path(path).parent, text))
    print(f"vae: {text}", file=sys.stderr, flush=True)


def problems(*folders: str | os.PathLike) -> list[str]:
    """What this process found damaged and replaced in these folders (a store root, the layout
    cache), oldest first: a page shows its own store's, not every store the process has seen."""
    wanted = {Path(f) for f in folders}
    with _lock:
        return [text for folder, text in _problems if folder in wanted]


def _set_aside(path: Path) -> None:
    """Move a damaged entry out of the way: a file or link is removed, a folder renamed."""
    try:
        info = os.lstat(path)
    except FileNotFoundError:
        return
    if stat.S_ISDIR(info.st_mode):
        os.replace(path, path.with_name(f"{path.name}.refused-{time.time_ns():x}"))
    else:
        os.unlink(path)


def open_root_file(path: str | os.PathLike, max_bytes: int = 1024**2, append: bool = False) -> int:
    """A read-only (or, with `append`, append-only) descriptor on the plain file `path`, created
    empty when missing.

    A named pipe, device, socket, link or folder there, or a file over `max_bytes`, is reported
    and replaced by an empty file; the open never blocks. OSError only when the folder itself
    cannot be written (e.g. a read-only store).
    """
    path = Path(path)
    for _attempt in range(3):
        try:
            fd = os.open(
                path, _FLAGS | (os.O_WRONLY | os.O_APPEND if append else os.O_RDONLY), 0o644
            )
        except OSError as exc:
            if exc.errno not in (errno.ELOOP, errno.ENXIO, errno.EISDIR, errno.EWOULDBLOCK):
                raise
            report(path, "is a link or special file, not a plain file; replaced")
            _set_aside(path)
            continue
        info = os.fstat(fd)
        if stat.S_ISREG(info.st_mode) and info.st_size <= max_bytes:
            return fd
        os.close(fd)
        if stat.S_ISREG(info.st_mode):
            problem = f"is {info.st_size:,} bytes (at most {max_bytes:,} expected); replaced"
        else:
            problem = f"is {_kind(info.st_mode)}, not a plain file; replaced"
        report(path, problem)
        _set_aside(path)
    raise OSError(errno.EIO, f"{path.name} could not be replaced by a plain file")


def touch_root_file(path: str | os.PathLike) -> None:
    """Set the file's modification time to now (creating or replacing it as above)."""
    fd = open_root_file(path)
    try:
        os.utime(fd)
    finally:
        os.close(fd)


@contextlib.contextmanager
def root_file_lock(path: str | os.PathLike, blocking: bool = True):
    """An flock on a root lock file; yields True when held (False: another holds it, only
    with blocking=False)."""
    fd = open_root_file(path)
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | (0 if blocking else fcntl.LOCK_NB))
        except BlockingIOError:
            yield False
            return
        try:
            yield True
        finally:
            fcntl.flock(fd, fcntl.LOCK_UN)
    finally:
        os.close(fd)
