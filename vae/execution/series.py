"""A run's per-epoch metrics, thinned for display and kept up to date without re-reading the file.

A 10,000-epoch run with 256 latent dimensions writes a metrics.jsonl of 160 MB; no page needs all
of it on every rerun. A `Series` holds at most about DISPLAY_POINTS evenly spaced epochs plus the
latest one, and remembers how many bytes of the file it has read, so new epochs are read from the
end of what it already knows. The worker saves it beside the metrics as summary.json after each
epoch (`to_json`); a reader trusts that file only while the metrics file still has the size, inode
and modification time the summary records, and otherwise reads only what was appended, or all.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass, field
from pathlib import Path

from vae.execution import safe_read
from vae.execution.schema import SchemaError, check_metrics_line

DISPLAY_POINTS = 100  # epochs kept for charts: between 50 and 100, evenly spaced, plus the last
SUMMARY_VERSION = 1
MAX_METRICS_BYTES = 512 * safe_read.MIB  # a legal 10,000-epoch, 256-dimension run is ~160 MB
MAX_SUMMARY_BYTES = 16 * safe_read.MIB

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
    rows: list[dict] = field(default_factory=list)
    last: dict | None = None
    problem: str | None = None  # the first line that failed its schema; the run is then broken

    def add(self, row: dict) -> None:
        self.count += 1
        self.last = row
        if (row["epoch"] - 1) % self.stride == 0:
            self.rows.append(row)
        if len(self.rows) > DISPLAY_POINTS:
            self.stride *= 2
            self.rows = [r for r in self.rows if (r["epoch"] - 1) % self.stride == 0]

    def display(self) -> list[dict]:
        """The thinned epochs in order, always ending with the latest one."""
        if self.last is None:
            return []
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
            except (SchemaError, ValueError) as exc:
                self.problem = (
                    str(exc)
                    if isinstance(exc, SchemaError)
                    else (f"metrics.jsonl line {number} is unreadable")
                )
                return
            self.add(row)
            self.covered = end

    # ---- summary.json ------------------------------------------------------------------------
    def to_json(self) -> bytes:
        return json.dumps(self.to_dict(), allow_nan=False, separators=(",", ":")).encode()

    def to_dict(self) -> dict:
        return {
            "version": SUMMARY_VERSION, "latent_dim": self.latent_dim,
            "signature": list(self.signature or ()), "covered": self.covered,
            "count": self.count, "stride": self.stride, "rows": self.rows, "last": self.last,
        }  # fmt: skip

    @classmethod
    def from_json(cls, data, latent_dim: int | None) -> Series | None:
        """A summary read back, or None when it is not one this code wrote for this config."""
        try:
            if data.get("version") != SUMMARY_VERSION or data.get("latent_dim") != latent_dim:
                return None
            signature = tuple(int(v) for v in data["signature"]) or None  # None: no file yet
            stride, count, covered = data["stride"], data["count"], data["covered"]
            if signature is not None and len(signature) != 3:
                return None
            if not all(isinstance(v, int) for v in (stride, count, covered)):
                return None
            if signature is None and (count or covered):
                return None
            if stride < 1 or count < 0 or covered < 0 or len(data["rows"]) > DISPLAY_POINTS:
                return None
            rows = [check_metrics_line(r, latent_dim) for r in data["rows"]]
            last = data["last"]
            if last is not None and not (rows and last == rows[-1]):
                last = check_metrics_line(last, latent_dim)
        except (AttributeError, KeyError, TypeError, ValueError):
            return None
        series = cls(latent_dim, signature, covered, count, stride, rows, last)
        if rows and last is not None and rows[-1]["epoch"] == last["epoch"]:
            series.rows[-1] = series.last  # display() relies on identity for the shared row
        return series


def load_series(
    metrics_path: Path, summary_path: Path, latent_dim: int | None, known: Series | None
) -> Series:
    """The thinned series of a metrics file, reusing `known` or summary.json where they still
    describe the file (reading only the appended lines), else reading the whole file once."""
    try:
        info = os.lstat(metrics_path)
    except FileNotFoundError:
        return Series(latent_dim)
    signature = file_signature(info)
    candidates = (known, lambda: _read_summary(summary_path, latent_dim))
    for candidate in (c() if callable(c) else c for c in candidates):  # summary.json only if needed
        if candidate is None or candidate.problem or candidate.latent_dim != latent_dim:
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
    series = Series(latent_dim)
    series.read_from(metrics_path, 0)
    series.signature = signature
    return series


def _read_summary(path: Path, latent_dim: int | None) -> Series | None:
    try:
        data = safe_read.read_json(path, MAX_SUMMARY_BYTES)
    except (OSError, ValueError):  # missing, damaged or foreign: the metrics file decides
        return None
    return Series.from_json(data, latent_dim) if isinstance(data, dict) else None
