"""Posterior: per-dimension KL and posterior variance, and how dimensions collapse over epochs."""

import streamlit as st

from ui import chart, compare_toggle, list_runs, refresh_on_change, side_by_side
from vae.learn.metrics import ACTIVE_UNIT_THRESHOLD
from vae.present.views import dims_charts, dims_frame, dims_over_epochs, heatmap_chart

st.title("Posterior per latent dimension")
st.caption(
    "A dimension the decoder does not use collapses to the prior: its KLⱼ falls to 0 and its "
    f"posterior variance σⱼ² rises to 1. A unit counts as active when Cov_x(μⱼ) > "
    f"{ACTIVE_UNIT_THRESHOLD} (Burda et al. 2015). Values are test-split averages."
)
records = [r for r in list_runs() if not r.broken and r.metrics]
if not records:
    st.info("No run has finished an epoch yet. Start one on the Train page.")
    st.page_link("pages/train.py", label="Go to Train", icon=":material/model_training:")
    refresh_on_change()  # shows the first run as soon as it has an epoch
    st.stop()

compare = compare_toggle()
field = st.radio(
    "Heatmap of", ["posterior_var", "kl_per_dim"], horizontal=True,
    format_func={"posterior_var": "posterior variance σⱼ²", "kl_per_dim": "KLⱼ"}.get,
)  # fmt: skip


def one_dims_chart(frame, which: int):
    return dims_charts(frame)[which]


def show(record) -> None:
    last = record.last_metrics
    a, b, c = st.columns(3)
    a.metric("active units", f"{last['active_units']} / {record.config.latent_dim}")
    b.metric("rate R (nats)", f"{last['rate']:.2f}")
    c.metric("distortion D (nats)", f"{last['distortion']:.2f}")
    st.caption(
        f"{record.config.describe()} · epoch {last['epoch']}/{record.config.epochs} · {record.state}"
    )
    frame = dims_frame(last)
    for which in (0, 1):
        chart(one_dims_chart, frame, which)
    st.markdown(f"**{'σⱼ²' if field == 'posterior_var' else 'KLⱼ'} over epochs**")
    chart(heatmap_chart, dims_over_epochs(record.metrics, field), field)


shown = side_by_side(records, show, compare)
refresh_on_change([r.run_id for r in shown])  # follows the shown runs while they train
