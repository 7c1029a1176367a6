"""vae.present.units: which dimensions a run uses, by both counts."""

from __future__ import annotations

import json

from vae.learn.thresholds import ACTIVE_UNIT_THRESHOLD, INFORMATIVE_KL_THRESHOLD
from vae.present.units import (
    ACTIVE_ONLY,
    COLLAPSED,
    INFORMATIVE,
    unit_class,
    unit_counts,
)


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
        for line in lesson_store.epoch_rows(record):
            assert unit_counts(line).active == line["active_units"]  # same rule as the trainer
            assert unit_counts(line).informative == sum(
                k > INFORMATIVE_KL_THRESHOLD for k in line["kl_per_dim"]
            )


def test_metrics_lines_hold_what_the_counts_need(lesson_store):
    """Old runs work: the counts come only from kl_per_dim and mean_cov of each metrics line."""
    record = lesson_store.list_runs()[0]
    lines = [json.loads(x) for x in lesson_store.path(record.run_id, "metrics.jsonl").open()]
    assert all({"kl_per_dim", "mean_cov", "posterior_var"} <= line.keys() for line in lines)
