"""The run store: one folder per run on disk, the single source of truth for every page and job.

`RunStore` is the front door that pages, the CLI, the job manager and the worker share. It holds
two rooms, each with one job, and hands every call to one of them:

- `folders` (vae.execution.run_folder): the run folders: create, read and write a run's files,
  move its state. The writer's side (the worker, the job manager, a backend's file sync).
- `listing` (vae.execution.listing): the server's cached read model: records, the index, the
  change signal, stalled runs. Every write through `folders` touches its change signal.

The file-system primitives both use (atomic writes, appends, leftovers) are vae.execution.files.
"""

from __future__ import annotations

import os
from pathlib import Path

from vae.execution import cancel
from vae.execution.files import StoreError, atomic_write_bytes, atomic_write_json
from vae.execution.listing import Listing, RunRecord
from vae.execution.run_folder import FILES, RunFolders, is_valid_run_id, new_run_id
from vae.execution.states import RunState
from vae.learn.config import RunConfig

DEFAULT_ROOT = Path(__file__).resolve().parents[2] / "checkpoints"  # beside app.py

__all__ = [
    "DEFAULT_ROOT", "FILES", "RunRecord", "RunStore", "StoreError", "is_valid_run_id",
    "new_run_id",
    "atomic_write_bytes", "atomic_write_json",  # (old imports: new code takes them from files)
]  # fmt: skip


class RunStore:
    """The run folders under `root` (writes, single-file reads) and their cached listing."""

    def __init__(self, root: str | os.PathLike | None = None):
        self.root = Path(root) if root is not None else DEFAULT_ROOT
        self.folders = RunFolders(self.root)
        self.listing = Listing(self.root, self.folders)
        self.folders.on_change = self.listing.changed

    # ---- paths ---------------------------------------------------------------------------
    def run_dir(self, run_id: str) -> Path:
        return self.folders.run_dir(run_id)

    def path(self, run_id: str, name: str) -> Path:
        return self.folders.path(run_id, name)

    def checkpoint_path(self, run_id: str, final: bool = True) -> Path | None:
        return self.folders.checkpoint_path(run_id, final)

    # ---- the run folders: create, read, write, move --------------------------------------
    def create_run(self, config: RunConfig, group: str | None = None) -> str:
        return self.folders.create_run(config, group)

    def delete_run(self, run_id: str) -> None:
        self.folders.delete_run(run_id)

    def read_config(self, run_id: str) -> RunConfig:
        return self.folders.read_config(run_id)

    def read_status(self, run_id: str) -> dict:
        return self.folders.read_status(run_id)

    def read_metrics(self, run_id: str) -> list[dict]:
        return self.folders.read_metrics(run_id)

    def read_eval(self, run_id: str) -> dict | None:
        return self.folders.read_eval(run_id)

    def update_status(self, run_id: str, state: RunState, reason: str = "", **extra) -> dict:
        return self.folders.update_status(run_id, state, reason, **extra)

    def append_metrics(self, run_id: str, metrics: dict) -> None:
        self.folders.append_metrics(run_id, metrics)

    def truncate_metrics(self, run_id: str, last_epoch: int) -> None:
        self.folders.truncate_metrics(run_id, last_epoch)

    def write_checkpoint(self, run_id: str, model_pt: bytes, final_pt: bytes | None = None) -> None:
        self.folders.write_checkpoint(run_id, model_pt, final_pt)

    def save_eval(self, run_id: str, evaluation: dict) -> None:
        self.folders.save_eval(run_id, evaluation)

    def write_file(self, run_id: str, name: str, data: bytes, what: str | None = None) -> None:
        self.folders.write_file(run_id, name, data, what)

    def read_labels(self, run_id: str) -> dict:
        return self.folders.read_labels(run_id)

    def write_labels(self, run_id: str, tags: list[str], note: str) -> dict:
        return self.folders.write_labels(run_id, tags, note)

    # ---- cancel notes (the whole path: vae.execution.cancel) ------------------------------
    def request_cancel(self, run_id: str) -> None:
        cancel.leave_note(self.folders, run_id)

    def cancel_requested(self, run_id: str) -> bool:
        return cancel.note_left(self.folders, run_id)

    def clear_cancel_request(self, run_id: str) -> None:
        cancel.take_note(self.folders, run_id)

    # ---- the listing: what pages and the scheduler read -----------------------------------
    def get(self, run_id: str) -> RunRecord:
        return self.listing.get(run_id)

    def list_runs(self) -> list[RunRecord]:
        return self.listing.list_runs()

    def active_runs(self) -> list[RunRecord]:
        return self.listing.active_runs()

    def snapshot(self) -> tuple[int, list[RunRecord]]:
        return self.listing.snapshot()

    def epoch_rows(self, record: RunRecord) -> list[dict]:
        return self.listing.epoch_rows(record)
