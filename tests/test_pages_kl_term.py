"""The KL term page, run through the app's entry point with Streamlit's AppTest."""

from pathlib import Path

import pytest
import streamlit
from helpers import train_run
from streamlit.testing.v1 import AppTest

from vae.execution.store import RunStore
from vae.learn.config import RunConfig
from vae.present import kl_teaching as kt

APP = Path(__file__).resolve().parent.parent / "app.py"
PAGE = "pages/kl_term.py"


@pytest.fixture
def store_root(tmp_path, monkeypatch):
    """An empty run store for this test only, and no job manager left over from another test."""
    root = tmp_path / "runs"
    monkeypatch.setenv("VAE_STORE", str(root))
    monkeypatch.setenv("VAE_MAX_JOBS", "1")
    streamlit.cache_resource.clear()
    yield root
    streamlit.cache_resource.clear()


def open_page() -> AppTest:
    at = AppTest.from_file(str(APP), default_timeout=60)
    at.run()
    at.switch_page(PAGE).run()
    assert not at.exception, [e.value for e in at.exception]
    return at


def metric(at: AppTest, label: str) -> str:
    return next(m.value for m in at.metric if m.label == label)


def test_renders_on_an_empty_store(store_root):
    at = open_page()
    assert at.title[0].value == "The KL term"
    assert any("Train one" in i.value for i in at.info)
    assert len(at.get("vega_lite_chart")) == 1  # the curves; no run, so no bar chart
    assert metric(at, "KL (nats)") == f"{kt.kl_1d(kt.DEFAULT_MU, kt.DEFAULT_SIGMA):.4f}"


def test_sliders_change_the_kl(store_root):
    at = open_page()
    at.slider(key="kl_mu").set_value(1.0)
    at.select_slider(key="kl_sigma").set_value(0.5)
    at.run()
    assert not at.exception
    assert metric(at, "KL (nats)") == "0.8181"  # 1/2 (1 + 0.25 - log 0.25 - 1)
    assert metric(at, "∂KL/∂σ = σ − 1/σ") == "-1.5000"
    at.select_slider(key="kl_sigma").set_value(1.0)
    at.slider(key="kl_mu").set_value(0.0)
    at.run()
    assert metric(at, "KL (nats)") == "0.0000"


def test_sum_not_mean_shows_beta_over_d(store_root):
    at = open_page()
    at.slider(key="kl_d").set_value(16)
    at.number_input(key="kl_beta").set_value(4.0)
    at.run()
    assert metric(at, "effective β with the KL averaged") == "0.25"


def test_a_trained_run_shows_its_per_dimension_bars(store_root):
    store = RunStore(store_root)
    config = RunConfig(dataset="digits", hidden_dims=[32], latent_dim=3, epochs=1, threads=1)
    run_id = store.create_run(config)
    assert train_run(store, run_id) == "finished"
    at = open_page()
    charts = at.get("vega_lite_chart")
    assert len(charts) == 2
    specs = [c.proto.spec for c in charts]
    assert any("KL per latent dimension" in s and "z0" in s and "z2" in s for s in specs)
    assert not any("z3" in s for s in specs)  # numbered from 0, like the other pages
    assert metric(at, "active units").endswith("of 3")
    assert not at.info


def test_the_derivation_and_the_run_table_are_drawn_once_opened(store_root):
    """Both sit in expanders that a page switch neither runs nor draws until a reader opens them."""
    store = RunStore(store_root)
    config = RunConfig(dataset="digits", hidden_dims=[32], latent_dim=3, epochs=1, threads=1)
    assert train_run(store, store.create_run(config)) == "finished"
    at = open_page()
    expanders = [e.label for e in at.expander]
    assert "Where the formula comes from (one dimension, then sum)" in expanders
    assert "Table" in expanders
    assert not any("Substituting them" in m.value for m in at.markdown)
    assert len(at.dataframe) == 1  # the conventions table only

    at.session_state["kl_derivation"] = True  # the reader opens both
    at.session_state["kl_dims_table"] = True
    at.run()
    assert not at.exception
    assert any("Substituting them" in m.value for m in at.markdown)
    assert len(at.dataframe) == 2
    table = at.dataframe[-1].value
    assert table.columns[0] == "dimension" and len(table) == 3


def test_broken_and_incomplete_runs_do_not_crash_the_page(store_root):
    store = RunStore(store_root)
    broken = store.create_run(RunConfig(dataset="digits", latent_dim=3, epochs=1))
    store.path(broken, "config.json").write_text("{not json")
    partial = store.create_run(RunConfig(dataset="digits", latent_dim=3, epochs=1, name="<b>x</b>"))
    store.update_status(partial, "failed", "test")
    store.append_metrics(partial, {"epoch": 1, "rate": 1.0})  # no per-dimension lists
    at = open_page()
    assert not at.exception
    # A metrics line without its per-dimension lists makes the run broken (the store's schema),
    # so the page never receives it; the broken run is simply not offered.
    assert "metrics.jsonl line 1" in RunStore(store_root).get(partial).broken
    assert len(at.get("vega_lite_chart")) == 1
