"""Tradeoff: every run as a point on the rate-distortion plane, live while jobs train."""

import streamlit as st

from ui import chart, list_runs, refresh_on_change
from vae.present.views import curves_chart, curves_frame, tradeoff_chart, tradeoff_frame

st.title("Rate–distortion tradeoff")
st.caption(
    "Each point is a run at its latest epoch on the test split: rate R = Σⱼ KLⱼ against distortion "
    "D = −log p(x|z), both in nats per data point. Raising β moves runs up and to the left: less "
    "information in z, worse reconstructions. Dashed lines join points of equal ELBO "
    "(D + R = −ELBO); grey lines join the runs of one sweep. Click points to plot their curves."
)


@st.fragment  # a click or a choice here reruns this part only
def live_chart() -> None:
    records = list_runs()
    frame = tradeoff_frame(records)
    if frame.empty:
        st.info("No run has finished an epoch yet. Start one on the Train page.")
        st.page_link("pages/train.py", label="Go to Train", icon=":material/model_training:")
        return
    running = int((frame["state"] == "running").sum())
    training = f" · {running} still training (drawn faded)" if running else ""
    st.caption(f"{len(frame)} runs{training} · updates as runs train")
    event = chart(tradeoff_chart, frame, on_select="rerun", key="tradeoff_chart")
    picked = [p["run_id"] for p in event.selection.get("pick", [])] if event else []
    by_id = {r.run_id: r for r in records}
    options = list(frame["run_id"])
    chosen = st.multiselect(
        "Runs to plot per epoch", options, default=[p for p in picked if p in options] or options[-3:],
        help="Click points in the chart (shift-click for several) or choose here.",
        format_func=lambda rid: f"{rid} · β={by_id[rid].config.beta:g}",
    )  # fmt: skip
    if chosen:
        chart(curves_chart, curves_frame([by_id[r] for r in chosen]))
    columns = {"run_id": "run", "beta": "β", "rate": "R (nats)", "distortion": "D (nats)",
               "neg_elbo": "−ELBO", "active_units": "active", "epoch": "epoch", "state": "state"}  # fmt: skip
    st.dataframe(frame[list(columns)].rename(columns=columns), hide_index=True)


live_chart()
refresh_on_change()
