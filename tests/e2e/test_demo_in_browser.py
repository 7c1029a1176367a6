"""End to end in headless Chromium: a first visit starts the β demo and sees what β does.

On an empty store the Train page offers one button; the test presses it, waits for the real
worker processes to finish the six runs, then reads the β gallery and the Posterior page: the
largest β keeps fewer informative dimensions than the smallest. The demo is shortened to
DEMO_TEST_EPOCHS through VAE_DEMO_EPOCHS (vae/present/demo.py); at 3 epochs β = 16 already
keeps none of its 16 dimensions informative while β = 0.5 keeps all of them.
"""

from __future__ import annotations

import re
import time

import pytest
from live_app import IDLE, LiveApp, stop_workers

from vae.execution.states import ACTIVE
from vae.execution.store import RunStore
from vae.present.demo import DEMO_BETAS, DEMO_EPOCHS_ENV, DEMO_LATENT_DIM, DEMO_NAME

pytestmark = pytest.mark.browser

DEMO_TEST_EPOCHS = 3
RUNS_TIMEOUT_S = 300
INFORMATIVE = re.compile(r"informative: (\d+) / (\d+)")


def expect():
    from playwright.sync_api import expect as _expect

    return _expect


@pytest.fixture
def demo_server(tmp_path, monkeypatch):
    """The app on an empty store, its demo shortened through the environment it inherits."""
    monkeypatch.setenv(DEMO_EPOCHS_ENV, str(DEMO_TEST_EPOCHS))
    server = LiveApp(tmp_path / "runs", tmp_path / "streamlit.log", max_jobs=2)
    try:
        yield server
    finally:
        server.stop()
        stop_workers(server.store_root)


def wait_idle(page, timeout_ms: int = 30_000) -> None:
    """A page title is drawn, the script run is over, and no Python exception is shown."""
    page.locator("[data-testid='stMainBlockContainer'] h1").first.wait_for(timeout=timeout_ms)
    page.wait_for_selector(IDLE, timeout=timeout_ms)
    expect()(page.locator("[data-testid='stException']")).to_have_count(0)


def wait_finished(store: RunStore, run_ids: list[str], page) -> None:
    deadline = time.monotonic() + RUNS_TIMEOUT_S
    while True:
        states = {r: store.read_status(r)["state"] for r in run_ids}
        if not any(s in ACTIVE for s in states.values()):
            break
        assert time.monotonic() < deadline, f"demo still training after {RUNS_TIMEOUT_S} s"
        page.wait_for_timeout(1000)  # a poll interval, not an assertion
    failed = {r: store.read_status(r) for r, s in states.items() if s != "finished"}
    assert not failed, failed


def test_the_demo_shows_dimensions_collapse_as_beta_grows(demo_server, page):
    check = expect()
    store = RunStore(demo_server.store_root)

    # 1. First visit: an empty store offers the demo, and says what to look at.
    page.goto(f"{demo_server.url}/")
    wait_idle(page, timeout_ms=60_000)
    check(page.get_by_role("heading", name="New here? Start with the β demo")).to_be_visible()
    check(page.get_by_text("β gallery").first).to_be_visible()
    page.locator(".st-key-demo_button button").click()
    check(page.get_by_text("Queued the demo: 6 runs")).to_be_visible()

    records = store.list_runs()
    assert sorted(r.config.beta for r in records) == list(DEMO_BETAS)
    assert {(r.config.name, r.config.epochs, r.config.latent_dim) for r in records} == {
        (DEMO_NAME, DEMO_TEST_EPOCHS, DEMO_LATENT_DIM)
    }
    assert len({r.status["group"] for r in records}) == 1
    by_beta = {r.config.beta: r.run_id for r in records}

    # 2. The gallery link under the button opens the gallery while the demo trains.
    page.get_by_role("link", name="Open the β gallery").click()
    check(page.get_by_role("heading", name="β gallery")).to_be_visible(timeout=15_000)
    wait_finished(store, list(by_beta.values()), page)

    # 3. β gallery: one row per β in order, three pictures each, fewer informative dimensions
    #    at the largest β. The rows are a fragment redrawn every 2 s: wait for the final epoch.
    rows = [page.locator(f".st-key-gallery_row_{i}") for i in range(len(DEMO_BETAS))]
    for row in rows:
        check(
            row.get_by_text(f"epoch {DEMO_TEST_EPOCHS}/{DEMO_TEST_EPOCHS} · finished")
        ).to_be_visible(timeout=30_000)
    informative = []
    for beta, row in zip(DEMO_BETAS, rows, strict=True):
        check(row.get_by_role("heading", name=f"β = {beta:g}")).to_be_visible()
        images = row.locator("img")
        check(images).to_have_count(3)
        assert all(images.nth(i).evaluate("i => i.naturalWidth > 0") for i in range(3))
        found = INFORMATIVE.search(row.inner_text())
        assert found, row.inner_text()
        assert int(found.group(2)) == DEMO_LATENT_DIM
        informative.append(int(found.group(1)))
    assert informative[-1] < informative[0], informative

    # 4. Posterior, largest β beside the smallest: the same verdict, in the metrics.
    low, high = by_beta[min(DEMO_BETAS)], by_beta[max(DEMO_BETAS)]
    page.goto(f"{demo_server.url}/posterior?run={high}&compare={low}")
    wait_idle(page)
    metrics = page.locator("[data-testid='stMetric']").filter(has_text="informative")
    check(metrics).to_have_count(2)
    values = [
        int(re.search(r"(\d+) / \d+", metrics.nth(i).inner_text()).group(1)) for i in range(2)
    ]
    assert values == [informative[-1], informative[0]]  # the gallery and this page agree
    assert values[0] < values[1]
    check(page.get_by_text("Both sides share their axes and colour ranges")).to_be_visible()
    charts = page.locator("[data-testid='stVegaLiteChart']")
    check(charts).to_have_count(6)
