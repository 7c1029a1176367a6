"""Every page through Streamlit's AppTest: empty store, a store with runs, bad input refused."""

import contextlib
import time

import pytest
import streamlit as st
from helpers import APP, PAGES, open_app, train_run
from streamlit.testing.v1 import AppTest

from vae.execution.jobs import JobManager
from vae.execution.store import RunStore, StoreError
from vae.learn.config import RunConfig


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
        active = manager.active_run_ids()
        deadline = time.time() + 60
        while active and deadline > time.time():
            for run_id in list(active):
                with contextlib.suppress(StoreError):  # still starting: no pid to signal yet
                    manager.cancel(run_id)
                    active.remove(run_id)
            time.sleep(0.2)
        manager.wait(manager.active_run_ids(), timeout_s=60)
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
    import json

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
    assert at.query_params["run"] != [bad_id]  # replaced by a valid run


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
