"""Text and tables the pages show about runs and jobs, built from run records (no Streamlit
here, and no Altair: the Train page draws no chart, so a fresh server's first page does not
load it; the charts are in `charts.py`).

Pages pass `RunRecord`s in and put the returned text and DataFrames on screen; keeping the
shaping here lets tests check the numbers without a browser.
"""

from __future__ import annotations

import io
import statistics
import time
from collections.abc import Iterable, Mapping
from typing import TYPE_CHECKING, Any

import pandas as pd

from vae.execution.states import BROKEN, RunState
from vae.execution.store import RunRecord
from vae.learn.config import RunConfig
from vae.learn.fields import LABEL, SEPARATES, SETTINGS, cell, differing, objective_text

if TYPE_CHECKING:  # only named in a hint: the chart objects come from charts.py
    import altair as alt

BROKEN_SHOWN = 20  # Checkpoints warns once per broken run folder up to this many, then counts


def progress(record: RunRecord) -> tuple[float, str]:
    """(fraction done, 'epoch 3/10 · 21,000 img/s · ETA 12 s') for a run's progress bar."""
    total = record.config.epochs if record.config else 0
    last = record.last_metrics
    epoch = last.get("epoch", 0)
    text = f"epoch {epoch}/{total}"
    if last.get("images_per_s"):
        text += f" · {last['images_per_s']:,.0f} img/s"
        seconds = list(record.recent_seconds)
        if record.state == RunState.RUNNING and seconds and epoch < total:
            text += f" · ETA {format_seconds(statistics.median(seconds) * (total - epoch))}"
    if record.stalled_since is not None:  # the listing knows: no file is looked at here
        silent = time.time() - record.stalled_since
        text = f"stalled: no sign of life for {format_seconds(silent)} · {text}"
    return (min(1.0, epoch / total) if total else 0.0), text


# ---- jobs and slots -----------------------------------------------------------------------
def job_members(jobs: Mapping[str, Any]) -> list[list[str]]:
    """The distinct jobs of `JobManager.jobs`, each as the run ids it trains, in start order.

    Relies on what JobManager exposes today: `jobs` maps a run id to its Job, every run of one
    worker process maps to the same Job object, and `Job.run_ids` lists that job's runs (several
    for a stacked sweep group, which fills one slot)."""
    by_job: dict[int, list[str]] = {}
    for job in list(jobs.values()):
        by_job.setdefault(id(job), list(job.run_ids))
    return list(by_job.values())


def active_jobs(jobs: Mapping[str, Any], records: Iterable[RunRecord]) -> list[list[RunRecord]]:
    """The running runs grouped into the jobs that train them; a running run that belongs to no
    job this server knows (a worker still starting, or another process's) counts as its own."""
    running = {r.run_id: r for r in records if r.state == RunState.RUNNING}
    groups: list[list[RunRecord]] = []
    placed: set[str] = set()
    for members in job_members(jobs):
        group = [running[m] for m in members if m in running]
        if group:
            groups.append(group)
            placed.update(m.run_id for m in group)
    groups += [[r] for run_id, r in running.items() if run_id not in placed]
    return groups


def job_speed(members: list[RunRecord]) -> float:
    """Images per second of a whole job: its runs' latest speeds added (stacked runs share the
    work of one process, so each reads slower alone than the job really is)."""
    return float(sum(r.last_metrics.get("images_per_s") or 0.0 for r in members))


def slots_text(slots: int, jobs: int, runs: int, queued: int) -> str:
    """'2 slots: 1 job training 3 runs (stacked) · 2 queued': jobs, not runs, fill slots."""
    text = f"{slots} training slot{'s' if slots != 1 else ''}: {jobs} in use"
    if jobs:
        text += f" by {jobs} job{'s' if jobs != 1 else ''} training {runs} run{'s' if runs != 1 else ''}"
        if runs > jobs:
            text += " (a stacked sweep group is one job)"
    if queued:
        text += f" · {queued} queued"
    return text


def grouping_text(jobs: Mapping[str, Any], run_ids: list[str], slots: int) -> str:
    """How the runs of one submission were started: '6 runs: 2 jobs of 3 stacked runs (2 slots)'."""
    wanted = set(run_ids)
    sizes = [len(wanted.intersection(m)) for m in job_members(jobs)]
    sizes = [n for n in sizes if n]
    waiting = len(run_ids) - sum(sizes)
    parts = []
    for size in sorted(set(sizes), reverse=True):
        count = sizes.count(size)
        what = f"{size} stacked runs" if size > 1 else "1 run"
        parts.append(f"{count} job{'s' if count != 1 else ''} of {what}")
    text = f"{len(run_ids)} run{'s' if len(run_ids) != 1 else ''}: "
    text += ", ".join(parts) if parts else "none started yet"
    if waiting and parts:
        text += f", {waiting} waiting for a slot"
    return text + f" ({slots} slot{'s' if slots != 1 else ''}, one job each)"


def format_seconds(seconds: float) -> str:
    seconds = int(round(seconds))
    if seconds < 60:
        return f"{seconds} s"
    if seconds < 3600:
        return f"{seconds // 60} min {seconds % 60:02d} s"
    return f"{seconds // 3600} h {seconds % 3600 // 60:02d} min"


