"""Tradeoff: runs of comparable settings as points on the rate-distortion plane, live while jobs train."""

import hashlib

import streamlit as st

from ui import altair_chart, chart, epoch_rows, list_runs, refresh_on_change
from vae.execution.states import RunState
from vae.learn.fields import beta_text
from vae.present.theory_view import (
    frontier_frame,
    has_theory,
    predicted_table,
    rate_split_chart,
    rate_split_columns,
    rate_split_frame,
    theory_note,
)
from vae.present.tradeoff import (
    beta_domain,
    beta_values,
    comparable_key,
    comparable_sets,
    curves_chart,
    curves_frame,
    frontier_slopes,
    replicate_frame,
    runs_of_set,
    slope_summary,
    slopes_apply,
    tradeoff_chart,
    tradeoff_frame,
)
from vae.present.views import newest

EVERY_RUN = "every run"
MAX_DEFAULT_CURVES = 8

st.title("Rate–distortion tradeoff")
st.caption(
    "Each point is a run at its latest epoch on the test split: rate R = Σⱼ KLⱼ against distortion "
    "D = −log p(x|z), both in nats per data point. Among runs that differ only in β, raising β "
    "moves runs up and to the left: less information in z, worse reconstructions. Dashed lines "
    "join points of equal ELBO (D + R = −ELBO); grey lines join the runs of one sweep. Click "
    "points to plot their curves."
)


def choose_set(records) -> str | None:
    """The settings whose runs are compared (None: no run has an epoch yet). A full rerun: the
    page's refresh then follows exactly the runs of the chosen set."""
    sets = comparable_sets(records)
    if not sets:
        return None
    by_key = {s.key: s for s in sets}
    named = address_set(records)
    if named in by_key and st.session_state.get("_tradeoff_named") != named:
        st.session_state["tradeoff_set"] = named  # ?run= or ?sweep= from a link: its settings
        st.session_state["_tradeoff_named"] = named
    return st.selectbox(
        "Runs with the same settings (all but β and seed)",
        [s.key for s in sets] + [EVERY_RUN], key="tradeoff_set",
        format_func=lambda k: (
            by_key[k].describe() if k in by_key else "every run (mixed settings: not comparable)"
        ),
        help="Runs are comparable when they differ only in β: every setting that changes what "
        "is computed (learning rate, batch size, λ, σ, ...) separates sets. Runs that differ "
        "only in seed are replicates. The first entry holds the latest sweep.",
    )  # fmt: skip


def address_set(records) -> str | None:
    """The settings of the run (?run=) or sweep (?sweep=) the address names, if any."""
    run_id, group = st.query_params.get("run"), st.query_params.get("sweep")
    named = [
        r for r in records
        if not r.broken and r.config and (r.run_id == run_id or (group and r.status.get("group") == group))
    ]  # fmt: skip
    return comparable_key(named[0]) if named else None


