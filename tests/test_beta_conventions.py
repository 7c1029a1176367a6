"""The β converter against hand-computed cases (digits: n = 784 pixels, J = 16 latents)."""

from __future__ import annotations

import pytest

from vae.present.beta_conventions import (
    app_beta,
    beta_factor,
    conventions_table,
    from_higgins_normalised,
    higgins_normalised,
    other_weight,
)


def test_each_factor_by_hand():
    assert beta_factor("nll_sum", "sum", 784, 16) == 1.0
    assert beta_factor("nll_sum", "mean", 784, 16) == pytest.approx(1 / 16)
    assert beta_factor("nll_mean", "sum", 784, 16) == pytest.approx(784)
    assert beta_factor("nll_mean", "mean", 784, 16) == pytest.approx(49)  # 784 / 16
    # summed squared error with weight w is a Gaussian of σ² = 0.01 at β = w / 0.02
    assert beta_factor("mse_sum", "sum", 784, 16, noise_var=0.01) == pytest.approx(50)
    assert beta_factor("mse_mean", "mean", 784, 16, noise_var=0.5) == pytest.approx(49)


def test_kl_mean_over_latents_divides_beta():
    # Averaging the KL over 16 latents with weight 4 trains at β = 0.25; to get β = 4, write 64.
    assert app_beta(4.0, "nll_sum", "mean", 784, 16) == pytest.approx(0.25)
    assert other_weight(4.0, "nll_sum", "mean", 784, 16) == pytest.approx(64.0)


def test_higgins_normalised():
    # β = 4 with 10 latents on 64×64 = 4096 pixels: β_norm = 4·10/4096 = 0.009765625
    assert higgins_normalised(4.0, 4096, 10) == pytest.approx(0.009765625)
    assert from_higgins_normalised(0.009765625, 4096, 10) == pytest.approx(4.0)


def test_minibatch_weight_with_mse():
    # kld_weight = 128/4000 = 0.032 with mean MSE over 784 pixels at σ² = 0.01:
    # β = 0.032·784/0.02 = 1254.4
    assert app_beta(0.032, "mse_mean", "sum", 784, 16, noise_var=0.01) == pytest.approx(1254.4)


def test_round_trip_and_errors():
    for recon in ("nll_sum", "nll_mean", "mse_sum", "mse_mean"):
        for kl in ("sum", "mean"):
            w = other_weight(2.5, recon, kl, 1024, 10, noise_var=0.1)
            assert app_beta(w, recon, kl, 1024, 10, noise_var=0.1) == pytest.approx(2.5)
    with pytest.raises(ValueError, match="σ²"):
        beta_factor("mse_sum", "sum", 784, 16)
    with pytest.raises(ValueError, match="unknown"):
        beta_factor("l1", "sum", 784, 16)  # type: ignore[arg-type]


def test_table_numbers():
    rows = {r.name: r.weight for r in conventions_table(4.0, 784, 16, noise_var=0.01)}
    assert rows["this app"] == 4.0
    assert rows["KL averaged over latents"] == pytest.approx(64.0)
    assert rows["Higgins β_norm"] == pytest.approx(4 * 16 / 784)
    assert rows["reconstruction averaged over pixels"] == pytest.approx(4 / 784)
    assert rows["both averaged"] == pytest.approx(4 * 16 / 784)
    assert rows["squared error, summed"] == pytest.approx(0.08)
    assert rows["MSE (mean) + mean KL"] == pytest.approx(0.02 * 4 * 16 / 784)
    assert rows["KL weight M/N, MSE mean"] == pytest.approx(1254.4)
