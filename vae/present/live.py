"""What the pages need to refresh cheaply: a fingerprint of the run store and a cached listing.

A page redraws only when the store changed since it last drew, and it notices that by comparing
fingerprints: one `stat` per file, no reading or parsing. The listing re-reads only the run
folders whose files changed, so a page with fifty finished runs does not parse fifty
metrics files on every rerun. No Streamlit here: ui.py keeps one `RunListing` per server.
"""

from __future__ import annotations

import os
import threading
from collections.abc import Iterable
from dataclasses import dataclass, field

from vae.execution.store import RunRecord, RunStore, is_valid_run_id

# The files whose change a page can show: status and metrics (every page), checkpoints (samples).
WATCHED_FILES = ("config.json", "status.json", "metrics.jsonl", "model.pt", "final.pt", "eval.json")

Stamp = tuple[int, ...]
Fingerprint = tuple[tuple[str, Stamp], ...]


def _file_stamp(path: str) -> Stamp:
    """(mtime ns, size, inode): an atomic replace changes the inode even within one clock tick."""
    try:
        info = os.stat(path)
    except OSError:
        return (0, 0, 0)
    return (info.st_mtime_ns, info.st_size, info.st_ino)


def run_fingerprint(store: RunStore, run_id: str) -> Stamp:
    """The stamps of one run's files, concatenated; zeros for a file that does not exist."""
    folder = os.path.join(store.root, run_id)
    return sum((_file_stamp(os.path.join(folder, name)) for name in WATCHED_FILES), ())


def run_folders(store: RunStore) -> list[str]:
    """The run ids with a folder in the store, sorted (one directory read, no file opened)."""
    try:
        return sorted(e.name for e in os.scandir(store.root) if is_valid_run_id(e.name))
    except OSError:
        return []


def store_fingerprint(store: RunStore, run_ids: Iterable[str] | None = None) -> Fingerprint:
    """(run id, file stamps) for every run folder, or for `run_ids` only: equal means unchanged."""
    if run_ids is None:
        run_ids = run_folders(store)
    return tuple((run_id, run_fingerprint(store, run_id)) for run_id in run_ids)


@dataclass
class RunListing:
    """`store.list_runs()` that re-reads only the runs whose files changed (thread-safe).

    The records it returns are shared between sessions: read them, never modify them.
    """

    store: RunStore
    _cache: dict[str, tuple[Stamp, RunRecord]] = field(default_factory=dict)
    _lock: threading.Lock = field(default_factory=threading.Lock)

    def runs(self) -> list[RunRecord]:
        """Every run, oldest first, as `RunStore.list_runs` orders them."""
        return self.snapshot()[1]

    def snapshot(self) -> tuple[Fingerprint, list[RunRecord]]:
        """The store's fingerprint taken before reading, and the runs: a later change shows up
        as a fingerprint that differs from this one, never as a change silently missed."""
        fingerprint = store_fingerprint(self.store)
        with self._lock:
            records = []
            for run_id, stamp in fingerprint:
                cached = self._cache.get(run_id)
                if cached is None or cached[0] != stamp:
                    cached = (stamp, self.store.get(run_id))
                    self._cache[run_id] = cached
                records.append(cached[1])
            present = {run_id for run_id, _ in fingerprint}
            for gone in set(self._cache) - present:
                del self._cache[gone]
        records.sort(key=lambda r: (r.status.get("created", 0), r.run_id))
        return fingerprint, records
