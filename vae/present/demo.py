"""The demonstration sweep a first visit starts with one button, and what it teaches.

Its settings were measured with `python -m vae sweep --betas 0.5 1 2 4 8 16 --latent-dim 16
--epochs 50 --jobs 2` on 2 shared CPU cores: from about 25 epochs on, the rate falls and the
distortion rises with β, and at β = 16 only 3 to 5 of the 16 dimensions stay informative (at 10
epochs β = 8 still keeps 13). 30 epochs shows that within the ~3 minutes a first visit should
wait (timings in the README). Tests shorten it with DEMO_EPOCHS_ENV. Its precision is `auto`, as
every run's default: CPUs with AVX512-BF16 or AMX units train it in bf16, a fifth faster, and the
others in fp32. Training trajectories then part in rounding, so the unit counts at β = 4 and 8
differ by a dimension or two between the two kinds of CPU (the README gives both tables).
"""

from __future__ import annotations

import os
from collections.abc import Mapping

from vae.learn.config import LIMITS, RunConfig

DEMO_NAME = "β demo"
DEMO_BETAS = (0.5, 1.0, 2.0, 4.0, 8.0, 16.0)
DEMO_LATENT_DIM = 16
DEMO_EPOCHS = 30
DEMO_EPOCHS_ENV = "VAE_DEMO_EPOCHS"  # a whole number of epochs that replaces DEMO_EPOCHS (tests)

DEMO_GUIDE = f"""\
The demo trains {len(DEMO_BETAS)} small VAEs on the offline digits, identical but for β
({", ".join(f"{b:g}" for b in DEMO_BETAS)}), {DEMO_LATENT_DIM} latent dimensions each. When
they finish, look at:

1. **β gallery**: one row per β. Reconstructions blur and samples turn into a generic digit as β
   grows, and the number of informative dimensions falls.
2. **Posterior**, at the largest β: most bars of KLⱼ are near 0 and their σⱼ² near the prior's
   1: those dimensions carry (almost) nothing, whether Burda's test still counts them active
   ("active only") or not ("collapsed"); at the smallest β every dimension is informative.
3. **Tradeoff**: raising β moves the runs up and to the left (lower rate R, higher distortion D),
   along a curve whose slope at each run is close to −β.
"""


class DemoSettingError(ValueError):
    """The environment asks for a demo length that is not a valid number of epochs."""


def demo_epochs(environ: Mapping[str, str] = os.environ) -> int:
    """DEMO_EPOCHS, or the whole number in $VAE_DEMO_EPOCHS (for short tests)."""
    raw = environ.get(DEMO_EPOCHS_ENV, "").strip()
    if not raw:
        return DEMO_EPOCHS
    low, high = LIMITS["epochs"]
    try:
        epochs = int(raw)
    except ValueError:
        raise DemoSettingError(f"{DEMO_EPOCHS_ENV}={raw[:20]!r} is not a whole number") from None
    if not low <= epochs <= high:
        raise DemoSettingError(f"{DEMO_EPOCHS_ENV}={epochs} is outside {low:g}..{high:g}")
    return epochs


def demo_config(environ: Mapping[str, str] = os.environ) -> RunConfig:
    """The settings every demo run shares (β is set per run by the sweep)."""
    return RunConfig(
        dataset="digits",
        architecture="mlp",
        hidden_dims=[400],
        latent_dim=DEMO_LATENT_DIM,
        likelihood="bernoulli",
        objective="beta",
        epochs=demo_epochs(environ),
        batch_size=128,
        lr=1e-3,
        seed=0,
        precision="auto",  # bf16 where the CPU has bf16 units: the README shows both tables
        name=DEMO_NAME,
    ).validated()


def start_demo(manager) -> list[str]:
    """Queue the demo sweep on a JobManager; returns its run ids (one sweep group)."""
    return manager.submit_sweep(demo_config(), DEMO_BETAS)


# ---- the linear demo: a sweep whose runs land on a predicted curve ---------------------------
LINEAR_DEMO_NAME = "linear demo"
LINEAR_DEMO_BETAS = (0.25, 0.5, 1.0, 2.0, 4.0)
LINEAR_DEMO_EPOCHS = 200  # 8 steps each: 1,600 full steps, about 10 s for the whole stack

LINEAR_DEMO_GUIDE = f"""\
A linear VAE (one linear map to μ and log σ², one back) with a Gaussian likelihood of fixed
variance σ² = 0.1, trained on 8-dimensional Gaussian vectors whose covariance has eigenvalues
1, ½, ¼, … at β = {", ".join(f"{b:g}" for b in LINEAR_DEMO_BETAS)}. Its optimum is known in
closed form: dimension j keeps ½ ln(λⱼ/βσ²) nats while λⱼ > βσ² and collapses exactly below.
On **Tradeoff** the runs land on the predicted curve; **Posterior** marks each dimension's
predicted KLⱼ and σⱼ² beside the learned ones.
"""


def linear_demo_config(environ: Mapping[str, str] = os.environ) -> RunConfig:
    """The linear demo's shared settings (β is set per run by the sweep)."""
    epochs = LINEAR_DEMO_EPOCHS if not environ.get(DEMO_EPOCHS_ENV) else demo_epochs(environ)
    return RunConfig(
        dataset="gaussian",
        architecture="linear",
        latent_dim=8,
        likelihood="gaussian",
        gaussian_std=0.1**0.5,
        objective="beta",
        epochs=epochs,
        batch_size=500,
        lr=1e-2,
        seed=0,
        name=LINEAR_DEMO_NAME,
    ).validated()


def start_linear_demo(manager) -> list[str]:
    """Queue the linear demo sweep; returns its run ids."""
    return manager.submit_sweep(linear_demo_config(), LINEAR_DEMO_BETAS)
