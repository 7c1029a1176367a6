"""Copy a run's files between two run stores, change by change, for jobs that train elsewhere.

A job on a cluster node trains into a node-local store; the store of the machine that runs the app
stays the one source of truth. `changed_files` reads, on the node, what changed since the copy the
app holds (each file is named by its size and modification time); `apply_changes` writes it into
the app's store. Files are read in the reverse of the order the worker writes them (status last
written, first read), and written in the worker's order, so the app's store never holds a status
ahead of its checkpoint, nor a checkpoint ahead of its metrics.
"""

from __future__ import annotations

import contextlib
import json
import os

from vae.execution.run_folder import RunFolders
from vae.execution.states import IllegalTransition, RunState

# The worker writes metrics, then model.pt and film.npz (final.pt, eval.json at the end), then status.json.
WRITE_ORDER = ("metrics.jsonl", "model.pt", "film.npz", "final.pt", "eval.json", "status.json")
READ_ORDER = tuple(reversed(WRITE_ORDER))
SEED_FILES = ("config.json", "status.json", "metrics.jsonl", "model.pt")  # what a job starts from

Signature = list[int]  # [size, mtime_ns]: changes whenever the worker rewrites or appends


def read_files(folders: RunFolders, run_id: str, names=SEED_FILES) -> dict[str, bytes]:
    """The named files of a run that exist, as bytes (to seed a job's store elsewhere)."""
    files = {}
    for name in names:
        with contextlib.suppress(FileNotFoundError):
            files[name] = folders.path(run_id, name).read_bytes()
    return files


def write_files(folders: RunFolders, run_id: str, files: dict[str, bytes]) -> None:
    """Create a run folder holding `files` (the seed of a job's node-local store)."""
    folders.seed_run(run_id, files)


def changed_files(
    folders: RunFolders, run_id: str, known: dict[str, Signature]
) -> dict[str, tuple[Signature, bytes]]:
    """Each file of the run whose signature differs from `known`, with its new signature."""
    changes = {}
    for name in READ_ORDER:
        try:
            with open(folders.path(run_id, name), "rb") as handle:
                stat = os.fstat(handle.fileno())
                signature = [stat.st_size, stat.st_mtime_ns]
                if known.get(name) == signature:
                    continue
                changes[name] = (signature, handle.read())
        except FileNotFoundError:
            continue
    return changes


def apply_changes(
    folders: RunFolders, run_id: str, changes: dict[str, tuple[Signature, bytes]], where: str
) -> None:
    """Write a job's changed files into the app's store, through its run folders' API.

    New metrics lines are appended (the summary and the change signal follow, and readers read
    only those lines); the status goes through its transitions. `where` (the node) is saved in
    the status, so every page and process can say where a run trains. A status move that the
    app's copy does not allow (the app already ended the run) is left out rather than written
    over it.
    """
    for name in WRITE_ORDER:
        if name not in changes:
            continue
        data = changes[name][1]
        if name == "metrics.jsonl":
            folders.replace_metrics(run_id, data)
            continue
        if name != "status.json":
            folders.write_file(run_id, name, data)
            continue
        status = json.loads(data)
        extra = {k: status[k] for k in ("epoch",) if k in status}
        with contextlib.suppress(IllegalTransition):
            folders.update_status(
                run_id, RunState(status["state"]), status.get("reason", ""), where=where, **extra
            )
