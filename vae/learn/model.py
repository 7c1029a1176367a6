"""VAE models: an encoder giving (mu, log sigma^2) and a decoder giving logits.

Three architectures: an MLP (default 784-400-20-400-784), the small conv net used for β-VAE on
shapes (4 stride-2 convs of 32 channels at 64x64; 3 at 32x32 and at 28x28, which is padded to 32),
and a linear one (x -> (mu, log sigma^2) -> mean W z + b), whose optimum with a fixed-variance
Gaussian likelihood is known in closed form (vae.learn.theory).
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from vae.learn.datasets import DATASETS
from vae.learn.likelihood import make_likelihood
from vae.learn.objective import LOGVAR_MAX, LOGVAR_MIN


def _mlp(sizes: list[int]) -> nn.Sequential:
    layers: list[nn.Module] = []
    for i, (a, b) in enumerate(zip(sizes[:-1], sizes[1:], strict=True)):
        layers.append(nn.Linear(a, b))
        if i < len(sizes) - 2:
            layers.append(nn.ReLU())
    return nn.Sequential(*layers)


def posterior_params(features: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Split the encoder's 2J outputs into (mu, log sigma^2), the log-variance kept in range.

    Every encoder, single or stacked, ends here, so the clamp is written once.
    """
    mu, logvar = features.chunk(2, dim=-1)
    return mu, logvar.clamp(LOGVAR_MIN, LOGVAR_MAX)


class VAE(nn.Module):
    """Shared VAE machinery; subclasses provide `encoder_net` (x -> 2J features) and `decode`."""

    def __init__(self, image_shape: tuple[int, int, int], latent_dim: int, likelihood: nn.Module):
        super().__init__()
        self.image_shape = tuple(image_shape)
        self.latent_dim = latent_dim
        self.likelihood = likelihood

    def encode(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        return posterior_params(self.encoder_net(x))

    def decode(self, z: torch.Tensor) -> torch.Tensor:
        raise NotImplementedError

    def forward(
        self,
        x: torch.Tensor,
        generator: torch.Generator | None = None,
        eps: torch.Tensor | None = None,
    ):
        """Returns (logits, mu, logvar): one reparameterised sample z = mu + eps sigma per point.

        eps ~ N(0, I) is drawn from `generator` unless given (the training loop passes the noise
        it shares between the models of a stack).
        """
        mu, logvar = self.encode(x)
        if eps is None:
            eps = torch.randn(mu.shape, generator=generator, device=mu.device, dtype=mu.dtype)
        z = mu + eps * torch.exp(0.5 * logvar)
        return self.decode(z), mu, logvar


class MLPVAE(VAE):
    def __init__(self, image_shape, latent_dim: int, hidden_dims: list[int], likelihood: nn.Module):
        super().__init__(image_shape, latent_dim, likelihood)
        n = math.prod(image_shape)
        self.encoder = _mlp([n, *hidden_dims, 2 * latent_dim])
        self.decoder = _mlp([latent_dim, *reversed(hidden_dims), n])

    def encoder_net(self, x: torch.Tensor) -> torch.Tensor:
        return self.encoder(x.flatten(start_dim=-3))

    def decode(self, z: torch.Tensor) -> torch.Tensor:
        return self.decoder(z).unflatten(-1, self.image_shape)


class ConvVAE(VAE):
    """Higgins/Burgess β-VAE conv net: k4 s2 convs of 32 channels down to 4x4, an FC, then back."""

    channels = 32

    def __init__(self, image_shape, latent_dim: int, hidden_dim: int, likelihood: nn.Module):
        super().__init__(image_shape, latent_dim, likelihood)
        c, h, w = image_shape
        if h != w or h not in (28, 32, 64):
            raise ValueError(f"conv VAE needs 28x28, 32x32 or 64x64 images, got {h}x{w}")
        self.pad = 2 if h == 28 else 0
        side = h + 2 * self.pad
        n_convs = int(math.log2(side // 4))
        k = self.channels
        enc: list[nn.Module] = []
        for i in range(n_convs):
            enc += [nn.Conv2d(c if i == 0 else k, k, 4, 2, 1), nn.ReLU()]
        self.encoder = nn.Sequential(
            *enc, nn.Flatten(), nn.Linear(k * 16, hidden_dim), nn.ReLU(),
            nn.Linear(hidden_dim, 2 * latent_dim),
        )  # fmt: skip
        dec: list[nn.Module] = [nn.Linear(latent_dim, hidden_dim), nn.ReLU()]
        dec += [nn.Linear(hidden_dim, k * 16), nn.ReLU(), nn.Unflatten(1, (k, 4, 4))]
        for i in range(n_convs):
            last = i == n_convs - 1
            dec.append(nn.ConvTranspose2d(k, c if last else k, 4, 2, 1))
            if not last:
                dec.append(nn.ReLU())
        self.decoder = nn.Sequential(*dec)

    def encoder_net(self, x: torch.Tensor) -> torch.Tensor:
        return self.encoder(F.pad(x, (self.pad,) * 4) if self.pad else x)

    def decode(self, z: torch.Tensor) -> torch.Tensor:
        batch = z.shape[:-1]
        out = self.decoder(z.reshape(-1, z.shape[-1]))
        if self.pad:
            out = out[..., self.pad : -self.pad, self.pad : -self.pad]
        return out.reshape(*batch, *self.image_shape)


class LinearVAE(MLPVAE):
    """One linear map to (mu, log sigma^2), one back: probabilistic PCA's model (Lucas et al. 2019).

    An MLP without hidden layers, so it trains through the same stacked fast path. The encoder's
    log-variance depends on x linearly; at the optimum it does not depend on x at all.
    """

    def __init__(self, image_shape, latent_dim: int, likelihood: nn.Module):
        super().__init__(image_shape, latent_dim, [], likelihood)


def identity_mean(config) -> bool:
    """A Gaussian decoder whose mean is its output, not its sigmoid: for linear models (to stay
    linear) and for data sets whose values leave [0, 1]."""
    info = DATASETS.get(config.dataset)
    unbounded = bool(info is not None and info.unbounded)
    return config.likelihood == "gaussian" and (config.architecture == "linear" or unbounded)


def build_model(config, image_shape: tuple[int, int, int]) -> VAE:
    """The model a RunConfig describes, for images of `image_shape` (C, H, W)."""
    likelihood = make_likelihood(
        config.likelihood, config.gaussian_std, config.learn_variance, identity_mean(config)
    )
    if config.architecture == "linear":
        return LinearVAE(image_shape, config.latent_dim, likelihood)
    if config.architecture == "mlp":
        return MLPVAE(image_shape, config.latent_dim, list(config.hidden_dims), likelihood)
    if config.architecture == "conv":
        return ConvVAE(image_shape, config.latent_dim, config.hidden_dims[0], likelihood)
    raise ValueError(f"unknown architecture {config.architecture!r}")
