"""Decoder likelihoods p(x|z). Each gives D = -log p(x|z) in nats per data point.

A proper likelihood (normalised over the data space) is what makes D and the rate R share a unit,
so the rate-distortion plane and the ELBO = -(D + R) mean something.

The formulas live in `pixel_nll`, written once for every caller: a single model's images
[B, C, H, W] and the training loop's stacked, flattened outputs [K, B, n] alike.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

LOG_2PI = math.log(2.0 * math.pi)
LOG_VAR_RANGE = (-14.0, 6.0)  # the Gaussian decoder's log-variance is kept where the loss is finite


def pixel_nll(kind: str, x: torch.Tensor, logits: torch.Tensor, log_var=None) -> torch.Tensor:
    """-log p(x|logits) per pixel, broadcasting x against logits (e.g. [B, n] vs [K, B, n]).

    bernoulli: softplus(l) - x l, the binary cross-entropy with logits, for x in [0, 1].
    gaussian: mean sigmoid(l), variance exp(log_var) clamped to LOG_VAR_RANGE, with its normaliser.
    gaussian_identity: the same with mean l itself (linear models, data outside [0, 1]).
    """
    if kind == "bernoulli":
        return F.softplus(logits) - x * logits
    if kind in ("gaussian", "gaussian_identity"):
        log_var = log_var.clamp(*LOG_VAR_RANGE)
        mean = logits if kind == "gaussian_identity" else torch.sigmoid(logits)
        squared = (x - mean) ** 2
        return 0.5 * (squared * torch.exp(-log_var) + log_var + LOG_2PI)
    raise ValueError(f"unknown likelihood {kind!r}")


class BernoulliLikelihood(nn.Module):
    """Bernoulli on binary pixels; the decoder's outputs are logits."""

    kind = "bernoulli"

    def nll(self, x: torch.Tensor, logits: torch.Tensor) -> torch.Tensor:
        """D per image: the pixel terms summed over the last three (image) dimensions."""
        return pixel_nll(self.kind, x, logits).flatten(start_dim=-3).sum(-1)

    def mean(self, logits: torch.Tensor) -> torch.Tensor:
        return torch.sigmoid(logits)


class GaussianLikelihood(nn.Module):
    """Gaussian with mean sigmoid(logits) and one variance, fixed or learned, with its normaliser."""

    kind = "gaussian"

    def __init__(self, std: float, learn_variance: bool):
        super().__init__()
        log_var = torch.tensor(2.0 * math.log(std))
        if learn_variance:
            self.log_var = nn.Parameter(log_var)
        else:
            self.register_buffer("log_var", log_var)

    def clamped_log_var(self) -> torch.Tensor:
        """The log-variance actually used (reported as the decoder's σ)."""
        return self.log_var.clamp(*LOG_VAR_RANGE)

    def nll(self, x: torch.Tensor, logits: torch.Tensor) -> torch.Tensor:
        per_pixel = pixel_nll(self.kind, x, logits, self.log_var)
        return per_pixel.flatten(start_dim=-3).sum(-1)

    def mean(self, logits: torch.Tensor) -> torch.Tensor:
        return torch.sigmoid(logits)


class IdentityGaussianLikelihood(GaussianLikelihood):
    """Gaussian whose mean is the decoder's output itself: a linear decoder stays linear (the
    closed form of vae.learn.theory needs it), and data outside [0, 1] can be fitted."""

    kind = "gaussian_identity"

    def mean(self, logits: torch.Tensor) -> torch.Tensor:
        return logits


def make_likelihood(
    kind: str, std: float = 0.1, learn_variance: bool = False, identity_mean: bool = False
) -> nn.Module:
    if kind == "bernoulli":
        return BernoulliLikelihood()
    if kind == "gaussian":
        cls = IdentityGaussianLikelihood if identity_mean else GaussianLikelihood
        return cls(std, learn_variance)
    raise ValueError(f"unknown likelihood {kind!r}")
