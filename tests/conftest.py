"""Shared fixtures: a temporary run store and a tiny config that trains in about a second."""

import os
import tempfile

import pytest

# The app measures the job layout on first use on a machine (seconds of both cores); the tests
# fix it instead, except where a test sets VAE_MAX_JOBS itself or measures on purpose.
os.environ.setdefault("VAE_MAX_JOBS", "2")
# The app keeps spare workers warm; the tests that want them say so (test_local_backend).
os.environ.setdefault("VAE_WARM_WORKERS", "0")
# A measured layout is kept per machine in a cache folder: the tests' own, never the user's.
os.environ.setdefault("VAE_LAYOUT_CACHE", tempfile.mkdtemp(prefix="vae-layout-tests-"))

from vae.execution.store import RunStore
from vae.learn.config import RunConfig


@pytest.fixture
def store(tmp_path):
    return RunStore(tmp_path / "runs")


@pytest.fixture
def tiny_config():
    """Real data (the offline digits set), a small MLP, one epoch: fast enough for many tests.

    fp32, so that numbers compare exactly on every CPU (`auto` picks bf16 on some of them).
    """
    return RunConfig(
        dataset="digits",
        hidden_dims=[64],
        latent_dim=4,
        epochs=1,
        batch_size=256,
        threads=1,
        precision="fp32",
    )


@pytest.fixture(scope="session")
def lesson_store(tmp_path_factory):
    """A sweep of three β (group 'sweep-a'), then a single run with other epochs, trained for real
    (shared by the tests of the present/ modules that draw trained runs)."""
    from helpers import train_small

    store = RunStore(tmp_path_factory.mktemp("lesson") / "runs")
    for beta in (0.5, 4.0, 64.0):
        train_small(store, group="sweep-a", beta=beta)
    train_small(store, beta=1.0, epochs=1)
    return store
