"""Every page through Streamlit's AppTest: empty store, a store with runs, bad input refused."""

import contextlib
import json
import shutil
import threading
import time

import pandas as pd
import pytest
import streamlit as st
from helpers import APP, PAGES, open_app, train_run, wait_for
from streamlit import dataframe_util
from streamlit.testing.v1 import AppTest

import vae.present.views
from vae.execution.jobs import JobManager
from vae.execution.states import RunState
from vae.execution.store import RunStore, StoreError
from vae.learn.config import RunConfig
from vae.present.demo import DEMO_BETAS, DEMO_EPOCHS_ENV, DEMO_LATENT_DIM, DEMO_NAME
from vae.present.tradeoff import comparable_sets
from vae.present.units import unit_counts


@pytest.fixture(scope="module")
def trained_store(tmp_path_factory):
    """A store with two finished runs of different β (trained in-process, about a second each)."""
    store = RunStore(tmp_path_factory.mktemp("pages") / "runs")
    for beta in (0.5, 4.0):
        config = RunConfig(
            hidden_dims=[32], latent_dim=3, epochs=2, batch_size=256, beta=beta, threads=1
        )
        train_run(store, store.create_run(config))
    return store


@pytest.fixture
def cleanup_jobs():
    """Cancel whatever a test started, so no worker outlives it."""
    stores: list[RunStore] = []
    yield stores.append
    for store in stores:
        manager = JobManager(store)
        active = [r.run_id for r in manager.store.active_runs()]
        deadline = time.time() + 60
        while active and deadline > time.time():
            for run_id in list(active):
                with contextlib.suppress(StoreError):  # still starting: no pid to signal yet
                    manager.cancel(run_id)
                    active.remove(run_id)
            time.sleep(0.2)
        manager.wait([r.run_id for r in manager.store.active_runs()], timeout_s=60)
    st.cache_resource.clear()


@pytest.mark.parametrize("page", PAGES)
def test_every_page_renders_on_an_empty_store(monkeypatch, tmp_path, page):
    at = open_app(monkeypatch, tmp_path / "empty", page)
    assert not at.exception, [e.message for e in at.exception]
    if page != "pages/train.py" and page != "pages/kl_term.py":
        assert at.info, "an empty store should say how to start"


@pytest.mark.parametrize("page", PAGES)
def test_every_page_renders_with_runs(monkeypatch, trained_store, page):
    at = open_app(monkeypatch, trained_store.root, page)
    assert not at.exception, [e.message for e in at.exception]
    assert not at.error, [e.value for e in at.error]
    if page in ("pages/tradeoff.py", "pages/posterior.py", "pages/kl_term.py"):
        charts = at.get("vega_lite_chart")
        assert charts, "expected Altair charts"
    if page == "pages/samples.py":
        assert len(at.get("image")) >= 3


def test_tradeoff_chart_holds_every_run(monkeypatch, trained_store):
    at = open_app(monkeypatch, trained_store.root, "pages/tradeoff.py")
    spec = json.loads(at.get("vega_lite_chart")[0].proto.spec)
    params = spec.get("params", []) + [
        p for layer in spec["layer"] for p in layer.get("params", [])
    ]
    assert "pick" in {p["name"] for p in params}  # the click selection the page reads
    table = at.dataframe[0].value
    assert set(table["run"]) == {r.run_id for r in trained_store.list_runs()}


@pytest.mark.parametrize("bad", ["abc", "nan", "inf", "-1", "1e9"])
def test_train_refuses_a_bad_exact_beta(monkeypatch, tmp_path, bad):
    at = open_app(monkeypatch, tmp_path / "runs", "pages/train.py")
    beta = next(w for w in at.text_input if w.label.startswith("Exact β"))
    beta.input(bad).run()
    assert any("β" in e.value or "beta" in e.value for e in at.error)
    assert at.button(key="train_button").disabled
    assert at.button(key="sweep_button").disabled
    assert RunStore(tmp_path / "runs").list_runs() == []


@pytest.mark.parametrize("bad", ["1, two, 4", "", "1, nan", "-1 2", "1e9"])
def test_train_refuses_a_bad_sweep_list(monkeypatch, tmp_path, bad):
    at = open_app(monkeypatch, tmp_path / "runs", "pages/train.py")
    sweep = next(w for w in at.text_input if w.label.startswith("β values"))
    sweep.input(bad).run()
    assert any(e.value.startswith("Sweep:") for e in at.error)
    assert at.button(key="sweep_button").disabled
    assert not at.button(key="train_button").disabled  # a single run is still fine


