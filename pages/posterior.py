"""Posterior: per-dimension KL and posterior variance, and how dimensions collapse over epochs."""

import streamlit as st

from ui import chart, compare_toggle, epoch_rows, list_runs, pick_runs, refresh_on_change
from vae.present.charts import (
    dims_chart,
    dims_frame,
    dims_over_epochs,
    dims_scales,
    heatmap_chart,
)
from vae.present.units import ACTIVE_RULE, INFORMATIVE_RULE, WHY_COUNTS_DIFFER, unit_counts

st.title("Posterior per latent dimension")
st.caption(
    "A dimension the decoder does not use collapses to the prior: its KLⱼ falls to 0 and its "
    "posterior variance σⱼ² rises to 1. Two counts say how many dimensions a run uses: "
    f"**informative** ({INFORMATIVE_RULE}) and **active units** ({ACTIVE_RULE}, Burda et al. "
    f"2015). {WHY_COUNTS_DIFFER} Values are test-split averages."
)
records = [r for r in list_runs() if not r.broken and r.last_metrics]
if not records:
    st.info("No run has finished an epoch yet. Start one on the Train page.")
    st.page_link("pages/train.py", label="Go to Train", icon=":material/model_training:")
    refresh_on_change()  # shows the first run as soon as it has an epoch
    st.stop()

compare = compare_toggle()
field = st.radio(
    "Heatmap of", ["posterior_var", "kl_per_dim"], horizontal=True, key="heatmap_field",
    format_func={"posterior_var": "posterior variance σⱼ²", "kl_per_dim": "KLⱼ"}.get,
)  # fmt: skip
if compare:
    st.caption("Both sides share their axes and colour ranges, so equal heights mean equal values.")
picked = pick_runs(records, compare)
epochs = {record.run_id: epoch_rows(record) for _, record in picked}
scales = dims_scales(list(epochs.values()))


def show(record, side: int) -> None:
    last = record.last_metrics
    counts = unit_counts(last)
    row = st.container(horizontal=True)  # wraps instead of truncating in a narrow window
    row.metric(
        "informative",
        f"{counts.informative} / {counts.latent_dim}",
        help=f"dimensions with {INFORMATIVE_RULE}: they carry information about x",
    )
    row.metric(
        "active",
        f"{counts.active} / {counts.latent_dim}",
        help=f"active units (Burda et al. 2015): dimensions with {ACTIVE_RULE}. {WHY_COUNTS_DIFFER}",
    )
    row.metric("R (nats)", f"{last['rate']:.2f}")
    row.metric("D (nats)", f"{last['distortion']:.2f}")
    st.caption(
        f"{record.config.describe()} · epoch {last['epoch']}/{record.config.epochs} · {record.state}"
    )
    bars = dims_frame(last)
    for which, (name, key) in enumerate((("kl-per-dim", "kl"), ("posterior-variance", "variance"))):
        chart(
            dims_chart, bars, scales if compare else None, which,
            figure=f"{name}-{record.run_id}", figure_key=f"{key}-{side}",
        )  # fmt: skip
    st.markdown(f"**{'σⱼ²' if field == 'posterior_var' else 'KLⱼ'} over epochs**")
    top = scales.heat_max[field] if compare else None
    chart(
        heatmap_chart, dims_over_epochs(epochs[record.run_id], field), field, top,
        figure=f"{field}-over-epochs-{record.run_id}", figure_key=f"heatmap-{side}",
    )  # fmt: skip


for side, (column, record) in enumerate(picked):
    with column:
        show(record, side)

refresh_on_change([record.run_id for _, record in picked])  # follows them while they train
