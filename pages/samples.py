"""Samples: decode draws from the prior, reconstructions, traversals and the latent map."""

import streamlit as st
import torch

from ui import compare_toggle, list_runs, pick_runs, refresh_on_change, run_store
from vae.execution.checkpoint import CheckpointError, load_run_checkpoint, model_from_checkpoint
from vae.learn.data import DataError, load_dataset
from vae.learn.evaluate import (
    grid,
    latent_map,
    latent_traversal,
    most_active_dims,
    prior_samples,
    reconstructions,
)
from vae.present.charts import latent_map_chart, latent_map_extent

IMAGE_WIDTH = 560
MAP_POINTS = 2000

st.title("Samples")
st.caption(
    "Images decoded from z ~ N(0, I) show what the prior means to the decoder: with a small β the "
    "aggregate posterior drifts from the prior and samples look worse; with a large β they blur."
)
store = run_store()
records = [r for r in list_runs() if not r.broken and r.metrics]
if not records:
    st.info("No run has a checkpoint yet. Start one on the Train page.")
    st.page_link("pages/train.py", label="Go to Train", icon=":material/model_training:")
    refresh_on_change()  # shows the first run as soon as it has an epoch
    st.stop()


@st.cache_resource(max_entries=8)
def load_model(run_id: str, modified: float):
    """The run's model, reloaded when its checkpoint file changes (modified time in the key)."""
    return model_from_checkpoint(load_run_checkpoint(store, run_id))


def checkpoint_mtime(run_id: str) -> float:
    path = store.checkpoint_path(run_id)
    return path.stat().st_mtime if path else 0.0


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
        try:
            model = load_model(record.run_id, checkpoint_mtime(record.run_id))
            dataset = load_dataset(record.config.dataset, record.config.data_root)
        except (CheckpointError, DataError) as exc:
            st.error(f"Cannot show this run: {exc}")
            continue
    x, y = dataset.test.x[:MAP_POINTS], dataset.test.y[:MAP_POINTS]
    shown.append((column, record, model, dataset, latent_map(model, x, y)))
extent = latent_map_extent([frame for *_, frame in shown]) if compare else None

for column, record, model, dataset, frame in shown:
    with column:
        st.caption(f"{record.config.describe()} · epoch {record.last_metrics['epoch']}")
        st.markdown("**From the prior**")
        st.image(grid(prior_samples(model, 64, seed=int(seed)), nrow=8), width=IMAGE_WIDTH)
        st.markdown("**Inputs and reconstructions** (pairs: input, then its reconstruction)")
        st.image(grid(reconstructions(model, dataset.test.x[:16], 16), nrow=8), width=IMAGE_WIDTH)
        dims = most_active_dims(record.last_metrics["kl_per_dim"], 5)
        st.markdown(
            "**Traversals** of the most informative dimensions (largest KLⱼ), one row each, from −3 to 3"
        )
        st.caption("rows, top to bottom: " + ", ".join(f"z{d}" for d in dims))
        traversal = latent_traversal(model, dataset.test.x[:1], dims)
        st.image(grid(traversal, nrow=9), width=IMAGE_WIDTH)
        st.markdown("**Latent means of the test split**")
        st.altair_chart(latent_map_chart(frame, extent))
