"""A run's per-epoch metrics, thinned for display and kept up to date without re-reading the file.

A 10,000-epoch run with 256 latent dimensions writes a metrics.jsonl of 160 MB; no page needs all
of it on every rerun. A `Series` holds at most about DISPLAY_POINTS evenly spaced epochs plus the
latest one, and remembers how many bytes of the file it has read, so new epochs are read from the
end of what it already knows. The worker saves it beside the metrics as summary.jsonl after each
epoch: a first line with the head (signature, count, latest epoch) and a second with the thinned
rows, so a listing reads one short line per run and a chart reads the rows of the runs it draws.
A reader trusts that file only while the metrics file still has the size, inode and modification
time it records, and otherwise reads only what was appended, or all.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass, field
from pathlib import Path

from vae.execution import safe_read
from vae.execution.schema import SchemaError, check_metrics_line, check_next_epoch

DISPLAY_POINTS = 100  # epochs kept for charts: between 50 and 100, evenly spaced, plus the last
SUMMARY_VERSION = 1
MAX_METRICS_BYTES = 512 * safe_read.MIB  # a legal 10,000-epoch, 256-dimension run is ~160 MB
MAX_SUMMARY_BYTES = 16 * safe_read.MIB
MAX_HEAD_BYTES = 256 * 1024  # the summary's first line: the latest epoch and counts
RECENT = 3  # epochs whose durations the head keeps, for a running run's ETA

Signature = tuple[int, int, int]  # (inode, size, mtime in ns) of metrics.jsonl


def file_signature(info: os.stat_result) -> Signature:
    return (info.st_ino, info.st_size, info.st_mtime_ns)


@dataclass
class Series:
    """Thinned epochs of one metrics file: every `stride`-th epoch (from epoch 1) and the last."""

    latent_dim: int | None = None
    signature: Signature | None = None
    covered: int = 0  # bytes of the file read so far (up to the end of its last complete line)
    count: int = 0  # complete, valid lines read
    stride: int = 1
    rows: list[dict] | None = field(default_factory=list)  # None: head only (a listing's view)
    last: dict | None = None
    problem: str | None = None  # the first line that failed its schema; the run is then broken
    recent: list[float] = field(default_factory=list)  # the last RECENT epochs' seconds (ETA)

    def add(self, row: dict) -> None:
        self.count += 1
        self.last = row
        self.recent = [*self.recent, float(row.get("seconds") or 0.0)][-RECENT:]
        if self.rows is None:
            return
        if (row["epoch"] - 1) % self.stride == 0:
            self.rows.append(row)
        if len(self.rows) > DISPLAY_POINTS:
            self.stride *= 2
            self.rows = [r for r in self.rows if (r["epoch"] - 1) % self.stride == 0]

    def add_line(self, line: bytes) -> None:
        """Add one epoch line as the worker wrote it (ValueError, SchemaError when it is bad)."""
        self.add(check_next_epoch(check_metrics_line(json.loads(line), self.latent_dim), self.last))

    def display(self) -> list[dict]:
        """The thinned epochs in order, always ending with the latest one."""
        if self.last is None:
            return []
        assert self.rows is not None, "display() needs a series read with its rows"
        if self.rows and self.rows[-1] is self.last:
            return list(self.rows)
        return [*self.rows, self.last]

    def read_from(self, path: Path, offset: int) -> None:
        """Parse lines from `offset` to the end, checking each; stops at the first bad line."""
        for end, line, complete in safe_read.read_lines(path, MAX_METRICS_BYTES, offset):
            if not complete:
                break  # a write cut off mid-line: read again once it is whole
            number = self.count + 1
            try:
                row = check_metrics_line(
                    safe_read.parse_json(line, "metrics.jsonl"), self.latent_dim, number
                )
                check_next_epoch(row, self.last, number)
            except (SchemaError, ValueError) as exc:
                self.problem = (
                    str(exc)
                    if isinstance(exc, SchemaError)
                    else (f"metrics.jsonl line {number} is unreadable")
                )
                return
            self.add(row)
            self.covered = end

    # ---- summary.jsonl: a head line, then a rows line ----------------------------------------
    def head_dict(self) -> dict:
        return {
            "version": SUMMARY_VERSION, "latent_dim": self.latent_dim,
            "signature": list(self.signature or ()), "covered": self.covered,
            "count": self.count, "stride": self.stride, "last": self.last, "recent": self.recent,
        }  # fmt: skip

    def to_lines(self) -> bytes:
        assert self.rows is not None
        head = json.dumps(self.head_dict(), allow_nan=False, separators=(",", ":"))
        rows = json.dumps({"rows": self.rows}, allow_nan=False, separators=(",", ":"))
        return f"{head}\n{rows}\n".encode()

    @classmethod
    def from_head(cls, data, latent_dim: int | None) -> Series | None:
        """A head-only series from a head dict, or None when it is not one this code wrote for
        this config (a foreign or damaged summary is never trusted)."""
        try:
            if data.get("version") != SUMMARY_VERSION or data.get("latent_dim") != latent_dim:
                return None
            signature = tuple(int(v) for v in data["signature"]) or None  # None: no file yet
            stride, count, covered = data["stride"], data["count"], data["covered"]
            if signature is not None and len(signature) != 3:
                return None
            if not all(
                isinstance(v, int) and not isinstance(v, bool) for v in (stride, count, covered)
            ):
                return None
            if stride < 1 or count < 0 or covered < 0 or (signature is None and (count or covered)):
                return None
            last = data["last"]
            if (last is None) != (count == 0):
                return None
            if last is not None:
                last = check_metrics_line(last, latent_dim)
            recent = [float(v) for v in data.get("recent", [])][-RECENT:]  # older heads: none
            if any(v != v or v < 0 for v in recent):
                return None
        except (AttributeError, KeyError, TypeError, ValueError):
            return None
        return cls(latent_dim, signature, covered, count, stride, None, last, recent=recent)

    def with_rows(self, data) -> Series | None:
        """This head with the rows line of the same summary, checked; None if they disagree."""
        try:
            rows = [check_metrics_line(r, self.latent_dim) for r in data["rows"]]
        except (KeyError, TypeError, ValueError):
            return None
        if len(rows) > DISPLAY_POINTS + 1 or any((r["epoch"] - 1) % self.stride for r in rows):
            return None
        series = Series(self.latent_dim, self.signature, self.covered, self.count, self.stride,
                        rows, self.last, recent=list(self.recent))  # fmt: skip
        if rows and self.last is not None and rows[-1]["epoch"] == self.last["epoch"]:
            series.rows[-1] = series.last  # display() relies on identity for the shared row
        return series


def load_series(
    metrics_path: Path,
    summary_path: Path,
    latent_dim: int | None,
    known: Series | None,
    rows: bool = True,
) -> Series:
    """The series of a metrics file (its thinned rows too when `rows`), reusing `known` or
    summary.jsonl where they still describe the file (reading only the appended lines), else
    reading the whole file once."""
    try:
        info = os.lstat(metrics_path)
    except FileNotFoundError:
        return Series(latent_dim, rows=[] if rows else None)
    signature = file_signature(info)
    candidates = (known, lambda: _read_summary(summary_path, latent_dim, rows))
    for candidate in (c() if callable(c) else c for c in candidates):  # summary only if needed
        if candidate is None or candidate.problem or candidate.latent_dim != latent_dim:
            continue
        if rows and candidate.rows is None:
            continue
        if candidate.signature == signature:
            return candidate
        same_file = candidate.signature and candidate.signature[0] == signature[0]
        if same_file and candidate.covered <= signature[1]:
            candidate.read_from(metrics_path, candidate.covered)  # only the new epochs
            candidate.signature = signature
            if candidate.problem is None:
                return candidate
            break  # the file changed in other ways too: read it all, for the true first problem
    series = Series(latent_dim, rows=[] if rows else None)
    series.read_from(metrics_path, 0)
    series.signature = signature
    return series


def _read_summary(path: Path, latent_dim: int | None, rows: bool) -> Series | None:
    """The summary's head (one short line), and its rows line when asked; None when missing,
    damaged or foreign: the metrics file decides then."""
    try:
        lines = safe_read.read_lines(path, MAX_SUMMARY_BYTES)
        _, head_line, complete = next(lines)
        if not complete or len(head_line) > MAX_HEAD_BYTES:
            return None
        head = Series.from_head(safe_read.parse_json(head_line, path.name), latent_dim)
        if head is None or not rows:
            return head
        _, rows_line, complete = next(lines)
        return head.with_rows(safe_read.parse_json(rows_line, path.name)) if complete else None
    except (OSError, ValueError, StopIteration):
        return None
