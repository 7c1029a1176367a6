"""Precision as a run setting: auto follows the hardware; bf16 trains as well as fp32 and says so."""

import pytest
import torch

import vae.learn.precision as precision
from vae.learn.config import ConfigError, RunConfig
from vae.learn.engine import train


@pytest.mark.parametrize(
    ("flags", "expected"),
    [
        ({"avx2", "fma"}, "fp32"),  # AMD Zen 3: bf16 would be emulated, 55x slower
        ({"avx2", "avx512f", "avx512_bf16"}, "bf16"),  # AMD Zen 4/5
        ({"avx512f", "amx_tile", "amx_bf16"}, "bf16"),  # Intel Sapphire Rapids
        (set(), "fp32"),
    ],
)
def test_auto_precision_follows_the_cpus_bf16_units(monkeypatch, flags, expected):
    monkeypatch.setattr(precision, "cpu_flags", lambda: frozenset(flags))
    cpu = torch.device("cpu")
    assert precision.resolve_precision("auto", cpu) == expected
    assert precision.resolve_precision("fp32", cpu) == "fp32"  # a setting overrides the hardware
    assert precision.resolve_precision("bf16", cpu) == "bf16"


def test_an_unknown_precision_is_refused(tiny_config):
    with pytest.raises(ConfigError, match="precision"):
        RunConfig.from_dict({**tiny_config.to_dict(), "precision": "fp8"}).validated()


def test_bf16_trains_to_the_same_elbo_and_records_it(tiny_config):
    """Two epochs in each precision: finite, recorded, test ELBO within 2% (fp32 metrics)."""
    results = {}
    for name in ("fp32", "bf16"):
        config = RunConfig.from_dict({**tiny_config.to_dict(), "epochs": 2, "precision": name})
        rows = []
        state = train(config, on_epoch=lambda m, s, rows=rows: rows.append(m))
        assert [r["precision"] for r in rows] == [name, name]
        assert all(
            p.dtype == torch.float32 for p in state.model.parameters()
        )  # fp32 master weights
        results[name] = rows[-1]
    assert torch.isfinite(torch.tensor(results["bf16"]["elbo"]))
    assert results["bf16"]["elbo"] == pytest.approx(results["fp32"]["elbo"], rel=0.02)
    assert results["bf16"]["train_loss"] != results["fp32"]["train_loss"]  # bf16 really ran


def test_auto_records_what_the_hardware_gave(tiny_config):
    config = RunConfig.from_dict({**tiny_config.to_dict(), "precision": "auto"})
    rows = []
    train(config, on_epoch=lambda m, s: rows.append(m))
    assert rows[-1]["precision"] == precision.resolve_precision("auto", torch.device("cpu"))
