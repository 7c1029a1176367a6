"""One folder per run: creating it, reading and writing its files, moving its state.

    <root>/<run_id>/config.json     the RunConfig as a dict
                    status.json     state, reason, timestamps, worker pid
                    metrics.jsonl   one JSON line per completed epoch, appended
                    summary.jsonl   the latest epoch and thinned metrics, rewritten each epoch
                    model.pt        latest completed epoch (for resuming)
                    final.pt        the finished model
                    eval.json       the full evaluation, when computed
                    labels.json     the user's tags and note (vae.execution.labels)
                    film.npz        a small frame per epoch: the training film (vae.execution.film)
                    cancel.request  asks the run's worker to stop this run alone

A new file in a run folder is one entry in FILES (and, when the listing's record is made of it,
in vae.execution.listing.WATCHED), written through `write_file` or a method of its own here.

This is the writer's side (the worker, the job manager, a backend's file sync): every write goes
through vae.execution.files and then touches the change signal (<root>/.changes) that every
listing looks at. Run ids are generated here and validated on the way in; no user string ever
becomes a path. Every read goes through the careful reader (safe_read) and a schema.
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
import threading
import time
from collections.abc import Callable
from pathlib import Path

from vae.execution import safe_read
from vae.execution.files import (
    HOST_TAG,
    NotPlainFileError,
    StoreError,
    append_bytes,
    atomic_write_bytes,
    atomic_write_json,
    explain_os_error,
    fsync_dir,
    overwrite_in_place,
    remove_leftovers,
)
from vae.execution.labels import LABELS_FILE, MAX_LABELS_BYTES, clean_labels
from vae.execution.root_files import touch_root_file
from vae.execution.schema import SchemaError, check_config_types, check_eval, check_status
from vae.execution.series import MAX_METRICS_BYTES, Series, file_signature, load_series
from vae.execution.states import ACTIVE, RunState, check_transition
from vae.learn.config import ConfigError, RunConfig

RUN_ID_PATTERN = re.compile(r"^\d{8}-\d{6}-[0-9a-f]{6}$")
FILES = (
    "config.json", "status.json", "metrics.jsonl", "summary.jsonl", "model.pt", "final.pt",
    "eval.json",
    "labels.json",  # tags and a note, written by the user (vae.execution.labels)
    "film.npz",  # the training film, a frame per kept epoch (vae.execution.film)
    "cancel.request",  # asks the run's worker to stop this run alone (vae.execution.cancel)
)  # fmt: skip
CHANGES_FILE = ".changes"  # touched by every write: an unchanged mtime means nothing to re-read
MAX_JSON_BYTES = {"config.json": 64 * 1024, "status.json": 64 * 1024, "eval.json": 4 * 2**20}


def new_run_id() -> str:
    return time.strftime("%Y%m%d-%H%M%S", time.gmtime()) + "-" + secrets.token_hex(3)


def is_valid_run_id(run_id) -> bool:
    return isinstance(run_id, str) and bool(RUN_ID_PATTERN.fullmatch(run_id))


class RunFolders:
    """The run folders under `root`: what a writer needs, and the direct reads of single files."""

    def __init__(self, root: Path, on_change: Callable[..., None] | None = None):
        self.root = root
        self.on_change = on_change  # this process's listing, told (run_id, rewritten) at once
        self._lock = threading.RLock()
        self._appending: dict[str, Series] = {}  # thinned rows of the runs this process appends

    # ---- paths ---------------------------------------------------------------------------
    def run_dir(self, run_id: str) -> Path:
        if not is_valid_run_id(run_id):
            raise StoreError(f"{str(run_id)[:80]!r} is not a valid run id")
        return self.root / run_id

    def path(self, run_id: str, name: str) -> Path:
        assert name in FILES, name
        return self.run_dir(run_id) / name

    def checkpoint_path(self, run_id: str, final: bool = True) -> Path | None:
        """final.pt if asked and present, else model.pt (None: no checkpoint yet). Reading and
        checking it is `vae.execution.checkpoint`'s job, so listing runs never loads torch."""
        names = ("final.pt", "model.pt") if final else ("model.pt",)
        return next((p for n in names if os.path.lexists(p := self.path(run_id, n))), None)

    # ---- creating and deleting -------------------------------------------------------------
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
        self._create(run_id, {"config.json": config.to_dict(), "status.json": status})
        return run_id

    def seed_run(self, run_id: str, files: dict[str, bytes]) -> None:
        """Create run `run_id` holding `files` as they are (a job's node-local copy of a run)."""
        assert set(files) <= set(FILES), files
        self._create(self.run_dir(run_id).name, files)

    def _create(self, run_id: str, files: dict[str, dict | bytes]) -> None:
        tmp_dir = None
        try:
            self.root.mkdir(parents=True, exist_ok=True)
            prefix = f".new-{os.getpid()}@{HOST_TAG}-{run_id}-"
            tmp_dir = Path(tempfile.mkdtemp(dir=self.root, prefix=prefix))
            for name, data in files.items():
                if isinstance(data, bytes):
                    atomic_write_bytes(tmp_dir / name, data)
                else:
                    atomic_write_json(tmp_dir / name, data)
            os.rename(tmp_dir, self.root / run_id)
            fsync_dir(self.root)
        except OSError as exc:
            if tmp_dir is not None:
                shutil.rmtree(tmp_dir, ignore_errors=True)
            raise explain_os_error(exc, "create the run") from None
        self._changed(run_id)

    def delete_run(self, run_id: str) -> None:
        path = self.run_dir(run_id)
        if not path.is_dir():
            raise StoreError(f"run {run_id} does not exist")
        trash = self.root / f".deleted-{run_id}-{secrets.token_hex(2)}"
        try:
            os.rename(path, trash)  # atomic: the listing never sees half a run
        except OSError as exc:
            raise explain_os_error(exc, f"delete run {run_id}") from None
        shutil.rmtree(trash, ignore_errors=True)
        with self._lock:
            self._appending.pop(run_id, None)
        self._changed(run_id)

    def _changed(self, run_id: str, rewritten: bool = False) -> None:
        """Touch the change signal every listing (in any process) looks at, and tell this
        process's listing which run changed (`rewritten`: metrics.jsonl was replaced)."""
        if self.on_change is not None:
            self.on_change(run_id, rewritten)
        with contextlib.suppress(OSError):
            touch_root_file(self.root / CHANGES_FILE)  # never blocked by a pipe at that name

    # ---- reading -------------------------------------------------------------------------
    def read_json(self, run_id: str, name: str):
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
            data = self.read_json(run_id, "config.json")
        except FileNotFoundError:
            raise StoreError(f"run {run_id} does not exist") from None
        try:
            check_config_types(data)
            return RunConfig.from_dict(data).validated()
        except (TypeError, ConfigError, SchemaError) as exc:
            raise StoreError(f"config.json is unreadable: {exc}") from None

    def read_status(self, run_id: str) -> dict:
        try:
            status = self.read_json(run_id, "status.json")
        except FileNotFoundError:
            raise StoreError(f"status.json of {run_id} is missing") from None
        try:
            return check_status(status)
        except SchemaError as exc:
            raise StoreError(f"status.json is unreadable: {exc}") from None

    def read_metrics(self, run_id: str) -> list[dict]:
        """Every complete epoch line with a whole-number epoch (the worker's own view, used to
        resume and truncate); a torn last line (crash mid-append) is skipped. Pages use the
        listing's schema-checked, thinned rows instead."""
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
            return check_eval(self.read_json(run_id, "eval.json"))
        except (FileNotFoundError, StoreError, SchemaError):
            return None

    def read_labels(self, run_id: str) -> dict:
        """A run's {"tags": [...], "note": "..."}; empty ones when it has none."""
        try:
            return clean_labels(
                safe_read.read_json(self.path(run_id, LABELS_FILE), MAX_LABELS_BYTES)
            )
        except FileNotFoundError:
            return {"tags": [], "note": ""}
        except (safe_read.UnsafeFileError, ValueError, OSError) as exc:
            raise StoreError(f"{LABELS_FILE} of run {run_id} is unreadable: {exc}") from None

    def latest_metrics(self, run_id: str) -> dict:
        """The latest epoch's line (empty before the first), without reading every line."""
        try:
            latent_dim = self.read_config(run_id).latent_dim
            series = load_series(
                self.path(run_id, "metrics.jsonl"), self.path(run_id, "summary.jsonl"),
                latent_dim, self._appending.get(run_id), rows=False,
            )  # fmt: skip
        except (OSError, ValueError) as exc:
            raise StoreError(f"metrics.jsonl is unreadable: {exc}") from None
        return series.last or {}

    # ---- writing -------------------------------------------------------------------------
    def write_file(self, run_id: str, name: str, data: bytes, what: str | None = None) -> None:
        """Replace one run file atomically (removing what killed writers left behind first);
        `what` names the write in an error ("could not <what>: the disk is full")."""
        remove_leftovers(self.run_dir(run_id))
        try:
            atomic_write_bytes(self.path(run_id, name), data)
        except OSError as exc:
            raise explain_os_error(exc, what or f"save {name} of {run_id}") from None
        self._changed(run_id)

    def write_labels(self, run_id: str, tags: list[str], note: str) -> dict:
        """Replace a run's tags and note (checked; written atomically); returns what was stored."""
        labels = clean_labels({"tags": tags, "note": note})
        if not self.run_dir(run_id).is_dir():
            raise StoreError(f"run {run_id} does not exist")
        self.write_file(run_id, LABELS_FILE, json.dumps(labels).encode(), "save the tags and note")
        return labels

    def remove_file(self, run_id: str, name: str) -> None:
        with contextlib.suppress(FileNotFoundError):
            self.path(run_id, name).unlink()

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
                raise explain_os_error(exc, f"update the status of {run_id}") from None
        self._changed(run_id)
        return status

    def append_metrics(self, run_id: str, metrics: dict) -> None:
        """Append one epoch line, then refresh summary.jsonl (the thinned series pages read)."""
        self.append_metrics_lines(run_id, (json.dumps(metrics, allow_nan=False) + "\n").encode())

    def append_metrics_lines(self, run_id: str, lines: bytes) -> None:
        """Append whole epoch lines as they are (one epoch, or those a job wrote elsewhere)."""
        with self._lock:
            series = self._series_for_append(run_id)
        try:
            after = append_bytes(self.path(run_id, "metrics.jsonl"), lines)
        except NotPlainFileError:
            raise StoreError("could not save metrics: metrics.jsonl is not a plain file") from None
        except OSError as exc:
            raise explain_os_error(exc, "save metrics") from None
        if series is not None and series.covered + len(lines) == after.st_size:
            try:
                for line in lines.splitlines():
                    series.add_line(line)
                series.covered, series.signature = after.st_size, file_signature(after)
                self._write_summary(run_id, series)
            except (SchemaError, ValueError):
                self._appending.pop(run_id, None)  # readers will read the file and say why
        self._changed(run_id)

    def replace_metrics(self, run_id: str, data: bytes) -> None:
        """Make metrics.jsonl hold `data`: only the new lines are appended when it extends the
        file (same inode, so readers read only those), else the file is rewritten."""
        path = self.path(run_id, "metrics.jsonl")
        try:
            with open(path, "rb") as handle:
                size = os.fstat(handle.fileno()).st_size
                extends = len(data) >= size and handle.read(size) == data[:size]
        except FileNotFoundError:
            size, extends = 0, True
        except OSError:
            extends = False
        if extends:
            if len(data) > size:
                self.append_metrics_lines(run_id, data[size:])
            return
        self._rewrite_metrics(run_id, data)

    def truncate_metrics(self, run_id: str, last_epoch: int) -> None:
        """Drop epochs after `last_epoch` (written before a crash, but their checkpoint wasn't)."""
        rows = [r for r in self.read_metrics(run_id) if r["epoch"] <= last_epoch]
        self._rewrite_metrics(
            run_id, "".join(json.dumps(r, allow_nan=False) + "\n" for r in rows).encode()
        )

    def _rewrite_metrics(self, run_id: str, data: bytes) -> None:
        try:
            atomic_write_bytes(self.path(run_id, "metrics.jsonl"), data)
        except OSError as exc:
            raise explain_os_error(exc, "save metrics") from None
        with self._lock:
            self._appending.pop(run_id, None)
            series = self._series_for_append(run_id)  # the rewritten file, read once
        if series is not None:
            self._write_summary(run_id, series)
        self._changed(run_id, rewritten=True)

    def _series_for_append(self, run_id: str) -> Series | None:
        """The thinned series as it stands before an append (None where it cannot be read)."""
        try:
            latent_dim = self.read_config(run_id).latent_dim
            series = load_series(
                self.path(run_id, "metrics.jsonl"), self.path(run_id, "summary.jsonl"),
                latent_dim, self._appending.get(run_id), rows=True,
            )  # fmt: skip
        except (StoreError, safe_read.UnsafeFileError):
            return None
        self._appending[run_id] = series
        return None if series.problem else series

    def _write_summary(self, run_id: str, series: Series) -> None:
        with contextlib.suppress(OSError):  # only a cache: readers fall back to metrics.jsonl
            atomic_write_bytes(self.path(run_id, "summary.jsonl"), series.to_lines())
        with self._lock:
            self._appending[run_id] = series

    def write_checkpoint(self, run_id: str, model_pt: bytes, final_pt: bytes | None = None) -> None:
        """Write model.pt (and final.pt, at the end of a run) atomically; the bytes come from
        `vae.execution.checkpoint.save_run_checkpoint`."""
        remove_leftovers(self.run_dir(run_id))  # what writers killed mid-write left behind
        try:
            atomic_write_bytes(self.path(run_id, "model.pt"), model_pt)
            if final_pt is not None:
                atomic_write_bytes(self.path(run_id, "final.pt"), final_pt)
        except OSError as exc:
            raise explain_os_error(exc, "save the checkpoint") from None
        self._changed(run_id)

    def save_eval(self, run_id: str, evaluation: dict) -> None:
        remove_leftovers(self.run_dir(run_id))
        try:
            atomic_write_json(self.path(run_id, "eval.json"), evaluation)
        except OSError as exc:
            raise explain_os_error(exc, "save the evaluation") from None
        self._changed(run_id)