@pytest.mark.parametrize(
    ("query", "field"),
    [({"beta": "nan"}, "beta"), ({"latent_dim": "10000"}, "latent_dim"), ({"epochs": "0"}, "epochs"),
     ({"dataset": "imagenet"}, "dataset"), ({"beta": "-3"}, "beta")],
)  # fmt: skip
def test_bad_query_values_are_ignored_with_a_message(monkeypatch, tmp_path, query, field):
    monkeypatch.setenv("VAE_STORE", str(tmp_path / "runs"))
    st.cache_resource.clear()
    at = AppTest.from_file(APP, default_timeout=60)
    at.switch_page("pages/train.py")
    for key, value in query.items():
        at.query_params[key] = value
    at.run()
    assert not at.exception
    assert any(field in w.value for w in at.warning), [w.value for w in at.warning]


@pytest.mark.parametrize("bad_id", ["../etc", "20260101-000000-ffffff", "<b>x</b>"])
def test_unknown_run_in_the_url_is_reported(monkeypatch, trained_store, bad_id):
    monkeypatch.setenv("VAE_STORE", str(trained_store.root))
    st.cache_resource.clear()
    at = AppTest.from_file(APP, default_timeout=60)
    at.switch_page("pages/posterior.py")
    at.query_params["run"] = bad_id
    at.run()
    assert not at.exception
    assert any("not found" in w.value for w in at.warning)
    assert at.query_params["run"] in {r.run_id for r in trained_store.list_runs()}  # a valid run


def test_query_run_selects_that_run(monkeypatch, trained_store):
    first = trained_store.list_runs()[0].run_id
    monkeypatch.setenv("VAE_STORE", str(trained_store.root))
    st.cache_resource.clear()
    at = AppTest.from_file(APP, default_timeout=60)
    at.switch_page("pages/posterior.py")
    at.query_params["run"] = first
    at.run()
    assert at.selectbox(key="pick_run").value == first


def test_train_button_puts_a_run_in_the_store(monkeypatch, tmp_path, cleanup_jobs):
    store = RunStore(tmp_path / "runs")
    cleanup_jobs(store)
    at = open_app(monkeypatch, store.root, "pages/train.py")
    next(w for w in at.text_input if w.label.startswith("Exact β")).input("3.5").run()
    at.button(key="train_button").click().run()
    assert not at.exception
    runs = store.list_runs()
    assert len(runs) == 1 and runs[0].config.beta == 3.5
    assert runs[0].state in ("queued", "running")
    assert any("Queued run" in s.value for s in at.success)


def test_cancel_and_resume_show_the_new_state_in_the_same_click(
    monkeypatch, tmp_path, cleanup_jobs
):
    """The buttons act before the jobs panel redraws: no stale row with the old button."""
    store = RunStore(tmp_path / "runs")
    cleanup_jobs(store)
    at = open_app(monkeypatch, store.root, "pages/train.py")
    next(w for w in at.text_input if w.label.startswith("Exact β")).input("3.5").run()
    at.button(key="train_button").click().run()
    (run_id,) = [r.run_id for r in store.list_runs()]
    wait_for(lambda: store.read_status(run_id)["state"] == "running", what="its worker started")
    at.run()

    at.button(key=f"cancel-{run_id}").click().run()
    assert store.read_status(run_id)["state"] == "cancelled"
    assert [b for b in at.button if b.key == f"resume-{run_id}"], "Resume shown at once"
    assert not [b for b in at.button if b.key == f"cancel-{run_id}"]

    at.button(key=f"resume-{run_id}").click().run()
    assert store.read_status(run_id)["state"] in ("queued", "running")
    assert [b for b in at.button if b.key == f"cancel-{run_id}"], "Cancel shown at once"
    assert not at.error, [e.value for e in at.error]


