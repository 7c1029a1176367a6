"""The KL page's numbers: closed form, gradients, sum vs mean, Monte Carlo, and valid chart specs."""

import math

import numpy as np
import pytest
import torch

from vae.learn.objective import kl_per_dim
from vae.learn.thresholds import ACTIVE_UNIT_THRESHOLD
from vae.present import kl_teaching as kt

POINTS = [(0.0, 1.0), (1.0, 0.5), (-2.0, 0.05), (0.3, 3.0), (2.5, 1.7)]


def test_kl_1d_agrees_with_the_training_code():
    mu = np.array([m for m, _ in POINTS])
    sigma = np.array([s for _, s in POINTS])
    expected = kl_per_dim(torch.tensor(mu), torch.tensor(np.log(sigma**2))).numpy()
    np.testing.assert_allclose(kt.kl_1d(mu, sigma), expected, rtol=1e-12)
    assert isinstance(kt.kl_1d(1.0, 0.5), float)
    assert kt.kl_1d(1.0, 0.5) == pytest.approx(0.5 * (1 + 0.25 - math.log(0.25) - 1))
    assert kt.kl_1d(0.0, 1.0) == 0.0


def test_kl_1d_refuses_a_non_positive_sigma():
    with pytest.raises(ValueError):
        kt.kl_1d(0.0, 0.0)
    with pytest.raises(ValueError):
        kt.kl_1d([0.0, 1.0], [1.0, -1.0])


@pytest.mark.parametrize("mu0,sigma0", POINTS)
def test_gradients_agree_with_autograd(mu0, sigma0):
    mu = torch.tensor(mu0, dtype=torch.float64, requires_grad=True)
    sigma = torch.tensor(sigma0, dtype=torch.float64, requires_grad=True)
    var = torch.tensor(sigma0**2, dtype=torch.float64, requires_grad=True)
    logvar = torch.tensor(math.log(sigma0**2), dtype=torch.float64, requires_grad=True)
    # The same KL written in each of the three parametrisations of the width.
    by_sigma = 0.5 * (mu**2 + sigma**2 - torch.log(sigma**2) - 1)
    by_var = 0.5 * (mu.detach() ** 2 + var - torch.log(var) - 1)
    by_logvar = kl_per_dim(mu.detach(), logvar)
    d_mu, d_sigma = torch.autograd.grad(by_sigma, (mu, sigma))
    (d_var,) = torch.autograd.grad(by_var, var)
    (d_logvar,) = torch.autograd.grad(by_logvar, logvar)
    grads = kt.kl_1d_grads(mu0, sigma0)
    assert grads.mu == pytest.approx(float(d_mu), rel=1e-12, abs=1e-12)
    assert grads.sigma == pytest.approx(float(d_sigma), rel=1e-12, abs=1e-12)
    assert grads.var == pytest.approx(float(d_var), rel=1e-12, abs=1e-12)
    assert grads.logvar == pytest.approx(float(d_logvar), rel=1e-12, abs=1e-12)


def test_the_seeds_derivative_is_twice_the_variance_derivative_not_the_sigma_one():
    sigma = 0.5
    v = sigma**2
    grads = kt.kl_1d_grads(0.0, sigma)
    assert (v - 1) / v == pytest.approx(2 * grads.var)
    assert (sigma - 1) / sigma != pytest.approx(grads.sigma)


def test_mistakes_missing_half_and_log_sigma():
    assert kt.kl_without_half(1.0, 0.5) == pytest.approx(2 * kt.kl_1d(1.0, 0.5))
    # log sigma for log sigma^2: minimum at sigma^2 = 1/2, negative there (the page quotes -0.077)
    sigmas = np.geomspace(0.05, 3, 20001)
    values = kt.kl_with_log_sigma(0.0, sigmas)
    assert sigmas[np.argmin(values)] ** 2 == pytest.approx(0.5, rel=1e-3)
    assert kt.kl_with_log_sigma(0.0, math.sqrt(0.5)) == pytest.approx(-0.0767, abs=5e-4)
    table = kt.mistakes_table(1.0, 0.5)
    assert table["value"].iloc[0] == pytest.approx(kt.kl_1d(1.0, 0.5))


def test_effective_beta_sum_vs_mean():
    assert kt.effective_beta(4.0, 32, "sum") == 4.0
    assert kt.effective_beta(4.0, 32, "mean") == pytest.approx(0.125)
    with pytest.raises(ValueError):
        kt.effective_beta(1.0, 0, "mean")
    with pytest.raises(ValueError):
        kt.effective_beta(1.0, 4, "max")


