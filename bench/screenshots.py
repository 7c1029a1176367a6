"""Screenshots of every page of the dashboard after the β demo: `python bench/screenshots.py --out docs/screenshots`.

1. starts `streamlit run app.py` on an empty temporary run store (VAE_STORE) on a free port;
2. in headless Chromium at a 1400×1000 viewport, photographs the first visit (welcome.png), then
   presses **Start the β demo** as a new user would and waits until its runs finish (real worker
   processes), printing the wall time and what the demo shows (R, D, unit counts per β);
3. opens each page, waits until the script run is over and every chart and image has rendered,
   and writes a full-page PNG to <out>/<page>.png.

Pages that show one run are opened on a chosen run (`?run=ID`): Posterior compares the largest β
with the smallest (shared axes), Samples shows the middle β (`--compare`: beside the largest).
`--demo-epochs N` shortens the demo (through VAE_DEMO_EPOCHS) for a quick trial of the script.
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

from live_app import CHROMIUM, CHROMIUM_ARGS, IDLE, LiveApp, stop_workers  # noqa: E402

from bench.machine import cpu_name, load_average  # noqa: E402
from vae.execution.states import ACTIVE  # noqa: E402
from vae.execution.store import RunStore  # noqa: E402
from vae.present.demo import DEMO_EPOCHS_ENV, DEMO_NAME  # noqa: E402
from vae.present.units import unit_counts  # noqa: E402

PAGES = ("train", "gallery", "tradeoff", "posterior", "probe", "samples", "kl_term", "checkpoints")
DEMO_TIMEOUT_S = 900
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


def run_demo(page, url: str, store: RunStore, out: Path) -> dict:
    """Photograph the first visit, press the demo button, wait for the runs; returns {β: run id}."""
    shot = screenshot(page, f"{url}/", out / "welcome.png")
    log(f"{out / 'welcome.png'} {'; '.join(shot)}")
    log(f"spare workers ready {wait_for_spare_workers():.1f} s later (a new user reads the page)")
    started = time.monotonic()
    page.locator(".st-key-demo_button button").click()
    page.get_by_text("Queued the demo").wait_for(timeout=30_000)
    runs = [r for r in store.list_runs() if r.config.name == DEMO_NAME]
    log(f"demo: {len(runs)} runs queued (β = {', '.join(f'{r.config.beta:g}' for r in runs)})")
    while True:
        states = {r.run_id: store.read_status(r.run_id)["state"] for r in runs}
        if not any(s in ACTIVE for s in states.values()):
            break
        if time.monotonic() - started > DEMO_TIMEOUT_S:
            raise SystemExit(f"the demo did not finish in {DEMO_TIMEOUT_S} s: {states}")
        time.sleep(0.1)
    log(f"demo finished in {time.monotonic() - started:.1f} s (button press to last run done); "
        f"CPU: {cpu_name()}, load average {load_average()}")  # fmt: skip
    if any(s != "finished" for s in states.values()):
        raise SystemExit(f"not every demo run finished: {states}")
    print_demo(store, runs)
    print_timeline(store, runs, time.time() - (time.monotonic() - started))
    return {r.config.beta: r.run_id for r in runs}


def spare_workers() -> dict[int, int]:
    """{pid: CPU ticks} of the warm workers waiting for a job on this machine."""
    found = {}
    for proc in Path("/proc").iterdir():
        try:
            command = (proc / "cmdline").read_bytes().split(b"\0")
            if b"vae.execution.worker" in command and b"--wait" in command:
                fields = (proc / "stat").read_text().rsplit(")", 1)[1].split()
                found[int(proc.name)] = int(fields[11]) + int(fields[12])  # utime + stime
        except (OSError, ValueError, IndexError):
            continue
    return found


def wait_for_spare_workers(timeout_s: float = 60.0) -> float:
    """Seconds until the app's spare workers are warm (they exist and use no more CPU)."""
    started = time.monotonic()
    before = spare_workers()
    while time.monotonic() - started < timeout_s:
        time.sleep(0.5)
        now = spare_workers()
        if now and now == before:
            break
        before = now
    return time.monotonic() - started


def print_demo(store: RunStore, runs) -> None:
    """What the demo shows, per β: the numbers the gallery and the Posterior page display."""
    print(f"{'β':>6} {'epoch':>5} {'R':>7} {'D':>8} {'informative':>11} {'active (Burda)':>14}")
    for record in sorted(runs, key=lambda r: r.config.beta):
        m = store.read_metrics(record.run_id)[-1]
        counts = unit_counts(m)
        print(
            f"{record.config.beta:>6g} {m['epoch']:>5} {m['rate']:>7.2f} {m['distortion']:>8.2f} "
            f"{counts.informative:>7} / {counts.latent_dim:<3} {counts.active:>10} / "
            f"{counts.latent_dim}"
        )