def test_resume_of_a_run_deleted_meanwhile_says_so_and_creates_nothing(monkeypatch, tmp_path):
    store = RunStore(tmp_path / "runs")
    config = RunConfig(hidden_dims=[16], latent_dim=2, epochs=1, batch_size=512, threads=1)
    run_id = store.create_run(config)
    store.update_status(run_id, RunState.CANCELLED, "cancelled while queued")
    at = open_app(monkeypatch, store.root, "pages/train.py")
    store.delete_run(run_id)  # by another tab, after this one drew its Resume button
    at.button(key=f"resume-{run_id}").click().run()
    assert not at.exception
    assert any(run_id in e.value for e in at.error), [e.value for e in at.error]
    assert not store.root.joinpath(run_id).exists()


def test_sweep_button_queues_one_run_per_beta(monkeypatch, tmp_path, cleanup_jobs):
    store = RunStore(tmp_path / "runs")
    cleanup_jobs(store)
    at = open_app(monkeypatch, store.root, "pages/train.py")
    next(w for w in at.text_input if w.label.startswith("β values")).input("0.5 2 8").run()
    at.button(key="sweep_button").click().run()
    assert not at.exception
    assert sorted(r.config.beta for r in store.list_runs()) == [0.5, 2.0, 8.0]


def test_run_names_are_shown_as_text_not_html(monkeypatch, tmp_path):
    store = RunStore(tmp_path / "runs")
    config = RunConfig(hidden_dims=[16], latent_dim=2, epochs=1, batch_size=512, threads=1)
    config.name = "<img src=x onerror=alert(1)> **bold**"
    train_run(store, store.create_run(config))
    for page in ("pages/train.py", "pages/checkpoints.py", "pages/posterior.py"):
        at = open_app(monkeypatch, store.root, page)
        assert not at.exception
        for md in at.markdown:
            assert "<img" not in md.value  # never passed to markdown, which could render it


# ---- the lesson: demo, gallery, honest unit counts, comparable views ---------------------------
@pytest.fixture(scope="module")
def sweep_store(tmp_path_factory):
    """A three-β sweep (one group), then a newer single run with other settings (1 epoch)."""
    store = RunStore(tmp_path_factory.mktemp("sweep") / "runs")
    small = dict(hidden_dims=[32], latent_dim=4, batch_size=256, threads=1)
    for beta in (0.5, 4.0, 64.0):
        run_id = store.create_run(RunConfig(**small, epochs=2, beta=beta), group="sweep-pages")
        train_run(store, run_id)
    train_run(store, store.create_run(RunConfig(**small, epochs=1, beta=1.0)))
    return store


def _spec(element) -> dict:
    return json.loads(element.proto.spec)


def _layers(spec: dict) -> list[dict]:
    return spec.get("layer", [spec])


def _chart_rows(element) -> pd.DataFrame:
    """Every data row a chart element carries (Streamlit sends them as Arrow, apart from the spec)."""
    frames = [
        dataframe_util.convert_arrow_bytes_to_pandas_df(d.data.data) for d in element.proto.datasets
    ]
    return pd.concat(frames, ignore_index=True) if frames else pd.DataFrame()


def _sweep(store):
    return sorted(
        (r for r in store.list_runs() if r.status.get("group")), key=lambda r: r.config.beta
    )


def test_demo_button_on_an_empty_store_queues_the_demo_sweep(monkeypatch, tmp_path, cleanup_jobs):
    store = RunStore(tmp_path / "runs")
    cleanup_jobs(store)
    monkeypatch.setenv(DEMO_EPOCHS_ENV, "1")
    at = open_app(monkeypatch, store.root, "pages/train.py")
    assert any("β demo" in h.value for h in at.subheader)
    at.button(key="demo_button").click().run()
    assert not at.exception, [e.message for e in at.exception]
    runs = store.list_runs()
    assert sorted(r.config.beta for r in runs) == list(DEMO_BETAS)
    assert len({r.status["group"] for r in runs}) == 1
    assert {(r.config.name, r.config.epochs, r.config.latent_dim) for r in runs} == {
        (DEMO_NAME, 1, DEMO_LATENT_DIM)
    }
    assert any("Queued the demo" in s.value for s in at.success)
    # The page does not rerun on the runs' progress, so the welcome block stays until the next
    # interaction; a second press of its button is that interaction, and starts nothing.
    at.button(key="demo_button").click().run()
    assert not at.exception, [e.message for e in at.exception]
    assert len(store.list_runs()) == len(DEMO_BETAS)
    assert not any("β demo" in h.value for h in at.subheader)
    at = open_app(monkeypatch, store.root, "pages/train.py")  # a later visit: no welcome block
    assert not any("β demo" in h.value for h in at.subheader)
    with pytest.raises(KeyError):
        at.button(key="demo_button")


