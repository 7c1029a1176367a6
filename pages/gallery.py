"""β gallery: one row per β of a sweep, what the model generates and keeps at each β."""

import streamlit as st

from ui import run_store
from vae.execution.checkpoint import CheckpointError
from vae.execution.states import RunState
from vae.learn.data import DataError
from vae.present.charts import units_chart
from vae.present.gallery import (
    Pictures,
    Sweep,
    checkpoint_pictures,
    gallery_frame,
    shown_rows,
    sweeps,
)
from vae.present.units import ACTIVE_RULE, INFORMATIVE_RULE, WHY_COUNTS_DIFFER

st.title("β gallery")
st.caption(
    "One sweep, one row per β, smallest first: samples from the prior, the same test digits "
    "beside their reconstructions, and the dimension with the largest KL swept from −3 to 3. "
    "As β grows the reconstructions blur, the samples converge on a generic digit and fewer "
    f"dimensions stay **informative** ({INFORMATIVE_RULE}); **active** counts Burda's "
    f"{ACTIVE_RULE}. {WHY_COUNTS_DIFFER}"
)
store = run_store()


@st.cache_data(max_entries=256, show_spinner=False)
def pictures(path: str, modified: float, seed: int) -> Pictures:
    """Images of one checkpoint file, recomputed only when the file changes (mtime in the key)."""
    return checkpoint_pictures(path, seed=seed)


def sweep_picker():
    found = sweeps(store.list_runs())
    if not found:
        return None
    by_group = {s.group: s for s in found}
    group = st.selectbox(
        "Sweep", list(by_group), key="gallery_sweep",
        format_func=lambda g: by_group[g].label() if g in by_group else g,
        help="Runs started together by Sweep β (or the demo); the newest first.",
    )  # fmt: skip
    return group


group = sweep_picker()
if group is None:
    st.info(
        "No β sweep yet. On the Train page, press **Start the β demo** (on an empty store) or "
        "**Sweep β**; each run of the sweep gets a row here."
    )
    st.page_link("pages/train.py", label="Go to Train", icon=":material/model_training:")
    st.stop()
seed = st.number_input("Sample seed (the same for every row)", 0, 2**31 - 1, 0, key="gallery_seed")


def row(index: int, record, numbers) -> None:
    with st.container(key=f"gallery_row_{index}", border=True):
        text, samples, recon, traversal = st.columns([1.3, 1.2, 1.2, 2.6])
        epoch = f"epoch {numbers.epoch}/{numbers.epochs}" if numbers.epoch else numbers.state
        text.markdown(f"#### β = {numbers.beta:g}")
        if numbers.rate is None:
            text.caption(f"{record.run_id} · {numbers.state}")
            return
        text.markdown(
            f"R = {numbers.rate:.2f} nats  \nD = {numbers.distortion:.1f} nats  \n"
            f"informative: **{numbers.informative}** / {numbers.latent_dim}  \n"
            f"active (Burda): **{numbers.active}** / {numbers.latent_dim}"
        )
        text.caption(f"{epoch} · {numbers.state}")
        path = store.checkpoint_path(record.run_id)
        if path is None:
            samples.caption("no checkpoint yet")
            return
        try:
            shown = pictures(str(path), path.stat().st_mtime, int(seed))
        except (CheckpointError, DataError, OSError) as exc:
            samples.warning(f"Cannot draw this run: {exc}")
            return
        samples.image(shown.samples, caption="prior samples", width="stretch")
        recon.image(shown.reconstructions, caption="inputs | reconstructions", width="stretch")
        traversal.image(
            shown.traversal,
            caption=f"z{shown.traversal_dim} (largest KL) from −3 to 3",
            width="stretch",
        )


@st.fragment(run_every=2.0)
def gallery() -> None:
    """Redrawn every 2 s while the sweep trains; pictures come from the cache between epochs."""
    sweep = next((s for s in sweeps(store.list_runs()) if s.group == group), None)
    if sweep is None:
        st.warning("This sweep is no longer in the store.")
        return
    frame = gallery_frame(sweep)
    finished = sum(r.state == RunState.FINISHED for r in sweep.runs)
    if finished < len(sweep.runs):
        st.info(f"{finished} of {len(sweep.runs)} runs finished; rows update as the runs train.")
    if frame["informative"].notna().sum() >= 2:
        st.altair_chart(units_chart(frame))
    runs, note = shown_rows(sweep)
    if note:
        st.caption(note)
    numbers = {n.run_id: n for n in gallery_frame(Sweep(sweep.group, runs)).itertuples()}
    for index, record in enumerate(runs):
        row(index, record, numbers[record.run_id])


gallery()
