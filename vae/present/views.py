"""Tables and Altair charts the pages show, built from run records (no Streamlit here).

Pages pass `RunRecord`s in and put the returned DataFrames and charts on screen; keeping the
shaping here lets tests check the numbers without a browser.
"""

from __future__ import annotations

import io
import time
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any

import altair as alt
import numpy as np
import pandas as pd

from vae.execution.lease import stalled_for
from vae.execution.states import BROKEN, RunState
from vae.execution.store import RunRecord
from vae.learn.thresholds import ACTIVE_UNIT_THRESHOLD, INFORMATIVE_KL_THRESHOLD
from vae.present.units import ACTIVE_RULE, INFORMATIVE_RULE, UNIT_CLASSES, UNIT_COLOURS, unit_class


def progress(record: RunRecord) -> tuple[float, str]:
    """(fraction done, 'epoch 3/10 · 21,000 img/s · ETA 12 s') for a run's progress bar."""
    total = record.config.epochs if record.config else 0
    last = record.last_metrics
    epoch = last.get("epoch", 0)
    text = f"epoch {epoch}/{total}"
    if last.get("images_per_s"):
        text += f" · {last['images_per_s']:,.0f} img/s"
        seconds = [m.get("seconds", 0) for m in record.metrics[-3:]]
        if record.state == RunState.RUNNING and seconds and epoch < total:
            text += f" · ETA {format_seconds(np.median(seconds) * (total - epoch))}"
    silent = stalled_for(record.path) if record.state == RunState.RUNNING else None
    if silent is not None:
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


def runs_frame(records: list[RunRecord]) -> pd.DataFrame:
    """One row per run: settings, state and the latest test-set numbers."""
    rows = []
    for r in records:
        if r.broken:
            rows.append({"run": r.run_id, "state": BROKEN, "note": r.broken})
            continue
        c, m = r.config, r.last_metrics
        rows.append(
            {
                "run": r.run_id,
                "name": c.name,
                "state": r.state,
                "β": c.beta,
                "objective": c.objective,
                "dataset": c.dataset,
                "arch": c.architecture,
                "z": c.latent_dim,
                "likelihood": c.likelihood,
                "epoch": f"{m.get('epoch', 0)}/{c.epochs}",
                "R (nats)": m.get("rate"),
                "D (nats)": m.get("distortion"),
                "−ELBO": -m["elbo"] if "elbo" in m else None,
                "active": m.get("active_units"),
                "img/s": m.get("images_per_s"),
                "precision": m.get("precision", ""),
                "where": r.status.get("where", ""),
                "note": r.status.get("reason", ""),
                "created": time.strftime(
                    "%Y-%m-%d %H:%M", time.localtime(r.status.get("created", 0))
                ),
            }
        )
    return pd.DataFrame(rows)


# ---- posterior per dimension ------------------------------------------------------------------
# Streamlit fits the whole chart (legend, rotated labels, titles) into this height.
DIMS_CHART_HEIGHT = 340


def dims_frame(metrics: dict) -> pd.DataFrame:
    """Per-dimension KL, mean σ², Cov_x(μ) of one epoch, sorted by KL (largest first).

    `active` is Burda's test; `unit` is one of UNIT_CLASSES (informative, active only, collapsed).
    """
    frame = pd.DataFrame(
        {
            "dim": range(len(metrics["kl_per_dim"])),
            "kl": metrics["kl_per_dim"],
            "posterior_var": metrics["posterior_var"],
            "mean_cov": metrics["mean_cov"],
        }
    )
    frame["active"] = frame["mean_cov"] > ACTIVE_UNIT_THRESHOLD
    frame["informative"] = frame["kl"] > INFORMATIVE_KL_THRESHOLD
    frame["unit"] = [unit_class(k, c) for k, c in zip(frame["kl"], frame["mean_cov"], strict=True)]
    frame = frame.sort_values("kl", ascending=False, kind="stable").reset_index(drop=True)
    frame["rank"] = range(len(frame))
    frame["label"] = "z" + frame["dim"].astype(str)
    return frame


@dataclass(frozen=True)
class DimsScales:
    """Axis and colour ranges shared by the runs shown side by side, so equal looks mean equal."""

    kl_max: float
    var_max: float
    heat_max: dict[str, float]


