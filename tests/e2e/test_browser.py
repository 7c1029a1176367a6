"""End to end in headless Chromium: a three-value β sweep from the Train page to a downloaded checkpoint.

The real app (`streamlit run app.py`) runs on a temporary store; runs train in real worker
processes. Kept small (digits, 64 hidden units, 4 latent dimensions, 2 epochs) so the whole test
takes about a minute on two shared cores.
"""

from __future__ import annotations

import re
import time

import pytest
import torch

from vae.execution.checkpoint import model_from_checkpoint, validate_checkpoint
from vae.execution.states import ACTIVE
from vae.execution.store import RunStore

pytestmark = pytest.mark.browser

BETAS = [0.5, 1.0, 4.0]
# Enough epochs that the runs still train when the test comes back to Train to see their
# progress (two epochs of 64 hidden units were over, evaluation included, in about a second,
# and the check raced them); still a few seconds per run.
EPOCHS, LATENT_DIM, HIDDEN = 30, 4, 64
RUNS_TIMEOUT_S = 150
IDLE = "[data-testid='stApp'][data-test-script-state='notRunning']"


def expect():
    from playwright.sync_api import expect as _expect

    return _expect


def wait_idle(page, timeout_ms: int = 30_000) -> None:
    """The app has finished its current script run (and shows no Python exception).

    Wait for a page title first: before the app has connected, the attribute already reads
    notRunning."""
    page.locator("[data-testid='stMainBlockContainer'] h1").first.wait_for(timeout=timeout_ms)
    page.wait_for_selector(IDLE, timeout=timeout_ms)
    expect()(page.locator("[data-testid='stException']")).to_have_count(0)


def nav(page, title: str) -> None:
    """Switch page with the navigation link: a client-side page change in the same session."""
    page.locator("[data-testid='stTopNavLink']").filter(has_text=title).click()


