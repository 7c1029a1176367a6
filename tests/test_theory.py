"""The linear-Gaussian closed form against hand computation and real training, and the rate split
R = I_q(x; z) + KL(q(z) ‖ p(z)) against brute force and real runs."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from vae.learn.config import RunConfig
from vae.learn.data import load_dataset
from vae.learn.engine import train_models
from vae.learn.evaluate import evaluate_model
from vae.learn.theory import (
    covariance_spectrum,
    frontier,
    predict,
    rate_split,
    theory_baseline,
    theory_exact,
)
from vae.learn.thresholds import INFORMATIVE_KL_THRESHOLD

NOISE_VAR = 0.1
BETAS = (0.5, 1.0, 2.0)


# ---- the formula -----------------------------------------------------------------------------------
def test_prediction_by_hand():
    # λ = 1, 0.25, 0.01; σ² = 0.1, β = 1: threshold 0.1, so two active dimensions and one collapsed.
    p = predict([0.25, 1.0, 0.01], beta=1.0, noise_var=0.1, latent_dim=3)
    assert p.kl_per_dim == pytest.approx([0.5 * math.log(10), 0.5 * math.log(2.5), 0.0])
    assert p.posterior_var == pytest.approx([0.1, 0.4, 1.0])
    assert p.active == [True, True, False]
    assert p.rate == pytest.approx(0.5 * math.log(25))
    # D = (0.1 + 0.1 + 0.01) / 0.2 + (3/2) ln(2π·0.1)
    assert p.distortion == pytest.approx(1.05 + 1.5 * math.log(0.2 * math.pi))


def test_directions_beyond_the_latents_count_in_full():
    # J = 1 of d = 3: λ = 0.25 and 0.01 stay unexplained whatever β is.
    p = predict([1.0, 0.25, 0.01], beta=1.0, noise_var=0.1, latent_dim=1)
    assert p.kl_per_dim == pytest.approx([0.5 * math.log(10)])
    assert p.distortion == pytest.approx((0.1 + 0.25 + 0.01) / 0.2 + 1.5 * math.log(0.2 * math.pi))
    # More latents than directions: the extra ones collapse.
    wide = predict([1.0], beta=1.0, noise_var=0.1, latent_dim=3)
    assert wide.active == [True, False, False] and wide.posterior_var[1:] == [1.0, 1.0]


def test_frontier_slope_is_minus_beta():
    lam = 2.0 ** -np.arange(8)
    for beta in (0.3, 1.0, 2.5):
        low, high = frontier(lam, NOISE_VAR, 8, [beta * 0.999, beta * 1.001])
        slope = (high.distortion - low.distortion) / (high.rate - low.rate)
        assert slope == pytest.approx(-beta, rel=1e-3)


def test_when_the_theory_holds():
    linear = RunConfig(architecture="linear", likelihood="gaussian")
    assert theory_exact(linear) and not theory_baseline(linear)
    mlp = RunConfig(architecture="mlp", likelihood="gaussian")
    assert theory_baseline(mlp) and not theory_exact(mlp)
    assert not theory_exact(RunConfig(architecture="linear", likelihood="bernoulli"))
    learned = RunConfig(architecture="linear", likelihood="gaussian", learn_variance=True)
    assert not theory_exact(learned) and not theory_baseline(learned)


def test_gaussian_set_has_its_spectrum_and_refuses_bernoulli():
    data = load_dataset("gaussian")
    assert data.train.x.shape == (4000, 1, 1, 8) and data.test.x.shape == (1000, 1, 1, 8)
    lam = covariance_spectrum(data.train.x)
    np.testing.assert_allclose(lam, 2.0 ** -np.arange(8), rtol=0.1)
    assert torch.equal(load_dataset("gaussian").train.x, data.train.x)  # a fixed seed
    errors = RunConfig(dataset="gaussian", likelihood="bernoulli").validated
    with pytest.raises(ValueError, match="choose gaussian"):
        errors()


# ---- real training lands on the prediction ----------------------------------------------------
def linear_config(beta: float, latent_dim: int = 8) -> RunConfig:
    return RunConfig(
        dataset="gaussian",
        architecture="linear",
        latent_dim=latent_dim,
        likelihood="gaussian",
        gaussian_std=math.sqrt(NOISE_VAR),
        beta=beta,
        epochs=200,
        batch_size=500,
        lr=1e-2,
    )


@pytest.fixture(scope="module")
def trained():
    torch.set_num_threads(1)
    data = load_dataset("gaussian")
    configs = [linear_config(b) for b in BETAS]
    states = train_models(configs, dataset=data).states
    evals = [
        evaluate_model(s.model, data, c, iw_samples=4) for s, c in zip(states, configs, strict=True)
    ]
    return data, configs, evals


def test_trained_linear_runs_land_on_the_prediction(trained):
    data, configs, evals = trained
    lam = covariance_spectrum(data.train.x)
    for config, result in zip(configs, evals, strict=True):
        p = predict(lam, config.beta, NOISE_VAR, 8)
        learned = sorted(result["kl_per_dim"], reverse=True)
        np.testing.assert_allclose(learned, p.kl_per_dim, atol=0.05)
        collapsed = [k <= INFORMATIVE_KL_THRESHOLD for k in learned]
        assert collapsed == [not a for a in p.active], (config.beta, learned, p.kl_per_dim)
        assert result["rate"] == pytest.approx(p.rate, abs=0.1)
        assert result["distortion"] == pytest.approx(p.distortion, abs=0.15)
        assert result["theory"]["exact"] and result["theory"]["rate"] == pytest.approx(p.rate)
    # three different collapse patterns
    assert len({sum(predict(lam, c.beta, NOISE_VAR, 8).active) for c in configs}) == 3


def test_fewer_latents_than_directions_leave_the_rest_unexplained():
    torch.set_num_threads(1)
    data = load_dataset("gaussian")
    config = linear_config(0.5, latent_dim=3)
    (state,) = train_models([config], dataset=data).states
    result = evaluate_model(state.model, data, config, iw_samples=2)
    p = predict(covariance_spectrum(data.train.x), 0.5, NOISE_VAR, 3)
    assert all(p.active)
    np.testing.assert_allclose(sorted(result["kl_per_dim"], reverse=True), p.kl_per_dim, atol=0.05)
    assert result["distortion"] == pytest.approx(p.distortion, abs=0.15)


# ---- where the rate goes ----------------------------------------------------------------------
def test_rate_split_adds_up_and_respects_log_n_on_real_runs(trained):
    _, _, evals = trained
    for result in evals:
        total = result["mutual_info"] + result["marginal_kl"]
        assert total == pytest.approx(result["rate"], abs=1e-4)
        assert result["mutual_info"] <= result["log_n"] + 1e-12
        assert result["log_n"] == pytest.approx(math.log(1000))
        assert result["marginal_kl"] > -0.05


def test_rate_split_on_a_digits_run_with_a_large_rate():
    torch.set_num_threads(1)
    data = load_dataset("digits")
    config = RunConfig(latent_dim=16, hidden_dims=[64], epochs=1, beta=0.5, batch_size=256)
    (state,) = train_models([config], dataset=data).states
    result = evaluate_model(state.model, data, config, iw_samples=2)
    assert result["rate"] > result["log_n"]  # more rate than I_q could ever hold
    assert result["mutual_info"] <= result["log_n"]
    assert result["mutual_info"] + result["marginal_kl"] == pytest.approx(result["rate"], abs=1e-4)
    assert result["marginal_kl"] >= result["rate"] - result["log_n"] - 1e-9
    assert result["theory"] is None  # Bernoulli: no closed form


def brute_force_mutual_info(mu: np.ndarray, var: np.ndarray) -> float:
    """I_q for one latent dimension by quadrature: (1/N) Σₙ ∫ q(z|xₙ) ln(q(z|xₙ)/q(z)) dz."""
    z = np.linspace(-12, 12, 200_001)
    dens = np.exp(-0.5 * (z[None] - mu[:, None]) ** 2 / var[:, None]) / np.sqrt(
        2 * np.pi * var[:, None]
    )
    marginal = dens.mean(0)
    integrand = dens * (np.log(dens + 1e-300) - np.log(marginal + 1e-300))
    return float(np.trapezoid(integrand, z, axis=1).mean())


def test_the_rate_splits_one_matrix_product_is_every_log_density():
    """[z², z, 1] @ weights is log N(z; μₘ, σₘ²) for every pair, as the direct sum over j gives."""
    from vae.learn.theory import _features, _log_normal, _log_normal_weights

    g = torch.Generator().manual_seed(0)
    mu = torch.randn(7, 5, generator=g, dtype=torch.float64)
    logvar = torch.randn(7, 5, generator=g, dtype=torch.float64)
    z = 2 * torch.randn(11, 5, generator=g, dtype=torch.float64)
    direct = _log_normal(z[:, None, :], mu[None], logvar[None])  # [11, 7]
    torch.testing.assert_close(_features(z) @ _log_normal_weights(mu, logvar), direct)


def test_rate_split_is_the_same_whatever_its_block_of_rows(monkeypatch):
    from vae.learn import theory

    g = torch.Generator().manual_seed(1)
    mu, logvar = torch.randn(300, 4, generator=g), torch.randn(300, 4, generator=g) - 1
    splits = []
    for rows_in_cache in (1, 2**30):  # one row per block; all rows in one
        monkeypatch.setattr(theory, "ROWS_IN_CACHE", rows_in_cache)
        splits.append(rate_split(mu, logvar, generator=torch.Generator().manual_seed(2)))
    assert splits[0]["mutual_info"] == pytest.approx(splits[1]["mutual_info"], abs=1e-12)
    assert 0 < splits[0]["mutual_info"] <= math.log(300)


def test_mutual_info_matches_brute_force_on_a_tiny_case():
    mu = np.array([-1.0, 0.2, 1.5])
    var = np.array([0.3, 0.5, 0.2])
    exact = brute_force_mutual_info(mu, var)
    split = rate_split(
        torch.tensor(mu)[:, None],
        torch.tensor(np.log(var))[:, None],
        samples=200_000,
        generator=torch.Generator().manual_seed(0),
    )
    assert split["mutual_info"] == pytest.approx(exact, abs=0.01)
    assert split["log_n"] == pytest.approx(math.log(3))
    kl = 0.5 * (mu**2 + var - np.log(var) - 1).mean()
    assert split["marginal_kl"] == pytest.approx(kl - exact, abs=0.01)
    # identical posteriors carry no information: I_q = 0 and the whole rate is marginal KL
    same = rate_split(torch.ones(4, 2), torch.zeros(4, 2), samples=8)
    assert same["mutual_info"] == pytest.approx(0.0, abs=1e-12)
    assert same["marginal_kl"] == pytest.approx(1.0)
