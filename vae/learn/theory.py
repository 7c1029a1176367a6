"""The linear-Gaussian β-VAE's optimum in closed form, and where a run's rate goes.

Closed form. With a linear encoder and decoder, a Gaussian likelihood of fixed variance σ² and the
prior N(0, I), the loss D + β·R divided by β is the ELBO of probabilistic PCA with noise variance
s² = βσ² (Tipping & Bishop 1999); the linear VAE with a diagonal posterior reaches its optimum
(Lucas et al. 2019). With λ₁ ≥ λ₂ ≥ … the eigenvalues of the training data's covariance, latent j
(of J) carries KLⱼ = ½ ln(λⱼ/s²) when λⱼ > s² and collapses exactly (KLⱼ = 0, σⱼ² = 1) otherwise;
an active dimension's posterior variance is s²/λⱼ. The distortion is reverse water-filling: each
of the top J directions leaves min(λᵢ, s²) of its variance unexplained, the d − J others all of it,
    D = Σᵢ≤J min(λᵢ, s²)/(2σ²) + Σᵢ>J λᵢ/(2σ²) + (d/2)·ln(2πσ²),
and along β the frontier has slope dD/dR = −β exactly.

Rate split (Hoffman & Johnson 2016): R = I_q(x; z) + KL(q(z) ‖ p(z)), q(z) the mean of the N
posteriors of the points used; I_q ≤ ln N. No I/O here: numbers in, numbers out. torch is
imported by the two functions that take tensors, so pages can draw the closed form without it.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import asdict, dataclass

import numpy as np

LOG_2PI = math.log(2.0 * math.pi)
ROWS_IN_CACHE = 2**18  # float64 elements of one block of log-densities in rate_split (2 MB)


# ---- when the closed form holds ------------------------------------------------------------------
def theory_exact(config) -> bool:
    """The closed form is this run's optimum: linear model, fixed-σ Gaussian likelihood, D + β·R."""
    return (
        config.architecture == "linear"
        and config.likelihood == "gaussian"
        and not config.learn_variance
        and config.objective == "beta"
    )


def theory_baseline(config) -> bool:
    """The closed form is a linear baseline for this run (same data, likelihood and objective, a
    non-linear model): a better model can only do better, so its runs may lie below the curve."""
    return (
        config.likelihood == "gaussian"
        and not config.learn_variance
        and not theory_exact(config)
        and config.objective == "beta"
    )


# ---- the data's spectrum ---------------------------------------------------------------------------
def covariance_spectrum(x) -> np.ndarray:
    """Eigenvalues (largest first, float64, clipped at 0) of the covariance of the rows of x
    flattened to [N, d], normalised by N (the maximum-likelihood covariance the optimum uses)."""
    import torch

    data = torch.as_tensor(x).reshape(len(x), -1).double()
    centred = data - data.mean(0)
    cov = centred.T @ centred / len(data)
    values = torch.linalg.eigvalsh(cov).flip(0).clamp(min=0.0)
    return values.numpy()


# ---- the prediction ------------------------------------------------------------------------------
@dataclass(frozen=True)
class Prediction:
    """The optimum of D + β·R for a linear VAE with J latents on data of spectrum λ (nats)."""

    beta: float
    noise_var: float  # σ², the likelihood's fixed variance
    latent_dim: int
    kl_per_dim: list[float]  # J values, largest eigenvalue first
    posterior_var: list[float]  # J values: βσ²/λⱼ when active, 1 when collapsed
    active: list[bool]  # λⱼ > βσ²
    rate: float
    distortion: float

    @property
    def threshold(self) -> float:
        """βσ²: eigenvalues at or below it collapse."""
        return self.beta * self.noise_var

    def to_dict(self) -> dict:
        return asdict(self)


def predict(eigenvalues: Sequence[float], beta: float, noise_var: float, latent_dim: int):
    """The closed-form optimum (see the module docstring); eigenvalues in any order."""
    lam = np.sort(np.asarray(eigenvalues, dtype=np.float64))[::-1]
    d = len(lam)
    s2 = float(beta) * float(noise_var)
    used = np.zeros(latent_dim)
    used[: min(latent_dim, d)] = lam[:latent_dim]
    active = used > s2
    kl = np.where(active, 0.5 * np.log(np.where(active, used, 1.0) / max(s2, 1e-300)), 0.0)
    post_var = np.where(active, s2 / np.where(active, used, 1.0), 1.0)
    left = np.minimum(lam[:latent_dim], s2).sum() + lam[latent_dim:].sum()
    distortion = left / (2.0 * noise_var) + 0.5 * d * math.log(2.0 * math.pi * noise_var)
    return Prediction(
        beta=float(beta),
        noise_var=float(noise_var),
        latent_dim=int(latent_dim),
        kl_per_dim=kl.tolist(),
        posterior_var=post_var.tolist(),
        active=active.tolist(),
        rate=float(kl.sum()),
        distortion=float(distortion),
    )


