"""Charts of the Probe page: what one input costs at each β, and a clickable latent plane."""

from __future__ import annotations

import altair as alt
import pandas as pd

PICK = "pick"  # the selection's name: the page reads event.selection[PICK]


def probe_kl_chart(frame: pd.DataFrame) -> alt.Chart:
    """KLⱼ of one input (nats) for every β of a sweep: β down, dimensions across, the value
    written in each cell; tooltips add μⱼ and σⱼ². `frame` is probes_frame's long form."""
    data = frame.assign(beta_label=frame["beta"].map(lambda b: f"β = {b:g}"))
    order = [f"β = {b:g}" for b in sorted(frame["beta"].unique())]
    base = alt.Chart(data).encode(
        x=alt.X("dim:N", sort=alt.EncodingSortField(field="j"), title="latent dimension"),
        y=alt.Y("beta_label:N", sort=order, title=None),
    )
    cells = base.mark_rect().encode(
        color=alt.Color("kl:Q", title="KLⱼ (nats)", scale=alt.Scale(scheme="viridis")),
        tooltip=[
            alt.Tooltip("beta:Q", title="β", format="~g"),
            alt.Tooltip("dim:N", title="dimension"),
            alt.Tooltip("mu:Q", title="μⱼ", format=".3f"),
            alt.Tooltip("var:Q", title="σⱼ²", format=".3f"),
            alt.Tooltip("kl:Q", title="KLⱼ (nats)", format=".3f"),
        ],
    )
    text = base.mark_text(fontSize=10).encode(
        text=alt.Text("kl:Q", format=".1f"),
        color=alt.condition("datum.kl > 2", alt.value("black"), alt.value("white")),
    )
    return alt.layer(cells, text).properties(
        height=alt.Step(26), title="What this input costs at each β: KLⱼ in nats"
    )


def clickable_map_chart(points: pd.DataFrame, grid: pd.DataFrame, titles, extent) -> alt.Chart:
    """The test split's means on two latent dimensions, under an invisible grid of click targets
    (the nearest grid point to a click is selected: the page decodes it)."""
    scale = alt.Scale(domain=list(extent))
    x = alt.X("z1:Q", title=titles[0], scale=scale)
    y = alt.Y("z2:Q", title=titles[1], scale=scale)
    dots = (
        alt.Chart(points)
        .mark_circle(size=14, opacity=0.6, clip=True)
        .encode(x=x, y=y, color=alt.Color("label:N", title="label"))
    )
    pick = alt.selection_point(name=PICK, on="click", nearest=True, fields=["z1", "z2"])
    targets = (
        alt.Chart(grid)
        .mark_point(size=30, opacity=0.0)
        .encode(
            x=x, y=y, tooltip=[alt.Tooltip("z1:Q", format=".2f"), alt.Tooltip("z2:Q", format=".2f")]
        )
        .add_params(pick)
    )
    return alt.layer(dots, targets).properties(height=380)
