"""The training loop on real data: reproducible, resumable, and loud about NaN."""

import pytest
import torch

from vae.learn.config import RunConfig
from vae.learn.engine import NonFiniteLossError, train


def collect(config, **kwargs):
    rows = []
    state = train(config, on_epoch=lambda m, s: rows.append(m), **kwargs)
    return rows, state


def test_metrics_per_epoch_are_complete(tiny_config):
    config = RunConfig.from_dict({**tiny_config.to_dict(), "epochs": 2})
    rows, state = collect(config)
    assert [r["epoch"] for r in rows] == [1, 2]
    assert state.epoch == 2 and state.step == 2 * -(-4000 // 256)
    m = rows[-1]
    assert len(m["kl_per_dim"]) == len(m["posterior_var"]) == len(m["mean_cov"]) == 4
    assert m["rate"] == pytest.approx(sum(m["kl_per_dim"]))
    assert m["elbo"] == pytest.approx(-(m["rate"] + m["distortion"]))
    assert 0 <= m["active_units"] <= 4
    assert rows[1]["train_loss"] < rows[0]["train_loss"]  # it learns


def test_same_seed_same_numbers_different_seed_different(tiny_config):
    a, _ = collect(tiny_config)
    b, _ = collect(tiny_config)
    c, _ = collect(RunConfig.from_dict({**tiny_config.to_dict(), "seed": 1}))
    keys = ("train_loss", "rate", "distortion", "kl_per_dim")
    assert [a[0][k] for k in keys] == [b[0][k] for k in keys]
    assert a[0]["train_loss"] != c[0]["train_loss"]


def test_resume_continues_exactly(tiny_config):
    config = RunConfig.from_dict({**tiny_config.to_dict(), "epochs": 2})
    straight, _ = collect(config)
    first = RunConfig.from_dict({**tiny_config.to_dict(), "epochs": 1})
    _, state = collect(first)
    resumed, _ = collect(config, state=state)
    assert resumed[0]["epoch"] == 2
    assert resumed[0]["train_loss"] == straight[1]["train_loss"]
    assert resumed[0]["kl_per_dim"] == straight[1]["kl_per_dim"]


def test_nan_loss_stops_with_step_and_settings(tiny_config):
    """A corrupt pixel (NaN in the data) makes the loss NaN: the run stops, nothing is saved."""
    from dataclasses import replace

    from vae.learn.data import load_dataset

    clean = load_dataset("digits")
    x = clean.train.x.clone()
    x[123, 0, 14, 14] = float("nan")
    corrupt = replace(clean, train=replace(clean.train, x=x))
    config = RunConfig.from_dict({**tiny_config.to_dict(), "likelihood": "gaussian"})
    saved = []
    with pytest.raises(NonFiniteLossError) as info:
        train(config, dataset=corrupt, on_epoch=lambda m, s: saved.append(m))
    assert "lr=0.001" in str(info.value) and "beta=1" in str(info.value)
    assert 1 <= info.value.step <= 16  # somewhere in the first epoch, where image 123 came up
    assert saved == []  # the epoch with a NaN never reached on_epoch (nothing saved)


def test_should_stop_ends_early_without_an_epoch(tiny_config):
    calls = []
    state = train(tiny_config, should_stop=lambda: len(calls) > 3 or calls.append(1))
    assert state.stopped and state.epoch == 0 and state.step == 5


def test_gaussian_and_objectives_run(tiny_config):
    for extra in (
        {"likelihood": "gaussian", "learn_variance": True},
        {"objective": "capacity", "capacity_steps": 10},
        {"objective": "warmup", "warmup_steps": 10},
        {"objective": "free_bits", "free_bits": 0.2},
        {"architecture": "conv", "hidden_dims": [32], "batch_size": 512},
    ):
        rows, _ = collect(RunConfig.from_dict({**tiny_config.to_dict(), **extra}))
        assert torch.isfinite(torch.tensor(rows[0]["elbo"])), extra
    assert (
        "capacity"
        in collect(RunConfig.from_dict({**tiny_config.to_dict(), "objective": "capacity"}))[0][0]
    )