def test_beta_sweep_end_to_end(app_server, page, tmp_path):
    check = expect()
    store = RunStore(app_server.store_root)
    started = time.monotonic()

    # 1. Train page, prefilled from the address. The default page lives at "/" ("/train" would
    #    show Streamlit's "Page not found" dialog over it).
    page.goto(f"{app_server.url}/?epochs={EPOCHS}&latent_dim={LATENT_DIM}")
    wait_idle(page, timeout_ms=60_000)
    check(page.get_by_role("heading", name="Train β-VAEs")).to_be_visible()
    check(page.locator("[data-testid='stDialog']")).to_have_count(0)
    sliders = page.locator("[data-testid='stSlider']")
    value = "input[type='range']"
    check(sliders.filter(has_text="Epochs").locator(value)).to_have_attribute(
        "aria-valuetext", str(EPOCHS)
    )
    check(sliders.filter(has_text="Latent dimensions J").locator(value)).to_have_attribute(
        "aria-valuetext", str(LATENT_DIM)
    )

    # 2. Keyboard on a slider: the smallest hidden layer (64 units) makes the runs quick.
    hidden = sliders.filter(has_text="Hidden units")
    hidden.locator(f"div:has(> div > {value})").click()  # the thumb
    page.keyboard.press("Home")
    check(hidden.locator(value)).to_have_attribute("aria-valuetext", str(HIDDEN))
    wait_idle(page)

    # 3. Three β values for a sweep; Enter makes Streamlit register the text.
    sweep_input = page.get_by_label("β values for a sweep")
    sweep_input.fill("0.5, 1, 4")
    sweep_input.press("Enter")
    sweep_button = page.locator(".st-key-sweep_button button")
    check(sweep_button).to_have_text("Sweep β (3 runs)")
    check(sweep_button).to_be_enabled()
    wait_idle(page)
    sweep_button.click()
    check(page.get_by_text("Queued β = 0.5, 1, 4: 3 runs")).to_be_visible()

    records = store.list_runs()
    assert len(records) == 3, [r.run_id for r in records]
    assert sorted(r.config.beta for r in records) == BETAS
    for r in records:
        assert (r.config.epochs, r.config.latent_dim, r.config.hidden_dims) == (
            EPOCHS, LATENT_DIM, [HIDDEN],
        )  # fmt: skip
        assert r.config.dataset == "digits"
    by_beta = {r.config.beta: r.run_id for r in records}
    run_ids = list(by_beta.values())

    # 4. The jobs panel (a fragment redrawn every 2 s while runs train) lists the three runs.
    for beta, run_id in by_beta.items():
        check(
            page.get_by_text(re.compile(rf"^{run_id} · β = {beta:g} · z={LATENT_DIM}"))
        ).to_be_visible()

    # 5. Responsive while training: other pages open and the Train page comes back.
    states = [store.read_status(r)["state"] for r in run_ids]
    assert any(s in ACTIVE for s in states), f"runs ended before the check: {states}"
    nav(page, "Tradeoff")
    check(page.get_by_role("heading", name="Rate–distortion tradeoff")).to_be_visible(
        timeout=15_000
    )
    wait_idle(page, timeout_ms=15_000)
    nav(page, "Train")
    check(page.get_by_role("heading", name="Train β-VAEs")).to_be_visible(timeout=15_000)
    check(page.get_by_role("heading", name="Jobs")).to_be_visible(timeout=15_000)
    for run_id in run_ids:
        check(page.get_by_text(re.compile(rf"^{run_id} · "))).to_be_visible()
    # ... and the panel shows training progress (epochs done, as a progress bar) while it runs.
    check(page.get_by_text(re.compile(rf"^running · epoch [1-9]\d*/{EPOCHS}")).first).to_be_visible(
        timeout=90_000
    )

    # 6. All three runs finish: on disk, and in the jobs panel.
    deadline = started + RUNS_TIMEOUT_S
    while True:
        states = {r: store.read_status(r)["state"] for r in run_ids}
        if all(s not in ACTIVE for s in states.values()):
            break
        assert time.monotonic() < deadline, f"runs still active after {RUNS_TIMEOUT_S} s: {states}"
        page.wait_for_timeout(500)  # a poll interval, not an assertion
    failed = {r: store.read_status(r) for r, s in states.items() if s != "finished"}
    assert not failed, failed
    for run_id in run_ids:
        assert store.path(run_id, "final.pt").is_file()
        assert len(store.read_metrics(run_id)) == EPOCHS
    check(page.get_by_text(re.compile(rf"^finished · epoch {EPOCHS}/{EPOCHS}"))).to_have_count(
        3, timeout=15_000
    )
    for beta, run_id in by_beta.items():
        check(
            page.get_by_text(f"{run_id} · β = {beta:g} · z={LATENT_DIM}", exact=True)
        ).to_be_visible()

    # 7. Tradeoff: the chart has one point per run and the table under it lists the runs.
    nav(page, "Tradeoff")
    chart = page.locator("[data-testid='stVegaLiteChart']").first
    check(chart).to_be_visible(timeout=15_000)
    wait_idle(page)
    check(page.get_by_text("3 runs · updates every 2 s")).to_be_visible()  # none still training
    # Vega's SVG marks carry their tooltip text; role-mark leaves out the β legend's symbols.
    points = chart.locator("g.mark-symbol.role-mark path")
    check(points).to_have_count(3, timeout=15_000)
    labels = " | ".join(points.nth(i).get_attribute("aria-label") or "" for i in range(3))
    for run_id in run_ids:
        assert f"run: {run_id}" in labels, labels
    table = page.locator("[data-testid='stDataFrame']").last
    check(table).to_be_visible()
    # The grid is drawn on a canvas; its cells are mirrored in an accessible (hidden) <table>.
    for run_id in run_ids:
        check(table.locator("td", has_text=re.compile(rf"^{run_id}$"))).to_have_count(1)

    # 8. Checkpoints page for the β = 4 run: download final.pt and load it safely.
    run_id = by_beta[4.0]
    page.goto(f"{app_server.url}/checkpoints?run={run_id}")
    wait_idle(page, timeout_ms=30_000)
    check(page.get_by_role("heading", name="Checkpoints")).to_be_visible()
    picker = page.locator(".st-key-pick_run").get_by_role("combobox", name="Run")
    check(picker).to_have_value(re.compile(rf"^{run_id} · β = 4 · "))
    # Streamlit turns every character outside [A-Za-z0-9_-] of a key into "-" in the class name:
    # the key "download-final.pt" gives "st-key-download-final-pt" (not "...final.pt").
    button = page.locator(".st-key-download-final-pt button")
    check(button).to_have_text("Download final.pt")
    with page.expect_download(timeout=30_000) as download_info:
        button.click()
    download = download_info.value
    assert download.suggested_filename == f"{run_id}-final.pt"
    saved = tmp_path / download.suggested_filename
    download.save_as(saved)
    assert saved.read_bytes() == store.path(run_id, "final.pt").read_bytes()

    checkpoint = torch.load(saved, map_location="cpu", weights_only=True)
    config = validate_checkpoint(checkpoint)
    assert config.beta == 4.0
    assert (config.epochs, config.latent_dim, config.hidden_dims) == (EPOCHS, LATENT_DIM, [HIDDEN])
    assert checkpoint["epoch"] == EPOCHS
    model = model_from_checkpoint(checkpoint)
    with torch.no_grad():
        x = torch.rand(2, *checkpoint["image_shape"])
        logits, mu, logvar = model(x)
    assert mu.shape == (2, LATENT_DIM) and logvar.shape == (2, LATENT_DIM)
    assert torch.isfinite(logits).all()
