"""A store that scales: thinned series, summary.jsonl, and a listing that re-reads only changes.

Timings live in bench/store_scale.py; these tests check the behaviour that makes them possible:
which files are read, what the pages get, and that nothing stale is shown.
"""

from __future__ import annotations

import json
import time

import pytest
from helpers import train_run

from vae.execution import listing as listing_module
from vae.execution import safe_read, series
from vae.execution.listing import RACY_S
from vae.execution.store import RunStore
from vae.learn.config import RunConfig

LATENT = 8


def row(epoch: int) -> dict:
    """An epoch line with every field the schema asks for (values vary with the epoch)."""
    return {
        "epoch": epoch, "step": 10 * epoch, "rate": 5.0 + epoch / 100, "distortion": 90.0 - epoch / 50,
        "elbo": -95.0 + epoch / 100, "active_units": 3, "images_per_s": 1000.0, "seconds": 0.5,
        "kl_per_dim": [0.1 * j for j in range(LATENT)], "posterior_var": [0.5] * LATENT,
        "mean_cov": [0.02] * LATENT,
    }  # fmt: skip


def long_run(store: RunStore, epochs: int) -> str:
    run_id = store.create_run(RunConfig(latent_dim=LATENT, epochs=10_000))
    for epoch in range(1, epochs + 1):
        store.append_metrics(run_id, row(epoch))
    return run_id


class Spy:
    """Counts calls of a function in a module (the real function still runs)."""

    def __init__(self, monkeypatch, module, name):
        self.calls = []
        real = getattr(module, name)

        def spy(*args, **kwargs):
            self.calls.append(args)
            return real(*args, **kwargs)

        monkeypatch.setattr(module, name, spy)


def test_a_long_run_is_thinned_evenly_and_ends_with_its_last_epoch(store):
    run_id = long_run(store, 300)
    reader = RunStore(store.root)
    record = reader.get(run_id)
    epochs = [m["epoch"] for m in reader.epoch_rows(record)]
    assert record.broken is None and record.epochs_done == 300
    assert series.DISPLAY_POINTS // 2 <= len(epochs) <= series.DISPLAY_POINTS + 1
    assert epochs[0] == 1 and epochs[-1] == 300
    steps = {b - a for a, b in zip(epochs[:-2], epochs[1:-1], strict=True)}
    assert len(steps) == 1  # evenly spaced (the last one is whatever epoch came last)
    assert record.last_metrics == row(300)
    assert len(store.read_metrics(run_id)) == 300  # the full series is still there for downloads


def test_a_fresh_store_reads_the_summary_then_only_appended_lines(store, monkeypatch):
    run_id = long_run(store, 150)
    lines = Spy(monkeypatch, safe_read, "read_lines")
    metrics = store.path(run_id, "metrics.jsonl")

    def metrics_reads() -> list[int]:  # offsets metrics.jsonl was read from
        return [c[2] if len(c) > 2 else 0 for c in lines.calls if str(c[0]) == str(metrics)]

    reader = RunStore(store.root)
    record = reader.get(run_id)
    assert record.epochs_done == 150 and metrics_reads() == []  # summary matched: no parse
    assert (
        len(list(reader.epoch_rows(record))) <= series.DISPLAY_POINTS + 1
    )  # rows from the summary too
    assert metrics_reads() == []
    size = metrics.stat().st_size
    with open(metrics, "a") as handle:  # an epoch whose summary update was lost
        handle.write(json.dumps(row(151)) + "\n")
    reader = RunStore(store.root)
    record = reader.get(run_id)
    assert record.epochs_done == 151 and record.last_metrics["epoch"] == 151
    assert metrics_reads() == [size]  # read from the old end, not from 0


def test_a_summary_that_no_longer_matches_is_not_trusted(store):
    run_id = long_run(store, 20)
    metrics = store.path(run_id, "metrics.jsonl")
    rows = metrics.read_text().splitlines()
    bad = json.loads(rows[4])
    bad["rate"] = "oops"
    rows[4] = json.dumps(bad)
    metrics.write_text("\n".join(rows) + "\n")  # rewritten in place, summary.jsonl left as it was
    reader = RunStore(store.root)
    record = reader.get(run_id)
    assert record.broken and "line 5" in record.broken and "rate" in record.broken


