"""The theory on the pages (AppTest): Tradeoff's predicted frontier, Posterior's predicted KLⱼ and
spectrum, the rate split from eval.json, the KL page's β converter, the Train page's linear demo."""

from __future__ import annotations

import json
import math

import pytest
import streamlit as st
from helpers import open_app, train_run

from vae.execution.jobs import JobManager
from vae.execution.store import RunStore
from vae.learn.config import RunConfig
from vae.present.demo import DEMO_EPOCHS_ENV, LINEAR_DEMO_BETAS, LINEAR_DEMO_NAME
from vae.present.theory_view import BASELINE_NOTE, EXACT_NOTE


def linear(beta: float, **changes) -> RunConfig:
    settings = dict(dataset="gaussian", architecture="linear", latent_dim=8, likelihood="gaussian",
                    gaussian_std=math.sqrt(0.1), epochs=3, batch_size=500, lr=1e-2, threads=1,
                    beta=beta)  # fmt: skip
    return RunConfig(**{**settings, **changes})


@pytest.fixture(scope="module")
def theory_store(tmp_path_factory):
    """Three linear runs of one sweep, then an MLP on the same data (the latest set)."""
    store = RunStore(tmp_path_factory.mktemp("theory") / "runs")
    for beta in (0.5, 1.0, 2.0):
        train_run(store, store.create_run(linear(beta), group="sweep-linear"))
    return store


def _layers(element) -> list[dict]:
    spec = json.loads(element.proto.spec)
    return spec.get("layer", [spec])


def test_tradeoff_draws_the_predicted_frontier(monkeypatch, theory_store):
    at = open_app(monkeypatch, theory_store.root, "pages/tradeoff.py")
    assert not at.exception, [e.message for e in at.exception]
    assert any(EXACT_NOTE in c.value for c in at.caption)
    plane = at.get("vega_lite_chart")[0]
    assert len(_layers(plane)) == 6  # ELBO lines, labels, sweep line, theory curve, crosses, points
    table = at.dataframe[0].value  # the theory table, then the runs table
    assert list(table["β"]) == [0.5, 1.0, 2.0]
    assert (table["R theory"] > 0).all() and table["R theory"].is_monotonic_decreasing
    runs = at.dataframe[-1].value
    assert runs["I_q(x;z)"].notna().all()  # evaluated at the end of training
    assert (runs["I_q(x;z)"] <= math.log(1000) + 1e-9).all()
    assert any(m.value == "**Where the rate goes**" for m in at.markdown)
    assert len(at.get("vega_lite_chart")) >= 2  # the plane and the split (curves follow)


def test_posterior_shows_the_prediction_and_the_spectrum(monkeypatch, theory_store):
    at = open_app(monkeypatch, theory_store.root, "pages/posterior.py")
    assert not at.exception, [e.message for e in at.exception]
    assert any("learned (bars) and predicted" in m.value for m in at.markdown)
    assert any("Where the rate goes" in c.value and "ln N = 6.91" in c.value for c in at.caption)
    slider = next(s for s in at.select_slider if s.key.startswith("theory_beta-"))
    slider.set_value(max(float(o) for o in slider.options)).run()  # every dimension collapses
    assert not at.exception, [e.message for e in at.exception]
    assert any("kept." in c.value and ": 0 kept" in c.value for c in at.caption)


def test_a_non_linear_model_gets_the_linear_baseline(monkeypatch, tmp_path):
    store = RunStore(tmp_path / "runs")
    mlp = linear(1.0, architecture="mlp", hidden_dims=[16], epochs=1)
    train_run(store, store.create_run(mlp))
    at = open_app(monkeypatch, store.root, "pages/tradeoff.py")
    assert not at.exception, [e.message for e in at.exception]
    assert any(BASELINE_NOTE in c.value for c in at.caption)
    at = open_app(monkeypatch, store.root, "pages/posterior.py")
    assert not at.exception, [e.message for e in at.exception]
    assert any(BASELINE_NOTE in c.value for c in at.caption)


def test_kl_page_converts_beta(monkeypatch, tmp_path):
    at = open_app(monkeypatch, tmp_path / "empty", "pages/kl_term.py")
    assert not at.exception, [e.message for e in at.exception]
    at.number_input(key="conv_beta").set_value(4.0).run()
    at.number_input(key="conv_latent").set_value(16).run()
    at.number_input(key="conv_pixels").set_value(784).run()
    table = at.dataframe[0].value
    rows = dict(zip(table["convention"], table["their number"], strict=True))
    assert rows["KL averaged over latents"] == pytest.approx(64.0)
    assert rows["Higgins β_norm"] == pytest.approx(4 * 16 / 784, abs=1e-4)


def test_linear_demo_button_queues_the_sweep(monkeypatch, tmp_path):
    store = RunStore(tmp_path / "runs")
    monkeypatch.setenv(DEMO_EPOCHS_ENV, "1")
    at = open_app(monkeypatch, store.root, "pages/train.py")
    at.button(key="linear_demo_button").click().run()
    assert not at.exception, [e.message for e in at.exception]
    runs = store.list_runs()
    assert sorted(r.config.beta for r in runs) == sorted(LINEAR_DEMO_BETAS)
    assert {r.config.name for r in runs} == {LINEAR_DEMO_NAME}
    assert {r.config.architecture for r in runs} == {"linear"}
    manager = JobManager(store)
    manager.wait([r.run_id for r in runs], timeout_s=120)  # 1 epoch each: let them finish
    st.cache_resource.clear()


@pytest.mark.parametrize("page", ["pages/gallery.py", "pages/samples.py", "pages/checkpoints.py",
                                  "pages/kl_term.py"])  # fmt: skip
def test_other_pages_take_gaussian_vectors(monkeypatch, theory_store, page):
    at = open_app(monkeypatch, theory_store.root, page)
    assert not at.exception, [e.message for e in at.exception]