def dims_scales(metric_lists: list[list[dict]]) -> DimsScales:
    """Ranges covering every run given (each a list of per-epoch metrics lines)."""
    last = [m[-1] for m in metric_lists if m]
    kl_max = max((max(m["kl_per_dim"], default=0.0) for m in last), default=0.0)
    var_max = max((max(m["posterior_var"], default=0.0) for m in last), default=0.0)
    heat = {}
    for field in ("posterior_var", "kl_per_dim"):
        values = [v for ms in metric_lists for m in ms for v in m.get(field, [])]
        heat[field] = max(values, default=0.0)
    heat["posterior_var"] = max(1.0, heat["posterior_var"])
    return DimsScales(
        kl_max=max(kl_max, 1e-3) * 1.05,
        var_max=max(1.0, var_max) * 1.05,
        heat_max={k: max(v, 1e-3) for k, v in heat.items()},
    )


def dims_charts(
    frame: pd.DataFrame, scales: DimsScales | None = None
) -> tuple[alt.Chart, alt.LayerChart]:
    """Bars of KL_j and of mean σ_j² per dimension, in the same KL order; σ² = 1 is the prior.

    Bars are coloured informative / active by Burda's test only / collapsed. Two separate charts,
    so each can take the full width of its column; `scales` fixes the y ranges (compare mode).
    """
    order = alt.EncodingSortField(field="rank", order="ascending")
    x = alt.X("label:N", sort=order, title="latent dimension (sorted by KL)")
    color = alt.Color(
        "unit:N",
        title=None,
        scale=alt.Scale(domain=list(UNIT_CLASSES), range=list(UNIT_COLOURS)),
        legend=alt.Legend(orient="top", labelLimit=300, columns=2),
    )
    tooltip = [
        alt.Tooltip("label:N", title="dimension"),
        alt.Tooltip("unit:N", title="unit"),
        alt.Tooltip("kl:Q", format=".3f", title="KLⱼ (nats)"),
        alt.Tooltip("posterior_var:Q", format=".3f", title="mean σⱼ²"),
        alt.Tooltip("mean_cov:Q", format=".3g", title="Cov_x(μⱼ)"),
    ]
    kl_scale = alt.Scale(domain=[0, scales.kl_max]) if scales else alt.Scale(domainMin=0)
    var_scale = alt.Scale(domain=[0, scales.var_max]) if scales else alt.Scale(domainMin=0)
    kl = (
        alt.Chart(frame)
        .mark_bar()
        .encode(
            x=x,
            y=alt.Y("kl:Q", title="KLⱼ (nats)", scale=kl_scale),
            color=color,
            tooltip=tooltip,
        )
    )
    threshold = (
        alt.Chart(pd.DataFrame({"y": [INFORMATIVE_KL_THRESHOLD]}))
        .mark_rule(strokeDash=[2, 3], color="#444")
        .encode(y="y:Q")
    )
    kl_chart = alt.layer(kl, threshold).properties(
        height=DIMS_CHART_HEIGHT, title=f"KL per dimension (dotted: {INFORMATIVE_RULE})"
    )
    var_bars = (
        alt.Chart(frame)
        .mark_bar()
        .encode(
            x=x,
            y=alt.Y("posterior_var:Q", title="mean σⱼ²", scale=var_scale),
            color=color,
            tooltip=tooltip,
        )
    )
    prior = (
        alt.Chart(pd.DataFrame({"y": [1.0]}))
        .mark_rule(strokeDash=[4, 4], color="black")
        .encode(y="y:Q")
    )
    variance = alt.layer(var_bars, prior).properties(
        height=DIMS_CHART_HEIGHT, title="Posterior variance (dashed: the prior's σ² = 1)"
    )
    return kl_chart, variance


def dims_over_epochs(metrics: list[dict], field: str) -> pd.DataFrame:
    """Long form (epoch, dim, value) of a per-dimension field, for the collapse heatmap."""
    rows = [
        {"epoch": m["epoch"], "dim": f"z{j}", "j": j, "value": v}
        for m in metrics
        for j, v in enumerate(m.get(field, []))
    ]
    return pd.DataFrame(rows, columns=["epoch", "dim", "j", "value"])


def heatmap_chart(frame: pd.DataFrame, field: str, top: float | None = None) -> alt.Chart:
    """Epochs across, dimensions down. σ² is drawn on a 0..max(1, largest) scale so 1 (the prior)
    always looks the same; `top` fixes the colour range's upper end (shared in compare mode)."""
    largest = float(frame["value"].max()) if len(frame) else 0.0
    if field == "posterior_var":
        top = top if top is not None else max(1.0, largest)
        scale = alt.Scale(scheme="blues", domain=[0, top])
        title = "σⱼ²"
    else:
        top = top if top is not None else max(largest, 1e-3)
        scale = alt.Scale(scheme="viridis", domain=[0, top])
        title = "KLⱼ (nats)"
    return (
        alt.Chart(frame)
        .mark_rect()
        .encode(
            x=alt.X("epoch:O"),
            y=alt.Y(
                "dim:N",
                sort=alt.EncodingSortField(field="j"),
                title="latent dimension",
                axis=alt.Axis(labelOverlap=False),
            ),
            color=alt.Color("value:Q", title=title, scale=scale),
            tooltip=[
                alt.Tooltip("epoch:O", title="epoch"),
                alt.Tooltip("dim:N", title="dimension"),
                alt.Tooltip("value:Q", title=title, format=".3f"),
            ],
        )
        .properties(height=alt.Step(18))  # one row per latent dimension
    )


