"""The server's read model of the run store: a cached listing of run records, its index and its
change signal.

A run is read again only when its folder or files change: writers touch <root>/.changes (the
change signal), so an unchanged store costs two stat calls per listing, and every FULL_RECHECK_S
the files of every run are checked for edits made behind the store's back (less often in a store
so large that this would cost more than FULL_RECHECK_COST_SHARE of a core). `.index.json` lets a
new server process start from what the last one knew, for every file whose signature is
unchanged. A `RunRecord` holds its data and never goes back to disk: a page that needs a run's
per-epoch rows asks `epoch_rows` for them. Whether a running run is stalled is known here too (its
lease is looked at every STALL_CHECK_S), so no view touches the disk on a rerun.
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import os
import stat
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

from vae.execution import safe_read
from vae.execution.files import (
    StoreError,
    atomic_write_bytes,
    mtime_ns,
    remove_leftovers,
    remove_root_leftovers,
)
from vae.execution.lease import stalled_for
from vae.execution.root_files import report
from vae.execution.run_folder import CHANGES_FILE, RunFolders, is_valid_run_id
from vae.execution.schema import SchemaError, check_config_types, check_eval, check_status
from vae.execution.series import Series, load_series
from vae.execution.states import ACTIVE, BROKEN, RunState
from vae.learn.config import ConfigError, RunConfig

WATCHED = ("config.json", "status.json", "metrics.jsonl", "eval.json")  # what a record is made of
INDEX_FILE = ".index.json"  # what the last listing knew, so a new server process starts warm
INDEX_MAX_BYTES = 1024 * 2**20
INDEX_SAVE_AFTER_READS = 50  # save the index once this many runs (or a tenth) were read again
INDEX_SAVE_EVERY_S = 300.0  # ...or this long after the last save, when anything was read
FULL_RECHECK_S = 30.0  # re-stat every run's files this often (edits made outside the store)
# ... or less often in a store so large that a recheck would cost more than 1/300 of a core.
FULL_RECHECK_COST_SHARE = 1 / 300
RACY_S = 2.0  # a change this close to a scan may share its timestamp: look again next time
STALL_CHECK_S = 5.0  # how often the leases of running runs are looked at


@dataclass
class RunRecord:
    """What the listing knows of one run folder; `broken` says why it could not be read.

    `last_metrics` is the latest epoch's line, `epochs_done` counts every epoch line and
    `recent_seconds` holds the durations of the last few epochs. The thinned per-epoch rows a
    chart draws come from `RunStore.epoch_rows(record)`; `RunStore.read_metrics` returns every
    line. `stalled_since`: when a running run's live worker last showed a sign of life, if that
    was over a minute ago.
    """

    run_id: str
    path: Path
    config: RunConfig | None = None
    status: dict = field(default_factory=dict)
    broken: str | None = None
    epochs_done: int = 0
    evaluation: dict | None = None
    last_metrics: dict = field(default_factory=dict)
    recent_seconds: tuple[float, ...] = ()
    stalled_since: float | None = None

    @property
    def state(self) -> str:
        return BROKEN if self.broken else self.status.get("state", "unknown")


FileSignatures = tuple  # lstat (mode, inode, size, mtime_ns) of each WATCHED file, or None


class Listing:
    """Every run folder under `root` as records, re-read only where files changed."""

    def __init__(self, root: Path, folders: RunFolders):
        self.root = root
        self.folders = folders
        self._lock = threading.RLock()  # one listing serves every page session's thread
        self._records: dict[str, tuple[FileSignatures, RunRecord]] = {}
        self._folders: dict[str, int] = {}  # run id -> folder mtime_ns at the last look
        self._series: dict[str, Series] = {}  # head only: latest epoch, count, signature
        self._rows: dict[str, tuple[RunRecord, Series | None, list[dict]]] = {}  # charts' rows
        self._configs: dict[str, tuple[tuple, RunConfig]] = {}
        self._listing: list[RunRecord] | None = None
        self._seen_signal: tuple | None = None
        self._last_scan = 0.0
        self._last_full = 0.0
        self._last_stall_check = 0.0
        self._full_interval = FULL_RECHECK_S  # grows with what the last full recheck cost
        self._dirty: set[str] = set()
        self._reads = 0  # runs read from their files since the index was last saved
        self._version = 0  # bumped whenever the listing changes (see snapshot)
        self._active: tuple[int, list[RunRecord]] = (-1, [])  # (version, its active runs)
        self._index_saved = 0.0

    # ---- the change signal -----------------------------------------------------------------
    def changed(self, run_id: str, rewritten: bool = False) -> None:
        """A write of this process (the run folders touch the signal file for the others)."""
        with self._lock:
            self._dirty.add(run_id)
            if rewritten:  # a new metrics file: never continue from the old one's offset
                self._series.pop(run_id, None)
                self._rows.pop(run_id, None)

    def _signal(self) -> tuple:
        return (mtime_ns(self.root), mtime_ns(self.root / CHANGES_FILE))

    @staticmethod
    def _signal_settled(signal: tuple, last_scan: float) -> bool:
        """False when a change landed within RACY_S of the last scan: its timestamp could hide a
        second change made in the same clock tick, so the next listing looks again."""
        newest = max((m for m in signal if m is not None), default=0) / 1e9
        return last_scan - newest > RACY_S

    # ---- what pages and the scheduler ask --------------------------------------------------
    def get(self, run_id: str) -> RunRecord:
        """One run, read through the cache (files re-read only when they changed)."""
        with self._lock:
            return self._record(run_id, force=False)

    def list_runs(self) -> list[RunRecord]:
        """Every run folder, oldest first; unreadable ones come back with `broken` set.

        Records are shared between callers: treat them as read-only."""
        with self._lock:
            now = time.time()
            signal = self._signal()
            full = now - self._last_full > self._full_interval
            fresh = (
                self._listing is not None
                and not full
                and not self._dirty
                and signal == self._seen_signal
                and self._signal_settled(signal, self._last_scan)
            )
            if not fresh:
                started, recheck = time.perf_counter(), full and self._listing is not None
                self._scan(full)
                self._seen_signal = signal
                self._last_scan = now
                if full:
                    self._last_full = now
                if recheck:  # (the first look reads everything: not what a recheck costs)
                    cost = time.perf_counter() - started
                    self._full_interval = max(FULL_RECHECK_S, cost / FULL_RECHECK_COST_SHARE)
            if now - self._last_stall_check > STALL_CHECK_S:
                self._check_stalls(now)
            return list(self._listing or [])

    def active_runs(self) -> list[RunRecord]:
        """The queued and running runs, oldest first: the scheduler asks every second, so the
        answer is kept with the listing and found again only when the listing changes."""
        with self._lock:
            records = self.list_runs()
            if self._active[0] != self._version:
                self._active = (self._version, [r for r in records if r.state in ACTIVE])
            return list(self._active[1])

    def snapshot(self) -> tuple[int, list[RunRecord]]:
        """(generation, listing), taken together: the generation changes exactly when the
        listing does (a run added, removed, or re-read), so a page remembers what it drew by
        both and can keep a chart built from the listing while it stays the same."""
        with self._lock:
            records = self.list_runs()
            return self._version, records

    def epoch_rows(self, record: RunRecord) -> list[dict]:
        """The record's thinned per-epoch rows (about 100 evenly spaced epochs and the latest),
        up to the record's latest epoch so they match it; read once per record."""
        if record.broken or not record.last_metrics:
            return []
        with self._lock:
            cached = self._rows.get(record.run_id)
            if cached is not None and cached[0] is record:
                return cached[2]
            known = None if cached is None else cached[1]
        try:
            series = load_series(
                self.folders.path(record.run_id, "metrics.jsonl"),
                self.folders.path(record.run_id, "summary.jsonl"),
                record.config.latent_dim, known, rows=True,
            )  # fmt: skip
            loaded = [] if series.problem else series.display()
        except (OSError, ValueError, StoreError):
            series, loaded = None, []  # the listing will say why at its next look
        latest = record.last_metrics["epoch"]
        rows = [*(r for r in loaded if r["epoch"] < latest), record.last_metrics]
        with self._lock:
            self._rows[record.run_id] = (record, None if series is None else series, rows)
        return rows

    # ---- stalled runs ---------------------------------------------------------------------
    def _check_stalls(self, now: float) -> None:
        """Mark running runs whose live worker went silent (and unmark them when it answers):
        the record is replaced, so pages see a change and redraw."""
        self._last_stall_check = now
        changed = False
        for run_id, (signatures, record) in list(self._records.items()):
            if record.state != RunState.RUNNING and record.stalled_since is None:
                continue
            silent = stalled_for(record.path) if record.state == RunState.RUNNING else None
            if (silent is None) == (record.stalled_since is None):
                continue
            since = None if silent is None else now - silent
            self._records[run_id] = (signatures, dataclasses.replace(record, stalled_since=since))
            changed = True
        if changed and self._listing is not None:
            self._listing = [self._records[r.run_id][1] for r in self._listing]
            self._version += 1

    # ---- scanning --------------------------------------------------------------------------
    def _scan(self, full: bool) -> None:
        if self._listing is None:
            self._load_index()
        if full:
            remove_root_leftovers(self.root)
            remove_leftovers(self.root)  # e.g. an index write cut off
        try:
            with os.scandir(self.root) as entries:
                found = {}
                for entry in entries:
                    if is_valid_run_id(entry.name):
                        with contextlib.suppress(OSError):
                            info = entry.stat(follow_symlinks=False)
                            if stat.S_ISDIR(info.st_mode) or stat.S_ISLNK(info.st_mode):
                                found[entry.name] = info.st_mtime_ns
        except (FileNotFoundError, NotADirectoryError):
            found = {}  # no store yet (or a file in its place, which settings report): no runs
        except OSError as exc:
            raise StoreError(f"cannot list the run store: {exc.strerror or exc}") from None
        settled_before = (self._last_scan - RACY_S) * 1e9
        for run_id in list(self._records):
            if run_id not in found:
                self._forget(run_id)
        for run_id, folder_mtime in found.items():
            unchanged = self._folders.get(run_id) == folder_mtime and folder_mtime < settled_before
            if full or run_id in self._dirty or not unchanged or run_id not in self._records:
                self._record(run_id, force=False)
            self._folders[run_id] = folder_mtime
        self._dirty.clear()
        records = [self._records[r][1] for r in found if r in self._records]
        # Creation order (ids alone tie within a second: a sweep's runs share their timestamp).
        records.sort(key=lambda r: (r.status.get("created", 0), r.run_id))
        previous = self._listing or []
        same = len(records) == len(previous) and all(
            a is b for a, b in zip(records, previous, strict=True)
        )
        if not same:
            self._version += 1
        self._listing = records
        due = time.time() - self._index_saved > INDEX_SAVE_EVERY_S
        enough = max(INDEX_SAVE_AFTER_READS, len(self._records) // 10)  # a tenth of the store
        if self._reads >= enough or (self._reads and due):
            self._save_index()

    def _forget(self, run_id: str) -> None:
        for cache in (self._records, self._folders, self._series, self._configs, self._rows):
            cache.pop(run_id, None)

    def _signatures(self, folder: Path) -> FileSignatures:
        def one(name: str):
            try:
                info = os.lstat(folder / name)
            except OSError:
                return None
            return (info.st_mode, info.st_ino, info.st_size, info.st_mtime_ns)

        return tuple(one(name) for name in WATCHED)

    def _record(self, run_id: str, force: bool) -> RunRecord:
        folder = self.folders.run_dir(run_id)
        if os.path.islink(folder):
            record = RunRecord(run_id, folder, broken="the run folder is a symbolic link")
            self._records[run_id] = ((), record)
            return record
        signatures = self._signatures(folder)
        cached = self._records.get(run_id)
        if cached is not None and cached[0] == signatures and not force:
            return cached[1]
        if cached is None:
            remove_leftovers(folder)  # first look at this run's files from this process
        record = self._read_record(run_id, signatures)
        self._records[run_id] = (signatures, record)
        self._reads += 1
        return record

    def _read_record(self, run_id: str, signatures: FileSignatures) -> RunRecord:
        record = RunRecord(run_id, self.folders.run_dir(run_id))
        try:
            config_key = signatures[0]
            known = self._configs.get(run_id)
            if known is not None and known[0] == config_key:
                record.config = known[1]
            else:
                record.config = self.folders.read_config(run_id)
                self._configs[run_id] = (config_key, record.config)
            record.status = self.folders.read_status(run_id)
            if signatures[3] is not None:
                try:
                    record.evaluation = check_eval(self.folders.read_json(run_id, "eval.json"))
                except FileNotFoundError:
                    record.evaluation = None
                except SchemaError as exc:
                    raise StoreError(str(exc)) from None
            series = self._load_head(run_id, record.config.latent_dim)
            _take_head(record, series)
            if series.problem:
                raise StoreError(series.problem)
        except (StoreError, OSError) as exc:
            record.broken = (
                str(exc)
                if isinstance(exc, StoreError)
                else (f"cannot read the run folder: {exc.strerror or exc}")
            )
        return record

    def _load_head(self, run_id: str, latent_dim: int | None) -> Series:
        """The run's series head (latest epoch, count), reading only what changed."""
        try:
            series = load_series(
                self.folders.path(run_id, "metrics.jsonl"),
                self.folders.path(run_id, "summary.jsonl"),
                latent_dim, self._series.get(run_id), rows=False,
            )  # fmt: skip
        except safe_read.UnsafeFileError as exc:
            raise StoreError(str(exc)) from None
        self._series[run_id] = series
        return series

    # ---- the index: a warm start for a new server process ----------------------------------
    def _save_index(self) -> None:
        """Write what the listing knows of every readable run, with the file signatures it was
        read at; only a cache (any write failure is ignored), never trusted beyond them."""
        runs = {}
        for run_id, (signatures, record) in self._records.items():
            series = self._series.get(run_id)
            if record.broken or record.config is None or series is None or not signatures:
                continue
            runs[run_id] = {
                "signatures": signatures, "config": record.config.to_dict(),
                "status": record.status, "evaluation": record.evaluation,
                "series": series.head_dict(),
            }  # fmt: skip
        data = {"version": 1, "runs": runs}
        with contextlib.suppress(OSError, ValueError, TypeError):
            atomic_write_bytes(
                self.root / INDEX_FILE, json.dumps(data, separators=(",", ":")).encode()
            )
        self._reads, self._index_saved = 0, time.time()

    def _load_index(self) -> None:
        """Seed the caches from the index; each entry is checked like the files it stands for,
        and used only while every file still has the signature recorded with it."""
        try:
            data = safe_read.read_json(self.root / INDEX_FILE, INDEX_MAX_BYTES)
            runs = data["runs"] if data.get("version") == 1 else {}
            entries = list(runs.items())
        except FileNotFoundError:
            return
        except (OSError, ValueError, AttributeError, KeyError, TypeError) as exc:
            report(self.root / INDEX_FILE, f"not used ({exc}); it is written again")
            if isinstance(exc, safe_read.UnsafeFileError):  # a pipe or a huge file: out of the way
                with contextlib.suppress(OSError):
                    os.unlink(self.root / INDEX_FILE)
            return
        for run_id, entry in entries:
            with contextlib.suppress(StoreError, SchemaError, ConfigError, ValueError, TypeError,
                                     KeyError, AttributeError):  # fmt: skip
                self._seed(run_id, entry)
        self._index_saved = time.time()

    def _seed(self, run_id: str, entry: dict) -> None:
        if not is_valid_run_id(run_id):
            return
        signatures = tuple(
            None if s is None else tuple(int(v) for v in s) for s in entry["signatures"]
        )
        if len(signatures) != len(WATCHED) or signatures[0] is None or signatures[1] is None:
            return
        check_config_types(entry["config"])
        config = RunConfig.from_dict(entry["config"]).validated()
        status = check_status(entry["status"])
        evaluation = None if entry["evaluation"] is None else check_eval(entry["evaluation"])
        if (evaluation is None) != (signatures[3] is None):
            return
        series = Series.from_head(entry["series"], config.latent_dim)
        if series is None or (series.signature is None) != (signatures[2] is None):
            return
        if signatures[2] is not None and series.signature != signatures[2][1:]:
            return
        record = RunRecord(run_id, self.root / run_id, config, status, evaluation=evaluation)
        _take_head(record, series)
        self._records[run_id] = (signatures, record)
        self._configs[run_id] = (signatures[0], config)
        self._series[run_id] = series


def _take_head(record: RunRecord, series: Series) -> None:
    record.last_metrics = series.last or {}
    record.epochs_done = series.count
    record.recent_seconds = tuple(series.recent)