@st.fragment  # a click or a choice here reruns this part only
def live_chart(chosen_set: str) -> None:
    records = list_runs()
    if chosen_set != EVERY_RUN:
        in_set = set(runs_of_set(records, chosen_set))
        records = [r for r in records if r.run_id in in_set]
    plotted, note = newest([r for r in records if not r.broken and r.last_metrics])
    frame = tradeoff_frame(plotted)
    if note:
        st.caption(note)
    left, right = st.columns(2)
    linear = slopes_apply(frame)
    show_slopes = left.toggle(
        "Theory: slope −β at each run", key="show_slopes", disabled=not linear,
        help="At an optimum of D + β·R the frontier has slope dD/dR = −β (Alemi et al. 2018, "
        "'Fixing a Broken ELBO')." + ("" if linear else " Not for this objective: it is not "
        "of the form D + β·R."),
    )  # fmt: skip
    show_slopes = show_slopes and linear
    show_train = right.toggle(
        "Curves: training batches too (dashed)", key="show_train",
        help="Solid lines are the test split; dashed lines the training batches of each epoch.",
    )  # fmt: skip
    running = int((frame["state"] == RunState.RUNNING).sum())
    training = f" · {running} still training (drawn faded)" if running else ""
    means = replicate_frame(frame)
    replicated = int((means["n"] > 1).sum())
    replicates = (
        f" · {replicated} β with replicates: diamonds are means, bars ±1 sd" if replicated else ""
    )
    st.caption(f"{len(frame)} runs{training}{replicates} · updates every 2 s")
    config = records[0].config if records and chosen_set != EVERY_RUN else None
    theory = None
    if config is not None and not frame.empty:
        st.caption(theory_note(config))
        if has_theory(config):
            theory = frontier_frame(config, list(frame["beta"]))
    event = altair_chart(
        tradeoff_chart(frame, show_slopes, theory), "rate-distortion", on_select="rerun",
        key="tradeoff_chart",
    )  # fmt: skip
    if theory is not None:
        st.caption(
            "Black line: the predicted frontier R(β), D(β); black crosses: the prediction at each "
            "run's β, where a run at its optimum would sit."
        )
        st.dataframe(predicted_table(frame, records).round(3), hide_index=True, key="theory_table")
    if show_slopes:
        slopes = frontier_slopes(frame)
        st.caption(
            "Short coloured segments have slope −β. " + slope_summary(slopes) + " A chord is the "
            "line between the points (the means of replicates) of two neighbouring β; at the "
            "optimum its slope lies between −β of its ends."
        )
        if not slopes.empty:
            names = {"beta_low": "β₁", "beta_high": "β₂", "slope": "chord slope ΔD/ΔR",
                     "expected": "−√(β₁β₂)", "within": "between −β₂ and −β₁"}  # fmt: skip
            shown = slopes.round({"slope": 2, "expected": 2}).rename(columns=names)
            st.dataframe(shown, hide_index=True, key="slopes_table")

    by_id = {r.run_id: r for r in records}
    options = list(frame["run_id"])
    picked = [p["run_id"] for p in event.selection.get("pick", [])] if event else []
    picked = [p for p in picked if p in options]
    # One multiselect per settings set, so switching sets starts from that set's runs.
    curves_key = "curve_runs-" + hashlib.sha1(chosen_set.encode()).hexdigest()[:10]
    if curves_key not in st.session_state:
        st.session_state[curves_key] = options[:MAX_DEFAULT_CURVES]
    if picked and st.session_state.get("last_pick") != picked:
        st.session_state[curves_key] = picked
    st.session_state["last_pick"] = picked
    st.session_state[curves_key] = [r for r in st.session_state[curves_key] if r in options]
    chosen = st.multiselect(
        "Runs to plot per epoch", options, key=curves_key,
        help="Click points in the chart (shift-click for several) or choose here.",
        format_func=lambda rid: f"{rid} · {beta_text(by_id[rid].config.to_dict())}",
    )  # fmt: skip
    if chosen:
        splits = ("test", "train") if show_train else ("test",)
        runs = [by_id[r] for r in chosen if r in by_id]
        curves = curves_frame([(r, epoch_rows(r)) for r in runs], splits)
        chart(curves_chart, curves, beta_domain(frame), beta_values(frame), figure="curves")
    columns = {"run_id": "run", "beta": "β", "rate": "R (nats)", "distortion": "D (nats)",
               "neg_elbo": "−ELBO", "informative": "informative dims",
               "active_units": "active (Burda)", "mutual_info": "I_q(x;z)",
               "marginal_kl": "KL(q(z)‖p(z))", "epoch": "epoch", "state": "state"}  # fmt: skip
    table = frame.merge(rate_split_columns(records), on="run_id", how="left")[list(columns)]
    table = table.round({"rate": 2, "distortion": 2, "neg_elbo": 2, "mutual_info": 2,
                         "marginal_kl": 2})  # fmt: skip
    st.dataframe(table.rename(columns=columns), hide_index=True, key="runs_table")
    if replicated:
        st.caption("Replicates (runs of one β that differ only in seed): mean ± sd")
        shown = means[means["n"] > 1].round(2)
        st.dataframe(
            shown[["beta", "n", "seeds", "rate", "rate_sd", "distortion", "distortion_sd",
                   "informative_min", "informative_max"]].rename(
                columns={"beta": "β", "n": "runs", "rate": "mean R", "rate_sd": "sd R",
                         "distortion": "mean D", "distortion_sd": "sd D",
                         "informative_min": "informative from", "informative_max": "to"}
            ),
            hide_index=True, key="replicates_table",
        )  # fmt: skip
    plotted_ids = set(frame["run_id"])  # once: a set per record took seconds at 10,000 runs
    split = rate_split_frame([r for r in records if r.run_id in plotted_ids])
    if not split.empty:
        st.markdown("**Where the rate goes**")
        chart(rate_split_chart, split, figure="rate-split")
    st.caption(
        "R = I_q(x; z) + KL(q(z) ‖ p(z)) (Hoffman & Johnson 2016), from each run's evaluation on "
        "the N test points: I_q is the information z carries about which point x is and can "
        "never exceed ln N (6.91 nats for 1,000 points, the dashed line); the rest of R is the "
        "aggregate posterior q(z)'s mismatch with the prior. Empty until a run is evaluated."
    )


page_records = list_runs()
chosen = choose_set(page_records)
if chosen is None:
    st.info("No run has finished an epoch yet. Start one on the Train page.")
    st.page_link("pages/train.py", label="Go to Train", icon=":material/model_training:")
    refresh_on_change()  # the first epoch anywhere shows up
else:
    live_chart(chosen)
    # Runs training outside the chosen set do not redraw the page (a new run anywhere does).
    refresh_on_change(None if chosen == EVERY_RUN else runs_of_set(page_records, chosen))
