"""vae.present.charts: the scales both sides of compare mode share, and the per-dimension frames."""

from __future__ import annotations

import pandas as pd
from helpers import chart_layers, chart_spec

from vae.present.charts import (
    dims_charts,
    dims_frame,
    dims_over_epochs,
    dims_scales,
    heatmap_chart,
    latent_map_extent,
)
from vae.present.gallery import sweeps
from vae.present.units import (
    ACTIVE_ONLY,
    COLLAPSED,
    INFORMATIVE,
)


# ---- compare mode: shared scales ----------------------------------------------------------------
def test_dims_scales_cover_both_runs_and_fix_both_charts(lesson_store):
    sweep = sweeps(lesson_store.list_runs())[0]
    low, high = sweep.runs[0], sweep.runs[-1]
    scales = dims_scales([lesson_store.epoch_rows(low), lesson_store.epoch_rows(high)])
    largest_kl = max(max(low.last_metrics["kl_per_dim"]), max(high.last_metrics["kl_per_dim"]))
    assert scales.kl_max >= largest_kl and scales.var_max >= 1.0
    domains = []
    for record in (low, high):
        kl_chart, var_chart = dims_charts(dims_frame(record.last_metrics), scales)
        kl_spec, var_spec = chart_spec(kl_chart), chart_spec(var_chart)
        domains.append(
            (
                chart_layers(kl_spec)[0]["encoding"]["y"]["scale"]["domain"],
                chart_layers(var_spec)[0]["encoding"]["y"]["scale"]["domain"],
            )
        )
        heat = chart_spec(
            heatmap_chart(
                dims_over_epochs(lesson_store.epoch_rows(record), "kl_per_dim"),
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
