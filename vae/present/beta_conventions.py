"""β as other code writes it: converting this app's β to and from other codebases' KL weights.

This app's loss per data point is D + β·R, with D = −log p(x|z) summed over the n pixels and
R = Σⱼ KLⱼ summed over the J latent dimensions; for a Gaussian likelihood D includes 1/(2σ²).
Only the ratio of the two terms' weights matters, so any other loss a·(recon) + w·(KL) trains at
the β that makes it proportional to D + β·R. The factors, each exact:
- reconstruction averaged over the n pixels instead of summed: β = w·n;
- KL averaged over the J latents instead of summed: β = w/J;
- squared error E = Σ(x − x̂)² instead of a Gaussian −log p(x|z) with variance σ²:
  E = 2σ²·D + const, so β = w/(2σ²) at this app's σ² (MSE with weight w is a Gaussian with
  σ² = w/2 at β = 1: the variance acts as β);
- Higgins et al. 2017 normalise by the sizes: β_norm = β·J/n (their M/N with M latents and N
  pixels), so β = β_norm·n/J;
- a weight of M/N (minibatch size over data-set size, as in copies of PyTorch-VAE's `kld_weight`)
  is just w = M/N in whichever reductions that code uses.
Pure functions, checked by hand in tests/test_beta_conventions.py.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

Recon = Literal["nll_sum", "nll_mean", "mse_sum", "mse_mean"]
KLReduction = Literal["sum", "mean"]


def beta_factor(
    recon: Recon, kl: KLReduction, n_pixels: int, latent_dim: int, noise_var: float | None = None
) -> float:
    """β_app = factor · w for a loss (recon as `recon`) + w·(KL as `kl`)."""
    if n_pixels < 1 or latent_dim < 1:
        raise ValueError("n_pixels and latent_dim must be at least 1")
    factor = 1.0
    if recon in ("nll_mean", "mse_mean"):
        factor *= n_pixels
    elif recon not in ("nll_sum", "mse_sum"):
        raise ValueError(f"unknown reconstruction convention {recon!r}")
    if recon.startswith("mse"):
        if noise_var is None or noise_var <= 0:
            raise ValueError("squared error needs the Gaussian variance σ² it stands for")
        factor /= 2.0 * noise_var
    if kl == "mean":
        factor /= latent_dim
    elif kl != "sum":
        raise ValueError(f"unknown KL reduction {kl!r}")
    return factor


def app_beta(weight: float, recon: Recon, kl: KLReduction, n_pixels: int, latent_dim: int,
             noise_var: float | None = None) -> float:  # fmt: skip
    """This app's β for another code's KL weight `weight`."""
    return weight * beta_factor(recon, kl, n_pixels, latent_dim, noise_var)


def other_weight(beta: float, recon: Recon, kl: KLReduction, n_pixels: int, latent_dim: int,
                 noise_var: float | None = None) -> float:  # fmt: skip
    """The KL weight another code needs to train at this app's β."""
    return beta / beta_factor(recon, kl, n_pixels, latent_dim, noise_var)


def higgins_normalised(beta: float, n_pixels: int, latent_dim: int) -> float:
    """β_norm = β·M/N (Higgins et al. 2017), M the latent size and N the input size."""
    return beta * latent_dim / n_pixels


def from_higgins_normalised(beta_norm: float, n_pixels: int, latent_dim: int) -> float:
    return beta_norm * n_pixels / latent_dim


@dataclass(frozen=True)
class Convention:
    """One row of the converter: what other code writes, and what it must write for our β."""

    name: str
    loss: str
    weight: float  # the number that code needs for this app's β
    formula: str


def conventions_table(
    beta: float,
    n_pixels: int,
    latent_dim: int,
    noise_var: float = 0.01,
    batch_size: int = 128,
    dataset_size: int = 4000,
) -> list[Convention]:
    """Every convention's number for this app's β at these sizes (the KL page's table)."""
    n, j = n_pixels, latent_dim

    def w(recon: Recon, kl: KLReduction) -> float:
        return other_weight(beta, recon, kl, n, j, noise_var)

    minibatch = batch_size / dataset_size
    return [
        Convention("this app", "Σ pixels −log p + β·Σⱼ KLⱼ", beta, "β"),
        Convention("KL averaged over latents", "Σ pixels −log p + w·meanⱼ KLⱼ", w("nll_sum", "mean"),
                   f"w = β·J = β·{j}"),
        Convention("Higgins β_norm", "β_norm = β·M/N (M latents, N pixels)",
                   higgins_normalised(beta, n, j), f"β·{j}/{n}"),
        Convention("reconstruction averaged over pixels", "mean pixels −log p + w·Σⱼ KLⱼ",
                   w("nll_mean", "sum"), f"w = β/n = β/{n}"),
        Convention("both averaged", "mean pixels −log p + w·meanⱼ KLⱼ", w("nll_mean", "mean"),
                   f"w = β·J/n = β·{j}/{n}"),
        Convention("squared error, summed", "Σ pixels (x − x̂)² + w·Σⱼ KLⱼ", w("mse_sum", "sum"),
                   f"w = 2σ²·β = 2·{noise_var:g}·β"),
        Convention("MSE (mean) + mean KL", "mean pixels (x − x̂)² + w·meanⱼ KLⱼ",
                   w("mse_mean", "mean"), f"w = 2σ²·β·J/n = 2·{noise_var:g}·β·{j}/{n}"),
        Convention("KL weight M/N, MSE mean", "mean (x − x̂)² + (M/N)·Σⱼ KLⱼ: the β it trains at",
                   app_beta(minibatch, "mse_mean", "sum", n, j, noise_var),
                   f"β = (M/N)·n/(2σ²) = ({batch_size}/{dataset_size})·{n}/(2·{noise_var:g})"),
    ]  # fmt: skip