def frontier(
    eigenvalues: Sequence[float], noise_var: float, latent_dim: int, betas: Sequence[float]
) -> list[Prediction]:
    """The predicted optimum at each β: the curve trained linear runs land on."""
    return [predict(eigenvalues, b, noise_var, latent_dim) for b in betas]


def frontier_betas(eigenvalues: Sequence[float], noise_var: float, points: int = 60) -> np.ndarray:
    """β values spanning the interesting part of the curve: from every top eigenvalue active to
    all collapsed, log-spaced."""
    lam = np.asarray(eigenvalues, dtype=np.float64)
    lam = lam[lam > 0]
    if not len(lam):
        return np.array([1.0])
    low = max(lam.min(), lam.max() * 1e-4) / noise_var / 2.0
    high = lam.max() / noise_var * 1.2
    return np.geomspace(low, high, points)


# ---- where the rate goes -------------------------------------------------------------------------
def _log_normal(z, mu, logvar):
    """log N(z; mu, diag exp(logvar)) summed over the last axis (broadcasting), for tensors."""
    return -0.5 * (((z - mu) ** 2) * (-logvar).exp() + logvar + LOG_2PI).sum(-1)


def _log_normal_weights(mu, logvar):
    """[2J+1, M] weights w such that [z², z, 1] @ w = log N(z; mu[m], diag exp(logvar[m])).

    Σⱼ (zⱼ − μⱼ)²/σⱼ² = z²·a − 2 z·(μa) + Σⱼ μⱼ²aⱼ with a = 1/σ²: one matrix product gives the
    log-density of every z under every component, with no [I, M, J] tensor (float64 keeps the
    cancellation harmless).
    """
    import torch

    inv_var = (-logvar).exp()  # [M, J]
    constant = (mu * mu * inv_var).sum(-1) + logvar.sum(-1) + mu.shape[-1] * LOG_2PI
    return torch.cat([-0.5 * inv_var, mu * inv_var, -0.5 * constant.unsqueeze(-1)], -1).T


def _features(z):
    """[z², z, 1] for the rows of z: [I, 2J+1]."""
    import torch

    return torch.cat([z * z, z, torch.ones_like(z[:, :1])], -1)


def rate_split(
    mu,
    logvar,
    samples: int = 16,
    generator=None,
    budget: int = 2**22,
) -> dict:
    """R = I_q(x; z) + KL(q(z) ‖ p(z)) over the N posteriors N(mu[n], exp(logvar[n])).

    I_q = E_n E_{z~q(z|xₙ)} [log q(z|xₙ) − log q(z)] with q(z) = (1/N) Σₘ q(z|xₘ) summed exactly
    (log-sum-exp over all N components), `samples` draws per point. Since log q(z) ≥ log q(z|xₙ) −
    ln N for each draw, the estimate never exceeds ln N. R is the exact mean KL(q(z|xₙ) ‖ p(z)),
    and KL(q(z) ‖ p(z)) = R − I_q, so the two add up to R by construction (an unbiased estimate
    of the marginal KL, Monte Carlo noise included). mu, logvar: tensors [N, J]. Returns nats
    and ln N.
    """
    import torch

    mu, logvar = mu.double().cpu(), logvar.double().cpu()
    n, j = mu.shape
    chunk = max(1, budget // max(1, samples * n))  # [S·chunk, N] stays near 32 MB
    if n == 0:
        return {"mutual_info": 0.0, "marginal_kl": 0.0, "log_n": 0.0, "split_rate": 0.0}
    rate = float((0.5 * (mu.pow(2) + logvar.exp() - logvar - 1.0)).sum(-1).mean())
    std = torch.exp(0.5 * logvar)
    weights = _log_normal_weights(mu, logvar).contiguous()  # [2J+1, N]
    rows = max(1, ROWS_IN_CACHE // n)  # [rows, N] blocks of log q(z|xₘ) stay in the cache
    total = 0.0
    for start in range(0, n, chunk):
        m, s, lv = (
            mu[start : start + chunk],
            std[start : start + chunk],
            logvar[start : start + chunk],
        )
        eps = torch.randn((samples, *m.shape), generator=generator, dtype=torch.float64)
        z = m + s * eps  # [S, c, J]
        own = _log_normal(z, m, lv)  # [S, c]
        features = _features(z.reshape(-1, j))  # [S·c, 2J+1]
        log_qz = torch.empty(len(features), dtype=torch.float64)
        for r in range(0, len(features), rows):
            log_qz[r : r + rows] = torch.logsumexp(features[r : r + rows] @ weights, dim=-1)
        total += float((own - (log_qz - math.log(n)).reshape(own.shape)).sum())
    mutual_info = total / (n * samples)
    return {
        "mutual_info": mutual_info,
        "marginal_kl": rate - mutual_info,
        "log_n": math.log(n),
        "split_rate": rate,
        "split_samples": int(samples),
    }
