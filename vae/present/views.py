"""Tables and Altair charts the pages show, built from run records (no Streamlit here).

Pages pass `RunRecord`s in and put the returned DataFrames and charts on screen; keeping the
shaping here lets tests check the numbers without a browser.
"""

from __future__ import annotations

import io
import math
import time
from collections.abc import Iterable, Mapping
from typing import Any

import altair as alt
import numpy as np
import pandas as pd

from vae.execution.store import RunRecord
from vae.learn.metrics import ACTIVE_UNIT_THRESHOLD

BETA_FLOOR = 1e-3  # β = 0 is drawn at this value on log axes


def log10_beta(beta: float) -> float:
    return math.log10(max(beta, BETA_FLOOR))


def progress(record: RunRecord) -> tuple[float, str]:
    """(fraction done, 'epoch 3/10 · 21,000 img/s · ETA 12 s') for a run's progress bar."""
    total = record.config.epochs if record.config else 0
    last = record.last_metrics
    epoch = last.get("epoch", 0)
    text = f"epoch {epoch}/{total}"
    if last.get("images_per_s"):
        text += f" · {last['images_per_s']:,.0f} img/s"
        seconds = [m.get("seconds", 0) for m in record.metrics[-3:]]
        if record.state == "running" and seconds and epoch < total:
            text += f" · ETA {format_seconds(np.median(seconds) * (total - epoch))}"
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
    running = {r.run_id: r for r in records if r.state == "running"}
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
            rows.append({"run": r.run_id, "state": "broken", "note": r.broken})
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
                "note": r.status.get("reason", ""),
                "created": time.strftime(
                    "%Y-%m-%d %H:%M", time.localtime(r.status.get("created", 0))
                ),
            }
        )
    return pd.DataFrame(rows)


# ---- rate-distortion plane --------------------------------------------------------------------
def tradeoff_frame(records: list[RunRecord]) -> pd.DataFrame:
    """One point per run with at least one epoch: its latest test-set R and D."""
    rows = []
    for r in records:
        if r.broken or not r.metrics:
            continue
        c, m = r.config, r.last_metrics
        rows.append(
            {
                "run_id": r.run_id,
                "beta": c.beta,
                "log10_beta": log10_beta(c.beta),
                "rate": m["rate"],
                "distortion": m["distortion"],
                "neg_elbo": -m["elbo"],
                "active_units": m.get("active_units"),
                "epoch": m["epoch"],
                "state": r.state,
                "sweep": r.status.get("group") or r.run_id,
                "settings": c.describe(),
                "name": c.name,
                "group_key": comparable_key(r),
            }
        )
    return pd.DataFrame(rows)


def comparable_key(record: RunRecord) -> str:
    """Runs that share this key differ only in β (and seed/name): a line joins them."""
    c = record.config
    return (
        f"{c.dataset}|{c.architecture}|{c.hidden_dims}|{c.latent_dim}|{c.likelihood}|"
        f"{c.objective}|{c.epochs}"
    )


def elbo_levels(frame: pd.DataFrame, count: int = 4) -> list[float]:
    """A few round −ELBO values spanning the runs, for iso-ELBO lines D + R = −ELBO."""
    low, high = frame["neg_elbo"].min(), frame["neg_elbo"].max()
    if not np.isfinite([low, high]).all():
        return []
    if high - low < 1e-9:
        return [round(float(low), 1)]
    step = _nice_step((high - low) / max(1, count - 1))
    start = math.floor(low / step) * step
    return [start + i * step for i in range(count + 1) if start + i * step <= high + step]


def _nice_step(raw: float) -> float:
    exponent = math.floor(math.log10(raw))
    for m in (1, 2, 5, 10):
        if m * 10**exponent >= raw:
            return m * 10**exponent
    return 10 ** (exponent + 1)


