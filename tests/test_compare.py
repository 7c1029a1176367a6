"""Like with like, on real runs: sweeps that differ only in learning rate are two sets, replicates
are drawn as means with spreads, the runs table shows every setting and only the differing ones
on request, and tags and notes go both ways between the CLI and the app."""

from __future__ import annotations

import csv
import io
import json
import statistics

import pytest
from helpers import open_app, train_run

from vae import cli
from vae.execution.states import RunState
from vae.execution.store import RunStore
from vae.learn.config import RunConfig
from vae.present import runs_table as rt
from vae.present.gallery import gallery_frame, sweeps, unit_ranges
from vae.present.tradeoff import (
    comparable_key,
    comparable_sets,
    frontier_slopes,
    replicate_frame,
    slopes_apply,
    tradeoff_chart,
    tradeoff_frame,
)
from vae.present.views import difference_text, metrics_csv


def tiny(**changes) -> RunConfig:
    base = dict(hidden_dims=[32], latent_dim=3, epochs=1, batch_size=256, threads=1)
    return RunConfig(**{**base, "precision": "fp32", **changes})


@pytest.fixture(scope="module")
def two_sweeps(tmp_path_factory):
    """Sweep A: lr 1e-3, β 0.5 and 2, seeds 0 and 1 (replicates). Sweep B: lr 3e-3, β 0.5 and 2."""
    store = RunStore(tmp_path_factory.mktemp("compare") / "runs")
    ids = {}
    for group, lr, seeds in (("sweep-a", 1e-3, (0, 1)), ("sweep-b", 3e-3, (0,))):
        for seed in seeds:
            for beta in (0.5, 2.0):
                run_id = store.create_run(tiny(lr=lr, beta=beta, seed=seed), group=group)
                assert train_run(store, run_id) == "finished"
                ids[(lr, beta, seed)] = run_id
    return store, ids


def test_sweeps_that_differ_only_in_lr_are_two_sets(two_sweeps, monkeypatch):
    store, ids = two_sweeps
    sets = comparable_sets(store.list_runs())
    assert len(sets) == 2
    members = {frozenset(s.run_ids) for s in sets}
    assert frozenset(v for k, v in ids.items() if k[0] == 1e-3) in members
    assert frozenset(v for k, v in ids.items() if k[0] == 3e-3) in members
    labels = sorted(s.label for s in sets)
    assert "lr 0.003" in labels[1] and "lr" not in labels[0], labels  # 1e-3 is the default
    at = open_app(monkeypatch, store.root, "pages/tradeoff.py")
    options = at.selectbox(key="tradeoff_set").options
    assert len(options) == 3  # two sets and "every run"
    assert any("lr 0.003" in o for o in options)
    assert not at.exception


def test_replicates_are_means_with_spreads(two_sweeps):
    store, ids = two_sweeps
    records = store.list_runs()
    key = comparable_key(store.get(ids[(1e-3, 0.5, 0)]))
    frame = tradeoff_frame([r for r in records if comparable_key(r) == key])
    means = replicate_frame(frame).set_index("beta")
    for beta in (0.5, 2.0):
        one, two = (store.get(ids[(1e-3, beta, s)]).last_metrics for s in (0, 1))
        rates, dists = [one["rate"], two["rate"]], [one["distortion"], two["distortion"]]
        row = means.loc[beta]
        assert row["n"] == 2 and row["seeds"] == "0, 1"
        assert row["rate"] == pytest.approx((rates[0] + rates[1]) / 2)
        assert row["distortion"] == pytest.approx((dists[0] + dists[1]) / 2)
        assert row["rate_sd"] == pytest.approx(statistics.stdev(rates))
        assert row["distortion_sd"] == pytest.approx(abs(dists[0] - dists[1]) / 2**0.5)
        assert row["rate_low"] == pytest.approx(row["rate"] - row["rate_sd"])
    # The chord verdict uses the means of the replicates.
    (chord,) = frontier_slopes(frame).itertuples()
    d_rate = means.loc[2.0, "rate"] - means.loc[0.5, "rate"]
    d_dist = means.loc[2.0, "distortion"] - means.loc[0.5, "distortion"]
    assert chord.slope == pytest.approx(d_dist / d_rate)
    assert slopes_apply(frame)
    tradeoff_chart(frame, show_slopes=True).to_dict()  # error bars and means draw
    # The gallery: the range of unit counts per β across seeds.
    (sweep,) = [s for s in sweeps(records) if s.group == "sweep-a"]
    assert sweep.seeds == 2 and "× 2 seeds" in sweep.label()
    ranges = unit_ranges(gallery_frame(sweep)).set_index("beta")
    counts = [
        rt.final_metrics(store.get(ids[(1e-3, 0.5, s)]))["informative"] for s in (0, 1)
    ]  # fmt: skip
    low, high = min(counts), max(counts)
    assert ranges.loc[0.5, "informative"] == (str(low) if low == high else f"{low}–{high}")


