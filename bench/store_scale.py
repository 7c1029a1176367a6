"""Store scale: listing and chart costs with 10,000 runs, and with one 10,000-epoch run.

    python bench/store_scale.py                 # 10,000 runs and a 10,000-epoch run, ~2-3 min
    python bench/store_scale.py --runs 2000 --epochs 2000 --no-pages   # quicker

Builds two stores in a temporary folder, file by file as the worker writes them (config.json,
status.json, metrics.jsonl, summary.jsonl), then measures, in this process:

Store of many runs (each 3 epochs, 10 latent dimensions)
- cold listing: a fresh RunStore (a new server process) reads every run once, then a second
  fresh RunStore starts from the .index.json the first one saved
- warm listing: nothing changed (what every page rerun and the scheduler's tick pay)
- listing after another process changed one run's status
- the periodic full recheck (every 30 s: stat every run's files)
- page work on top of the listing: the Tradeoff frame and chart spec, the Train page's runs table
- AppTest renders of the Tradeoff and Train pages (server-side script time; no browser)

One long run (10,000 epochs, 256 latent dimensions: a 160 MB metrics.jsonl)
- reading it all (no summary.jsonl: the first look of older stores), and through summary.jsonl
- a warm get, one worker append (line + summary.jsonl), read_metrics of every line (downloads)
- the Posterior page's heatmap and curves from the thinned series, and an AppTest render

Times are wall seconds (median of repeats where repeated) with CPU seconds beside them.

With --browser, the same stores are also served by a real `streamlit run app.py` and opened in
headless Chromium (1400×1000): a fresh server's first page, each page settled (its script run
ended and nothing changed for 250 ms), the server's CPU with one idle open tab, and SESSIONS
browser tabs opened at once, each timed to its page settled. Targets (issue 10): pages settle
in ≤ 2 s, an idle tab costs < 2 % of a core, 20 sessions each get their page in ≤ 5 s.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import shutil
import statistics
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path[:0] = [
    p for p in (str(ROOT), str(ROOT / "bench"), str(ROOT / "tests")) if p not in sys.path
]

import altair as alt  # noqa: E402

from bench.machine import cpu_name  # noqa: E402
from vae.execution import listing as listing_module  # noqa: E402
from vae.execution.series import Series, file_signature  # noqa: E402
from vae.execution.store import RunStore, new_run_id  # noqa: E402
from vae.learn.config import RunConfig  # noqa: E402
from vae.present.charts import dims_over_epochs, heatmap_chart  # noqa: E402
from vae.present.tradeoff import (  # noqa: E402
    beta_domain,
    beta_values,
    curves_chart,
    curves_frame,
    tradeoff_chart,
    tradeoff_frame,
)
from vae.present.views import runs_frame  # noqa: E402

SESSIONS = 20  # browser tabs opened at once
IDLE_SECONDS = 45.0  # longer than the idle poll (20 s): at least two of its ticks


def metrics_row(epoch: int, latent: int, beta: float) -> dict:
    return {
        "epoch": epoch, "step": 100 * epoch, "train_loss": 100.0 - epoch * 0.01,
        "train_distortion": 90.0, "train_rate": 10.0, "kl_weight": beta,
        "images_per_s": 20000.0, "seconds": 0.4, "time": 1.7e9 + epoch,
        "rate": 10.0 / (1 + beta) + epoch * 1e-4, "distortion": 80.0 + 5 * beta - epoch * 1e-4,
        "elbo": -(90.0 + 4 * beta), "active_units": min(latent, 5),
        "kl_per_dim": [1.0 / (1 + j) for j in range(latent)],
        "posterior_var": [min(1.0, 0.05 * (j + 1)) for j in range(latent)],
        "mean_cov": [0.5 / (1 + j) for j in range(latent)],
    }  # fmt: skip


def write_run(root: Path, config: RunConfig, epochs: int, beta: float, group: str | None) -> str:
    """One finished run's files, as the worker leaves them (without fsync: this is set-up)."""
    run_id = new_run_id()
    while (root / run_id).exists():
        run_id = new_run_id()
    folder = root / run_id
    folder.mkdir(parents=True)
    now = time.time()
    (folder / "config.json").write_text(json.dumps(config.to_dict()))
    status = {"state": "finished", "reason": "", "created": now, "updated": now, "group": group}
    (folder / "status.json").write_text(json.dumps(status))
    series = Series(config.latent_dim)
    with open(folder / "metrics.jsonl", "w") as handle:
        for epoch in range(1, epochs + 1):
            row = metrics_row(epoch, config.latent_dim, beta)
            line = json.dumps(row) + "\n"
            handle.write(line)
            series.add(row)
            series.covered += len(line)
    series.signature = file_signature(os.stat(folder / "metrics.jsonl"))
    (folder / "summary.jsonl").write_bytes(series.to_lines())
    return run_id


