"""Decoder likelihoods p(x|z). Each returns D = -log p(x|z) in nats per data point.

A proper likelihood (normalised over the data space) is what makes D and the rate R share a unit,
so the rate-distortion plane and the ELBO = -(D + R) mean something.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn


class BernoulliLikelihood(nn.Module):
    """Bernoulli on binary pixels; the decoder's outputs are logits."""

    kind = "bernoulli"

    def nll(self, x: torch.Tensor, logits: torch.Tensor) -> torch.Tensor:
        per_pixel = F.binary_cross_entropy_with_logits(logits, x, reduction="none")
        return per_pixel.flatten(start_dim=-3).sum(-1)

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
        """The log-variance actually used: kept in a range where the loss stays finite."""
        return self.log_var.clamp(-14.0, 6.0)

    def nll(self, x: torch.Tensor, logits: torch.Tensor) -> torch.Tensor:
        mean = torch.sigmoid(logits)
        log_var = self.clamped_log_var()
        per_pixel = 0.5 * ((x - mean) ** 2 * torch.exp(-log_var) + log_var + math.log(2 * math.pi))
        return per_pixel.flatten(start_dim=-3).sum(-1)

    def mean(self, logits: torch.Tensor) -> torch.Tensor:
        return torch.sigmoid(logits)


def make_likelihood(kind: str, std: float = 0.1, learn_variance: bool = False) -> nn.Module:
    if kind == "bernoulli":
        return BernoulliLikelihood()
    if kind == "gaussian":
        return GaussianLikelihood(std, learn_variance)
    raise ValueError(f"unknown likelihood {kind!r}")
