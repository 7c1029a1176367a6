"""The run store: one folder per run on disk, the single source of truth for every page and job.

    <root>/<run_id>/config.json     the RunConfig as a dict
                    status.json     state, reason, timestamps, worker pid
                    metrics.jsonl   one JSON line per completed epoch, appended
                    summary.jsonl   the latest epoch and thinned metrics, rewritten each epoch
                    model.pt        latest completed epoch (for resuming)
                    final.pt        the finished model
                    eval.json       the full evaluation, when computed

Whole files are written atomically (temp file in the same folder, fsync, os.replace), so a crash
leaves the previous version readable; a temp file names its writer's pid, and the next touch of
the run removes those whose writer is gone. Run ids are generated here and validated on the way
in; no user string ever becomes a path. Every read goes through the careful reader
(vae.execution.safe_read) and a schema (vae.execution.schema): a folder that cannot be read, or
holds a field of the wrong kind, is listed as broken with the reason.

Listing is cached per store object: a run is read again only when its folder or files change
(writers also touch <root>/.changes, so an unchanged store costs two stat calls per listing), and
every FULL_RECHECK_S the files of every run are checked for edits made behind the store's back
(less often in a store so large that this would cost more than FULL_RECHECK_COST_SHARE of a core).
"""

from __future__ import annotations

import contextlib
import errno
import json
import os
import re
import secrets
import shutil
import socket
import stat
import tempfile
import threading
import time
import zlib
from dataclasses import dataclass, field
from pathlib import Path

from vae.execution import safe_read
from vae.execution.root_files import report, touch_root_file
from vae.execution.schema import (
    SchemaError,
    check_config_types,
    check_eval,
    check_metrics_line,
    check_next_epoch,
    check_status,
)
from vae.execution.series import (
    MAX_METRICS_BYTES,
    EpochSeries,
    Series,
    file_signature,
    load_series,
)
from vae.execution.states import ACTIVE, BROKEN, RunState, check_transition
from vae.learn.config import ConfigError, RunConfig

DEFAULT_ROOT = Path(__file__).resolve().parents[2] / "checkpoints"  # beside app.py
RUN_ID_PATTERN = re.compile(r"^\d{8}-\d{6}-[0-9a-f]{6}$")
FILES = (
    "config.json", "status.json", "metrics.jsonl", "summary.jsonl", "model.pt", "final.pt",
    "eval.json",
    "cancel.request",  # asks the run's worker to stop this run alone
)  # fmt: skip
WATCHED = ("config.json", "status.json", "metrics.jsonl", "eval.json")  # what a record is made of
MAX_JSON_BYTES = {"config.json": 64 * 1024, "status.json": 64 * 1024, "eval.json": 4 * 2**20}
CHANGES_FILE = ".changes"  # touched by every write: an unchanged mtime means nothing to re-read
INDEX_FILE = ".index.json"  # what the last listing knew, so a new server process starts warm
INDEX_MAX_BYTES = 1024 * 2**20
INDEX_SAVE_AFTER_READS = 50  # save the index once this many runs (or a tenth) were read again
INDEX_SAVE_EVERY_S = 300.0  # ...or this long after the last save, when anything was read
FULL_RECHECK_S = 30.0  # re-stat every run's files this often (edits made outside the store)
# ... or less often in a store so large that a recheck would cost more than 1/300 of a core.
FULL_RECHECK_COST_SHARE = 1 / 300
RACY_S = 2.0  # a change this close to a scan may share its timestamp: look again next time
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


def _explain_os_error(exc: OSError, what: str) -> StoreError:
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
    _fsync_dir(path.parent)


def _fsync_dir(path: Path) -> None:
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


def new_run_id() -> str:
    return time.strftime("%Y%m%d-%H%M%S", time.gmtime()) + "-" + secrets.token_hex(3)


def is_valid_run_id(run_id) -> bool:
    return isinstance(run_id, str) and bool(RUN_ID_PATTERN.fullmatch(run_id))


def _pid_alive(pid: int) -> bool:
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
    return int(pid) != os.getpid() and not _pid_alive(int(pid))


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


def _remove_root_leftovers(root: Path) -> None:
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


@dataclass
class RunRecord:
    """What the listing knows of one run folder; `broken` says why it could not be read.

    `metrics` is the per-epoch series thinned for display (at most about 100 evenly spaced
    epochs, always ending with the latest); `epochs_done` counts every epoch line.
    `RunStore.read_metrics` returns every line.
    """

    run_id: str
    path: Path
    config: RunConfig | None = None
    status: dict = field(default_factory=dict)
    metrics: list[dict] = field(default_factory=list)
    broken: str | None = None
    epochs_done: int = 0
    evaluation: dict | None = None

    @property
    def state(self) -> str:
        return BROKEN if self.broken else self.status.get("state", "unknown")

    @property
    def last_metrics(self) -> dict:
        return self.metrics[-1] if self.metrics else {}