def test_keras_mean_kl_is_the_summed_kl_divided_by_d():
    g = torch.Generator().manual_seed(0)
    d = 7
    mu = torch.randn(16, d, generator=g, dtype=torch.float64)
    logvar = torch.randn(16, d, generator=g, dtype=torch.float64)
    total = kt.summed_kl(mu.numpy(), logvar.numpy())
    np.testing.assert_allclose(total, kl_per_dim(mu, logvar).sum(-1).numpy(), rtol=1e-12)
    np.testing.assert_allclose(total / kt.keras_mean_kl(mu.numpy(), logvar.numpy()), d, rtol=1e-12)
    example = kt.sum_vs_mean_example(beta=4.0, d=d)
    np.testing.assert_allclose(example["ratio"], d, rtol=1e-12)
    np.testing.assert_allclose(example["β · summed"], 4.0 * example["KL summed over dims"])


@pytest.mark.parametrize("mu,sigma", [(0.0, 1.0), (1.0, 0.5), (-2.0, 0.1), (0.5, 2.5)])
def test_monte_carlo_agrees_with_the_closed_form(mu, sigma):
    mc = kt.monte_carlo_kl(mu, sigma, n=20_000, seed=1)
    exact = kt.kl_1d(mu, sigma)
    assert abs(mc.estimate - exact) <= 4 * mc.stderr + 1e-12
    assert mc.n == 20_000
    assert kt.monte_carlo_kl(mu, sigma, n=20_000, seed=1) == mc  # reproducible


def test_kl_curves_frame_has_both_panels_and_the_marker():
    data = kt.kl_curves(1.0, 0.5, points=11)
    assert set(data["panel"]) == {"mu", "sigma"}
    assert set(data["quantity"]) == {"KL", "gradient"}
    marker = data[data["chosen"]].set_index(["panel", "quantity"])["value"]
    assert marker["mu", "KL"] == pytest.approx(kt.kl_1d(1.0, 0.5))
    assert marker["sigma", "gradient"] == pytest.approx(0.5 - 2.0)
    assert len(data) == 4 * 11 + 4
    curve = data[(data["panel"] == "sigma") & (data["quantity"] == "KL") & ~data["chosen"]]
    assert curve["x"].min() == pytest.approx(kt.SIGMA_RANGE[0])


def test_sigma_choices_are_increasing_and_contain_round_values():
    choices = kt.SIGMA_CHOICES
    assert list(choices) == sorted(set(choices))
    assert {0.1, 0.5, 1.0, 2.0} <= set(choices)


def _assert_valid_vega_lite(chart) -> dict:
    spec = chart.to_dict()  # altair validates against the Vega-Lite schema here
    assert spec["$schema"].startswith("https://vega.github.io/schema/vega-lite/")
    return spec


def test_curve_chart_spec_is_valid():
    spec = _assert_valid_vega_lite(kt.kl_curves_chart(0.5, 0.8))
    assert len(spec["hconcat"]) == 2


METRICS = {
    "epoch": 3,
    "kl_per_dim": [0.02, 2.5, 0.001, 1.1],
    "posterior_var": [0.97, 0.04, 1.0, 0.2],
    "mean_cov": [0.003, 3.1, 0.0, 0.8],
}


def test_per_dim_frame_sorts_by_kl_and_marks_active_units():
    frame = kt.per_dim_frame(METRICS)
    assert list(frame["dimension"]) == ["z1", "z3", "z0", "z2"]  # numbered from 0
    assert list(frame["active"]) == [True, True, False, False]
    assert (frame["Cov_x(μ)"] > ACTIVE_UNIT_THRESHOLD).sum() == 2


@pytest.mark.parametrize(
    "bad",
    [{}, {"kl_per_dim": [1.0], "posterior_var": [1.0]}, {**METRICS, "mean_cov": [1.0]},
     {**METRICS, "kl_per_dim": None}, {"kl_per_dim": [], "posterior_var": [], "mean_cov": []}],
)  # fmt: skip
def test_per_dim_frame_refuses_unusable_metrics(bad):
    with pytest.raises(ValueError):
        kt.per_dim_frame(bad)


def test_per_dim_chart_spec_is_valid_and_shows_the_threshold():
    spec = _assert_valid_vega_lite(kt.per_dim_chart(kt.per_dim_frame(METRICS)))
    assert len(spec["vconcat"]) == 2
    datasets = spec["datasets"].values()
    assert any(row.get("threshold") == ACTIVE_UNIT_THRESHOLD for rows in datasets for row in rows)
    # zero variance/covariance is floored so the log axis can draw it
    values = [row["value"] for rows in datasets for row in rows if "statistic" in row]
    assert min(values) >= kt.VARIANCE_FLOOR
