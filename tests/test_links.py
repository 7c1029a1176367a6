"""Live and linkable: an open gallery lists sweeps started anywhere, pickers follow the runs'
states, ?run= and ?sweep= work on the pages that show runs, Compare opens on the named pair."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from tests.helpers import open_app, train_run
from vae.execution.store import RunStore
from vae.learn.config import RunConfig

ROOT = Path(__file__).resolve().parent.parent
SMALL = dict(hidden_dims=[16], latent_dim=2, epochs=1, batch_size=512, threads=1, precision="fp32")


@pytest.fixture(scope="module")
def linked_store(tmp_path_factory):
    """A finished three-β sweep and a queued run that has no epoch yet."""
    store = RunStore(tmp_path_factory.mktemp("links") / "runs")
    for beta in (0.5, 4.0, 16.0):
        train_run(store, store.create_run(RunConfig(**SMALL, beta=beta), group="sweep-linked"))
    store.create_run(RunConfig(**SMALL, beta=2.0))  # queued: no epoch yet
    return store


def _sweep_ids(store, group="sweep-linked"):
    runs = [r for r in store.list_runs() if r.status.get("group") == group]
    return {r.config.beta: r.run_id for r in runs}


def _queued(store):
    return next(r.run_id for r in store.list_runs() if not r.status.get("group"))


def test_a_cli_sweep_started_after_the_gallery_opened_appears_in_it(monkeypatch, tmp_path):
    store = RunStore(tmp_path / "runs")
    for beta in (1.0, 2.0):
        train_run(store, store.create_run(RunConfig(**SMALL, beta=beta), group="sweep-first"))
    at = open_app(monkeypatch, store.root, "pages/gallery.py")
    assert len(at.selectbox(key="gallery_sweep").options) == 1
    command = [
        sys.executable, "-m", "vae", "--store", str(store.root), "sweep", "--betas", "4", "8",
        "--epochs", "1", "--hidden-dims", "16", "--latent-dim", "2", "--jobs", "1",
        "--precision", "fp32", "--batch-size", "512",
    ]  # fmt: skip
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    done = subprocess.run(command, cwd=ROOT, env=env, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr
    at.run()  # what the page's refresh does when the store's listing changed
    assert not at.exception, at.exception
    options = at.selectbox(key="gallery_sweep").options
    assert len(options) == 2
    assert any("β = 4, 8 · 2/2 finished" in o for o in options), options


def test_the_sweep_picker_follows_the_runs_states(monkeypatch, tmp_path):
    store = RunStore(tmp_path / "runs")
    ids = [store.create_run(RunConfig(**SMALL, beta=b), group="sweep-late") for b in (1.0, 2.0)]
    at = open_app(monkeypatch, store.root, "pages/gallery.py")
    assert "0/2 finished" in at.selectbox(key="gallery_sweep").options[0]
    for run_id in ids:
        train_run(store, run_id)
    at.run()
    assert "2/2 finished" in at.selectbox(key="gallery_sweep").options[0]
    headings = [m.value for m in at.markdown if m.value.startswith("#### β = ")]
    assert headings == ["#### β = 1", "#### β = 2"]


@pytest.mark.parametrize("page", ["pages/posterior.py", "pages/samples.py", "pages/kl_term.py"])
def test_a_run_in_its_first_epoch_is_kept_in_the_address(monkeypatch, linked_store, page):
    queued = _queued(linked_store)
    at = open_app(monkeypatch, linked_store.root, page, run=queued)
    assert not at.exception, at.exception
    assert at.query_params["run"] == queued
    assert any(queued in i.value and "no finished epoch yet" in i.value for i in at.info)
    assert not any("not found" in w.value for w in at.warning)


def test_sweep_in_the_address_opens_it_on_posterior_and_compare_names_the_pair(
    monkeypatch, linked_store
):
    ids = _sweep_ids(linked_store)
    at = open_app(monkeypatch, linked_store.root, "pages/posterior.py", sweep="sweep-linked")
    assert at.selectbox(key="pick_run").value == ids[16.0]  # the sweep's largest β
    at.toggle(key="compare_toggle").set_value(True).run()
    assert not at.exception, at.exception
    assert at.selectbox(key="pick_compare").value == ids[0.5]  # beside the smallest β


def test_run_in_the_address_opens_its_sweep_on_gallery_and_probe(monkeypatch, linked_store):
    ids = _sweep_ids(linked_store)
    for page, key in (("pages/gallery.py", "gallery_sweep"), ("pages/probe.py", "pick_sweep")):
        at = open_app(monkeypatch, linked_store.root, page, run=ids[4.0])
        assert not at.exception, at.exception
        assert at.selectbox(key=key).value == "sweep-linked"
        assert at.query_params["sweep"] == "sweep-linked"


def test_run_in_the_address_picks_its_settings_on_tradeoff(monkeypatch, tmp_path):
    store = RunStore(tmp_path / "runs")
    older = [store.create_run(RunConfig(**SMALL, beta=b), group="sweep-z2") for b in (1.0, 2.0)]
    newer = {**SMALL, "latent_dim": 3}
    for run_id in [*older, *(store.create_run(RunConfig(**newer, beta=b), group="sweep-z3")
                            for b in (1.0, 2.0))]:  # fmt: skip
        train_run(store, run_id)
    at = open_app(monkeypatch, store.root, "pages/tradeoff.py")
    assert "|latent_dim=3|" in at.selectbox(key="tradeoff_set").value  # the latest sweep's settings
    at = open_app(monkeypatch, store.root, "pages/tradeoff.py", run=older[0])
    assert not at.exception, at.exception
    assert "|latent_dim=2|" in at.selectbox(key="tradeoff_set").value
    at = open_app(monkeypatch, store.root, "pages/tradeoff.py", sweep="sweep-z2")
    assert "|latent_dim=2|" in at.selectbox(key="tradeoff_set").value


@pytest.mark.parametrize("page", ["pages/posterior.py", "pages/samples.py"])
def test_the_same_run_on_both_sides_keeps_its_figure_downloads_apart(
    monkeypatch, linked_store, page
):
    run_id = _sweep_ids(linked_store)[4.0]
    at = open_app(monkeypatch, linked_store.root, page, run=run_id, compare=run_id)
    assert not at.exception, at.exception
    keys = [b.key for b in at.get("download_button")]
    assert len(keys) == len(set(keys)) and any(k.endswith("-svg") for k in keys)