MAX_LISTED = 1_000  # rows of a runs table, options of a run picker: a browser draws each one


def newest(records: list, limit: int | None = None) -> tuple[list, str]:
    """The newest `limit` (default MAX_LISTED) of `records` (given oldest first) and, when some
    were left out, a note saying so: a store of 10,000 runs must not make every page draw
    10,000 rows."""
    limit = limit or MAX_LISTED
    if len(records) <= limit:
        return records, ""
    note = f"The newest {limit:,} of {len(records):,} runs (`python -m vae list` lists them all)."
    return records[-limit:], note


def _number(value, decimals: int) -> str:
    """A number to its precision; blank for nothing (a report shows no "None")."""
    return "" if value is None else f"{value:,.{decimals}f}"


def runs_frame(records: list[RunRecord]) -> pd.DataFrame:
    """One row per run: settings, state and the latest test-set numbers, as a report writes them
    (every runs-table column, sorting and filtering are on the Runs page)."""
    rows = []
    for r in records:
        if r.broken:
            rows.append({"run": r.run_id, "state": BROKEN, "note": r.broken})
            continue
        c, m = r.config, r.last_metrics
        values = c.to_dict()
        rows.append(
            {
                "run": r.run_id,
                "name": c.name,
                "state": r.state,
                "β": SETTINGS["beta"].text(cell(values, "beta")),
                "objective": objective_text(values),
                "dataset": c.dataset,
                "arch": c.architecture,
                "z": str(c.latent_dim),
                "likelihood": c.likelihood,
                "lr": f"{c.lr:g}",
                "batch": str(c.batch_size),
                "seed": str(c.seed),
                "epoch": f"{m.get('epoch', 0)}/{c.epochs}",
                "R (nats)": _number(m.get("rate"), 2),
                "D (nats)": _number(m.get("distortion"), 2),
                "−ELBO": _number(-m["elbo"] if "elbo" in m else None, 2),
                "active": "" if m.get("active_units") is None else str(m["active_units"]),
                "img/s": _number(m.get("images_per_s"), 0),
                "precision": m.get("precision") or "",
                "where": r.status.get("where") or "",
                "note": r.status.get("reason") or "",
                "created": time.strftime(
                    "%Y-%m-%d %H:%M", time.localtime(r.status.get("created", 0))
                ),
            }
        )
    return pd.DataFrame(rows).fillna("")


def difference_text(a: RunConfig, b: RunConfig) -> str:
    """What two compared runs differ in, and whether that is like with like: 'Differ in β
    (0.5 → 16) only: like with like.' A difference in anything that changes what is computed
    (but β) is named as such."""
    first, second = a.to_dict(), b.to_dict()
    names = [n for n in differing([first, second]) if SETTINGS[n].role != LABEL]
    if not names:
        return "Same settings."
    parts = [
        f"{SETTINGS[n].short or SETTINGS[n].label} ({SETTINGS[n].text(cell(first, n)) or '–'} → "
        f"{SETTINGS[n].text(cell(second, n)) or '–'})"
        for n in names
    ]
    unlike = [n for n in names if SETTINGS[n].role == SEPARATES]
    verdict = (
        "like with like"
        if not unlike
        else "not like with like: they differ in more than β and seed"
    )
    return f"Differ in {', '.join(parts)}: {verdict}."


# ---- downloads --------------------------------------------------------------------------------
def metrics_csv(metrics: list[dict], run_id: str = "", config: RunConfig | None = None) -> bytes:
    """Per-epoch metrics as CSV; per-dimension lists become columns kl_0, var_0, cov_0, ...

    With a run id and config, each row starts with the run id and every setting, so a file read
    on its own (or several concatenated) still says which run and settings it holds."""
    first: dict = {}
    if run_id:
        first["run"] = run_id
    if config is not None:
        values = config.to_dict()
        for name, setting in SETTINGS.items():  # numbers as numbers; lists and switches as text
            value = values.get(name)
            first[name] = setting.text(value) if isinstance(value, list | bool) else value
    rows = []
    for m in metrics:
        row = dict(first)
        row.update({k: v for k, v in m.items() if not isinstance(v, list)})
        for field, prefix in (("kl_per_dim", "kl"), ("posterior_var", "var"), ("mean_cov", "cov")):
            for j, v in enumerate(m.get(field, [])):
                row[f"{prefix}_{j}"] = v
        rows.append(row)
    buffer = io.StringIO()
    pd.DataFrame(rows).to_csv(buffer, index=False)
    return buffer.getvalue().encode()


# ---- handing charts to the page ---------------------------------------------------------------
def vega_lite_spec(chart: alt.TopLevelMixin) -> dict:
    """The chart as a Vega-Lite dict with its data inline, without the default theme's 300×300
    view size (the page sizes charts to their column). Building and validating a layered Altair
    chart takes 50-250 ms; a page caches this dict and hands it to the browser as it is.
    Not validated against the schema here (a third of the time): tests build every chart."""
    spec = chart.to_dict(validate=False)
    view = spec.get("config", {}).get("view", {})
    for name in ("continuousWidth", "continuousHeight"):
        view.pop(name, None)
    if "view" in spec.get("config", {}) and not view:
        del spec["config"]["view"]
    if spec.get("config") == {}:
        del spec["config"]
    return spec
