"""The lesson's library side: unit counts, the demo's settings, the β gallery, the comparable
tradeoff plane and its slope −β theory, and the scales both sides of compare mode share."""

from __future__ import annotations

import json
import math

import numpy as np
import pandas as pd
import pytest
import torch
from helpers import train_run

from vae.execution.checkpoint import model_from_checkpoint, read_checkpoint
from vae.execution.store import RunStore
from vae.learn.config import RunConfig
from vae.learn.data import load_dataset
from vae.learn.evaluate import posterior_means
from vae.learn.objective import kl_per_dim
from vae.learn.thresholds import ACTIVE_UNIT_THRESHOLD, INFORMATIVE_KL_THRESHOLD
from vae.present import demo
from vae.present.charts import (
    dims_charts,
    dims_frame,
    dims_over_epochs,
    dims_scales,
    heatmap_chart,
    latent_map_extent,
)
from vae.present.gallery import checkpoint_pictures, gallery_frame, sweeps
from vae.present.tradeoff import (
    comparable_sets,
    curves_chart,
    curves_frame,
    elbo_label_position,
    elbo_levels,
    frontier_slopes,
    plot_domains,
    slope_segments,
    tradeoff_chart,
    tradeoff_frame,
)
from vae.present.units import (
    ACTIVE_ONLY,
    COLLAPSED,
    INFORMATIVE,
    unit_class,
    unit_counts,
)

SMALL = dict(hidden_dims=[32], latent_dim=4, epochs=2, batch_size=256, threads=1)


def train(store: RunStore, group: str | None = None, **settings) -> str:
    run_id = store.create_run(RunConfig(**{**SMALL, **settings}), group=group)
    assert train_run(store, run_id) == "finished"
    return run_id


@pytest.fixture(scope="module")
def lesson_store(tmp_path_factory):
    """A sweep of three β (group 'sweep-a'), then a single run with other epochs, trained for real."""
    store = RunStore(tmp_path_factory.mktemp("lesson") / "runs")
    for beta in (0.5, 4.0, 64.0):
        train(store, group="sweep-a", beta=beta)
    train(store, beta=1.0, epochs=1)
    return store


def _spec(chart) -> dict:
    return chart.to_dict()


def _layers(spec: dict) -> list[dict]:
    return spec.get("layer", [spec])


# ---- unit counts ------------------------------------------------------------------------------
def test_unit_class_separates_informative_active_only_and_collapsed():
    above_kl = INFORMATIVE_KL_THRESHOLD * 2
    below_kl = INFORMATIVE_KL_THRESHOLD / 2
    assert unit_class(above_kl, ACTIVE_UNIT_THRESHOLD * 10) == INFORMATIVE
    assert unit_class(below_kl, ACTIVE_UNIT_THRESHOLD * 2) == ACTIVE_ONLY
    assert unit_class(below_kl, ACTIVE_UNIT_THRESHOLD / 2) == COLLAPSED


def test_unit_counts_apply_both_thresholds_to_a_metrics_line():
    line = {
        "kl_per_dim": [1.2, 0.3, 0.04, 0.01, 0.0],  # two above 0.05 nats
        "mean_cov": [1.0, 0.2, 0.03, 0.02, 0.001],  # four above 0.01
    }
    counts = unit_counts(line)
    assert (counts.latent_dim, counts.informative, counts.active) == (5, 2, 4)


def test_unit_counts_of_a_trained_run_match_its_stored_active_units(lesson_store):
    for record in lesson_store.list_runs():
        for line in record.metrics:
            assert unit_counts(line).active == line["active_units"]  # same rule as the trainer
            assert unit_counts(line).informative == sum(
                k > INFORMATIVE_KL_THRESHOLD for k in line["kl_per_dim"]
            )


# ---- the demo's settings ------------------------------------------------------------------------
def test_demo_config_is_valid_and_uses_the_measured_epochs():
    config = demo.demo_config({})
    assert config.epochs == demo.DEMO_EPOCHS
    assert config.latent_dim == demo.DEMO_LATENT_DIM and config.name == demo.DEMO_NAME
    assert config.dataset == "digits" and config.objective == "beta"
    assert config.precision == "fp32"  # the README's table must not depend on the CPU's bf16


def test_linear_demo_config_has_a_closed_form():
    from vae.learn.theory import theory_exact

    config = demo.linear_demo_config({})
    assert theory_exact(config) and config.dataset == "gaussian"
    assert config.epochs == demo.LINEAR_DEMO_EPOCHS


def test_demo_epochs_can_be_shortened_through_the_environment():
    assert demo.demo_config({demo.DEMO_EPOCHS_ENV: " 3 "}).epochs == 3