def test_a_bad_demo_setting_starts_nothing(monkeypatch, tmp_path):
    monkeypatch.setenv(DEMO_EPOCHS_ENV, "lots")
    at = open_app(monkeypatch, tmp_path / "runs", "pages/train.py")
    at.button(key="demo_button").click().run()
    assert not at.exception
    assert any(DEMO_EPOCHS_ENV in e.value for e in at.error)
    assert RunStore(tmp_path / "runs").list_runs() == []


def test_gallery_has_one_row_per_beta_in_order(monkeypatch, sweep_store):
    at = open_app(monkeypatch, sweep_store.root, "pages/gallery.py")
    assert not at.exception, [e.message for e in at.exception]
    assert not at.error, [e.value for e in at.error]
    headings = [m.value for m in at.markdown if m.value.startswith("#### β = ")]
    assert headings == ["#### β = 0.5", "#### β = 4", "#### β = 64"]
    assert len(at.get("image")) == 3 * 3  # samples, reconstructions, traversal per row
    for record in _sweep(sweep_store):
        counts = unit_counts(record.last_metrics)
        text = f"informative: **{counts.informative}** / {counts.latent_dim}"
        assert any(text in m.value for m in at.markdown), text
    assert at.get("vega_lite_chart"), "expected the units-against-β chart"


def test_gallery_row_with_another_runs_checkpoint_says_so_and_draws_nothing(
    monkeypatch, sweep_store, tmp_path
):
    shutil.copytree(sweep_store.root, tmp_path / "runs")
    store = RunStore(tmp_path / "runs")
    low, *_, high = _sweep(store)
    shutil.copyfile(store.path(low.run_id, "final.pt"), store.path(high.run_id, "final.pt"))
    at = open_app(monkeypatch, store.root, "pages/gallery.py")
    assert not at.exception, [e.message for e in at.exception]
    warnings = [w.value for w in at.warning if "Cannot draw this run" in w.value]
    assert warnings and "final.pt was not trained by this run" in warnings[0], warnings
    assert len(at.get("image")) == 2 * 3  # the other rows keep their pictures


def test_gallery_seed_redraws_the_prior_samples(monkeypatch, sweep_store):
    at = open_app(monkeypatch, sweep_store.root, "pages/gallery.py")
    before = [i.proto.imgs[0].url for i in at.get("image")]
    at.number_input(key="gallery_seed").set_value(7).run()
    assert not at.exception
    after = [i.proto.imgs[0].url for i in at.get("image")]
    assert after[0] != before[0]  # prior samples change with the seed
    assert after[1] == before[1]  # reconstructions do not


def test_gallery_sweep_picker_switches_sweeps(monkeypatch, tmp_path):
    store = RunStore(tmp_path / "runs")
    small = dict(hidden_dims=[16], latent_dim=2, epochs=1, batch_size=512, threads=1)
    for group, betas in (("sweep-old", (1.0, 2.0)), ("sweep-new", (8.0, 16.0))):
        for beta in betas:
            train_run(store, store.create_run(RunConfig(**small, beta=beta), group=group))
    at = open_app(monkeypatch, store.root, "pages/gallery.py")
    assert at.selectbox(key="gallery_sweep").value == "sweep-new"
    at.selectbox(key="gallery_sweep").select("sweep-old").run()
    assert not at.exception
    headings = [m.value for m in at.markdown if m.value.startswith("#### β = ")]
    assert headings == ["#### β = 1", "#### β = 2"]


def test_gallery_without_a_sweep_says_how_to_start_one(monkeypatch, trained_store):
    at = open_app(monkeypatch, trained_store.root, "pages/gallery.py")
    assert not at.exception
    assert any("No β sweep yet" in i.value for i in at.info)


def test_samples_redraw_changes_the_seed_without_a_crash(monkeypatch, sweep_store):
    at = open_app(monkeypatch, sweep_store.root, "pages/samples.py")
    before = at.number_input(key="sample_seed").value
    for _ in range(2):  # the second press re-draws from a seed the widget already shows
        at.button(key="redraw").click().run()
        assert not at.exception, [e.message for e in at.exception]
    assert at.number_input(key="sample_seed").value != before
    at.number_input(key="sample_seed").set_value(3).run()
    assert not at.exception and at.number_input(key="sample_seed").value == 3


