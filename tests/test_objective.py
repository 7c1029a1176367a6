"""The KL term and the objectives: checked against torch.distributions and Monte Carlo."""

import math

import pytest
import torch
from torch.distributions import Normal, kl_divergence

from vae.learn.config import RunConfig
from vae.learn.objective import (
    BetaVAE,
    CapacityAnnealing,
    FreeBits,
    KLWarmup,
    kl_per_dim,
    make_objective,
)


def random_posterior(batch=64, dims=8, seed=0):
    g = torch.Generator().manual_seed(seed)
    mu = torch.randn(batch, dims, generator=g, dtype=torch.float64) * 2
    logvar = torch.randn(batch, dims, generator=g, dtype=torch.float64) * 1.5
    return mu, logvar


def test_kl_per_dim_matches_torch_distributions():
    mu, logvar = random_posterior()
    expected = kl_divergence(Normal(mu, torch.exp(0.5 * logvar)), Normal(0.0, 1.0))
    ours = kl_per_dim(mu, logvar)
    assert ours.shape == (64, 8)
    torch.testing.assert_close(ours, expected, rtol=0, atol=1e-6)
    # float32 too, the dtype training uses
    torch.testing.assert_close(
        kl_per_dim(mu.float(), logvar.float()), expected.float(), rtol=1e-5, atol=1e-6
    )


def test_kl_matches_monte_carlo_within_standard_error():
    mu = torch.tensor([0.7, -1.3, 0.0], dtype=torch.float64)
    logvar = torch.tensor([-0.5, 0.8, 0.0], dtype=torch.float64)
    g = torch.Generator().manual_seed(1)
    n = 200_000
    z = mu + torch.exp(0.5 * logvar) * torch.randn(n, 3, generator=g, dtype=torch.float64)
    q, p = Normal(mu, torch.exp(0.5 * logvar)), Normal(0.0, 1.0)
    samples = q.log_prob(z) - p.log_prob(z)  # E_q[log q - log p], per dimension
    estimate, stderr = samples.mean(0), samples.std(0) / math.sqrt(n)
    analytic = kl_per_dim(mu, logvar)
    assert torch.all((estimate - analytic).abs() < 4 * stderr + 1e-12)
    assert analytic[2] == 0  # the prior itself: no divergence


def test_the_rate_sums_over_dimensions_not_averages():
    mu, logvar = random_posterior(dims=10)
    kl = kl_per_dim(mu, logvar)
    rate = BetaVAE(beta=1.0)(torch.zeros(kl.shape[0], dtype=kl.dtype), kl, 0)  # D = 0: β·R
    torch.testing.assert_close(rate, kl.sum(-1).mean())
    assert not torch.allclose(rate, kl.mean(-1).mean())


def test_kl_gradient_pulls_towards_the_prior():
    mu = torch.tensor([1.5], requires_grad=True)
    sigma = torch.tensor([0.5], requires_grad=True)
    kl_per_dim(mu, 2 * torch.log(sigma)).sum().backward()
    assert mu.grad.item() == pytest.approx(1.5)  # dKL/dmu = mu
    assert sigma.grad.item() == pytest.approx(0.5 - 1 / 0.5)  # dKL/dsigma = sigma - 1/sigma
    at_prior = kl_per_dim(torch.zeros(3), torch.zeros(3))
    assert torch.all(at_prior == 0)


def test_beta_vae_is_distortion_plus_beta_rate():
    mu, logvar = random_posterior(batch=5, dims=3)
    kl = kl_per_dim(mu, logvar)
    d = torch.arange(5, dtype=torch.float64)
    loss = BetaVAE(4.0)(d, kl, step=0)
    assert loss.item() == pytest.approx(d.mean().item() + 4 * kl.sum(-1).mean().item())


def test_beta_broadcasts_over_a_model_axis():
    mu, logvar = random_posterior(batch=5, dims=3)
    kl = kl_per_dim(mu, logvar).expand(3, 5, 3)
    d = torch.ones(3, 5, dtype=torch.float64)
    betas = torch.tensor([0.5, 1.0, 4.0], dtype=torch.float64)
    losses = BetaVAE(betas)(d, kl, 0)
    singles = [BetaVAE(b.item())(d[0], kl[0], 0) for b in betas]
    torch.testing.assert_close(losses, torch.stack(singles))


def test_capacity_rises_linearly_then_holds():
    obj = CapacityAnnealing(gamma=100.0, c_max=20.0, steps=1000)
    assert obj.capacity(0) == 0
    assert obj.capacity(500) == pytest.approx(10.0)
    assert obj.capacity(5000) == 20.0
    kl = torch.full((4, 2), 5.0)  # R = 10 nats per point
    d = torch.zeros(4)
    assert obj(d, kl, 500).item() == pytest.approx(0.0)  # R == C(t)
    assert obj(d, kl, 1000).item() == pytest.approx(100.0 * 10)


def test_warmup_ramps_the_kl_weight():
    obj = KLWarmup(beta=2.0, steps=100)
    assert obj.kl_weight(0) == 0
    assert obj.kl_weight(50) == pytest.approx(1.0)
    assert obj.kl_weight(1000) == 2.0


def test_free_bits_floor_removes_gradient_below_lambda():
    mu = torch.zeros(8, 2, requires_grad=True)
    logvar = torch.tensor([[-0.01, -4.0]]).repeat(8, 1).requires_grad_()
    kl = kl_per_dim(mu, logvar)  # dim 0: tiny KL, below the floor; dim 1: large
    FreeBits(beta=1.0, lam=0.5)(torch.zeros(8), kl, 0).backward()
    assert torch.all(logvar.grad[:, 0] == 0)
    assert torch.all(logvar.grad[:, 1] != 0)


def test_make_objective_reads_the_config():
    assert isinstance(make_objective(RunConfig(objective="beta", beta=3)), BetaVAE)
    assert isinstance(make_objective(RunConfig(objective="capacity")), CapacityAnnealing)
    assert isinstance(make_objective(RunConfig(objective="warmup")), KLWarmup)
    assert isinstance(make_objective(RunConfig(objective="free_bits")), FreeBits)
    assert make_objective(RunConfig(beta=3), beta=7.0).beta == 7.0


def test_capacity_logs_its_effective_weight():
    # d/dR of γ·|R − C| is γ·sign(R − C): negative while the rate is below the capacity
    obj = CapacityAnnealing(gamma=100.0, c_max=20.0, steps=1000)
    assert obj.kl_weight(500) == 100.0  # no rate given: γ
    assert obj.kl_weight(500, rate=12.0) == 100.0  # C = 10
    assert obj.kl_weight(500, rate=8.0) == -100.0
