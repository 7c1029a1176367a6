"""The Altair charts of the posterior per dimension, the β gallery's unit counts and the latent
map, with the tables they plot (no Streamlit here). `views.vega_lite_spec` hands them to a page.
"""

from __future__ import annotations

from dataclasses import dataclass

import altair as alt
import pandas as pd

from vae.learn.thresholds import ACTIVE_UNIT_THRESHOLD, INFORMATIVE_KL_THRESHOLD
from vae.present.units import ACTIVE_RULE, INFORMATIVE_RULE, UNIT_CLASSES, UNIT_COLOURS, unit_class

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


def dims_chart(frame: pd.DataFrame, scales: DimsScales | None, which: int) -> alt.TopLevelMixin:
    """One of `dims_charts` (0: KL bars, 1: σ² bars), so a page can build each once per data."""
    return dims_charts(frame, scales)[which]


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


def units_chart(frame: pd.DataFrame) -> alt.LayerChart:
    """Informative dimensions and Burda's active units against β (log axis), one line each.

    `frame` has columns beta, informative, active, latent_dim (as gallery_frame makes it). Runs of
    one β with different seeds (replicates) are drawn as their mean, with a bar over the range
    of their counts."""
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
    long["dims"] = long["dims"].astype(float)
    long = (
        long.groupby(["beta", "test"])["dims"]
        .agg(dims="mean", low="min", high="max", runs="count")
        .reset_index()
    )
    top = int(frame["latent_dim"].max()) if len(frame) else 1
    betas = sorted(set(long["beta"]))
    x_scale = alt.Scale(type="log", domain=[betas[0], betas[-1]], nice=False) if betas else None
    names = [f"informative ({INFORMATIVE_RULE})", f"active ({ACTIVE_RULE})"]
    x = alt.X(
        "beta:Q", title="β", scale=x_scale or alt.Undefined,
        axis=alt.Axis(format="~g", values=betas, grid=False),
    )  # fmt: skip
    color = alt.Color(
        "test:N", title=None, scale=alt.Scale(domain=names, range=["#1f77b4", "#ff7f0e"]),
        legend=alt.Legend(orient="top", labelLimit=300),
    )  # fmt: skip
    base = alt.Chart(long)
    lines = base.mark_line(point=alt.OverlayMarkDef(size=60), strokeWidth=2.5).encode(
        x=x,
        y=alt.Y("dims:Q", title="latent dimensions", scale=alt.Scale(domain=[0, top])),
        color=color,
        tooltip=[
            alt.Tooltip("beta:Q", title="β", format="~g"),
            alt.Tooltip("test:N", title="test"),
            alt.Tooltip("dims:Q", title="dimensions (mean)", format=".3~g"),
            alt.Tooltip("low:Q", title="fewest"),
            alt.Tooltip("high:Q", title="most"),
            alt.Tooltip("runs:Q", title="runs (seeds)"),
        ],
    )
    ranges = (
        base.transform_filter("datum.runs > 1")
        .mark_rule(strokeWidth=2)
        .encode(x=x, y="low:Q", y2="high:Q", color=color)
    )
    return alt.layer(ranges, lines).properties(height=300)


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
