"""The careful reader: every file the app reads from a run folder or an upload goes through here.

A run folder may hold anything a crash, a bad edit or an attacker left there: a named pipe (an
ordinary open() blocks forever), a link to a device or to a file outside the store, a file of
gigabytes. `open_regular` opens without following links and without blocking, then checks with
fstat that what it opened is a plain file within a size limit; everything else is refused with an
`UnsafeFileError` that says why. JSON goes through `read_json`, which adds a size limit and a
depth-safe parse.
"""

from __future__ import annotations

import contextlib
import json
import os
import stat
from collections.abc import Iterator
from pathlib import Path

KIB, MIB, GIB = 1024, 1024**2, 1024**3
MAX_LINE_BYTES = 1 * MIB  # one metrics line: 256 dimensions x 3 lists is about 16 KiB


class UnsafeFileError(ValueError):
    """A file that is missing, not a plain file, or too large to read; the message says which."""


def _kind(mode: int) -> str:
    kinds = {
        stat.S_ISFIFO: "a named pipe",
        stat.S_ISCHR: "a character device",
        stat.S_ISBLK: "a block device",
        stat.S_ISSOCK: "a socket",
        stat.S_ISLNK: "a symbolic link",
        stat.S_ISDIR: "a folder",
    }
    return next((text for test, text in kinds.items() if test(mode)), "not a plain file")


def open_regular(path: str | os.PathLike, max_bytes: int) -> tuple[int, os.stat_result]:
    """An open file descriptor on `path` and its fstat, only for a plain file of <= max_bytes.

    lstat first (a pipe or device is refused without being opened), then O_NOFOLLOW|O_NONBLOCK
    (a link swapped in between is refused, a pipe swapped in does not block), then fstat on the
    descriptor (what was opened is what was checked). Raises FileNotFoundError or UnsafeFileError.
    """
    name = Path(path).name
    before = os.lstat(path)  # FileNotFoundError passes through: callers decide what missing means
    if not stat.S_ISREG(before.st_mode):
        raise UnsafeFileError(f"{name} is {_kind(before.st_mode)}, not a plain file")
    flags = os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | getattr(os, "O_CLOEXEC", 0)
    try:
        fd = os.open(path, flags)
    except OSError as exc:
        if exc.errno == 40:  # ELOOP: swapped for a link after the lstat
            raise UnsafeFileError(f"{name} is a symbolic link, not a plain file") from None
        raise
    try:
        info = os.fstat(fd)
        if not stat.S_ISREG(info.st_mode):
            raise UnsafeFileError(f"{name} is {_kind(info.st_mode)}, not a plain file")
        if info.st_size > max_bytes:
            raise UnsafeFileError(
                f"{name} is {info.st_size:,} bytes; the limit for this file is {max_bytes:,}"
            )
    except BaseException:
        os.close(fd)
        raise
    return fd, info


def read_bytes(path: str | os.PathLike, max_bytes: int, offset: int = 0) -> bytes:
    """The bytes of a plain file (from `offset`), refusing anything `open_regular` refuses.

    Reads at most max_bytes + 1 even if the file grew after the fstat, so the limit holds.
    """
    fd, info = open_regular(path, max_bytes)
    try:
        if offset:
            os.lseek(fd, offset, os.SEEK_SET)
        # One read of the size fstat gave (a regular file comes back whole): a large file is
        # held once, not in chunks and again joined. A file that grew since is read on, up to
        # the limit, so the limit holds.
        chunks, filled = [], 0
        left = max_bytes + 1 - offset
        size = max(0, min(info.st_size, max_bytes) - offset)
        while left > 0:
            chunk = os.read(fd, min(left, size - filled if filled < size else 4 * MIB))
            if not chunk:
                break
            chunks.append(chunk)
            filled += len(chunk)
            left -= len(chunk)
    finally:
        os.close(fd)
    if filled + offset > max_bytes:
        raise UnsafeFileError(f"{Path(path).name} grew past the limit of {max_bytes:,} bytes")
    return chunks[0] if len(chunks) == 1 else b"".join(chunks)


def read_lines(
    path: str | os.PathLike, max_bytes: int, offset: int = 0
) -> Iterator[tuple[int, bytes, bool]]:
    """(end offset, line, complete) for each line of a plain file from `offset`, streamed.

    `complete` is False only for a last line without its newline (a write cut off by a crash).
    A line longer than MAX_LINE_BYTES raises UnsafeFileError instead of filling memory.
    """
    fd, _ = open_regular(path, max_bytes)
    with contextlib.closing(os.fdopen(fd, "rb", buffering=1 * MIB)) as handle:
        handle.seek(offset)
        position = offset
        while True:
            line = handle.readline(MAX_LINE_BYTES + 1)
            if not line:
                return
            position += len(line)
            if position > max_bytes:
                raise UnsafeFileError(f"{Path(path).name} grew past {max_bytes:,} bytes")
            complete = line.endswith(b"\n")
            if not complete and len(line) > MAX_LINE_BYTES:
                raise UnsafeFileError(
                    f"{Path(path).name} has a line longer than {MAX_LINE_BYTES:,} bytes"
                )
            yield position, line, complete


def read_json(path: str | os.PathLike, max_bytes: int):
    """A JSON document from a plain file of at most max_bytes; UnsafeFileError or ValueError."""
    return parse_json(read_bytes(path, max_bytes), Path(path).name)


def parse_json(data: bytes, name: str):
    """json.loads that reports every failure (bad UTF-8, bad syntax, absurd nesting) as ValueError."""
    if not data.strip():
        raise ValueError(f"{name} is empty (a write cut off, or a file emptied by hand)")
    try:
        return json.loads(data)
    except UnicodeDecodeError:
        raise ValueError(f"{name} is unreadable: it is not UTF-8 text") from None
    except json.JSONDecodeError as exc:  # the parser's words, e.g. "Expecting value", stay out
        raise ValueError(
            f"{name} is unreadable: not valid JSON at line {exc.lineno}, column {exc.colno}"
        ) from None
    except RecursionError:
        raise ValueError(f"{name} is unreadable: nested too deeply") from None
