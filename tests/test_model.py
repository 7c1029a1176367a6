"""Model shapes and the numerical guard on log sigma^2."""

import pytest
import torch

from vae.learn.config import RunConfig
from vae.learn.model import MLPVAE, ConvVAE, build_model
from vae.learn.objective import LOGVAR_MAX, LOGVAR_MIN


def test_default_mlp_is_784_400_20_400_784():
    model = build_model(RunConfig(), (1, 28, 28))
    assert isinstance(model, MLPVAE)
    linear = [m for m in model.modules() if isinstance(m, torch.nn.Linear)]
    shapes = [(m.in_features, m.out_features) for m in linear]
    assert shapes == [(784, 400), (400, 40), (20, 400), (400, 784)]


@pytest.mark.parametrize("side", [28, 32, 64])
@pytest.mark.parametrize("architecture", ["mlp", "conv"])
def test_encode_decode_shapes(architecture, side):
    config = RunConfig(architecture=architecture, latent_dim=6, hidden_dims=[64])
    model = build_model(config, (1, side, side))
    x = torch.rand(5, 1, side, side)
    logits, mu, logvar = model(x)
    assert mu.shape == logvar.shape == (5, 6)
    assert logits.shape == x.shape
    assert model.likelihood.nll(x, logits).shape == (5,)


def test_conv_uses_four_stride_two_convs_at_64():
    model = build_model(RunConfig(architecture="conv", hidden_dims=[256]), (1, 64, 64))
    convs = [m for m in model.encoder if isinstance(m, torch.nn.Conv2d)]
    assert isinstance(model, ConvVAE) and len(convs) == 4
    assert all(c.out_channels == 32 and c.stride == (2, 2) for c in convs)


def test_logvar_is_clamped():
    model = build_model(RunConfig(latent_dim=3, hidden_dims=[8]), (1, 28, 28))
    with torch.no_grad():
        last = model.encoder[-1]
        last.bias.copy_(torch.tensor([0, 0, 0, 1e4, -1e4, 0.0]))
    _, logvar = model.encode(torch.zeros(2, 1, 28, 28))
    assert logvar.max() <= LOGVAR_MAX and logvar.min() >= LOGVAR_MIN


def test_gaussian_likelihood_is_normalised():
    """The Gaussian NLL of one pixel integrates to one over x (checked numerically)."""
    config = RunConfig(likelihood="gaussian", gaussian_std=0.2)
    lik = build_model(config, (1, 1, 1)).likelihood
    xs = torch.linspace(-2, 3, 20001).reshape(-1, 1, 1, 1)
    logits = torch.zeros_like(xs)  # mean sigmoid(0) = 0.5
    density = torch.exp(-lik.nll(xs, logits))
    assert torch.trapezoid(density, xs.flatten()).item() == pytest.approx(1.0, abs=1e-4)


def test_learned_variance_is_a_parameter():
    config = RunConfig(likelihood="gaussian", learn_variance=True)
    model = build_model(config, (1, 28, 28))
    assert any(name.endswith("log_var") for name, _ in model.named_parameters())
    fixed = build_model(RunConfig(likelihood="gaussian"), (1, 28, 28))
    assert not any(name.endswith("log_var") for name, _ in fixed.named_parameters())
    assert "likelihood.log_var" in fixed.state_dict()