@pytest.mark.parametrize("bad", ["three", "0", "-2", "1.5", "100000"])
def test_a_bad_demo_epochs_setting_is_refused_with_its_name(bad):
    with pytest.raises(demo.DemoSettingError, match=demo.DEMO_EPOCHS_ENV):
        demo.demo_epochs({demo.DEMO_EPOCHS_ENV: bad})


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
    path = lesson_store.checkpoint_path(record.run_id)
    pictures = checkpoint_pictures(path, seed=0)
    kl = record.last_metrics["kl_per_dim"]
    assert pictures.traversal_dim == int(np.argmax(kl))
    tile = 28 + 2
    assert pictures.samples.shape == (4 * tile + 2, 4 * tile + 2, 3)  # 16 samples, 4 x 4
    assert pictures.reconstructions.shape == (4 * tile + 2, 4 * tile + 2, 3)  # 8 pairs
    assert pictures.traversal.shape == (tile + 2, 9 * tile + 2, 3)  # one row of 9 values
    assert pictures.samples.dtype == np.uint8
    assert pictures.epoch == record.last_metrics["epoch"]
    again = checkpoint_pictures(path, seed=0)
    other = checkpoint_pictures(path, seed=1)
    assert np.array_equal(again.samples, pictures.samples)  # same seed: same draws
    assert not np.array_equal(other.samples, pictures.samples)
    # The traversal row really varies: its first and last images differ.
    first, last = pictures.traversal[:, 2:tile], pictures.traversal[:, -tile:-2]
    assert np.abs(first.astype(int) - last.astype(int)).sum() > 0


def test_checkpoint_pictures_of_an_old_checkpoint_measure_the_kl(lesson_store, tmp_path):
    record = sweeps(lesson_store.list_runs())[0].runs[0]
    checkpoint = read_checkpoint(lesson_store.checkpoint_path(record.run_id))
    checkpoint["metrics"] = {}  # as written before per-dimension KL was kept in checkpoints
    old = tmp_path / "old.pt"
    torch.save(checkpoint, old)
    model = model_from_checkpoint(checkpoint)
    mu, logvar = posterior_means(model, load_dataset("digits").test.x[:1000])
    expected = int(torch.argmax(kl_per_dim(mu.double(), logvar.double()).mean(0)))
    assert checkpoint_pictures(old).traversal_dim == expected


# ---- the tradeoff plane -------------------------------------------------------------------------
def test_comparable_sets_start_on_the_latest_sweep(lesson_store):
    sets = comparable_sets(lesson_store.list_runs())
    sweep_ids = {r.run_id for r in lesson_store.list_runs() if r.status.get("group")}
    assert set(sets[0].run_ids) == sweep_ids  # although the single run is newer
    assert len(sets) == 2 and "2 epochs" in sets[0].label and "1 epochs" in sets[1].label


def test_tradeoff_chart_labels_beta_formats_tooltips_and_keeps_labels_inside(lesson_store):
    frame = tradeoff_frame(lesson_store.list_runs())
    spec = _spec(tradeoff_chart(frame))
    points = _layers(spec)[-1]
    color = points["encoding"]["color"]
    assert color["title"] == "β" and color["scale"]["type"] == "log"
    assert color["legend"]["format"] == "~g"
    tooltips = {t["title"]: t for t in points["encoding"]["tooltip"]}
    assert tooltips["β"]["format"] == "~g"
    assert "name" not in {t["field"] for t in points["encoding"]["tooltip"]}
    x_domain, y_domain = plot_domains(frame)
    datasets = spec["datasets"]
    labels = [
        row
        for layer in _layers(spec)
        if layer["mark"].get("type") == "text"
        for row in datasets[layer["data"]["name"]]
    ]
    assert labels, "expected equal-ELBO labels"
    for row in labels:
        level = float(row["level"].split("= ")[1])
        assert math.isclose(row["rate"] + row["distortion"], level)  # on its own line
        assert x_domain[0] <= row["rate"] < x_domain[1]
        assert y_domain[0] <= row["distortion"] < y_domain[1]  # never below the x axis


def test_elbo_label_position_leaves_room_above_and_right():
    x_domain, y_domain = [0.0, 20.0], [100.0, 200.0]
    for level in elbo_levels(pd.DataFrame({"neg_elbo": [110.0, 215.0]})):
        position = elbo_label_position(level, x_domain, y_domain)
        if position is None:
            continue
        rate, distortion = position
        assert rate <= x_domain[1] - 20.0 * 100 / 900  # room for the text to the right
        assert distortion <= y_domain[1] - 100.0 * 20 / 460  # room above


def test_slope_segments_have_slope_minus_beta(lesson_store):
    frame = tradeoff_frame(lesson_store.list_runs())
    x_domain, y_domain = plot_domains(frame)
    segments = slope_segments(frame, x_domain, y_domain)
    for run_id, seg in segments.groupby("run_id"):
        beta = float(frame.loc[frame["run_id"] == run_id, "beta"].iloc[0])
        (r0, d0), (r1, d1) = seg[["rate", "distortion"]].to_numpy()
        assert math.isclose((d1 - d0) / (r1 - r0), -beta, rel_tol=1e-9)
        point = frame.loc[frame["run_id"] == run_id, ["rate", "distortion"]].iloc[0]
        assert math.isclose((r0 + r1) / 2, point["rate"])  # centred on its run


