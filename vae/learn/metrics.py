"""Posterior statistics on a held-out set: the numbers every page of the dashboard plots.

Kept apart from the training loop so the per-epoch summary and the final evaluation share one
definition of rate, distortion, posterior variance and active units.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from dataclasses import asdict, dataclass

import torch

from vae.learn.objective import kl_per_dim
from vae.learn.thresholds import ACTIVE_UNIT_THRESHOLD


@dataclass
class PosteriorSummary:
    """Test-set averages, in nats per data point; per-dimension lists are indexed by latent dim."""

    rate: float
    distortion: float
    elbo: float
    kl_per_dim: list[float]
    posterior_var: list[float]  # mean over x of sigma_j^2(x)
    mean_cov: list[float]  # Cov_x(mu_j(x)), the Burda activity statistic
    active_units: int

    def to_dict(self) -> dict:
        return asdict(self)


@contextlib.contextmanager
def eval_mode(model: torch.nn.Module) -> Iterator[None]:
    """Evaluate in eval mode without gradients, then restore the caller's train/eval mode."""
    was_training = model.training
    model.eval()
    try:
        with torch.no_grad():
            yield
    finally:
        model.train(was_training)


def active_units(mean_cov: torch.Tensor, threshold: float = ACTIVE_UNIT_THRESHOLD) -> int:
    return int((mean_cov > threshold).sum())


def posterior_summary(model, x: torch.Tensor, batch_size: int = 2048, generator=None):
    """Encode x (already binarised if the likelihood needs it) and summarise q(z|x) and D."""
    mus, kls, variances, distortions = [], [], [], []
    with eval_mode(model):
        for chunk in x.split(batch_size):
            logits, mu, logvar = model(chunk, generator=generator)
            mus.append(mu)
            kls.append(kl_per_dim(mu, logvar))
            variances.append(logvar.exp())
            distortions.append(model.likelihood.nll(chunk, logits))
    mu = torch.cat(mus).double()
    kl = torch.cat(kls).double().mean(0)
    mean_cov = mu.var(0, unbiased=False) if len(mu) > 1 else torch.zeros_like(kl)
    distortion = float(torch.cat(distortions).double().mean())
    rate = float(kl.sum())
    return PosteriorSummary(
        rate=rate,
        distortion=distortion,
        elbo=-(rate + distortion),
        kl_per_dim=kl.tolist(),
        posterior_var=torch.cat(variances).double().mean(0).tolist(),
        mean_cov=mean_cov.tolist(),
        active_units=active_units(mean_cov),
    )
