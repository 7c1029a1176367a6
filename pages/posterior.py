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
from vae.present.theory_view import (
    data_spectrum,
    dims_theory_chart,
    dims_theory_frame,
    has_theory,
    nearest,
    rate_split_line,
    run_prediction,
    spectrum_betas,
    spectrum_chart,
    spectrum_frame,
    theory_note,
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
    split = rate_split_line(record.evaluation)
    if split:
        st.caption(split)
    if has_theory(record.config):
        theory_section(record, side)
    st.markdown(f"**{'σⱼ²' if field == 'posterior_var' else 'KLⱼ'} over epochs**")
    top = scales.heat_max[field] if compare else None
    chart(
        heatmap_chart, dims_over_epochs(epochs[record.run_id], field), field, top,
        figure=f"{field}-over-epochs-{record.run_id}", figure_key=f"heatmap-{side}",
    )  # fmt: skip


def theory_section(record, side: int) -> None:
    """Predicted KLⱼ and σⱼ² beside the learned ones, and the spectrum against βσ²."""
    config, last = record.config, record.last_metrics
    prediction = run_prediction(config)
    st.markdown("**Theory: learned (bars) and predicted (black ticks)**")
    st.caption(theory_note(config))
    chart(
        dims_theory_chart, dims_theory_frame(last, prediction),
        figure=f"theory-dims-{record.run_id}", figure_key=f"theory-dims-{side}",
    )  # fmt: skip
    st.caption(
        f"Predicted at β = {config.beta:g}, σ² = {prediction.noise_var:g}: "
        f"{sum(prediction.active)} of {config.latent_dim} dimensions kept, R = "
        f"{prediction.rate:.2f}, D = {prediction.distortion:.2f} nats (learned: "
        f"{last['rate']:.2f}, {last['distortion']:.2f}). Dimensions are matched by rank: the "
        "j-th largest KLⱼ against the j-th largest eigenvalue λⱼ."
    )
    with st.expander("Which dimensions the theory collapses, at any β"):
        spectrum = data_spectrum(config.dataset, config.data_root, config.seed)
        stops = spectrum_betas(spectrum, prediction.noise_var)
        stops = sorted({*stops, float(config.beta)})
        beta = st.select_slider(
            "β", options=stops, value=nearest(stops, config.beta),
            key=f"theory_beta-{record.run_id}", format_func=lambda b: f"{b:g}",
        )  # fmt: skip
        frame = spectrum_frame(spectrum, beta, prediction.noise_var, config.latent_dim)
        chart(
            spectrum_chart, frame, beta, prediction.noise_var,
            figure=f"spectrum-{record.run_id}", figure_key=f"spectrum-{side}",
        )  # fmt: skip
        kept = int(frame["fate"].str.startswith("kept").sum())
        st.caption(
            f"Eigenvalues λⱼ of the training split's covariance against the line βσ²: a latent "
            f"dimension keeps the direction of λⱼ, with KLⱼ = ½ ln(λⱼ/βσ²) nats and posterior "
            f"variance βσ²/λⱼ, only while λⱼ > βσ²; below the line it collapses exactly "
            f"(KLⱼ = 0, σⱼ² = 1). At β = {beta:g}: {kept} kept."
        )


for side, (column, record) in enumerate(picked):
    with column:
        show(record, side)

refresh_on_change([record.run_id for _, record in picked])  # follows them while they train