def test_samples_of_a_run_holding_another_runs_checkpoint_say_so(
    monkeypatch, sweep_store, tmp_path
):
    shutil.copytree(sweep_store.root, tmp_path / "runs")
    store = RunStore(tmp_path / "runs")
    newest = max(store.list_runs(), key=lambda r: r.status["created"])  # the page's first pick
    other = _sweep(store)[0]
    shutil.copyfile(store.path(other.run_id, "final.pt"), store.path(newest.run_id, "final.pt"))
    at = open_app(monkeypatch, store.root, "pages/samples.py")
    assert not at.exception, [e.message for e in at.exception]
    errors = [e.value for e in at.error]
    assert any("final.pt was not trained by this run" in e for e in errors), errors
    assert not at.get("image")  # no other run's model drawn under this run's name


def test_samples_compare_shares_the_latent_map_axes(monkeypatch, sweep_store):
    at = open_app(monkeypatch, sweep_store.root, "pages/samples.py")
    at.toggle[0].set_value(True).run()
    assert not at.exception, [e.message for e in at.exception]
    maps = [_spec(c) for c in at.get("vega_lite_chart")]
    assert len(maps) == 2
    domains = {json.dumps(m["encoding"][axis]["scale"]["domain"]) for m in maps for axis in "xy"}
    assert len(domains) == 1  # both axes of both maps: one range
    assert len(at.get("image")) == 2 * 3


def test_posterior_shows_both_unit_counts_with_their_thresholds(monkeypatch, sweep_store):
    high = _sweep(sweep_store)[-1]
    at = open_app(monkeypatch, sweep_store.root, "pages/posterior.py", run=high.run_id)
    assert not at.exception, [e.message for e in at.exception]
    counts = unit_counts(high.last_metrics)
    metrics = {m.label: m.value for m in at.metric}
    assert metrics["informative"] == f"{counts.informative} / {counts.latent_dim}"
    assert metrics["active"] == f"{counts.active} / {counts.latent_dim}"
    caption = " ".join(c.value for c in at.caption)
    assert "KLⱼ > 0.05 nats" in caption and "Cov_x(μⱼ) > 0.01" in caption
    assert "disagree" in caption


def test_posterior_compare_shares_axes_and_colour_ranges(monkeypatch, sweep_store):
    low, high = _sweep(sweep_store)[0], _sweep(sweep_store)[-1]
    at = open_app(
        monkeypatch, sweep_store.root, "pages/posterior.py", run=high.run_id, compare=low.run_id
    )
    assert not at.exception, [e.message for e in at.exception]
    assert at.toggle[0].value
    for field in ("posterior_var", "kl_per_dim"):
        at.radio(key="heatmap_field").set_value(field).run()
        assert not at.exception
        specs = [_spec(c) for c in at.get("vega_lite_chart")]
        assert len(specs) == 6  # KL bars, variance bars, heatmap on each side
        left, right = specs[:3], specs[3:]
        for a, b in zip(left[:2], right[:2], strict=True):
            domain = _layers(a)[0]["encoding"]["y"]["scale"]["domain"]
            assert domain == _layers(b)[0]["encoding"]["y"]["scale"]["domain"]
        heat = [s["encoding"]["color"]["scale"]["domain"] for s in (left[2], right[2])]
        assert heat[0] == heat[1]
    at.toggle[0].set_value(False).run()
    assert not at.exception and len(at.get("vega_lite_chart")) == 3


def _tradeoff_table_runs(at) -> set[str]:
    return set(at.dataframe[-1].value["run"])


def test_tradeoff_starts_on_the_latest_sweeps_settings(monkeypatch, sweep_store):
    at = open_app(monkeypatch, sweep_store.root, "pages/tradeoff.py")
    assert not at.exception, [e.message for e in at.exception]
    sweep_ids = {r.run_id for r in _sweep(sweep_store)}
    assert _tradeoff_table_runs(at) == sweep_ids  # the newer single run has other epochs
    sets = comparable_sets(sweep_store.list_runs())
    assert at.selectbox(key="tradeoff_set").value == sets[0].key
    at.selectbox(key="tradeoff_set").select("every run").run()
    assert not at.exception
    assert _tradeoff_table_runs(at) == {r.run_id for r in sweep_store.list_runs()}
    at.selectbox(key="tradeoff_set").select(sets[1].key).run()  # the single run's settings
    assert not at.exception
    assert _tradeoff_table_runs(at) == set(sets[1].run_ids) and len(sets[1].run_ids) == 1


