"""The run store: one folder per run on disk, the single source of truth for every page and job.

    <root>/<run_id>/config.json     the RunConfig as a dict
                    status.json     state, reason, timestamps, worker pid
                    metrics.jsonl   one JSON line per completed epoch, appended
                    model.pt        latest completed epoch (for resuming)
                    final.pt        the finished model
                    eval.json       the full evaluation, when computed

Whole files are written atomically (temp file in the same folder, fsync, os.replace), so a crash
leaves the previous version readable. Run ids are generated here and validated on the way in; no
user string ever becomes a path. A folder that cannot be read is listed as broken, with a reason.
"""

from __future__ import annotations

import contextlib
import errno
import json
import os
import re
import secrets
import shutil
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

from vae.execution.checkpoint import CheckpointError, checkpoint_bytes, read_checkpoint
from vae.execution.states import ACTIVE, BROKEN, RunState, check_transition
from vae.learn.config import ConfigError, RunConfig

DEFAULT_ROOT = Path(__file__).resolve().parent.parent / "checkpoints"
RUN_ID_PATTERN = re.compile(r"^\d{8}-\d{6}-[0-9a-f]{6}$")
FILES = (
    "config.json",
    "status.json",
    "metrics.jsonl",
    "model.pt",
    "final.pt",
    "eval.json",
    "cancel.request",  # asks the run's worker to stop this run alone
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
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
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
        fd = os.open(path, os.O_WRONLY)
    except OSError:
        return False
    try:
        if os.fstat(fd).st_blocks * 512 < len(data):
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


@dataclass
class RunRecord:
    """What the listing knows of one run folder; `broken` says why it could not be read."""

    run_id: str
    path: Path
    config: RunConfig | None = None
    status: dict = field(default_factory=dict)
    metrics: list[dict] = field(default_factory=list)
    broken: str | None = None

    @property
    def state(self) -> str:
        return BROKEN if self.broken else self.status.get("state", "unknown")

    @property
    def last_metrics(self) -> dict:
        return self.metrics[-1] if self.metrics else {}


class RunStore:
    def __init__(self, root: str | os.PathLike | None = None):
        self.root = Path(root) if root is not None else DEFAULT_ROOT

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
            tmp_dir = Path(tempfile.mkdtemp(dir=self.root, prefix=f".new-{run_id}-"))
            atomic_write_json(tmp_dir / "config.json", config.to_dict())
            atomic_write_json(tmp_dir / "status.json", status)
            os.rename(tmp_dir, self.root / run_id)
            _fsync_dir(self.root)
        except OSError as exc:
            if tmp_dir is not None:
                shutil.rmtree(tmp_dir, ignore_errors=True)
            raise _explain_os_error(exc, "create the run") from None
        return run_id

    # ---- reading -------------------------------------------------------------------------
    def read_config(self, run_id: str) -> RunConfig:
        try:
            data = json.loads(self.path(run_id, "config.json").read_text())
            return RunConfig.from_dict(data).validated()
        except FileNotFoundError:
            raise StoreError(f"run {run_id} does not exist") from None
        except (json.JSONDecodeError, UnicodeDecodeError, TypeError, ConfigError) as exc:
            raise StoreError(f"config.json is unreadable: {exc}") from None

    def read_status(self, run_id: str) -> dict:
        try:
            status = json.loads(self.path(run_id, "status.json").read_text())
        except FileNotFoundError:
            raise StoreError(f"status.json of {run_id} is missing") from None
        except (json.JSONDecodeError, UnicodeDecodeError) as exc:
            raise StoreError(f"status.json is unreadable: {exc}") from None
        if not isinstance(status, dict) or status.get("state") not in set(RunState):
            raise StoreError("status.json has no valid state")
        return status

    def read_metrics(self, run_id: str) -> list[dict]:
        """Every complete epoch line; a torn last line (crash mid-append) is skipped."""
        path = self.path(run_id, "metrics.jsonl")
        if not path.exists():
            return []
        rows = []
        for line in path.read_bytes().splitlines():
            try:
                row = json.loads(line)
            except (json.JSONDecodeError, UnicodeDecodeError):
                continue
            if isinstance(row, dict) and isinstance(row.get("epoch"), int):
                rows.append(row)
        return rows

    def read_eval(self, run_id: str) -> dict | None:
        path = self.path(run_id, "eval.json")
        try:
            return json.loads(path.read_text())
        except (FileNotFoundError, json.JSONDecodeError, UnicodeDecodeError):
            return None

    def load_checkpoint(self, run_id: str, final: bool = True) -> dict:
        """final.pt if asked and present, else model.pt. Raises CheckpointError if unusable."""
        path = self.checkpoint_path(run_id, final)
        if path is None:
            raise CheckpointError(f"run {run_id} has no checkpoint yet")
        return read_checkpoint(path)

    def checkpoint_path(self, run_id: str, final: bool = True) -> Path | None:
        """The file load_checkpoint reads: final.pt if asked and present, else model.pt."""
        names = ("final.pt", "model.pt") if final else ("model.pt",)
        return next((p for n in names if (p := self.path(run_id, n)).exists()), None)

    def get(self, run_id: str, with_metrics: bool = True) -> RunRecord:
        record = RunRecord(run_id, self.run_dir(run_id))
        try:
            record.config = self.read_config(run_id)
            record.status = self.read_status(run_id)
            if with_metrics:
                record.metrics = self.read_metrics(run_id)
        except (StoreError, OSError) as exc:
            record.broken = str(exc)
        return record

    def list_runs(self, with_metrics: bool = True) -> list[RunRecord]:
        """Every run folder, oldest first; unreadable ones come back with `broken` set."""
        if not self.root.is_dir():
            return []
        records = [
            self.get(entry.name, with_metrics)
            for entry in self.root.iterdir()
            if entry.is_dir() and is_valid_run_id(entry.name)
        ]
        # Creation order (ids alone tie within a second: a sweep's runs share their timestamp).
        records.sort(key=lambda r: (r.status.get("created", 0), r.run_id))
        return records

    def checkpoint_problem(self, run_id: str) -> str | None:
        """Why the run's checkpoint cannot be used, or None when it loads (or none exists yet)."""
        for name in ("final.pt", "model.pt"):
            path = self.path(run_id, name)
            if path.exists():
                try:
                    read_checkpoint(path)
                except CheckpointError as exc:
                    return f"{name}: {exc}"
        return None

    # ---- writing -------------------------------------------------------------------------
    def update_status(self, run_id: str, state: RunState, reason: str = "", **extra) -> dict:
        """Move the run to `state` (IllegalTransition if its life does not allow that move).

        An unreadable status.json is replaced (its old state is unknown, so any move repairs it).
        """
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
        return status

    def append_metrics(self, run_id: str, metrics: dict) -> None:
        line = (json.dumps(metrics, allow_nan=False) + "\n").encode()
        path = self.path(run_id, "metrics.jsonl")
        try:
            with open(path, "ab") as handle:
                handle.write(line)
                handle.flush()
                os.fsync(handle.fileno())
        except OSError as exc:
            raise _explain_os_error(exc, "save metrics") from None

    def truncate_metrics(self, run_id: str, last_epoch: int) -> None:
        """Drop epochs after `last_epoch` (written before a crash, but their checkpoint wasn't)."""
        rows = [r for r in self.read_metrics(run_id) if r["epoch"] <= last_epoch]
        data = "".join(json.dumps(r, allow_nan=False) + "\n" for r in rows).encode()
        try:
            atomic_write_bytes(self.path(run_id, "metrics.jsonl"), data)
        except OSError as exc:
            raise _explain_os_error(exc, "save metrics") from None

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

    def save_checkpoint(self, run_id: str, checkpoint: dict, final: bool = False) -> None:
        # Only the run's worker writes checkpoints, so a temp file found here is what a killed
        # worker left mid-write: remove it rather than let the folder grow with each crash.
        for stale in self.run_dir(run_id).glob(".*.pt.*.tmp"):
            with contextlib.suppress(OSError):
                stale.unlink()
        try:
            atomic_write_bytes(self.path(run_id, "model.pt"), checkpoint_bytes(checkpoint))
            if final:
                slim = {k: v for k, v in checkpoint.items() if k not in ("optimizer_state",)}
                atomic_write_bytes(self.path(run_id, "final.pt"), checkpoint_bytes(slim))
        except OSError as exc:
            raise _explain_os_error(exc, "save the checkpoint") from None

    def save_eval(self, run_id: str, evaluation: dict) -> None:
        try:
            atomic_write_json(self.path(run_id, "eval.json"), evaluation)
        except OSError as exc:
            raise _explain_os_error(exc, "save the evaluation") from None

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