def test_slopes_only_for_objectives_of_the_form_d_plus_beta_r(two_sweeps):
    store, ids = two_sweeps
    frame = tradeoff_frame([store.get(ids[(1e-3, 0.5, 0)])])
    assert slopes_apply(frame)
    frame["linear"] = False  # as a free-bits or capacity run's row reads
    assert not slopes_apply(frame)


def test_the_diff_shows_only_differing_settings(two_sweeps, monkeypatch):
    store, ids = two_sweeps
    rows = {r["run"]: r for r in rt.rows_of(store.list_runs(), store.read_labels)}
    a, b = rows[ids[(1e-3, 0.5, 0)]], rows[ids[(3e-3, 0.5, 0)]]
    assert [d["setting"] for d in rt.diff_rows([a, b])] == ["Learning rate"]
    c = rows[ids[(1e-3, 2.0, 1)]]
    assert [d["setting"] for d in rt.diff_rows([a, c])] == ["β", "Seed"]
    first, second, third = (store.get(r["run"]).config for r in (a, b, c))
    assert difference_text(first, second) == (
        "Differ in lr (0.001 → 0.003): not like with like: they differ in more than β and seed."
    )
    assert difference_text(first, third) == "Differ in β (0.5 → 2), Seed (0 → 1): like with like."
    at = open_app(monkeypatch, store.root, "pages/runs.py")
    at.multiselect(key="runs_compare").set_value([a["run"], b["run"]]).run()
    diff = at.dataframe[-1].value
    assert list(diff["setting"]) == ["Learning rate"]
    assert list(diff[b["run"]]) == ["0.003"]
    assert not at.exception


def test_tags_and_notes_round_trip_between_cli_and_app(two_sweeps, monkeypatch, capsys):
    store, ids = two_sweeps
    run_id = ids[(3e-3, 2.0, 0)]
    monkeypatch.setenv("VAE_STORE", str(store.root))
    assert cli.main(["tag", run_id, "--add", "baseline", "high lr"]) == 0
    assert cli.main(["note", run_id, "**not bold** <b>x</b>"]) == 0
    at = open_app(monkeypatch, store.root, "pages/runs.py")
    table = at.dataframe[0].value
    row = table[table["run"] == run_id].iloc[0]
    assert row["tags"] == "baseline, high lr"
    at.multiselect(key="runs_tags").set_value(["baseline"]).run()
    assert list(at.dataframe[0].value["run"]) == [run_id]
    at.selectbox(key="runs_label_run").set_value(run_id).run()
    assert "**not bold** <b>x</b>" in [t.value for t in at.text]  # as text, not markup
    at.text_input(key=f"runs_tag_text-{run_id}").set_value("baseline, from app")
    at.text_area(key=f"runs_note_text-{run_id}").set_value("written in the app")
    next(b for b in at.button if b.label == "Save tags and note").click().run()
    assert not at.exception
    capsys.readouterr()
    assert cli.main(["list", "--json", "--tag", "from app"]) == 0
    (listed,) = json.loads(capsys.readouterr().out)
    assert listed["run"] == run_id and listed["tags"] == ["baseline", "from app"]
    assert listed["note"] == "written in the app"


