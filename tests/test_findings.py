"""The smaller findings of issue #22, each on real files: refusals in the app's own words,
checkpoint counters type-checked, metrics epochs increasing and bounded, unit counts within the
latent size, a run's checkpoint matching its config, an empty status.json, a heartbeat dated in
the future, and a gallery that draws a bounded number of rows."""

from __future__ import annotations

import io
import json
import os
import time
import zipfile

import pytest
import torch
from helpers import train_run

from vae.execution import lease
from vae.execution.checkpoint import (
    CheckpointError,
    checkpoint_bytes,
    checkpoint_problem,
    load_run_checkpoint,
    read_checkpoint,
)
from vae.execution.schema import MAX_EPOCH
from vae.execution.store import RunStore
from vae.learn.config import RunConfig
from vae.learn.model import build_model
from vae.present.gallery import GALLERY_MAX_ROWS, Sweep, evenly, shown_rows
from vae.present.text import refusal_text

TORCH_WORDS = ("std::", "aten::", "inline_container", ".cc:", "recursion depth", "weights_only",
               "SparseCPU", "Expecting value")  # fmt: skip


def good_checkpoint(**changes) -> dict:
    config = RunConfig(hidden_dims=[16], latent_dim=2)
    return {
        "format": "beta-vae-dashboard/checkpoint-v1", "config": config.to_dict(),
        "image_shape": [1, 28, 28], "epoch": 1, "step": 10,
        "model_state": build_model(config, (1, 28, 28)).state_dict(), "metrics": {"rate": 1.0},
        **changes,
    }  # fmt: skip


def refusal(data: bytes) -> str:
    with pytest.raises(CheckpointError) as caught:
        read_checkpoint(data)
    message = str(caught.value)
    assert not any(word in message for word in TORCH_WORDS), message
    return message


def without_entry(data: bytes, suffix: str) -> bytes:
    """The same archive with one stored entry left out (a storage torch will look for)."""
    source, out = zipfile.ZipFile(io.BytesIO(data)), io.BytesIO()
    with zipfile.ZipFile(out, "w", zipfile.ZIP_STORED) as target:
        for entry in source.infolist():
            if not entry.filename.endswith(suffix):
                target.writestr(entry, source.read(entry))
    return out.getvalue()


def test_a_missing_storage_is_refused_in_our_words():
    message = refusal(without_entry(checkpoint_bytes(good_checkpoint()), "/data/0"))
    assert message.startswith("not a loadable checkpoint")


def test_sparse_weights_are_refused_in_our_words():
    checkpoint = good_checkpoint()
    key = next(iter(checkpoint["model_state"]))
    checkpoint["model_state"][key] = checkpoint["model_state"][key].to_sparse()
    assert "sparse" in refusal(checkpoint_bytes(checkpoint))


@pytest.mark.parametrize(
    "changes, words",
    [
        ({"epoch": True}, "epoch must be a whole number"),
        ({"step": float("nan")}, "step must be a whole number"),
        ({"epoch": 10**18}, "epoch must be a whole number from 0"),
        ({"step": -1}, "step must be"),
    ],
)
def test_checkpoint_counters_are_type_checked(changes, words):
    assert words in refusal(checkpoint_bytes(good_checkpoint(**changes)))


def test_a_refusal_is_not_prefixed_twice():
    assert refusal_text("refused: its data.pkl is over 4 MiB") == "its data.pkl is over 4 MiB"
    assert refusal_text("the file is empty") == "the file is empty"


# ---- run files ---------------------------------------------------------------------------------
@pytest.fixture
def trained(store, tiny_config):
    config = RunConfig.from_dict({**tiny_config.to_dict(), "epochs": 2})
    run_id = store.create_run(config)
    assert train_run(store, run_id) == "finished"
    return run_id


def metrics_lines(store, run_id) -> list[str]:
    return store.path(run_id, "metrics.jsonl").read_text().splitlines(keepends=True)


def test_a_repeated_last_metrics_line_is_damage_and_each_epoch_is_read_once(store, trained):
    path = store.path(trained, "metrics.jsonl")
    lines = metrics_lines(store, trained)
    path.write_text("".join(lines) + lines[-1])
    record = store.get(trained)
    assert record.broken and "epoch 2 does not follow epoch 2" in record.broken
    assert [row["epoch"] for row in store.read_metrics(trained)] == [1, 2]  # the CSV, the CLI


@pytest.mark.parametrize(
    "field, value, words",
    [
        ("epoch", 10**18, f"from 1 to {MAX_EPOCH:,}"),
        ("active_units", 1e30, "active_units must be a whole number"),
        ("active_units", 50, "at most the 4 latent dimensions"),
    ],
)
def test_metrics_values_beyond_their_bounds_are_damage(store, trained, field, value, words):
    path = store.path(trained, "metrics.jsonl")
    lines = metrics_lines(store, trained)
    last = json.loads(lines[-1])
    last[field] = value
    path.write_text("".join(lines[:-1]) + json.dumps(last) + "\n")
    record = RunStore(store.root).get(trained)  # a server started now
    assert record.broken and words in record.broken, record.broken


def test_another_runs_checkpoint_copied_into_a_run_is_refused(store, trained, tiny_config):
    other = store.create_run(RunConfig.from_dict({**tiny_config.to_dict(), "beta": 4.0}))
    assert train_run(store, other) == "finished"
    store.path(trained, "final.pt").write_bytes(store.path(other, "final.pt").read_bytes())
    assert "final.pt was not trained by this run" in checkpoint_problem(store, trained)
    assert "beta" in checkpoint_problem(store, trained)
    with pytest.raises(CheckpointError, match="not trained by this run"):
        load_run_checkpoint(store, trained)
    assert checkpoint_problem(store, other) is None


def test_an_empty_status_file_is_named_in_our_words(store, tiny_config):
    run_id = store.create_run(tiny_config)
    store.path(run_id, "status.json").write_bytes(b"")
    broken = store.get(run_id).broken
    assert broken and "status.json is empty" in broken
    assert not any(word in broken for word in TORCH_WORDS)


def test_a_heartbeat_dated_in_the_future_does_not_hide_a_stalled_holder(
    store, tiny_config, monkeypatch
):
    run_dir = store.run_dir(store.create_run(tiny_config))
    holder = lease.Lease(run_dir)
    assert holder.acquire()
    try:
        future = time.time() + 365 * 86400
        os.utime(run_dir / "lease", (future, future))  # and then no more touches
        monkeypatch.setattr(lease, "STALL_AFTER_S", 0.5)
        time.sleep(1.0)
        assert lease.stalled_for(run_dir) is not None
        holder.beat(force=True)  # a live holder's touch clears it
        assert lease.stalled_for(run_dir) is None
    finally:
        holder.release()


# ---- the β gallery of a very large sweep ---------------------------------------------------------
def test_the_gallery_draws_a_bounded_number_of_rows():
    runs = list(range(10_000))
    picked = evenly(runs, GALLERY_MAX_ROWS)
    assert len(picked) == GALLERY_MAX_ROWS and picked[0] == 0 and picked[-1] == 9_999
    shown, note = shown_rows(Sweep("g", runs))
    assert len(shown) == GALLERY_MAX_ROWS and "10,000 runs" in note
    assert shown_rows(Sweep("g", runs[:5])) == (runs[:5], None)


def test_torch_is_imported():  # the checks above ran real torch files
    assert torch.__version__