def test_an_unchanged_store_is_listed_without_reading_a_file(store, monkeypatch):
    ids = [long_run(store, 3) for _ in range(5)]
    reader = RunStore(store.root)
    assert [r.run_id for r in reader.list_runs()] == ids
    reads = Spy(monkeypatch, safe_read, "read_bytes")
    lines = Spy(monkeypatch, safe_read, "read_lines")
    for _ in range(3):
        assert len(reader.list_runs()) == 5
    assert reads.calls == [] and lines.calls == []  # not even the summaries' head lines
    # Another store object (as in a worker process) changes one run: the listing shows it and
    # reads that run's changed files only.
    RunStore(store.root).update_status(ids[2], "running", pid=12345)
    assert reads.calls == [] or all(ids[2] in str(c[0]) for c in reads.calls)
    reads.calls.clear()
    states = {r.run_id: r.state for r in reader.list_runs()}
    assert states[ids[2]] == "running" and states[ids[0]] == "queued"
    assert {str(c[0]) for c in reads.calls} == {str(store.path(ids[2], "status.json"))}
    assert lines.calls == []  # its metrics did not change: no summary or metrics read


def test_edits_behind_the_stores_back_are_found_by_the_periodic_recheck(store, monkeypatch):
    run_id = long_run(store, 2)
    reader = RunStore(store.root)
    assert reader.get(run_id).broken is None
    reader.list_runs()
    path = store.path(run_id, "status.json")
    status = json.loads(path.read_text())
    status["created"] = "yesterday"
    with open(path, "r+") as handle:  # in place: the folder's timestamp does not change
        handle.write(json.dumps(status))
        handle.truncate()
    monkeypatch.setattr(listing_module, "FULL_RECHECK_S", 0.0)
    record = {r.run_id: r for r in reader.list_runs()}[run_id]
    assert record.broken and "created" in record.broken


def test_deleted_and_new_runs_show_up_at_once(store):
    reader = RunStore(store.root)
    first = long_run(store, 1)
    assert [r.run_id for r in reader.list_runs()] == [first]
    writer = RunStore(store.root)
    second = writer.create_run(RunConfig(latent_dim=LATENT))
    assert [r.run_id for r in reader.list_runs()] == [first, second]
    writer.delete_run(first)
    assert [r.run_id for r in reader.list_runs()] == [second]


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    store = RunStore(tmp_path_factory.mktemp("scale") / "runs")
    config = RunConfig(dataset="digits", hidden_dims=[32], latent_dim=3, epochs=3, batch_size=256)
    run_id = store.create_run(config)
    assert train_run(store, run_id) == "finished"
    return store, run_id


def test_a_real_run_summary_holds_exactly_its_metrics(trained):
    store, run_id = trained
    assert store.path(run_id, "summary.jsonl").exists()
    reader = RunStore(store.root)
    record = reader.get(run_id)
    assert record.broken is None
    assert reader.epoch_rows(record) == store.read_metrics(
        run_id
    )  # under 100 epochs: nothing thinned


def test_truncating_metrics_rebuilds_the_summary(trained):
    store, run_id = trained
    store.truncate_metrics(run_id, 1)  # what a resume after a crash does
    reader = RunStore(store.root)
    record = reader.get(run_id)
    assert [m["epoch"] for m in reader.epoch_rows(record)] == [1]
    summary = json.loads(store.path(run_id, "summary.jsonl").read_text().splitlines()[0])
    assert summary["count"] == 1


# ---- the index: a new server process starts warm ----------------------------------------------
def indexed_store(store: RunStore, runs: int = 60) -> list[str]:
    """Runs, listed once by a store object (which saves .index.json after reading them)."""
    ids = [long_run(store, 2) for _ in range(runs)]
    store.create_run(RunConfig(latent_dim=LATENT))  # a queued run without metrics, too
    RunStore(store.root).list_runs()
    assert (store.root / listing_module.INDEX_FILE).exists()
    return ids


