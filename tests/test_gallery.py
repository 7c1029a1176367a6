"""vae.present.gallery: sweeps, their rows and pictures."""

from __future__ import annotations

import shutil
from xml.etree import ElementTree

import numpy as np
import pytest
import torch
from helpers import SMALL

from vae.execution.checkpoint import CheckpointError, model_from_checkpoint, read_checkpoint
from vae.execution.store import RunStore
from vae.learn.config import RunConfig
from vae.learn.data import load_dataset
from vae.learn.evaluate import posterior_means
from vae.learn.objective import kl_per_dim
from vae.present.gallery import (
    checkpoint_pictures,
    gallery_frame,
    run_pictures,
    sweep_figure_svg,
    sweeps,
)
from vae.present.units import (
    unit_counts,
)


# ---- the β gallery ------------------------------------------------------------------------------
def test_sweeps_group_runs_sorted_by_beta_and_skip_single_runs(lesson_store):
    found = sweeps(lesson_store.list_runs())
    assert [s.group for s in found] == ["sweep-a"]
    assert found[0].betas == [0.5, 4.0, 64.0]
    assert "β = 0.5, 4, 64" in found[0].label() and "3/3 finished" in found[0].label()


def test_newest_sweep_comes_first(tmp_path):
    store = RunStore(tmp_path / "runs")
    old = [store.create_run(RunConfig(**SMALL, beta=b), group="sweep-old") for b in (1, 2)]
    new = [store.create_run(RunConfig(**SMALL, beta=b), group="sweep-new") for b in (2, 1)]
    found = sweeps(store.list_runs())
    assert [s.group for s in found] == ["sweep-new", "sweep-old"]
    assert [r.run_id for r in found[0].runs] == new[::-1]  # β order, not creation order
    assert {r.run_id for r in found[1].runs} == set(old)


def test_gallery_frame_has_both_counts_per_beta(lesson_store):
    sweep = sweeps(lesson_store.list_runs())[0]
    frame = gallery_frame(sweep)
    assert list(frame["beta"]) == [0.5, 4.0, 64.0]
    for record, row in zip(sweep.runs, frame.itertuples(), strict=True):
        counts = unit_counts(record.last_metrics)
        assert (row.informative, row.active) == (counts.informative, counts.active)
        assert row.rate == record.last_metrics["rate"]
    # β = 64 on 2 epochs leaves fewer informative dimensions than β = 0.5.
    assert frame["informative"].iloc[-1] < frame["informative"].iloc[0]


def test_checkpoint_pictures_show_the_dimension_with_the_largest_kl(lesson_store):
    sweep = sweeps(lesson_store.list_runs())[0]
    record = sweep.runs[0]
    pictures = run_pictures(lesson_store, record.run_id, seed=0)
    kl = record.last_metrics["kl_per_dim"]
    assert pictures.traversal_dim == int(np.argmax(kl))
    tile = 28 + 2
    assert pictures.samples.shape == (4 * tile + 2, 4 * tile + 2, 3)  # 16 samples, 4 x 4
    assert pictures.reconstructions.shape == (4 * tile + 2, 4 * tile + 2, 3)  # 8 pairs
    assert pictures.traversal.shape == (tile + 2, 9 * tile + 2, 3)  # one row of 9 values
    assert pictures.samples.dtype == np.uint8
    assert pictures.epoch == record.last_metrics["epoch"]
    again = run_pictures(lesson_store, record.run_id, seed=0)
    other = run_pictures(lesson_store, record.run_id, seed=1)
    assert np.array_equal(again.samples, pictures.samples)  # same seed: same draws
    assert not np.array_equal(other.samples, pictures.samples)
    # The traversal row really varies: its first and last images differ.
    first, last = pictures.traversal[:, 2:tile], pictures.traversal[:, -tile:-2]
    assert np.abs(first.astype(int) - last.astype(int)).sum() > 0


def test_checkpoint_pictures_of_an_old_checkpoint_measure_the_kl(lesson_store, tmp_path):
    record = sweeps(lesson_store.list_runs())[0].runs[0]
    checkpoint = read_checkpoint(lesson_store.checkpoint_path(record.run_id))
    checkpoint["metrics"] = {}  # as written before per-dimension KL was kept in checkpoints
    model = model_from_checkpoint(checkpoint)
    mu, logvar = posterior_means(model, load_dataset("digits").test.x[:1000])
    expected = int(torch.argmax(kl_per_dim(mu.double(), logvar.double()).mean(0)))
    assert checkpoint_pictures(checkpoint).traversal_dim == expected


def test_a_checkpoint_copied_in_from_another_run_is_not_drawn_in_its_row(lesson_store, tmp_path):
    """Another β's final.pt in a run's folder would show another model under this run's β."""
    shutil.copytree(lesson_store.root, tmp_path / "runs")
    store = RunStore(tmp_path / "runs")
    low, high = sweeps(store.list_runs())[0].runs[0], sweeps(store.list_runs())[0].runs[-1]
    shutil.copyfile(store.path(low.run_id, "final.pt"), store.path(high.run_id, "final.pt"))
    with pytest.raises(CheckpointError, match="final.pt was not trained by this run.*beta"):
        run_pictures(store, high.run_id)
    svg = sweep_figure_svg(sweeps(store.list_runs())[0], store)
    root = ElementTree.fromstring(svg)
    texts = [t.text or "" for t in root.iter() if t.tag.endswith("text")]
    assert any(t.startswith("cannot draw this run: final.pt was not trained") for t in texts)
    images = [e for e in root.iter() if e.tag.endswith("image")]
    assert len(images) == 2 * 3  # the other two rows keep their pictures