def tradeoff_chart(frame: pd.DataFrame) -> alt.LayerChart:
    """R on x, D on y; colour log β; lines through each sweep; dashed lines of equal ELBO.

    The points layer carries a click selection named `pick` over `run_id`.
    """
    r_pad = max(1.0, 0.08 * (frame["rate"].max() - frame["rate"].min()))
    d_pad = max(1.0, 0.08 * (frame["distortion"].max() - frame["distortion"].min()))
    x_domain = [max(0.0, frame["rate"].min() - r_pad), frame["rate"].max() + r_pad]
    y_domain = [frame["distortion"].min() - d_pad, frame["distortion"].max() + d_pad]
    x = alt.X("rate:Q", title="rate R = Σⱼ KLⱼ (nats)", scale=alt.Scale(domain=x_domain))
    y = alt.Y(
        "distortion:Q", title="distortion D = −log p(x|z) (nats)", scale=alt.Scale(domain=y_domain)
    )

    iso_rows, label_rows = [], []
    for level in elbo_levels(frame):
        name = f"−ELBO = {level:g}"
        for rate in x_domain:
            iso_rows.append({"rate": rate, "distortion": level - rate, "level": name})
        entry = max(x_domain[0], level - y_domain[1])  # top or left edge of the plot
        if entry < x_domain[1]:
            label_rows.append({"rate": entry, "distortion": level - entry, "level": name})
    iso = (
        alt.Chart(pd.DataFrame(iso_rows))
        .mark_line(strokeDash=[4, 4], color="#999", clip=True)
        .encode(x=x, y=y, detail="level:N", tooltip=["level:N"])
    )
    iso_labels = (
        alt.Chart(pd.DataFrame(label_rows, columns=["rate", "distortion", "level"]))
        .mark_text(align="left", baseline="top", dx=4, dy=4, color="#666", fontSize=12)
        .encode(x=x, y=y, text="level:N")
    )
    pick = alt.selection_point(name="pick", fields=["run_id"], on="click", toggle="true")
    color = alt.Color(
        "log10_beta:Q",
        title="log₁₀ β",
        scale=alt.Scale(scheme="viridis"),
    )
    sweeps = (
        alt.Chart(frame)
        .mark_line(opacity=0.5)
        .encode(x=x, y=y, detail="sweep:N", order="beta:Q", color=alt.value("#888"))
    )
    points = (
        alt.Chart(frame)
        .mark_circle(size=140, stroke="black")
        .encode(
            x=x,
            y=y,
            color=color,
            strokeWidth=alt.condition(pick, alt.value(2), alt.value(0)),
            opacity=alt.condition("datum.state == 'running'", alt.value(0.55), alt.value(0.95)),
            tooltip=[
                alt.Tooltip("run_id:N", title="run"),
                alt.Tooltip("name:N"),
                alt.Tooltip("beta:Q", title="β", format="g"),
                alt.Tooltip("rate:Q", title="R", format=".2f"),
                alt.Tooltip("distortion:Q", title="D", format=".2f"),
                alt.Tooltip("neg_elbo:Q", title="−ELBO", format=".2f"),
                alt.Tooltip("active_units:Q", title="active units"),
                alt.Tooltip("epoch:Q"),
                alt.Tooltip("state:N"),
                alt.Tooltip("settings:N"),
            ],
        )
        .add_params(pick)
    )
    return alt.layer(iso, iso_labels, sweeps, points).properties(height=460)


def curves_frame(records: list[RunRecord]) -> pd.DataFrame:
    """Long form per-epoch R, D and −ELBO for the given runs."""
    rows = []
    for r in records:
        if r.broken:
            continue
        label = f"{r.run_id[-6:]} β={r.config.beta:g}"
        for m in r.metrics:
            for key, name in (("rate", "R"), ("distortion", "D"), ("elbo", "−ELBO")):
                value = -m[key] if key == "elbo" else m[key]
                rows.append({"run": label, "epoch": m["epoch"], "quantity": name, "nats": value})
    return pd.DataFrame(rows, columns=["run", "epoch", "quantity", "nats"])


def curves_chart(frame: pd.DataFrame) -> alt.FacetChart:
    return (
        alt.Chart(frame)
        .mark_line(point=True)
        .encode(
            x=alt.X("epoch:Q", axis=alt.Axis(tickMinStep=1, format="d")),
            y=alt.Y("nats:Q", scale=alt.Scale(zero=False), title="nats"),
            color=alt.Color("run:N", legend=alt.Legend(orient="bottom", columns=3)),
            tooltip=["run:N", "epoch:Q", "quantity:N", alt.Tooltip("nats:Q", format=".2f")],
        )
        .properties(width=170, height=200)  # three panels fit an 800 px window
        .facet(column=alt.Column("quantity:N", title=None, sort=["R", "D", "−ELBO"]))
        .resolve_scale(y="independent")
    )