def test_list_shows_differing_settings_and_filters(two_sweeps, monkeypatch, capsys):
    store, ids = two_sweeps
    monkeypatch.setenv("VAE_STORE", str(store.root))
    assert cli.main(["list"]) == 0
    out = capsys.readouterr().out.splitlines()
    assert "lr" in out[0] and "seed" in out[0] and "batch" not in out[0]
    assert len(out) == 1 + len(ids)
    assert cli.main(["list", "--filter", "lr=0.003", "--filter", "beta=2"]) == 0
    rows = capsys.readouterr().out.splitlines()[1:]
    assert [r.split()[0] for r in rows] == [ids[(3e-3, 2.0, 0)]]
    assert cli.main(["list", "--filter", "nonsense=1"]) == 2


def test_csvs_carry_every_setting_and_the_run_id(two_sweeps):
    store, ids = two_sweeps
    run_id = ids[(3e-3, 0.5, 0)]
    record = store.get(run_id)
    per_epoch = list(csv.DictReader(io.StringIO(metrics_csv(
        store.read_metrics(run_id), run_id, record.config).decode())))  # fmt: skip
    assert per_epoch[0]["run"] == run_id and per_epoch[0]["lr"] == "0.003"
    assert per_epoch[0]["hidden_dims"] == "32" and "rate" in per_epoch[0]
    rows = rt.rows_of(store.list_runs(), store.read_labels)
    table = list(csv.DictReader(io.StringIO(rt.to_csv(rows).decode())))
    assert len(table) == len(ids)
    for name in RunConfig().to_dict():
        assert name in table[0], name
    mine = next(r for r in table if r["run"] == run_id)
    assert float(mine["rate"]) == pytest.approx(record.last_metrics["rate"])
    assert mine["gaussian_std"] == ""  # blank where a setting does not apply


def test_delete_asks_first_and_stays_on_the_neighbouring_run(tmp_path, monkeypatch):
    store = RunStore(tmp_path / "runs")
    run_ids = [store.create_run(tiny(seed=s)) for s in range(3)]
    for run_id in run_ids:  # stopped runs: the app's scheduler starts none of them
        store.update_status(run_id, RunState.CANCELLED, "for the test")
    at = open_app(monkeypatch, store.root, "pages/checkpoints.py", run=run_ids[0])
    assert at.selectbox(key="pick_run").value == run_ids[0]
    assert [r.run_id for r in store.list_runs()] == run_ids  # nothing deleted before the click
    at.button(key="confirm-delete").click().run()
    assert not at.exception
    assert [r.run_id for r in store.list_runs()] == run_ids[1:]
    assert at.selectbox(key="pick_run").value == run_ids[1]  # the next one, not the newest
    assert at.query_params["run"] == run_ids[1]
    assert any(f"Deleted {run_ids[0]}" in s.value for s in at.success)


def test_the_gallery_shows_each_seed_and_the_ranges(two_sweeps, monkeypatch):
    store, ids = two_sweeps
    at = open_app(monkeypatch, store.root, "pages/gallery.py")
    picker = at.selectbox(key="gallery_sweep")
    assert sum("× 2 seeds" in o for o in picker.options) == 1  # sweep A's label, not B's
    picker.select("sweep-a").run()
    assert not at.exception, [e.message for e in at.exception]
    assert any("2 seeds per β" in c.value for c in at.caption)
    headings = [m.value for m in at.markdown if m.value.startswith("#### β")]
    assert headings == ["#### β = 0.5 · seed 0", "#### β = 0.5 · seed 1",
                        "#### β = 2 · seed 0", "#### β = 2 · seed 1"]  # fmt: skip