def timed(function, repeats: int = 1):
    """(median wall s, median CPU s, last result) over `repeats` calls."""
    walls, cpus, result = [], [], None
    for _ in range(repeats):
        wall, cpu = time.perf_counter(), time.process_time()
        result = function()
        walls.append(time.perf_counter() - wall)
        cpus.append(time.process_time() - cpu)
    return statistics.median(walls), statistics.median(cpus), result


def row(table: list, what: str, wall: float, cpu: float, note: str = "") -> None:
    table.append((what, wall, cpu, note))
    print(f"  {what:58} {wall:9.4f} {cpu:9.4f}  {note}", flush=True)


TABLE: list = []


def app_render(store_root: Path, page: str) -> tuple[float, float, float, float, str]:
    """(first wall, first CPU, rerun wall, rerun CPU, problem) of an AppTest page render."""
    import streamlit as st  # deferred: only the page rows need Streamlit
    from streamlit.testing.v1 import AppTest

    os.environ["VAE_STORE"] = str(store_root)
    st.cache_resource.clear()
    at = AppTest.from_file(str(ROOT / "app.py"), default_timeout=300)
    home_wall, home_cpu, _ = timed(at.run)
    row(TABLE, "AppTest app.py, the server's first page (cold listing)", home_wall, home_cpu)
    first_wall, first_cpu, _ = timed(lambda: at.switch_page(page).run())
    again_wall, again_cpu, _ = timed(lambda: at.run(), repeats=3)
    problem = str(at.exception[0].message)[:80] if at.exception else ""
    return first_wall, first_cpu, again_wall, again_cpu, problem


def app_rows(store_root: Path, pages: tuple[str, ...], table: list) -> None:
    for page in pages:
        first, first_cpu, again, again_cpu, problem = app_render(store_root, page)
        row(table, f"AppTest {page}: first render", first, first_cpu, problem)
        row(table, f"AppTest {page}: rerun", again, again_cpu)


