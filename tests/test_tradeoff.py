"""The lesson's library side: unit counts, the demo's settings, the β gallery, the comparable
tradeoff plane and its slope −β theory, and the scales both sides of compare mode share."""

from __future__ import annotations

import math

import pandas as pd
from helpers import chart_layers, chart_spec

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


# ---- the tradeoff plane -------------------------------------------------------------------------
def test_comparable_sets_start_on_the_latest_sweep(lesson_store):
    sets = comparable_sets(lesson_store.list_runs())
    sweep_ids = {r.run_id for r in lesson_store.list_runs() if r.status.get("group")}
    assert set(sets[0].run_ids) == sweep_ids  # although the single run is newer
    assert len(sets) == 2 and "2 epochs" in sets[0].label and "1 epochs" in sets[1].label


def test_tradeoff_chart_labels_beta_formats_tooltips_and_keeps_labels_inside(lesson_store):
    frame = tradeoff_frame(lesson_store.list_runs())
    spec = chart_spec(tradeoff_chart(frame))
    points = chart_layers(spec)[-1]
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
        for layer in chart_layers(spec)
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
    frame = curves_frame([(r, lesson_store.epoch_rows(r)) for r in records], ("test", "train"))
    assert set(frame["split"]) == {"test", "train"}
    last = records[0].last_metrics
    train_elbo = frame[
        (frame["split"] == "train") & (frame["quantity"] == "−ELBO") & (frame["epoch"] == 2)
        & (frame["beta"] == records[0].config.beta)
    ]["nats"]  # fmt: skip
    assert math.isclose(train_elbo.iloc[0], last["train_rate"] + last["train_distortion"])
    plane = tradeoff_frame(records)
    domain = [0.5, 64.0]
    spec = chart_spec(curves_chart(frame, domain))
    curve_color = spec["spec"]["encoding"]["color"]
    point_color = chart_layers(chart_spec(tradeoff_chart(plane)))[-1]["encoding"]["color"]
    assert curve_color["field"] == point_color["field"] == "beta_plot"
    assert curve_color["scale"]["domain"] == point_color["scale"]["domain"] == domain