def print_timeline(store: RunStore, runs, pressed: float) -> None:
    """Where the demo's seconds went, per run, counted from the button press."""
    print(f"{'β':>6} {'started':>8} {'epoch 1':>8} {'epoch 30':>8} {'evaluation':>10} {'ended':>6}")
    for record in sorted(runs, key=lambda r: r.config.beta):
        status = store.read_status(record.run_id)
        metrics = store.read_metrics(record.run_id)
        evaluation = store.read_eval(record.run_id) or {}
        print(
            f"{record.config.beta:>6g} {status['started'] - pressed:>8.1f} "
            f"{metrics[0]['time'] - pressed:>8.1f} {metrics[-1]['time'] - pressed:>8.1f} "
            f"{evaluation.get('eval_seconds', float('nan')):>9.1f}s {status['ended'] - pressed:>6.1f}"
        )


def page_urls(url: str, runs: dict, compare: bool) -> dict[str, str]:
    betas = sorted(runs)
    low, high, middle = runs[betas[0]], runs[betas[-1]], runs[betas[len(betas) // 2]]
    posterior = f"{url}/posterior?run={high}&compare={low}"
    samples = f"{url}/samples?run={middle}" + (f"&compare={high}" if compare else "")
    return {
        # The default page is served at "/"; "/train" would open Streamlit's "Page not found"
        # dialog on top of it.
        "train": f"{url}/",
        "gallery": f"{url}/gallery",
        "tradeoff": f"{url}/tradeoff",
        "posterior": posterior,
        "probe": f"{url}/probe",
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


def screenshot(page, url: str, path: Path, prepare=None) -> list[str]:
    """Full-page PNG of one page (after `prepare(page)`, if given); returns problems seen on it
    (exceptions, dialogs)."""
    page.set_viewport_size(VIEWPORT)
    page.goto(url)
    wait_rendered(page)
    if prepare is not None:
        prepare(page)
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


def show_slopes(page) -> None:
    """Tradeoff: switch the slope −β overlay on (the theory on the chart)."""
    page.locator(".st-key-show_slopes label").click()
    page.wait_for_timeout(500)
    wait_rendered(page)


def draw_seven(page) -> None:
    """Probe: draw a 7 on the canvas (two strokes' worth in one) and wait for every β's answer."""
    canvas = page.locator("canvas").last
    box = canvas.bounding_box()
    points = [(0.3, 0.25), (0.7, 0.25), (0.45, 0.8)]
    at = [(box["x"] + box["width"] * u, box["y"] + box["height"] * v) for u, v in points]
    page.mouse.move(*at[0])
    page.mouse.down()
    for (x0, y0), (x1, y1) in zip(at[:-1], at[1:], strict=True):
        for step in range(1, 16):
            page.mouse.move(x0 + (x1 - x0) * step / 15, y0 + (y1 - y0) * step / 15)
    page.mouse.up()
    page.get_by_text("One reconstruction per β").wait_for(timeout=60_000)
    wait_rendered(page)


PREPARE = {"tradeoff": show_slopes, "probe": draw_seven}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=REPO_ROOT / "docs" / "screenshots")
    parser.add_argument("--pages", nargs="+", choices=PAGES, default=list(PAGES))
    parser.add_argument(
        "--demo-epochs", type=int, default=None,
        help=f"shorten the demo to this many epochs (sets {DEMO_EPOCHS_ENV}); default: the demo's own",
    )  # fmt: skip
    parser.add_argument(
        "--demo-only", action="store_true",
        help="time the demo (press to last run finished) and print its table; no page pictures",
    )  # fmt: skip
    parser.add_argument(
        "--compare", action="store_true",
        help="open Samples in its side-by-side mode (middle vs highest β)",
    )  # fmt: skip
    args = parser.parse_args(argv)
    if args.demo_epochs is not None:
        os.environ[DEMO_EPOCHS_ENV] = str(args.demo_epochs)  # the app server inherits it

    from playwright.sync_api import sync_playwright

    args.out.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix="vae-screenshots-") as tmp:
        store_root = Path(tmp) / "runs"
        if args.demo_only:  # the first-visit picture too stays out of docs/
            args.out = Path(tmp) / "pictures"
            args.out.mkdir()
        app = LiveApp(
            store_root, Path(tmp) / "streamlit.log", extra_flags=("--client.toolbarMode", "minimal")
        )  # no "Deploy" button in the pictures
        all_problems = {}
        try:
            with sync_playwright() as playwright:
                browser = playwright.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
                page = browser.new_page(viewport=VIEWPORT)
                runs = run_demo(page, app.url, RunStore(store_root), args.out)
                urls = page_urls(app.url, runs, args.compare)
                for name in [] if args.demo_only else args.pages:
                    path = args.out / f"{name}.png"
                    problems = screenshot(page, urls[name], path, PREPARE.get(name))
                    all_problems[name] = problems
                    log(f"{path} {'; '.join(problems) if problems else ''}")
                browser.close()
        finally:
            app.stop()
            stop_workers(store_root)
    for name, problems in all_problems.items():
        for problem in problems:
            print(f"{name}: {problem}", file=sys.stderr)
    return 1 if any(all_problems.values()) else 0


if __name__ == "__main__":
    sys.exit(main())
