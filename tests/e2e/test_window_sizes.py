"""The layout in headless Chromium at 800 and 1400 px: nothing clipped, truncated or fetched
from elsewhere, on every page, with two runs compared side by side.

Screenshots of every page land in tmp_path (or in $LAYOUT_SHOTS when set) to be looked at.
"""

from __future__ import annotations

import os
from pathlib import Path

import pytest
from helpers import train_run
from live_app import IDLE, LiveApp, launch_chromium, stop_workers

from vae.execution.store import RunStore
from vae.learn.config import RunConfig

pytestmark = pytest.mark.browser

WIDTHS = (800, 1400)
PAGES = ["", "tradeoff", "posterior", "samples", "kl_term", "checkpoints"]

# Elements whose content is wider than their box (clipped), text cut to an ellipsis, and charts
# wider than the page's content column.
FIND_PROBLEMS_JS = """() => {
  const problems = [];
  const main = document.querySelector("[data-testid='stMainBlockContainer']");
  const right = main.getBoundingClientRect().right + 1;
  const name = el => (el.dataset.testid || el.tagName) + ': ' + (el.innerText || '').slice(0, 40);
  for (const el of main.querySelectorAll('*')) {
    const style = getComputedStyle(el);
    if (el.tagName !== 'INPUT' && style.textOverflow === 'ellipsis' && el.scrollWidth > el.clientWidth + 1)
      problems.push('truncated ' + name(el));
  }
  for (const chart of main.querySelectorAll("[data-testid='stVegaLiteChart'] svg.marks")) {
    const box = chart.getBoundingClientRect();
    if (box.right > right) problems.push('chart past the edge by ' + Math.round(box.right - right) + ' px');
    const holder = chart.closest("[data-testid='stVegaLiteChart']");
    if (holder.scrollWidth > holder.clientWidth + 1) problems.push('chart clipped ' + name(holder));
  }
  for (const el of main.querySelectorAll("[data-testid='stMetricValue'], [data-testid='stMetricLabel'], button"))
    if (el.scrollWidth > el.clientWidth + 1) problems.push('clipped ' + name(el));
  if (document.documentElement.scrollWidth > window.innerWidth) problems.push('page scrolls sideways');
  return problems;
}"""


@pytest.fixture(scope="module")
def two_runs(tmp_path_factory):
    """Two finished runs of different β, trained in this process (about a second each)."""
    store = RunStore(tmp_path_factory.mktemp("layout") / "runs")
    for beta in (0.5, 4.0):
        config = RunConfig(
            hidden_dims=[32], latent_dim=8, epochs=3, batch_size=256, beta=beta, threads=1,
            name=f"layout check β {beta:g}",
        )  # fmt: skip
        train_run(store, store.create_run(config))
    return store


def test_every_page_fits_800_and_1400_px(two_runs, tmp_path):
    from playwright.sync_api import sync_playwright

    shots = Path(os.environ.get("LAYOUT_SHOTS") or tmp_path)
    shots.mkdir(parents=True, exist_ok=True)
    first, second = [r.run_id for r in two_runs.list_runs()]
    app = LiveApp(two_runs.root, tmp_path / "streamlit.log")
    found: dict[str, list[str]] = {}
    outside: list[str] = []
    try:
        with sync_playwright() as playwright:
            browser = launch_chromium(playwright)
            for width in WIDTHS:
                # A tall window: every element renders, and one screenshot shows the whole page.
                context = browser.new_context(viewport={"width": width, "height": 2400})
                context.set_default_timeout(60_000)
                page = context.new_page()
                page.on(
                    "request",
                    lambda r: outside.append(r.url) if not r.url.startswith(app.url) else None,
                )
                for path in PAGES:
                    query = (
                        f"?run={first}&compare={second}" if path in ("posterior", "samples") else ""
                    )
                    page.goto(f"{app.url}/{path}{query}")
                    page.locator("[data-testid='stMainBlockContainer'] h1").first.wait_for()
                    page.wait_for_selector(IDLE)
                    if path not in ("", "checkpoints"):
                        page.wait_for_selector("[data-testid='stVegaLiteChart'] svg.marks")
                    page.wait_for_timeout(800)  # charts lay out after the script run ends
                    page.screenshot(path=str(shots / f"{path or 'train'}-{width}.png"))
                    found[f"{path or 'train'} at {width} px"] = page.evaluate(FIND_PROBLEMS_JS)
                    assert page.locator("[data-testid='stSidebar']").count() == 0
                    assert page.locator("[data-testid='stTopNavLink']").count() >= 1
                    assert page.get_by_role("button", name="Deploy").count() == 0
                    assert page.title().endswith("· β-VAE dashboard"), page.title()
                icon = page.locator("link[rel~='icon']").first.get_attribute("href")
                assert icon and not icon.startswith("http") or icon.startswith(app.url), icon
                context.close()
            browser.close()
    finally:
        app.stop()
        stop_workers(two_runs.root)
    problems = {where: found_here for where, found_here in found.items() if found_here}
    assert not problems, "\n".join(f"{k}: {v}" for k, v in problems.items())
    assert not outside, f"the page fetched from other hosts: {outside}"