def many_runs(base: Path, count: int, pages: bool, table: list) -> None:
    root = base / "many"
    started = time.perf_counter()
    for i in range(count):
        beta = [0.25, 0.5, 1, 2, 4, 8][i % 6]
        config = RunConfig(latent_dim=10, beta=beta, epochs=3, name=f"run {i}")
        write_run(root, config, 3, beta, f"sweep-{i // 6}")
    print(f"\n{count:,} runs of 3 epochs built in {time.perf_counter() - started:.0f} s")
    print(f"  {'measurement':58} {'wall s':>9} {'CPU s':>9}")
    time.sleep(listing_module.RACY_S + 0.1)  # files older than the racy window, as after a while
    store = RunStore(root)
    wall, cpu, records = timed(store.list_runs)
    row(table, f"cold listing ({count:,} runs, no index: reads every run)", wall, cpu)
    assert len(records) == count and not any(r.broken for r in records)
    wall, cpu, records = timed(lambda: RunStore(root).list_runs())
    size = (root / listing_module.INDEX_FILE).stat().st_size
    row(table, "cold listing from .index.json (a restarted server)", wall, cpu, f"{size:,} B")
    wall, cpu, _ = timed(store.list_runs, repeats=50)
    row(table, "warm listing, nothing changed", wall, cpu)
    other = RunStore(root)
    victim = records[count // 2].run_id

    epoch = [3]

    def after_change():  # another process (a worker) appends an epoch to one run
        epoch[0] += 1
        other.append_metrics(victim, metrics_row(epoch[0], 10, 1.0))
        return store.list_runs()

    wall, cpu, _ = timed(after_change, repeats=5)
    row(table, "listing after another process appended to one run", wall, cpu, "incl. its write")

    def full_recheck():
        store.listing._last_full = 0.0
        return store.list_runs()

    wall, cpu, _ = timed(full_recheck, repeats=3)
    row(table, f"periodic full recheck (every {listing_module.FULL_RECHECK_S:.0f} s)", wall, cpu)
    records = store.list_runs()
    wall, cpu, frame = timed(lambda: tradeoff_frame(records), repeats=3)
    row(table, "Tradeoff: tradeoff_frame(records)", wall, cpu)
    wall, cpu, _ = timed(lambda: tradeoff_chart(frame).to_dict(), repeats=3)
    row(table, "Tradeoff: tradeoff_chart(frame) to a Vega-Lite spec", wall, cpu)
    wall, cpu, _ = timed(lambda: runs_frame(records), repeats=3)
    row(table, "Train: runs_frame(records) (the 'All runs' table)", wall, cpu)
    if pages:
        app_rows(root, ("pages/tradeoff.py", "pages/train.py"), table)


def long_run(base: Path, epochs: int, pages: bool, table: list) -> None:
    root = base / "long"
    latent = 256
    started = time.perf_counter()
    config = RunConfig(latent_dim=latent, epochs=10_000, name="long")
    run_id = write_run(root, config, epochs, 1.0, None)
    size = (root / run_id / "metrics.jsonl").stat().st_size
    print(
        f"\none run of {epochs:,} epochs x {latent} dimensions built in "
        f"{time.perf_counter() - started:.0f} s: metrics.jsonl is {size / 2**20:.0f} MiB"
    )
    print(f"  {'measurement':58} {'wall s':>9} {'CPU s':>9}")
    summary = root / run_id / "summary.jsonl"
    kept = summary.read_bytes()
    summary.unlink()
    wall, cpu, record = timed(lambda: RunStore(root).get(run_id))
    row(table, "get, no summary.jsonl (reads every line once)", wall, cpu)
    summary.write_bytes(kept)
    wall, cpu, record = timed(lambda: RunStore(root).get(run_id), repeats=3)
    row(table, "get through summary.jsonl (fresh store object)", wall, cpu, f"{len(kept):,} B")
    assert record.broken is None and record.epochs_done == epochs

    def get_with_rows():
        reader = RunStore(root)
        return reader.epoch_rows(reader.get(run_id))

    wall, cpu, shown = timed(get_with_rows, repeats=3)
    row(table, "get and its thinned rows (what a chart of this run reads)", wall, cpu)
    store = RunStore(root)
    store.get(run_id)
    wall, cpu, _ = timed(lambda: store.get(run_id), repeats=20)
    row(table, "get, warm", wall, cpu)
    wall, cpu, _ = timed(lambda: store.list_runs(), repeats=20)
    row(table, "listing, warm", wall, cpu)
    appender = RunStore(root)
    epoch = [epochs]

    def append():
        epoch[0] += 1
        appender.append_metrics(run_id, metrics_row(epoch[0], latent, 1.0))

    append()  # the worker's first append reads the series once
    wall, cpu, _ = timed(append, repeats=5)
    row(table, "worker: append one epoch (line + summary.jsonl)", wall, cpu, "fsyncs incl.")
    wall, cpu, record = timed(lambda: store.get(run_id))
    row(table, "get after 6 appends by another process (reads 6 lines)", wall, cpu)
    wall, cpu, rows = timed(lambda: store.read_metrics(run_id))
    row(table, "read_metrics: every line (downloads, CLI)", wall, cpu, f"{len(rows):,} rows")
    del rows
    series = store.epoch_rows(record)
    print(f"  thinned series: {len(series)} of {record.epochs_done:,} epochs")

    def heatmap():
        return heatmap_chart(dims_over_epochs(series, "posterior_var"), "posterior_var").to_dict()

    wall, cpu, _ = timed(heatmap, repeats=3)
    row(table, "Posterior: heatmap spec from the thinned series", wall, cpu)
    frame = tradeoff_frame([record])

    def curves():
        return curves_chart(
            curves_frame([(record, series)]), beta_domain(frame), beta_values(frame)
        ).to_dict()

    wall, cpu, _ = timed(curves, repeats=3)
    row(table, "Tradeoff: per-epoch curves spec of this run", wall, cpu)
    if pages:
        app_rows(root, ("pages/posterior.py", "pages/tradeoff.py"), table)


def browser(store_root: Path, pages: list[str], sessions: int, table: list) -> None:
    """The store served by a real app in Chromium: first page, each page, idle CPU, sessions."""
    import ui_latency as ui  # the latency benchmark's page helpers
    from live_app import IDLE, LiveApp, launch_chromium, stop_workers
    from playwright.sync_api import sync_playwright  # deferred: only --browser needs it

    app = LiveApp(store_root, store_root.parent / f"{store_root.name}-streamlit.log", max_jobs=2)
    print(f"  {'measurement':58} {'wall s':>9} {'server CPU s':>12}")
    try:
        with sync_playwright() as playwright:
            chromium = launch_chromium(playwright)
            context = chromium.new_context(viewport={"width": 1400, "height": 1000})
            context.set_default_timeout(120_000)
            page = context.new_page()
            cpu = ui.cpu_seconds(app.process.pid)
            started = time.monotonic()
            page.goto(app.url)
            ui.wait_idle(page)
            wall = time.monotonic() - started - ui.QUIET_MS / 1000
            row(table, "browser: a fresh server's first page (Train)", wall,
                ui.cpu_seconds(app.process.pid) - cpu)  # fmt: skip
            for title in pages:
                cpu = ui.cpu_seconds(app.process.pid)
                page.evaluate(ui.OBSERVER_JS)
                wall = ui.timed(
                    page, lambda t=title: ui.nav(page, t), ui.heading_is(page, ui.PAGES[title])
                )
                row(table, f"browser: switch to {title}, settled", wall / 1000,
                    ui.cpu_seconds(app.process.pid) - cpu)  # fmt: skip
                time.sleep(3.0)  # the first render's follow-up work
                share = ui.idle_cpu(app, IDLE_SECONDS)
                row(table, f"browser: idle tab on {title}, server CPU over {IDLE_SECONDS:.0f} s",
                    IDLE_SECONDS, share * IDLE_SECONDS / 100, f"{share:.2f}% of a core")  # fmt: skip
            page.close()
            if sessions:  # tabs opened at once
                tabs = [context.new_page() for _ in range(sessions)]
                cpu = ui.cpu_seconds(app.process.pid)
                opened = {}
                for tab in tabs:  # all requested before any is waited for
                    opened[tab] = time.monotonic()
                    tab.goto(app.url, wait_until="commit")
                took: dict = {}
                deadline = time.monotonic() + 300
                while len(took) < len(tabs) and time.monotonic() < deadline:
                    for tab in tabs:
                        if (
                            tab not in took
                            and tab.locator(IDLE).count()
                            and tab.locator("h1").count()
                        ):
                            took[tab] = time.monotonic() - opened[tab]
                    time.sleep(0.05)
                times = sorted(took.values())
                worst = times[-1] if len(times) == len(tabs) else float("inf")
                row(table, f"browser: {sessions} tabs opened at once, slowest to its page", worst,
                    ui.cpu_seconds(app.process.pid) - cpu,
                    f"median {statistics.median(times or [float('nan')]):.1f} s, "
                    f"{len(times)}/{sessions} loaded")  # fmt: skip
            chromium.close()
    finally:
        app.stop()
        stop_workers(store_root)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=10_000)
    parser.add_argument("--epochs", type=int, default=10_000)
    parser.add_argument("--no-pages", action="store_true", help="skip the AppTest renders")
    parser.add_argument("--keep", type=Path, help="build the stores here and keep them")
    parser.add_argument(
        "--browser", action="store_true", help="also serve each store and time it in Chromium"
    )
    parser.add_argument("--sessions", type=int, default=SESSIONS, help="tabs opened at once")
    args = parser.parse_args()
    alt.data_transformers.disable_max_rows()  # as st.altair_chart does: it sends all rows
    print(f"CPU: {cpu_name()} ({os.cpu_count()} cores visible); Python {platform.python_version()}")
    base = args.keep or Path(tempfile.mkdtemp(prefix="store-scale-"))
    table = TABLE
    try:
        many_runs(base, args.runs, not args.no_pages, table)
        if args.browser:
            browser(base / "many", ["Tradeoff", "Train"], args.sessions, table)
        long_run(base, args.epochs, not args.no_pages, table)
        if args.browser:
            browser(base / "long", ["Posterior", "Tradeoff"], 0, table)
    finally:
        if args.keep is None:
            shutil.rmtree(base, ignore_errors=True)
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    print(f"\npeak RSS of this process: {peak:,.0f} MiB")
    costs = {what: cpu for what, _, cpu, _ in table}
    tick = costs.get("warm listing, nothing changed", 0.0)
    print(
        "an idle tab's look for changes, store side: one warm listing every 20 s = "
        f"{100 * tick / 20:.3f}% of a core (the page reruns only when a run it shows changed; "
        "the browser rows above measure the whole server)"
    )


if __name__ == "__main__":
    main()
