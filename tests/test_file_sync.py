"""vae.execution.file_sync: a job's files copied into the app's store through the store's API."""

import os

from helpers import train_run

from vae.execution.file_sync import (
    SEED_FILES,
    apply_changes,
    changed_files,
    read_files,
    write_files,
)
from vae.execution.states import RunState
from vae.execution.store import RunStore


def node_copy(store: RunStore, run_id: str, tmp_path) -> RunStore:
    """A job's node-local store, seeded from the app's as the Ray backend seeds it."""
    node = RunStore(tmp_path / "node")
    write_files(node.folders, run_id, read_files(store.folders, run_id, SEED_FILES))
    return node


def test_synced_epochs_are_appended_with_their_summary_and_change_signal(
    store, tiny_config, tmp_path
):
    tiny_config.epochs = 3
    run_id = store.create_run(tiny_config)
    node = node_copy(store, run_id, tmp_path)
    assert train_run(node, run_id) == RunState.FINISHED  # the job, on its node
    reader = RunStore(store.root)  # the app's listing
    reader.list_runs()
    signal = store.root / ".changes"
    before = signal.stat().st_mtime_ns if signal.exists() else 0
    inodes = set()
    for upto in (1, 3):  # two syncs: the first copies one epoch, the second the other two
        lines = node.path(run_id, "metrics.jsonl").read_bytes().splitlines(keepends=True)
        partial = b"".join(lines[:upto])
        changes = {"metrics.jsonl": ([len(partial), upto], partial)}
        apply_changes(store.folders, run_id, changes, where="node-1")
        inodes.add(os.stat(store.path(run_id, "metrics.jsonl")).st_ino)
    assert len(inodes) == 1  # appended, never replaced: readers read only the new lines
    assert store.path(run_id, "summary.jsonl").exists()
    assert signal.stat().st_mtime_ns >= before
    assert [r["epoch"] for r in store.read_metrics(run_id)] == [1, 2, 3]
    assert reader.get(run_id).epochs_done == 3


def test_a_rewritten_metrics_file_replaces_the_copy(store, tiny_config, tmp_path):
    run_id = store.create_run(tiny_config)
    train_run(store, run_id)
    node = node_copy(store, run_id, tmp_path)
    node.truncate_metrics(run_id, 0)  # what a resume after a crash does on the node
    changes = changed_files(node.folders, run_id, {})
    apply_changes(store.folders, run_id, {"metrics.jsonl": changes["metrics.jsonl"]}, "node-1")
    assert store.read_metrics(run_id) == []
    assert RunStore(store.root).get(run_id).epochs_done == 0