FileSignatures = tuple  # lstat (mode, inode, size, mtime_ns) of each WATCHED file, or None


class RunStore:
    def __init__(self, root: str | os.PathLike | None = None):
        self.root = Path(root) if root is not None else DEFAULT_ROOT
        self._lock = threading.RLock()  # one store object serves every page session's thread
        self._records: dict[str, tuple[FileSignatures, RunRecord]] = {}
        self._folders: dict[str, int] = {}  # run id -> folder mtime_ns at the last look
        self._series: dict[str, Series] = {}  # head only: latest epoch, count, signature
        self._appending: dict[str, Series] = {}  # with rows: runs this process appends to
        self._configs: dict[str, tuple[tuple, RunConfig]] = {}
        self._listing: list[RunRecord] | None = None
        self._seen_signal: tuple | None = None
        self._last_scan = 0.0
        self._last_full = 0.0
        self._full_interval = FULL_RECHECK_S  # grows with what the last full recheck cost
        self._dirty: set[str] = set()
        self._reads = 0  # runs read from their files since the index was last saved
        self._version = 0  # bumped whenever the listing changes (see generation)
        self._active: tuple[int, list[RunRecord]] = (-1, [])  # (version, its active runs)
        self._index_saved = 0.0

    # ---- paths ---------------------------------------------------------------------------
    def run_dir(self, run_id: str) -> Path:
        if not is_valid_run_id(run_id):
            raise StoreError(f"{str(run_id)[:80]!r} is not a valid run id")
        return self.root / run_id

    def exists(self, run_id) -> bool:
        return is_valid_run_id(run_id) and (self.root / run_id / "config.json").is_file()

    def path(self, run_id: str, name: str) -> Path:
        assert name in FILES, name
        return self.run_dir(run_id) / name

    # ---- creating ------------------------------------------------------------------------
    def create_run(self, config: RunConfig, group: str | None = None) -> str:
        """Validate and write a new queued run; all or nothing (temp folder, then rename)."""
        config.validated()
        run_id = new_run_id()
        now = time.time()
        status = {
            "state": check_transition(None, RunState.QUEUED),
            "reason": "",
            "created": now,
            "updated": now,
            "group": group,
        }
        tmp_dir = None
        try:
            self.root.mkdir(parents=True, exist_ok=True)
            prefix = f".new-{os.getpid()}@{HOST_TAG}-{run_id}-"
            tmp_dir = Path(tempfile.mkdtemp(dir=self.root, prefix=prefix))
            atomic_write_json(tmp_dir / "config.json", config.to_dict())
            atomic_write_json(tmp_dir / "status.json", status)
            os.rename(tmp_dir, self.root / run_id)
            _fsync_dir(self.root)
        except OSError as exc:
            if tmp_dir is not None:
                shutil.rmtree(tmp_dir, ignore_errors=True)
            raise _explain_os_error(exc, "create the run") from None
        self._changed(run_id)
        return run_id

    # ---- reading -------------------------------------------------------------------------
    def _read_json(self, run_id: str, name: str):
        """A run file's JSON through the careful reader; StoreError says what is wrong."""
        try:
            return safe_read.read_json(self.path(run_id, name), MAX_JSON_BYTES[name])
        except FileNotFoundError:
            raise
        except (safe_read.UnsafeFileError, ValueError) as exc:
            text = str(exc)
            raise StoreError(
                text if "unreadable" in text else f"{name} is unreadable: {text}"
            ) from None
        except OSError as exc:
            raise StoreError(f"{name} is unreadable: {exc.strerror or exc}") from None

    def read_config(self, run_id: str) -> RunConfig:
        try:
            data = self._read_json(run_id, "config.json")
        except FileNotFoundError:
            raise StoreError(f"run {run_id} does not exist") from None
        try:
            check_config_types(data)
            return RunConfig.from_dict(data).validated()
        except (TypeError, ConfigError, SchemaError) as exc:
            raise StoreError(f"config.json is unreadable: {exc}") from None

    def read_status(self, run_id: str) -> dict:
        try:
            status = self._read_json(run_id, "status.json")
        except FileNotFoundError:
            raise StoreError(f"status.json of {run_id} is missing") from None
        try:
            return check_status(status)
        except SchemaError as exc:
            raise StoreError(f"status.json is unreadable: {exc}") from None

    def read_metrics(self, run_id: str) -> list[dict]:
        """Every complete epoch line with a whole-number epoch (the worker's own view, used to
        resume and truncate); a torn last line (crash mid-append) is skipped. Pages use the
        listing's thinned, schema-checked `RunRecord.metrics` instead."""
        path = self.path(run_id, "metrics.jsonl")
        rows = []
        try:
            for _, line, complete in safe_read.read_lines(path, MAX_METRICS_BYTES):
                try:
                    row = json.loads(line) if complete else None
                except (json.JSONDecodeError, UnicodeDecodeError, RecursionError):
                    continue
                if isinstance(row, dict) and isinstance(row.get("epoch"), int):
                    if rows and row["epoch"] <= rows[-1]["epoch"]:
                        continue  # a repeated line: each epoch once (the listing says broken)
                    rows.append(row)
        except FileNotFoundError:
            return []
        except (safe_read.UnsafeFileError, OSError) as exc:
            raise StoreError(f"metrics.jsonl is unreadable: {exc}") from None
        return rows

    def read_eval(self, run_id: str) -> dict | None:
        """eval.json when present and well-formed, else None (the listing says why it is not)."""
        try:
            return check_eval(self._read_json(run_id, "eval.json"))
        except (FileNotFoundError, StoreError, SchemaError):
            return None

    def checkpoint_path(self, run_id: str, final: bool = True) -> Path | None:
        """final.pt if asked and present, else model.pt (None: no checkpoint yet). Reading and
        checking it is `vae.execution.checkpoint`'s job, so listing runs never loads torch."""
        names = ("final.pt", "model.pt") if final else ("model.pt",)
        return next((p for n in names if os.path.lexists(p := self.path(run_id, n))), None)

    def get(self, run_id: str, with_metrics: bool = True) -> RunRecord:
        """One run, read through the cache (files re-read only when they changed)."""
        with self._lock:
            return self._record(run_id, force=False)

    def list_runs(self, with_metrics: bool = True) -> list[RunRecord]:
        """Every run folder, oldest first; unreadable ones come back with `broken` set.

        Records are shared between callers: treat them as read-only. `with_metrics` is kept for
        callers of the old API; the thinned series costs nothing extra once cached.
        """
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
            if fresh:
                return list(self._listing)
            started, recheck = time.perf_counter(), full and self._listing is not None
            self._scan(full)
            self._seen_signal = signal
            self._last_scan = now
            if full:
                self._last_full = now
            if recheck:  # (the first look reads everything: not what a recheck costs)
                cost = time.perf_counter() - started
                self._full_interval = max(FULL_RECHECK_S, cost / FULL_RECHECK_COST_SHARE)
            return list(self._listing or [])

    def active_runs(self) -> list[RunRecord]:
        """The queued and running runs, oldest first: the scheduler asks every second, so the
        answer is kept with the listing and found again only when the listing changes."""
        with self._lock:
            records = self.list_runs()
            if self._active[0] != self._version:
                self._active = (self._version, [r for r in records if r.state in ACTIVE])
            return list(self._active[1])

    def generation(self) -> int:
        """A number that changes exactly when the listing changes (a run added, removed, or any
        of its records re-read). Cheap when nothing changed: pages can keep a chart built from
        the listing while it stays the same."""
        return self.snapshot()[0]

    def snapshot(self) -> tuple[int, list[RunRecord]]:
        """(generation, listing), taken together: a page remembers what it drew by both."""
        with self._lock:
            records = self.list_runs()
            return self._version, records

    def _signal(self) -> tuple:
        def mtime(path: Path):
            try:
                return os.stat(path).st_mtime_ns
            except OSError:
                return None

        return (mtime(self.root), mtime(self.root / CHANGES_FILE))

    @staticmethod
    def _signal_settled(signal: tuple, last_scan: float) -> bool:
        """False when a change landed within RACY_S of the last scan: its timestamp could hide a
        second change made in the same clock tick, so the next listing looks again."""
        newest = max((m for m in signal if m is not None), default=0) / 1e9
        return last_scan - newest > RACY_S

    def _scan(self, full: bool) -> None:
        if self._listing is None:
            self._load_index()
        if full:
            _remove_root_leftovers(self.root)
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
        record = RunRecord(
            run_id,
            self.root / run_id,
            config,
            status,
            self._epochs(run_id, config.latent_dim, series),
            epochs_done=series.count,
            evaluation=evaluation,
        )
        self._records[run_id] = (signatures, record)
        self._configs[run_id] = (signatures[0], config)
        self._series[run_id] = series

    def _forget(self, run_id: str) -> None:
        for cache in (self._records, self._folders, self._series, self._configs, self._appending):
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
        folder = self.run_dir(run_id)
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
        record = RunRecord(run_id, self.run_dir(run_id))
        try:
            config_key = signatures[0]
            known = self._configs.get(run_id)
            if known is not None and known[0] == config_key:
                record.config = known[1]
            else:
                record.config = self.read_config(run_id)
                self._configs[run_id] = (config_key, record.config)
            record.status = self.read_status(run_id)
            if signatures[3] is not None:
                try:
                    record.evaluation = check_eval(self._read_json(run_id, "eval.json"))
                except FileNotFoundError:
                    record.evaluation = None
                except SchemaError as exc:
                    raise StoreError(str(exc)) from None
            series = self._load_series(run_id, record.config.latent_dim)
            record.metrics = self._epochs(run_id, record.config.latent_dim, series)
            record.epochs_done = series.count
            if series.problem:
                raise StoreError(series.problem)
        except (StoreError, OSError) as exc:
            record.broken = (
                str(exc)
                if isinstance(exc, StoreError)
                else (f"cannot read the run folder: {exc.strerror or exc}")
            )
        return record

    def _load_series(self, run_id: str, latent_dim: int | None, rows: bool = False) -> Series:
        """The run's series head (latest epoch, count), or with its thinned rows when `rows`."""
        cache = self._appending if rows else self._series
        try:
            series = load_series(
                self.path(run_id, "metrics.jsonl"), self.path(run_id, "summary.jsonl"),
                latent_dim, cache.get(run_id), rows=rows,
            )  # fmt: skip
        except safe_read.UnsafeFileError as exc:
            raise StoreError(str(exc)) from None
        cache[run_id] = series
        return series

    def _epochs(self, run_id: str, latent_dim: int | None, head: Series) -> EpochSeries:
        """record.metrics: the latest epoch now, the thinned rows when a page first uses them."""

        def rows() -> list[dict]:
            try:
                series = load_series(
                    self.path(run_id, "metrics.jsonl"), self.path(run_id, "summary.jsonl"),
                    latent_dim, None, rows=True,
                )  # fmt: skip
            except (OSError, ValueError):
                return []  # the listing will say why at its next look
            return [] if series.problem else series.display()

        return EpochSeries(head.last, head.count, rows)

    # ---- writing -------------------------------------------------------------------------
    def _changed(self, run_id: str | None = None) -> None:
        """Tell every store object (this process or another) that something was written."""
        with self._lock:
            if run_id is not None:
                self._dirty.add(run_id)
        with contextlib.suppress(OSError):
            touch_root_file(self.root / CHANGES_FILE)  # never blocked by a pipe at that name

    def update_status(self, run_id: str, state: RunState, reason: str = "", **extra) -> dict:
        """Move the run to `state` (IllegalTransition if its life does not allow that move).

        An unreadable status.json is replaced (its old state is unknown, so any move repairs it).
        """
        remove_leftovers(self.run_dir(run_id))  # what writers killed mid-write left behind
        try:
            status = self.read_status(run_id)
            state = check_transition(status["state"], state)
        except StoreError:
            status, state = {"created": time.time()}, RunState(state)
        now = time.time()
        status.update(extra, state=state, reason=reason, updated=now)
        if state is RunState.RUNNING:
            status.setdefault("started", now)
        if state not in ACTIVE:
            status["ended"] = now
            status.pop("job", None)
        path = self.path(run_id, "status.json")
        data = json.dumps(status, indent=1, allow_nan=False).encode()
        try:
            atomic_write_bytes(path, data)
        except OSError as exc:
            # A full disk must not leave a run running forever: the status can still say why.
            full = exc.errno in (errno.ENOSPC, errno.EDQUOT)
            if not (full and overwrite_in_place(path, data)):
                raise _explain_os_error(exc, f"update the status of {run_id}") from None
        self._changed(run_id)
        return status

    def append_metrics(self, run_id: str, metrics: dict) -> None:
        """Append one epoch line, then refresh summary.jsonl (the thinned series pages read)."""
        line = (json.dumps(metrics, allow_nan=False) + "\n").encode()
        path = self.path(run_id, "metrics.jsonl")
        with self._lock:
            series = self._series_for_append(run_id)
        flags = os.O_WRONLY | os.O_APPEND | os.O_CREAT | os.O_NOFOLLOW | os.O_NONBLOCK
        try:
            fd = os.open(path, flags, 0o644)  # never through a link, never blocked by a pipe
            with os.fdopen(fd, "ab") as handle:
                if not stat.S_ISREG(os.fstat(fd).st_mode):
                    raise StoreError(
                        "could not save metrics: metrics.jsonl is not a plain file"
                    ) from None
                handle.write(line)
                handle.flush()
                os.fsync(handle.fileno())
                after = os.fstat(handle.fileno())
        except OSError as exc:
            if exc.errno in (errno.ELOOP, errno.ENXIO):
                raise StoreError(
                    "could not save metrics: metrics.jsonl is not a plain file"
                ) from None
            raise _explain_os_error(exc, "save metrics") from None
        if series is not None and series.covered + len(line) == after.st_size:
            try:
                row = check_metrics_line(json.loads(line), series.latent_dim)
                series.add(check_next_epoch(row, series.last))
                series.covered, series.signature = after.st_size, file_signature(after)
                self._write_summary(run_id, series)
            except (SchemaError, ValueError):
                self._appending.pop(run_id, None)  # readers will read the file and say why
        self._changed(run_id)

    def _series_for_append(self, run_id: str) -> Series | None:
        """The thinned series as it stands before an append (None where it cannot be read)."""
        try:
            latent_dim = self.read_config(run_id).latent_dim
            series = self._load_series(run_id, latent_dim, rows=True)
        except StoreError:
            return None
        return None if series.problem else series

    def _write_summary(self, run_id: str, series: Series) -> None:
        with contextlib.suppress(OSError):  # only a cache: readers fall back to metrics.jsonl
            atomic_write_bytes(self.path(run_id, "summary.jsonl"), series.to_lines())
        with self._lock:
            self._appending[run_id] = series

    def truncate_metrics(self, run_id: str, last_epoch: int) -> None:
        """Drop epochs after `last_epoch` (written before a crash, but their checkpoint wasn't)."""
        rows = [r for r in self.read_metrics(run_id) if r["epoch"] <= last_epoch]
        data = "".join(json.dumps(r, allow_nan=False) + "\n" for r in rows).encode()
        try:
            atomic_write_bytes(self.path(run_id, "metrics.jsonl"), data)
        except OSError as exc:
            raise _explain_os_error(exc, "save metrics") from None
        with self._lock:
            self._appending.pop(run_id, None)
            self._series.pop(run_id, None)
            series = self._series_for_append(run_id)  # the rewritten file, read once
        if series is not None:
            self._write_summary(run_id, series)
        self._changed(run_id)

    def request_cancel(self, run_id: str) -> None:
        """Leave a note asking the run's worker to stop this run (see vae.execution.worker)."""
        try:
            atomic_write_bytes(self.path(run_id, "cancel.request"), str(time.time()).encode())
        except OSError as exc:
            raise _explain_os_error(exc, f"cancel run {run_id}") from None

    def cancel_requested(self, run_id: str) -> bool:
        return self.path(run_id, "cancel.request").exists()

    def clear_cancel_request(self, run_id: str) -> None:
        with contextlib.suppress(FileNotFoundError):
            self.path(run_id, "cancel.request").unlink()

    def write_checkpoint(self, run_id: str, model_pt: bytes, final_pt: bytes | None = None) -> None:
        """Write model.pt (and final.pt, at the end of a run) atomically; the bytes come from
        `vae.execution.checkpoint.save_run_checkpoint`."""
        remove_leftovers(self.run_dir(run_id))  # what writers killed mid-write left behind
        try:
            atomic_write_bytes(self.path(run_id, "model.pt"), model_pt)
            if final_pt is not None:
                atomic_write_bytes(self.path(run_id, "final.pt"), final_pt)
        except OSError as exc:
            raise _explain_os_error(exc, "save the checkpoint") from None
        self._changed(run_id)

    def save_eval(self, run_id: str, evaluation: dict) -> None:
        remove_leftovers(self.run_dir(run_id))
        try:
            atomic_write_json(self.path(run_id, "eval.json"), evaluation)
        except OSError as exc:
            raise _explain_os_error(exc, "save the evaluation") from None
        self._changed(run_id)

    def delete_run(self, run_id: str) -> None:
        path = self.run_dir(run_id)
        if not path.is_dir():
            raise StoreError(f"run {run_id} does not exist")
        trash = self.root / f".deleted-{run_id}-{secrets.token_hex(2)}"
        try:
            os.rename(path, trash)  # atomic: the listing never sees half a run
        except OSError as exc:
            raise _explain_os_error(exc, f"delete run {run_id}") from None
        shutil.rmtree(trash, ignore_errors=True)
        self._changed(run_id)
