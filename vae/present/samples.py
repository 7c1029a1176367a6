"""What the Samples page draws for one run: prior draws, reconstructions, traversals of its most
active dimensions and the latent map of its test split, from its checkpoint file.

The page caches `open_run` per checkpoint file and calls `pictures` per seed; as the β gallery
does with vae.present.gallery, it only puts the results on screen.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pandas as pd

from vae.execution.checkpoint import load_run_checkpoint, model_from_checkpoint
from vae.execution.store import RunStore
from vae.learn.config import RunConfig
from vae.learn.data import Dataset, load_dataset
from vae.learn.evaluate import (
    grid,
    latent_map,
    latent_traversal,
    most_informative_dims,
    prior_samples,
    reconstructions,
)
from vae.learn.model import VAE

MAP_POINTS = 2000  # test images on the latent map
PRIOR_SAMPLES = 64
RECONSTRUCTED = 16
TRAVERSED_DIMS = 5


@dataclass
class OpenRun:
    """A run's model with its test data and latent map (what a seed does not change)."""

    model: VAE
    dataset: Dataset
    latent_map: pd.DataFrame


@dataclass
class SamplePictures:
    """The Samples page's pictures of one run, as H x W x 3 uint8 arrays."""

    prior: np.ndarray
    reconstructions: np.ndarray
    traversal: np.ndarray
    traversal_dims: list[int]


def open_run(store: RunStore, run_id: str) -> OpenRun:
    """A run's model, from its own checkpoint (another run's, copied into its folder, is refused),
    and its data set. Raises CheckpointError, DataError or OSError."""
    checkpoint = load_run_checkpoint(store, run_id)
    config = RunConfig.from_dict(checkpoint["config"])
    model = model_from_checkpoint(checkpoint)
    dataset = load_dataset(config.dataset, config.data_root)
    x, y = dataset.test.x[:MAP_POINTS], dataset.test.y[:MAP_POINTS]
    return OpenRun(model, dataset, latent_map(model, x, y))


def pictures(run: OpenRun, kl_per_dim: list[float], seed: int) -> SamplePictures:
    """Prior draws for `seed`, the first test images beside their reconstructions, and a row of
    traversal from −3 to 3 for each of the dimensions with the largest KL."""
    x = run.dataset.test.x
    dims = most_informative_dims(kl_per_dim, TRAVERSED_DIMS)
    return SamplePictures(
        prior=grid(prior_samples(run.model, PRIOR_SAMPLES, seed=seed), nrow=8),
        reconstructions=grid(reconstructions(run.model, x[:RECONSTRUCTED], RECONSTRUCTED), nrow=8),
        traversal=grid(latent_traversal(run.model, x[:1], dims), nrow=9),
        traversal_dims=dims,
    )