def test_tradeoff_toggles_draw_the_theory_and_the_training_curves(monkeypatch, sweep_store):
    at = open_app(monkeypatch, sweep_store.root, "pages/tradeoff.py")
    plane = _spec(at.get("vega_lite_chart")[0])
    assert len(_layers(plane)) == 4  # equal-ELBO lines, their labels, sweep line, points
    at.toggle(key="show_slopes").set_value(True).run()
    assert not at.exception, [e.message for e in at.exception]
    plane = _spec(at.get("vega_lite_chart")[0])
    assert len(_layers(plane)) == 5  # + the slope −β segments
    assert any("chords between neighbouring β" in c.value for c in at.caption)
    slopes = at.dataframe[0].value
    assert len(slopes) == 2  # three β: two chords
    assert set(_chart_rows(at.get("vega_lite_chart")[1])["split"]) == {"test"}
    at.toggle(key="show_train").set_value(True).run()
    assert not at.exception
    assert set(_chart_rows(at.get("vega_lite_chart")[1])["split"]) == {"test", "train"}


def test_tradeoff_curve_picker_chooses_the_curves(monkeypatch, sweep_store):
    at = open_app(monkeypatch, sweep_store.root, "pages/tradeoff.py")
    picker = next(m for m in at.multiselect if m.label == "Runs to plot per epoch")
    assert set(picker.value) == {r.run_id for r in _sweep(sweep_store)}  # the set's runs
    first = _sweep(sweep_store)[0].run_id
    picker.set_value([first]).run()
    assert not at.exception
    assert set(_chart_rows(at.get("vega_lite_chart")[1])["beta"]) == {0.5}
    picker = next(m for m in at.multiselect if m.label == "Runs to plot per epoch")
    picker.set_value([]).run()
    assert not at.exception
    charts = at.get("vega_lite_chart")  # the plane and where the rate goes: no curves chart
    assert len(charts) == 2 and "split" not in _chart_rows(charts[1])


@pytest.mark.parametrize("page", ["pages/posterior.py", "pages/samples.py"])
def test_run_pickers_switch_the_run_shown(monkeypatch, sweep_store, page):
    low, high = _sweep(sweep_store)[0], _sweep(sweep_store)[-1]
    at = open_app(monkeypatch, sweep_store.root, page)
    at.selectbox(key="pick_run").select(low.run_id).run()
    assert not at.exception, [e.message for e in at.exception]
    assert at.query_params["run"] == low.run_id
    assert any(f"β = {low.config.beta:g} " in c.value for c in at.caption)
    at.toggle[0].set_value(True).run()
    at.selectbox(key="pick_compare").select(high.run_id).run()
    assert not at.exception, [e.message for e in at.exception]
    assert at.query_params["compare"] == high.run_id
    shown = " ".join(c.value for c in at.caption)
    assert f"β = {low.config.beta:g} " in shown and f"β = {high.config.beta:g} " in shown


def test_pages_list_only_the_newest_runs_of_a_large_store(monkeypatch, tmp_path):
    """Tables, pickers and the tradeoff plane stop at MAX_LISTED runs and say so."""
    monkeypatch.setattr(vae.present.views, "MAX_LISTED", 3)
    store = RunStore(tmp_path / "runs")
    config = RunConfig(hidden_dims=[16], latent_dim=2, epochs=1, batch_size=512, threads=1)
    run_ids = [store.create_run(config) for _ in range(5)]
    for run_id in run_ids:
        train_run(store, run_id)
    newest_three = run_ids[-3:]

    at = open_app(monkeypatch, store.root, "pages/train.py")
    at.session_state["all_runs"] = True  # the reader opens "All runs"
    at.run()
    assert list(at.dataframe[-1].value["run"]) == newest_three
    assert any("newest 3 of 5 runs" in c.value for c in at.caption)

    at = open_app(monkeypatch, store.root, "pages/checkpoints.py")
    assert list(at.dataframe[0].value["run"]) == newest_three
    assert [o.split(" ")[0] for o in at.selectbox(key="pick_run").options] == newest_three
    at = open_app(monkeypatch, store.root, "pages/checkpoints.py", run=run_ids[0])
    assert at.selectbox(key="pick_run").value == run_ids[0]  # an older run asked for by address

    at = open_app(monkeypatch, store.root, "pages/tradeoff.py")
    runs_table = next(d.value for d in at.dataframe if "run" in d.value.columns)
    assert list(runs_table["run"]) == newest_three  # (five equal runs: replicates, tabled after)
    assert not at.exception and not at.warning


