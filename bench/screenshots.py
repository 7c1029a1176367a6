"""Screenshots of every page of the dashboard, on real runs: `python bench/screenshots.py --out docs/screenshots`.

1. trains a β sweep on the offline digits set through the library (JobManager on a temporary run
   store: real worker processes, the same files the app reads);
2. starts `streamlit run app.py` on that store (VAE_STORE) on a free port;
3. opens each page in headless Chromium at a 1400×1000 viewport, waits until the script run is
   over and every chart and image has rendered, and writes a full-page PNG to <out>/<page>.png.

Pages that show one run are opened on a chosen run (`?run=ID`): the posterior page on the highest
β, so dimensions collapsed to the prior are visible (`--compare` opens it beside the lowest β).
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO_ROOT))
sys.path.insert(0, str(REPO_ROOT / "tests"))  # live_app: the app server the browser tests use

from live_app import CHROMIUM, CHROMIUM_ARGS, IDLE, LiveApp  # noqa: E402

from vae.execution.jobs import JobManager  # noqa: E402
from vae.execution.store import RunStore  # noqa: E402
from vae.learn.config import RunConfig  # noqa: E402

PAGES = ("train", "tradeoff", "posterior", "samples", "kl_term", "checkpoints")
VIEWPORT = {"width": 1400, "height": 1000}
RENDERED_JS = """() => {
    const charts = [...document.querySelectorAll("[data-testid='stVegaLiteChart']")];
    const chartsDrawn = charts.every(c => c.querySelector("svg.marks, canvas.marks"));
    const images = [...document.querySelectorAll("[data-testid='stImage'] img, [data-testid='stFullScreenFrame'] img")];
    const imagesLoaded = images.every(i => i.complete && i.naturalWidth > 0);
    const spinners = document.querySelectorAll("[data-testid='stSpinner'], [data-testid='stSkeleton']").length;
    return chartsDrawn && imagesLoaded && spinners === 0;
}"""
CONTENT_HEIGHT_JS = """() => {
    const main = document.querySelector("[data-testid='stMain']")
        || document.querySelector("[data-testid='stAppViewContainer']");
    const block = document.querySelector("[data-testid='stMainBlockContainer']");
    return Math.ceil(Math.max(main ? main.scrollHeight : 0, block ? block.scrollHeight : 0));
}"""


def log(message: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {message}", flush=True)


def train_runs(store: RunStore, betas: list[float], epochs: int, latent_dim: int) -> dict:
    """A β sweep through the library; returns {β: run id} once every run has finished."""
    config = RunConfig(dataset="digits", latent_dim=latent_dim, epochs=epochs, name="screenshots")
    manager = JobManager(store, max_concurrent=max(1, min(len(betas), os.cpu_count() or 1)))
    run_ids = manager.submit_sweep(config, betas)
    log(f"training {len(run_ids)} runs (β = {', '.join(f'{b:g}' for b in betas)}, {epochs} epochs)")
    manager.wait(run_ids, timeout_s=900)
    states = {r: store.read_status(r)["state"] for r in run_ids}
    if any(s != "finished" for s in states.values()):
        raise SystemExit(f"not every run finished: {states}")
    return dict(zip(betas, run_ids, strict=True))


def page_urls(url: str, runs: dict, compare: bool) -> dict[str, str]:
    betas = sorted(runs)
    low, high, middle = runs[betas[0]], runs[betas[-1]], runs[betas[len(betas) // 2]]
    posterior = f"{url}/posterior?run={high}" + (f"&compare={low}" if compare else "")
    samples = f"{url}/samples?run={middle}" + (f"&compare={high}" if compare else "")
    return {
        # The default page is served at "/"; "/train" would open Streamlit's "Page not found"
        # dialog on top of it.
        "train": f"{url}/",
        "tradeoff": f"{url}/tradeoff",
        "posterior": posterior,
        "samples": samples,
        "kl_term": f"{url}/kl_term",
        "checkpoints": f"{url}/checkpoints?run={middle}",
    }


def wait_rendered(page, timeout_ms: int = 60_000) -> None:
    """The page's script run is over (a title is drawn first: before the app connects, the
    state attribute already reads notRunning) and every chart and image is drawn."""
    page.locator("[data-testid='stMainBlockContainer'] h1").first.wait_for(timeout=timeout_ms)
    page.wait_for_selector(IDLE, timeout=timeout_ms)
    page.wait_for_function(RENDERED_JS, timeout=timeout_ms)
    page.evaluate("() => document.fonts.ready.then(() => true)")


def settled_height(page, timeout_ms: int = 20_000) -> int:
    """The content height once it stops changing (fragments and charts can still grow it)."""
    deadline = time.monotonic() + timeout_ms / 1000
    last = -1
    while time.monotonic() < deadline:
        page.wait_for_timeout(700)
        height = page.evaluate(CONTENT_HEIGHT_JS)
        if height == last:
            return height
        last = height
    return last


def screenshot(page, url: str, path: Path) -> list[str]:
    """Full-page PNG of one page; returns problems seen on it (exceptions, dialogs)."""
    page.set_viewport_size(VIEWPORT)
    page.goto(url)
    wait_rendered(page)
    problems = []
    for testid, what in (("stException", "a Python exception"), ("stDialog", "a dialog")):
        found = page.locator(f"[data-testid='{testid}']")
        if found.count():
            problems.append(f"{what}: {found.first.inner_text()[:300]!r}")
    # Streamlit scrolls inside its main container, so a full-page capture of a 1000 px high
    # window shows one screen: grow the window to the content's height instead.
    height = max(VIEWPORT["height"], settled_height(page))
    page.set_viewport_size({"width": VIEWPORT["width"], "height": height})
    wait_rendered(page)
    settled_height(page)  # let Vega and image layout settle at the new size
    page.screenshot(path=str(path), full_page=True)
    return problems


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=REPO_ROOT / "docs" / "screenshots")
    parser.add_argument("--betas", type=float, nargs="+", default=[0.5, 1.0, 4.0, 16.0])
    parser.add_argument("--epochs", type=int, default=4)
    parser.add_argument("--latent-dim", type=int, default=10)
    parser.add_argument("--pages", nargs="+", choices=PAGES, default=list(PAGES))
    parser.add_argument(
        "--compare", action="store_true",
        help="open Posterior and Samples in their side-by-side mode (lowest vs highest β)",
    )  # fmt: skip
    args = parser.parse_args(argv)

    from playwright.sync_api import sync_playwright

    args.out.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix="vae-screenshots-") as tmp:
        store_root = Path(tmp) / "runs"
        started = time.monotonic()
        runs = train_runs(RunStore(store_root), args.betas, args.epochs, args.latent_dim)
        log(f"runs finished in {time.monotonic() - started:.0f} s; starting the app")
        app = LiveApp(
            store_root, Path(tmp) / "streamlit.log", extra_flags=("--client.toolbarMode", "minimal")
        )  # no "Deploy" button in the pictures
        url = app.url
        all_problems = {}
        try:
            urls = page_urls(url, runs, args.compare)
            with sync_playwright() as playwright:
                browser = playwright.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
                page = browser.new_page(viewport=VIEWPORT)
                for name in args.pages:
                    path = args.out / f"{name}.png"
                    problems = screenshot(page, urls[name], path)
                    all_problems[name] = problems
                    log(f"{path} {'; '.join(problems) if problems else ''}")
                browser.close()
        finally:
            app.stop()
    for name, problems in all_problems.items():
        for problem in problems:
            print(f"{name}: {problem}", file=sys.stderr)
    return 1 if any(all_problems.values()) else 0


if __name__ == "__main__":
    sys.exit(main())