def _frontier(betas, c=100.0):
    """Points at the optimum of D + βR on the frontier D = c / R: R* = sqrt(c / β)."""
    rate = [math.sqrt(c / b) for b in betas]
    return pd.DataFrame({"beta": betas, "rate": rate, "distortion": [c / r for r in rate]})


def test_frontier_slopes_lie_between_minus_beta_on_a_convex_frontier():
    slopes = frontier_slopes(_frontier([0.5, 1, 2, 4, 8]))
    assert len(slopes) == 4 and slopes["within"].all()
    for row in slopes.itertuples():
        assert -row.beta_high < row.slope < -row.beta_low


def test_frontier_slopes_flag_points_off_the_optimum():
    frame = _frontier([1, 4])
    frame.loc[1, "distortion"] += 50.0  # β = 4 trained badly: far above the frontier
    assert not frontier_slopes(frame)["within"].any()


def test_curves_show_train_and_test_in_the_planes_colours(lesson_store):
    records = [r for r in lesson_store.list_runs() if r.status.get("group")]
    frame = curves_frame(records, ("test", "train"))
    assert set(frame["split"]) == {"test", "train"}
    last = records[0].metrics[-1]
    train_elbo = frame[
        (frame["split"] == "train") & (frame["quantity"] == "−ELBO") & (frame["epoch"] == 2)
        & (frame["beta"] == records[0].config.beta)
    ]["nats"]  # fmt: skip
    assert math.isclose(train_elbo.iloc[0], last["train_rate"] + last["train_distortion"])
    plane = tradeoff_frame(records)
    domain = [0.5, 64.0]
    spec = _spec(curves_chart(frame, domain))
    curve_color = spec["spec"]["encoding"]["color"]
    point_color = _layers(_spec(tradeoff_chart(plane)))[-1]["encoding"]["color"]
    assert curve_color["field"] == point_color["field"] == "beta_plot"
    assert curve_color["scale"]["domain"] == point_color["scale"]["domain"] == domain


# ---- compare mode: shared scales ----------------------------------------------------------------
def test_dims_scales_cover_both_runs_and_fix_both_charts(lesson_store):
    sweep = sweeps(lesson_store.list_runs())[0]
    low, high = sweep.runs[0], sweep.runs[-1]
    scales = dims_scales([low.metrics, high.metrics])
    largest_kl = max(max(low.last_metrics["kl_per_dim"]), max(high.last_metrics["kl_per_dim"]))
    assert scales.kl_max >= largest_kl and scales.var_max >= 1.0
    domains = []
    for record in (low, high):
        kl_chart, var_chart = dims_charts(dims_frame(record.last_metrics), scales)
        kl_spec, var_spec = _spec(kl_chart), _spec(var_chart)
        domains.append(
            (
                _layers(kl_spec)[0]["encoding"]["y"]["scale"]["domain"],
                _layers(var_spec)[0]["encoding"]["y"]["scale"]["domain"],
            )
        )
        heat = _spec(
            heatmap_chart(
                dims_over_epochs(record.metrics, "kl_per_dim"),
                "kl_per_dim",
                scales.heat_max["kl_per_dim"],
            )
        )
        assert heat["encoding"]["color"]["scale"]["domain"] == [0, scales.heat_max["kl_per_dim"]]
    assert domains[0] == domains[1]


def test_dims_frame_marks_units_by_both_tests():
    frame = dims_frame(
        {"kl_per_dim": [0.5, 0.01, 0.0], "posterior_var": [0.2, 0.9, 1.0],
         "mean_cov": [0.6, 0.02, 0.0]}
    )  # fmt: skip
    assert list(frame["unit"]) == [INFORMATIVE, ACTIVE_ONLY, COLLAPSED]
    assert list(frame["active"]) == [True, True, False]


def test_latent_map_extent_is_one_symmetric_range_over_both_frames():
    a = pd.DataFrame({"z1": [-0.2, 0.1], "z2": [0.0, 0.2]})
    b = pd.DataFrame({"z1": [-3.0, 1.0], "z2": [0.5, 2.5]})
    low, high = latent_map_extent([a, b])
    assert low == -high and high >= 3.0


def test_metrics_lines_hold_what_the_counts_need(lesson_store):
    """Old runs work: the counts come only from kl_per_dim and mean_cov of each metrics line."""
    record = lesson_store.list_runs()[0]
    lines = [json.loads(x) for x in lesson_store.path(record.run_id, "metrics.jsonl").open()]
    assert all({"kl_per_dim", "mean_cov", "posterior_var"} <= line.keys() for line in lines)