def listing(store: RunStore) -> dict:
    return {
        r.run_id: (
            r.state,
            r.broken,
            store.epoch_rows(r),
            r.status,
            r.config,
            r.evaluation,
            r.epochs_done,
        )
        for r in store.list_runs()
    }


def test_a_new_store_object_lists_from_the_index_without_reading_run_files(store, monkeypatch):
    indexed_store(store)
    expected = listing(RunStore(store.root))
    reads = Spy(monkeypatch, safe_read, "read_bytes")
    assert listing(RunStore(store.root)) == expected
    assert [str(c[0]) for c in reads.calls] == [str(store.root / listing_module.INDEX_FILE)]


def test_runs_changed_since_the_index_are_read_from_their_files(store):
    ids = indexed_store(store)
    RunStore(store.root).update_status(ids[3], "failed", "changed after the index")
    path = store.path(ids[7], "status.json")
    status = json.loads(path.read_text())
    status["updated"] = None
    path.write_text(json.dumps(status))  # damaged after the index was written
    records = {r.run_id: r for r in RunStore(store.root).list_runs()}
    assert records[ids[3]].state == "failed"
    assert records[ids[7]].broken and "updated" in records[ids[7]].broken


@pytest.mark.parametrize(
    "damage",
    [
        lambda data: b"{not json",
        lambda data: json.dumps({**data, "version": 99}).encode(),
        lambda data: json.dumps({"version": 1, "runs": [1, 2]}).encode(),
        lambda data: json.dumps(
            {
                "version": 1,
                "runs": {k: {**v, "status": {"state": "x"}} for k, v in data["runs"].items()},
            }
        ).encode(),
        lambda data: json.dumps(
            {"version": 1, "runs": {k: {**v, "signatures": [[1]]} for k, v in data["runs"].items()}}
        ).encode(),
    ],
)
def test_a_damaged_index_is_ignored(store, damage):
    indexed_store(store, runs=5)
    expected = listing(RunStore(store.root))
    index = store.root / listing_module.INDEX_FILE
    index.write_bytes(damage(json.loads(index.read_bytes())))
    assert listing(RunStore(store.root)) == expected


def test_the_generation_changes_exactly_when_the_listing_does(store):
    ids = [long_run(store, 1) for _ in range(3)]
    reader = RunStore(store.root)
    first = reader.snapshot()[0]
    assert reader.snapshot()[0] == first  # nothing changed
    RunStore(store.root).update_status(ids[1], "failed", "x")
    second = reader.snapshot()[0]
    assert second != first
    assert {r.run_id: r.state for r in reader.list_runs()}[ids[1]] == "failed"
    assert reader.snapshot()[0] == second
    RunStore(store.root).delete_run(ids[0])
    assert reader.snapshot()[0] != second


def test_a_run_keeps_its_record_object_until_another_process_changes_its_files(store, tiny_config):
    """What the pages' refresh relies on: 'changed' is 'another record object'."""
    writer = RunStore(store.root)  # another process's store object (a worker, the CLI)
    a, b = writer.create_run(tiny_config), writer.create_run(tiny_config)
    time.sleep(RACY_S + 0.05)  # older than the racy window, as files are after a moment
    first = {r.run_id: r for r in store.list_runs()}
    generation = store.snapshot()[0]
    assert store.snapshot()[0] == generation  # looking changes nothing
    writer.update_status(b, "running")
    time.sleep(RACY_S + 0.05)
    assert store.snapshot()[0] != generation
    second = {r.run_id: r for r in store.list_runs()}
    assert second[a] is first[a]  # unchanged: the same record, not read again
    assert second[b] is not first[b] and second[b].state == "running"


def test_the_generation_moves_when_runs_are_added_or_deleted(store, tiny_config):
    first = store.create_run(tiny_config)
    generation = store.snapshot()[0]
    second = RunStore(store.root).create_run(tiny_config)
    assert store.snapshot()[0] != generation
    assert [r.run_id for r in store.list_runs()] == [first, second]
    generation = store.snapshot()[0]
    RunStore(store.root).delete_run(first)
    assert store.snapshot()[0] != generation
    assert [r.run_id for r in store.list_runs()] == [second]
