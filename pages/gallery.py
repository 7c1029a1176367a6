"""β gallery: one row per β of a sweep, what the model generates and keeps at each β."""

import streamlit as st

from ui import chart, list_runs, refresh_on_change, run_store
from vae.execution.checkpoint import CheckpointError
from vae.execution.states import RunState
from vae.learn.data import DataError
from vae.present.charts import units_chart
from vae.present.gallery import Pictures, checkpoint_pictures, gallery_frame, sweeps
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


found = sweeps(list_runs())


def sweep_picker():
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
    refresh_on_change()  # the first sweep shows up as soon as it is started
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


def gallery(sweep) -> None:
    """One row per run; pictures come from the cache until a checkpoint changes."""
    frame = gallery_frame(sweep)
    finished = int((frame["state"] == RunState.FINISHED).sum())
    if finished < len(frame):
        st.info(f"{finished} of {len(frame)} runs finished; rows update as the runs train.")
    if frame["informative"].notna().sum() >= 2:
        chart(units_chart, frame)
    for index, (record, numbers) in enumerate(zip(sweep.runs, frame.itertuples(), strict=True)):
        row(index, record, numbers)


shown = next((s for s in found if s.group == group), None)
if shown is None:
    st.warning("This sweep is no longer in the store.")
    refresh_on_change()
    st.stop()
gallery(shown)
refresh_on_change([r.run_id for r in shown.runs])  # redrawn as the sweep's runs change