# ---- posterior per dimension ------------------------------------------------------------------
def dims_frame(metrics: dict) -> pd.DataFrame:
    """Per-dimension KL, mean σ², Cov_x(μ) of one epoch, sorted by KL (largest first)."""
    frame = pd.DataFrame(
        {
            "dim": range(len(metrics["kl_per_dim"])),
            "kl": metrics["kl_per_dim"],
            "posterior_var": metrics["posterior_var"],
            "mean_cov": metrics["mean_cov"],
        }
    )
    frame["active"] = frame["mean_cov"] > ACTIVE_UNIT_THRESHOLD
    frame["unit"] = np.where(frame["active"], "active", "inactive")
    frame = frame.sort_values("kl", ascending=False, kind="stable").reset_index(drop=True)
    frame["rank"] = range(len(frame))
    frame["label"] = "z" + frame["dim"].astype(str)
    return frame


def dims_charts(frame: pd.DataFrame) -> tuple[alt.Chart, alt.LayerChart]:
    """Bars of KL_j and of mean σ_j² per dimension, in the same KL order; σ² = 1 is the prior.

    Two separate charts, so each can take the full width of its column.
    """
    order = alt.EncodingSortField(field="rank", order="ascending")
    x = alt.X("label:N", sort=order, title="latent dimension (sorted by KL)")
    color = alt.Color(
        "unit:N",
        title=f"Cov_x(μⱼ) > {ACTIVE_UNIT_THRESHOLD}",
        scale=alt.Scale(domain=["active", "inactive"], range=["#1f77b4", "#c7c7c7"]),
    )
    tooltip = [
        "label:N",
        "unit:N",
        alt.Tooltip("kl:Q", format=".3f", title="KL (nats)"),
        alt.Tooltip("posterior_var:Q", format=".3f", title="mean σ²"),
        alt.Tooltip("mean_cov:Q", format=".3g", title="Cov_x(μ)"),
    ]
    kl = (
        alt.Chart(frame)
        .mark_bar()
        .encode(x=x, y=alt.Y("kl:Q", title="KLⱼ (nats)"), color=color, tooltip=tooltip)
        .properties(height=220, title="KL per dimension")
    )
    var_bars = (
        alt.Chart(frame)
        .mark_bar()
        .encode(
            x=x,
            y=alt.Y("posterior_var:Q", title="mean σⱼ²", scale=alt.Scale(domainMin=0)),
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
        height=220, title="Posterior variance (dashed: the prior's σ² = 1)"
    )
    return kl, variance


def dims_over_epochs(metrics: list[dict], field: str) -> pd.DataFrame:
    """Long form (epoch, dim, value) of a per-dimension field, for the collapse heatmap."""
    rows = [
        {"epoch": m["epoch"], "dim": f"z{j}", "j": j, "value": v}
        for m in metrics
        for j, v in enumerate(m.get(field, []))
    ]
    return pd.DataFrame(rows, columns=["epoch", "dim", "j", "value"])


def heatmap_chart(frame: pd.DataFrame, field: str) -> alt.Chart:
    """Epochs across, dimensions down. σ² is drawn on a fixed 0..1+ scale so 1 (the prior) always
    looks the same, whatever the run: collapsed dimensions read as dark rows in every chart."""
    if field == "posterior_var":
        top = max(1.0, float(frame["value"].max()) if len(frame) else 1.0)
        scale = alt.Scale(scheme="blues", domain=[0, top])
        title = "σⱼ²"
    else:
        scale = alt.Scale(scheme="viridis", domainMin=0)
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
            tooltip=["epoch:O", "dim:N", alt.Tooltip("value:Q", format=".3f")],
        )
        .properties(height=alt.Step(18))  # one row per latent dimension
    )


def latent_map_chart(frame: pd.DataFrame) -> alt.Chart:
    """Scatter of 2-D latent means; axis titles say which dimensions or components they are."""
    method, dims = frame.attrs.get("method"), frame.attrs.get("dims", [0, 1])
    if method == "pca":
        titles = ("first principal component of μ", "second principal component of μ")
    else:
        shown = list(dims)[:2]
        titles = [f"μ of z{d}" for d in shown] + ["(one dimension only)"] * (2 - len(shown))
    return (
        alt.Chart(frame)
        .mark_circle(size=18, opacity=0.7)
        .encode(
            x=alt.X("z1:Q", title=titles[0]),
            y=alt.Y("z2:Q", title=titles[1]),
            color=alt.Color("label:N", title="label", scale=alt.Scale(scheme="category10")),
            tooltip=[
                "label:N",
                alt.Tooltip("z1:Q", format=".2f"),
                alt.Tooltip("z2:Q", format=".2f"),
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