def units_chart(frame: pd.DataFrame) -> alt.Chart:
    """Informative dimensions and Burda's active units against β (log axis), one line each.

    `frame` has columns beta, informative, active, latent_dim (as gallery_frame makes it)."""
    data = frame[frame["beta"] > 0].dropna(subset=["informative", "active"])
    long = data.melt(
        id_vars=["beta", "latent_dim"],
        value_vars=["informative", "active"],
        var_name="test",
        value_name="dims",
    )
    long["test"] = long["test"].map(
        {"informative": f"informative ({INFORMATIVE_RULE})", "active": f"active ({ACTIVE_RULE})"}
    )
    top = int(frame["latent_dim"].max()) if len(frame) else 1
    betas = sorted(set(long["beta"]))
    x_scale = alt.Scale(type="log", domain=[betas[0], betas[-1]], nice=False) if betas else None
    names = [f"informative ({INFORMATIVE_RULE})", f"active ({ACTIVE_RULE})"]
    return (
        alt.Chart(long)
        .mark_line(point=alt.OverlayMarkDef(size=60), strokeWidth=2.5)
        .encode(
            x=alt.X(
                "beta:Q", title="β", scale=x_scale or alt.Undefined,
                axis=alt.Axis(format="~g", values=betas, grid=False),
            ),
            y=alt.Y("dims:Q", title="latent dimensions", scale=alt.Scale(domain=[0, top])),
            color=alt.Color(
                "test:N", title=None,
                scale=alt.Scale(domain=names, range=["#1f77b4", "#ff7f0e"]),
                legend=alt.Legend(orient="top", labelLimit=300),
            ),
            tooltip=[
                alt.Tooltip("beta:Q", title="β", format="~g"),
                alt.Tooltip("test:N", title="test"),
                alt.Tooltip("dims:Q", title="dimensions"),
            ],
        )
        .properties(height=300)
    )  # fmt: skip


def latent_map_extent(frames: list[pd.DataFrame]) -> list[float]:
    """[low, high] covering z1 and z2 of every frame: one range for both axes and both sides."""
    values = [v for f in frames if len(f) for v in (f["z1"].min(), f["z1"].max(), f["z2"].min(),
              f["z2"].max())]  # fmt: skip
    if not values:
        return [-1.0, 1.0]
    reach = max(abs(min(values)), abs(max(values)), 1e-3) * 1.05
    return [-reach, reach]


def latent_map_chart(frame: pd.DataFrame, extent: list[float] | None = None) -> alt.Chart:
    """Scatter of 2-D latent means; axis titles say which dimensions or components they are.

    `extent` fixes both axes to one range (the same for runs shown side by side)."""
    method, dims = frame.attrs.get("method"), frame.attrs.get("dims", [0, 1])
    if method == "pca":
        titles = ("first principal component of μ", "second principal component of μ")
    else:
        shown = list(dims)[:2]
        titles = [f"μ of z{d}" for d in shown] + ["(one dimension only)"] * (2 - len(shown))
    scale = alt.Scale(domain=extent) if extent else alt.Scale()
    return (
        alt.Chart(frame)
        .mark_circle(size=18, opacity=0.7)
        .encode(
            x=alt.X("z1:Q", title=titles[0], scale=scale),
            y=alt.Y("z2:Q", title=titles[1], scale=scale),
            color=alt.Color("label:N", title="label", scale=alt.Scale(scheme="category10")),
            tooltip=[
                alt.Tooltip("label:N", title="label"),
                alt.Tooltip("z1:Q", title=titles[0], format=".2f"),
                alt.Tooltip("z2:Q", title=titles[1], format=".2f"),
            ],
        )
        .properties(height=360)
    )


# ---- downloads --------------------------------------------------------------------------------
def metrics_csv(metrics: list[dict]) -> bytes:
    """Per-epoch metrics as CSV; per-dimension lists become columns kl_0, var_0, cov_0, ..."""
    rows = []
    for m in metrics:
        row = {k: v for k, v in m.items() if not isinstance(v, list)}
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
