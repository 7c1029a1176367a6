"""The KL term and the objectives built from it.

Rate R = sum_j KL_j, distortion D = -log p(x|z), both in nats per data point: summed over latent
dimensions / pixels, then averaged over the batch. Each objective maps (D, KL_j, step) to a loss.
Shapes: distortion [..., B], kl [..., B, J]; a leading model axis broadcasts (see `beta`).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

LOGVAR_MIN, LOGVAR_MAX = -12.0, 8.0


def kl_per_dim(mu: torch.Tensor, logvar: torch.Tensor) -> torch.Tensor:
    """KL(N(mu, sigma^2) || N(0, 1)) for each latent dimension: 0.5 (mu^2 + sigma^2 - log sigma^2 - 1)."""
    return 0.5 * (mu.pow(2) + logvar.exp() - logvar - 1.0)


@dataclass(frozen=True)
class BetaVAE:
    """Higgins et al. 2017: D + beta * R."""

    beta: float | torch.Tensor

    def __call__(self, distortion, kl, step: int) -> torch.Tensor:
        return distortion.mean(-1) + self.beta * kl.sum(-1).mean(-1)

    def kl_weight(self, step: int, rate: float | None = None) -> float | torch.Tensor:
        return self.beta


@dataclass(frozen=True)
class CapacityAnnealing:
    """Burgess et al. 2018: D + gamma * |R - C(t)|, C rising linearly from 0 to c_max."""

    gamma: float
    c_max: float
    steps: int

    def capacity(self, step: int) -> float:
        return self.c_max * min(1.0, step / self.steps)

    def __call__(self, distortion, kl, step: int) -> torch.Tensor:
        r = kl.sum(-1).mean(-1)
        return distortion.mean(-1) + self.gamma * (r - self.capacity(step)).abs()

    def kl_weight(self, step: int, rate: float | None = None) -> float:
        """The effective weight on R: d/dR of γ·|R − C| is γ·sign(R − C) (γ when no rate given).

        Negative while R is below the capacity: the loss then pushes the rate up."""
        if rate is None:
            return self.gamma
        gap = float(rate) - self.capacity(step)
        return self.gamma * (1.0 if gap > 0 else -1.0 if gap < 0 else 0.0)


@dataclass(frozen=True)
class KLWarmup:
    """Linear warm-up: D + beta * min(1, t / steps) * R (Bowman et al. 2016, Sønderby et al. 2016)."""

    beta: float | torch.Tensor
    steps: int

    def kl_weight(self, step: int, rate: float | None = None) -> float | torch.Tensor:
        return self.beta * min(1.0, step / self.steps)

    def __call__(self, distortion, kl, step: int) -> torch.Tensor:
        return distortion.mean(-1) + self.kl_weight(step) * kl.sum(-1).mean(-1)


@dataclass(frozen=True)
class FreeBits:
    """Kingma et al. 2016: each dimension's KL, averaged over the batch, is floored at lambda nats
    (the batch-mean KLⱼ, not each data point's)."""

    beta: float | torch.Tensor
    lam: float

    def __call__(self, distortion, kl, step: int) -> torch.Tensor:
        floored = kl.mean(-2).clamp(min=self.lam)
        return distortion.mean(-1) + self.beta * floored.sum(-1)

    def kl_weight(self, step: int, rate: float | None = None) -> float | torch.Tensor:
        return self.beta


def make_objective(config, beta: float | torch.Tensor | None = None):
    """The objective a RunConfig asks for; `beta` overrides config.beta (batched sweeps)."""
    b = config.beta if beta is None else beta
    if config.objective == "beta":
        return BetaVAE(b)
    if config.objective == "capacity":
        return CapacityAnnealing(config.capacity_gamma, config.capacity_max, config.capacity_steps)
    if config.objective == "warmup":
        return KLWarmup(b, config.warmup_steps)
    if config.objective == "free_bits":
        return FreeBits(b, config.free_bits)
    raise ValueError(f"unknown objective {config.objective!r}")
