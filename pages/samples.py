"""Samples: decode draws from the prior, reconstructions, traversals and the latent map."""

import streamlit as st
import torch

from ui import chart, compare_toggle, list_runs, pick_runs, refresh_on_change, run_store
from vae.execution.checkpoint import CheckpointError
from vae.learn.data import DataError
from vae.present.charts import latent_map_chart, latent_map_extent
from vae.present.samples import OpenRun, open_run, pictures
from vae.present.text import plain_text

IMAGE_WIDTH = 560

st.title("Samples")
st.caption(
    "Images decoded from z ~ N(0, I) show what the prior means to the decoder: with a small β the "
    "aggregate posterior drifts from the prior and samples look worse; with a large β they blur."
)
store = run_store()
records = [r for r in list_runs() if not r.broken and r.last_metrics]
if not records:
    st.info("No run has a checkpoint yet. Start one on the Train page.")
    st.page_link("pages/train.py", label="Go to Train", icon=":material/model_training:")
    refresh_on_change()  # shows the first run as soon as it has an epoch
    st.stop()


@st.cache_resource(max_entries=8)
def load_run(run_id: str, path: str, modified: float) -> OpenRun:
    """The run's model, data and latent map, reloaded when its checkpoint file changes (path,
    mtime in the key)."""
    return open_run(store, run_id)


def redraw() -> None:
    """Runs before the script (a button callback), so the seed widget may still be changed."""
    st.session_state.sample_seed = int(torch.randint(0, 2**31 - 1, ()).item())


compare = compare_toggle()
seed = st.number_input("Sample seed", 0, 2**31 - 1, key="sample_seed")  # value: the minimum, 0
st.button("Re-draw samples", key="redraw", on_click=redraw)
if compare:
    st.caption("Both latent maps share one axis range, so equal spreads mean equal spreads.")

shown = []
for column, record in pick_runs(records, compare):
    with column:
        path = store.checkpoint_path(record.run_id)
        try:
            if path is None:
                raise CheckpointError(f"run {record.run_id} has no checkpoint yet")
            shown.append((column, record, load_run(record.run_id, str(path), path.stat().st_mtime)))
        except (CheckpointError, DataError, OSError) as exc:
            st.error(f"Cannot show this run: {plain_text(exc)}")
extent = latent_map_extent([run.latent_map for *_, run in shown]) if compare else None

for side, (column, record, run) in enumerate(shown):
    with column:
        drawn = pictures(run, record.last_metrics["kl_per_dim"], int(seed))
        st.caption(f"{record.config.describe()} · epoch {record.last_metrics['epoch']}")
        st.markdown("**From the prior**")
        st.image(drawn.prior, width=IMAGE_WIDTH)
        st.markdown("**Inputs and reconstructions** (pairs: input, then its reconstruction)")
        st.image(drawn.reconstructions, width=IMAGE_WIDTH)
        st.markdown(
            "**Traversals** of the most informative dimensions (largest KLⱼ), one row each, from "
            "−3 to 3"
        )
        st.caption("rows, top to bottom: " + ", ".join(f"z{d}" for d in drawn.traversal_dims))
        st.image(drawn.traversal, width=IMAGE_WIDTH)
        st.markdown("**Latent means of the test split**")
        st.caption("To decode a point you pick, or your own digit, open Probe.")
        chart(
            latent_map_chart, run.latent_map, extent,
            figure=f"latent-map-{record.run_id}", figure_key=f"map-{side}",
        )  # fmt: skip
