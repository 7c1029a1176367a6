"""In Chromium: draw a stroke on the Probe page's canvas and see one reconstruction per β."""

from __future__ import annotations

import re
import xml.etree.ElementTree as ET

import pytest

from tests.helpers import train_run
from vae.execution.store import RunStore
from vae.learn.config import RunConfig

pytestmark = pytest.mark.browser

IDLE = "[data-testid='stApp'][data-test-script-state='notRunning']"
BETAS = (0.5, 4.0)


def test_a_drawn_digit_goes_through_every_beta(app_server, page):
    from playwright.sync_api import expect

    store = RunStore(app_server.store_root)
    small = dict(hidden_dims=[32], latent_dim=3, epochs=1, batch_size=256, threads=1)
    for beta in BETAS:
        train_run(store, store.create_run(RunConfig(**small, beta=beta), group="sweep-e2e"))

    page.goto(f"{app_server.url}/probe?sweep=sweep-e2e")
    page.locator("[data-testid='stMainBlockContainer'] h1").first.wait_for(timeout=90_000)
    page.wait_for_selector(IDLE, timeout=90_000)
    expect(
        page.get_by_text("The canvas is empty", exact=False)
        .or_(page.get_by_text("Draw a digit on the canvas", exact=False))
        .first
    ).to_be_visible(timeout=60_000)

    canvas = page.locator("canvas").last  # fabric.js draws on its upper canvas
    canvas.wait_for(timeout=60_000)
    box = canvas.bounding_box()
    x, y = box["x"] + box["width"] / 2, box["y"] + box["height"] * 0.2
    page.mouse.move(x, y)
    page.mouse.down()
    for step in range(1, 21):  # a vertical stroke: a "1"
        page.mouse.move(x + step * 0.5, y + step * box["height"] * 0.03)
    page.mouse.up()

    for beta in BETAS:
        caption = page.get_by_text(re.compile(rf"^β = {beta:g} · R = [0-9.]+ nats$"))
        expect(caption).to_have_count(1, timeout=90_000)
    expect(page.locator("[data-testid='stException']")).to_have_count(0)
    images = page.locator(".st-key-probe_reconstructions [data-testid='stImage']")
    expect(images).to_have_count(len(BETAS))

    # The chart beside them downloads as SVG for slides (the popover's button, by its key).
    page.locator(".st-key-figures-probe-kl-sweep-e2e button").first.click()
    button = page.locator(".st-key-figure-probe-kl-sweep-e2e-svg button")
    with page.expect_download(timeout=60_000) as download_info:
        button.click()
    download = download_info.value
    assert download.suggested_filename == "probe-kl-sweep-e2e.svg"
    saved = app_server.store_root.parent / download.suggested_filename
    download.save_as(saved)
    assert ET.fromstring(saved.read_bytes()).tag.endswith("svg")
