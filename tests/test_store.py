"""The run store: atomic files, validated ids, broken folders listed with a reason."""

import pytest
import torch
from helpers import with_byte_changed, worker_pid

from vae.execution.checkpoint import (
    CheckpointError,
    checkpoint_problem,
    load_run_checkpoint,
    read_checkpoint,
    save_run_checkpoint,
)
from vae.execution.store import RunStore, StoreError, is_valid_run_id
from vae.learn.config import ConfigError, RunConfig


def test_create_run_writes_config_and_queued_status(store, tiny_config):
    run_id = store.create_run(tiny_config)
    assert is_valid_run_id(run_id)
    assert store.read_config(run_id) == tiny_config
    status = store.read_status(run_id)
    assert status["state"] == "queued"
    assert [r.run_id for r in store.list_runs()] == [run_id]
    assert not [p for p in store.root.iterdir() if p.name.startswith(".new-")]


def test_invalid_config_creates_nothing(store):
    with pytest.raises(ConfigError) as info:
        store.create_run(RunConfig(beta=-1, latent_dim=0))
    assert set(info.value.errors) == {"beta", "latent_dim"}
    assert store.list_runs() == []


@pytest.mark.parametrize("bad", ["../etc", "x", "", None, "20260101-000000-abcdeg", "a/b"])
def test_run_ids_are_validated(store, bad):
    assert not is_valid_run_id(bad)
    with pytest.raises(StoreError):
        store.run_dir(bad)


def test_metrics_append_and_torn_last_line(store, tiny_config):
    run_id = store.create_run(tiny_config)
    store.append_metrics(run_id, {"epoch": 1, "rate": 1.0})
    store.append_metrics(run_id, {"epoch": 2, "rate": 2.0})
    with open(store.path(run_id, "metrics.jsonl"), "ab") as f:
        f.write(b'{"epoch": 3, "ra')  # a crash in the middle of an append
    assert [m["epoch"] for m in store.read_metrics(run_id)] == [1, 2]
    store.truncate_metrics(run_id, 1)
    assert [m["epoch"] for m in store.read_metrics(run_id)] == [1]


def test_metrics_refuse_nan(store, tiny_config):
    run_id = store.create_run(tiny_config)
    with pytest.raises(ValueError):
        store.append_metrics(run_id, {"epoch": 1, "rate": float("nan")})
    assert store.read_metrics(run_id) == []


def test_broken_folders_are_listed_with_a_reason(store, tiny_config):
    good = store.create_run(tiny_config)
    bad_json = store.create_run(tiny_config)
    store.path(bad_json, "config.json").write_text("{not json")
    no_status = store.create_run(tiny_config)
    store.path(no_status, "status.json").unlink()
    (store.root / "not-a-run").mkdir()  # ignored: not a run id
    records = {r.run_id: r for r in store.list_runs()}
    assert set(records) == {good, bad_json, no_status}
    assert records[good].broken is None
    assert "config.json" in records[bad_json].broken and records[bad_json].state == "broken"
    assert "status.json" in records[no_status].broken


def test_status_transitions_record_times(store, tiny_config):
    run_id = store.create_run(tiny_config)
    store.update_status(run_id, "running", job={"backend": "local", "pid": 123})
    running = store.read_status(run_id)
    assert worker_pid(running) == 123 and "started" in running
    store.update_status(run_id, "finished")
    done = store.read_status(run_id)
    assert "job" not in done and done["ended"] >= done["started"]


def test_checkpoint_round_trip_and_truncation(store, tiny_config):
    from vae.execution.checkpoint import make_checkpoint
    from vae.learn.engine import new_state

    run_id = store.create_run(tiny_config)
    state = new_state(tiny_config, (1, 28, 28), torch.device("cpu"))
    save_run_checkpoint(
        store, run_id, make_checkpoint(tiny_config, state, (1, 28, 28), {}), final=True
    )
    checkpoint = torch.load(store.path(run_id, "final.pt"), weights_only=True)
    assert checkpoint["config"] == tiny_config.to_dict()
    assert "optimizer_state" not in checkpoint  # final.pt is the slim, shareable file
    assert checkpoint_problem(store, run_id) is None
    path = store.path(run_id, "model.pt")
    path.write_bytes(path.read_bytes()[:1000])  # truncated, as if the disk filled mid-write
    with pytest.raises(CheckpointError):
        read_checkpoint(path)
    assert "model.pt" in checkpoint_problem(store, run_id)
    assert load_run_checkpoint(store, run_id)["epoch"] == 0  # final.pt still loads


def test_a_run_whose_final_checkpoint_changed_on_disk_is_reported_not_used(store, tiny_config):
    from vae.execution.checkpoint import make_checkpoint
    from vae.learn.engine import new_state

    run_id = store.create_run(tiny_config)
    state = new_state(tiny_config, (1, 28, 28), torch.device("cpu"))
    save_run_checkpoint(
        store, run_id, make_checkpoint(tiny_config, state, (1, 28, 28), {}), final=True
    )
    path = store.path(run_id, "final.pt")
    path.write_bytes(with_byte_changed(path.read_bytes(), "/data/0", at=20))  # one bit of a weight
    assert torch.load(path, weights_only=True)  # torch alone loads it as another model
    problem = checkpoint_problem(store, run_id)
    assert problem.startswith("final.pt: the file is damaged: archive/data/0"), problem
    with pytest.raises(CheckpointError, match="does not match the checksum"):
        load_run_checkpoint(store, run_id)


def test_delete_run(store, tiny_config):
    run_id = store.create_run(tiny_config)
    store.delete_run(run_id)
    assert store.list_runs() == [] and not store.run_dir(run_id).exists()
    with pytest.raises(StoreError):
        store.delete_run(run_id)


def test_empty_or_missing_root(tmp_path):
    assert RunStore(tmp_path / "nothing-here").list_runs() == []