def test_a_page_run_leaves_the_servers_torch_on_one_thread(monkeypatch, trained_store):
    """Workers hold the cores while they train: the server's own tensor work must not wait for a
    second one (ui.one_torch_thread, before every page)."""
    import torch

    threads = torch.get_num_threads()
    torch.set_num_threads(2)
    try:
        at = open_app(monkeypatch, trained_store.root, "pages/samples.py")
        assert not at.exception
        seen = []  # torch's thread count is per thread, taken from the process's on first use
        reader = threading.Thread(target=lambda: seen.append(torch.get_num_threads()))
        reader.start()
        reader.join()
        assert seen == [1]
    finally:
        torch.set_num_threads(threads)


def test_trains_all_runs_table_is_built_only_while_it_is_open(monkeypatch, trained_store):
    """Closed, the jobs panel's refresh neither builds nor resends the table of every run."""
    at = open_app(monkeypatch, trained_store.root, "pages/train.py")
    runs = {r.run_id for r in trained_store.list_runs()}
    assert f"All runs ({len(runs)})" in [e.label for e in at.expander]
    assert not at.dataframe
    at.session_state["all_runs"] = True
    at.run()
    assert not at.exception
    assert set(at.dataframe[-1].value["run"]) == runs


def test_a_lazy_expander_stays_as_the_reader_left_it_when_its_label_changes():
    """Train's "All runs (N)" gains a run: Streamlit sees a new expander (the label is part of
    its identity), which must not close under a reader who opened it, nor open by itself."""

    def script():
        import streamlit as st

        import ui

        box = ui.lazy_expander(f"All runs ({st.session_state.get('runs', 1)})", key="all_runs")
        if box:
            box.text("table")

    at = AppTest.from_function(script, default_timeout=30).run()
    assert [e.label for e in at.expander] == ["All runs (1)"] and not at.text
    at.session_state["all_runs"] = True  # the reader opens it
    at.run()
    assert [t.value for t in at.text] == ["table"]
    at.session_state["runs"] = 2  # a run is added: a new label
    at.run()
    assert [e.label for e in at.expander] == ["All runs (2)"]
    assert [t.value for t in at.text] == ["table"]
    at.run()  # and it stays so
    assert [t.value for t in at.text] == ["table"]
    at.session_state["all_runs"] = False  # the reader closes it
    at.run()
    at.session_state["runs"] = 3
    at.run()
    assert [e.label for e in at.expander] == ["All runs (3)"] and not at.text


def test_trains_page_reruns_for_a_new_run_and_leaves_progress_to_its_jobs_panel(
    monkeypatch, tmp_path
):
    """Train reruns whole only when a run is added or deleted (its settings do not change with a
    run's progress); its jobs panel redraws itself every 2 s while a run is queued or running."""
    store = RunStore(tmp_path / "runs")
    config = RunConfig(hidden_dims=[32], latent_dim=3, epochs=3, batch_size=256)
    first = store.create_run(config)
    monkeypatch.setenv("VAE_STORE", str(store.root))
    st.cache_resource.clear()

    def script():
        import streamlit as st

        import ui

        if "drawn" in st.session_state:
            every_change = ui._store_changed(None, False)  # first: the other call remembers
            st.text(f"{every_change} {ui._store_changed(None, True)}")
        else:
            st.session_state.drawn = True
            ui.list_runs()
            ui.live_fragment(lambda: st.text("panel"))
            ui.refresh_on_change(added_or_removed=True)

    at = AppTest.from_function(script, default_timeout=30).run()
    assert not at.exception, at.exception
    assert [t.value for t in at.text] == ["panel"]
    store.update_status(first, RunState.RUNNING, epoch=1)  # a run's progress
    at.run()
    assert [t.value for t in at.text] == ["True False"]  # Train's whole-page watch ignores it
    store.create_run(config)  # a run added
    at.run()
    assert [t.value for t in at.text] == ["True True"]
