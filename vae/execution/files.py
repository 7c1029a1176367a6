"""File-system primitives of the run store: atomic writes, appends, leftovers of killed writers.

Whole files are written atomically (temp file in the same folder, fsync, os.replace), so a crash
leaves the previous version readable; a temp file names its writer's pid (and machine), and
`remove_leftovers` removes those whose writer is gone. Nothing here knows what a run is: the run
folder (vae.execution.run_folder), the listing's index and the layout cache all write through it.
"""

from __future__ import annotations

import contextlib
import errno
import json
import os
import re
import shutil
import socket
import stat
import tempfile
import time
import zlib
from pathlib import Path

ORPHAN_AGE_S = 3600.0  # temp files without a writer pid are removed after this long

# Temp files of atomic writes: .<name>.<pid>@<host>-<random>.tmp, where <host> is a hash of the
# machine's name (a store on a shared disk may have writers on several machines, and a pid means
# something only on its own). Older code wrote .<name>.<random>.tmp.
HOST_TAG = f"{zlib.crc32(socket.gethostname().encode()):08x}"
TEMP_PATTERN = re.compile(
    r"^\.(?P<name>[\w.]+?)\.(?:(?P<pid>\d+)@(?P<host>[0-9a-f]{8})-)?\w+\.tmp$"
)
NEW_RUN_PATTERN = re.compile(
    r"^\.new-(?:(?P<pid>\d+)@(?P<host>[0-9a-f]{8})-)?\d{8}-\d{6}-[0-9a-f]{6}-"
)


class StoreError(RuntimeError):
    """The store cannot do what was asked (unknown run, disk full, read-only...)."""


def explain_os_error(exc: OSError, what: str) -> StoreError:
    reasons = {
        errno.ENOSPC: "the disk is full",
        errno.EROFS: "the run store is on a read-only file system",
        errno.EACCES: "permission denied",
        errno.EDQUOT: "the disk quota is exceeded",
    }
    reason = reasons.get(exc.errno, exc.strerror or str(exc))
    return StoreError(f"could not {what}: {reason}")


def atomic_write_bytes(path: Path, data: bytes) -> None:
    """Write `data` to `path` so that readers see the old file or the new one, never a mix."""
    prefix = f".{path.name}.{os.getpid()}@{HOST_TAG}-"
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=prefix, suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as handle:
            handle.write(data)
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise
    fsync_dir(path.parent)


def fsync_dir(path: Path) -> None:
    with contextlib.suppress(OSError):
        fd = os.open(path, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)


def overwrite_in_place(path: Path, data: bytes) -> bool:
    """Last resort on a full disk: rewrite an existing small file inside the blocks it already
    holds, which needs no free space. Not atomic (a crash mid-write leaves a file the listing
    reports as broken), so it is only used where the alternative is no record at all."""
    try:
        fd = os.open(path, os.O_WRONLY | os.O_NOFOLLOW | os.O_NONBLOCK)
    except OSError:
        return False
    try:
        info = os.fstat(fd)
        if not stat.S_ISREG(info.st_mode) or info.st_blocks * 512 < len(data):
            return False  # growing the file would need space the disk does not have
        view = memoryview(data)
        while view:
            view = view[os.write(fd, view) :]
        os.ftruncate(fd, len(data))
        os.fsync(fd)
        return True
    except OSError:
        return False
    finally:
        os.close(fd)


def atomic_write_json(path: Path, data) -> None:
    atomic_write_bytes(path, json.dumps(data, indent=1, allow_nan=False).encode())


def pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except (PermissionError, OverflowError):
        return True
    return True


def _writer_gone(name: str, pattern: re.Pattern, mtime: float) -> bool:
    """True for a temp entry whose writing process has ended: a pid of this machine that no
    longer runs; for entries of other machines or without a pid, older than an hour."""
    found = pattern.match(name)
    if found is None:
        return False
    pid = found.group("pid")
    if pid is None or found.group("host") != HOST_TAG:
        return time.time() - mtime > ORPHAN_AGE_S
    return int(pid) != os.getpid() and not pid_alive(int(pid))


def remove_leftovers(folder: Path) -> list[str]:
    """Delete temp files in a run folder whose writer was killed mid-write; return their names.

    Only files of processes that no longer exist (or, for names without a pid, older than an
    hour) go: a temp file another live process is writing right now stays.
    """
    removed = []
    with contextlib.suppress(OSError), os.scandir(folder) as entries:
        for entry in entries:
            if not entry.name.endswith(".tmp"):
                continue
            with contextlib.suppress(OSError):
                info = entry.stat(follow_symlinks=False)
                if stat.S_ISREG(info.st_mode) and _writer_gone(
                    entry.name, TEMP_PATTERN, info.st_mtime
                ):
                    os.unlink(entry.path)
                    removed.append(entry.name)
    return removed


def remove_root_leftovers(root: Path) -> None:
    """Half-created run folders of killed processes and half-deleted ones."""
    with contextlib.suppress(OSError), os.scandir(root) as entries:
        for entry in entries:
            with contextlib.suppress(OSError):
                if not entry.is_dir(follow_symlinks=False):
                    continue
                gone = entry.name.startswith(".deleted-") or _writer_gone(
                    entry.name, NEW_RUN_PATTERN, entry.stat(follow_symlinks=False).st_mtime
                )
                if gone:
                    shutil.rmtree(entry.path, ignore_errors=True)


class NotPlainFileError(OSError):
    """The path to append to is not a plain file (a link, a pipe, a device)."""


def append_bytes(path: Path, data: bytes) -> os.stat_result:
    """Append `data` and fsync; never through a link, never blocked by a pipe. Returns the file's
    stat after the write, so a caller can tell whether it was the only writer."""
    flags = os.O_WRONLY | os.O_APPEND | os.O_CREAT | os.O_NOFOLLOW | os.O_NONBLOCK
    try:
        fd = os.open(path, flags, 0o644)
    except OSError as exc:
        if exc.errno in (errno.ELOOP, errno.ENXIO):
            raise NotPlainFileError(exc.errno, "not a plain file") from None
        raise
    with os.fdopen(fd, "ab") as handle:
        if not stat.S_ISREG(os.fstat(fd).st_mode):
            raise NotPlainFileError(errno.EINVAL, "not a plain file")
        handle.write(data)
        handle.flush()
        os.fsync(handle.fileno())
        return os.fstat(handle.fileno())


def mtime_ns(path: Path) -> int | None:
    try:
        return os.stat(path).st_mtime_ns
    except OSError:
        return None
