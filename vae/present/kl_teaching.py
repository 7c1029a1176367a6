"""Numbers and charts for "The KL term" page: one Gaussian dimension against N(0, 1), worked out.

Everything the page shows is computed here (no Streamlit), so each formula, each learner's mistake
and each chart spec can be tested on its own. The closed form is

    KL(N(mu, sigma^2) || N(0, 1)) = 1/2 (mu^2 + sigma^2 - log sigma^2 - 1)   per latent dimension,

summed (never averaged) over the latent dimensions of a diagonal Gaussian posterior.
"""

from __future__ import annotations

import math
from typing import Literal, NamedTuple

import altair as alt
import numpy as np
import pandas as pd

from vae.learn.thresholds import ACTIVE_UNIT_THRESHOLD
from vae.present.charts import dims_frame
from vae.present.units import UNIT_CLASSES, UNIT_COLOURS

# sigma values for the page's select slider: roughly log-spaced, and containing the round numbers
# (0.1, 0.5, 1, 2) a student will want to land on exactly.
SIGMA_CHOICES: tuple[float, ...] = (
    0.05, 0.06, 0.08, 0.1, 0.12, 0.15, 0.2, 0.25, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8, 0.9,
    1.0, 1.1, 1.25, 1.5, 1.75, 2.0, 2.5, 3.0,
)  # fmt: skip
MU_RANGE = (-3.0, 3.0)
DEFAULT_MU, DEFAULT_SIGMA = 0.5, 0.8  # not sigma=0.5, where d/d sigma and d/d variance coincide
SIGMA_RANGE = (SIGMA_CHOICES[0], SIGMA_CHOICES[-1])
CURVE_Y_LIMITS = (-5.0, 8.0)  # sigma - 1/sigma reaches -20 at sigma=0.05; clip so KL stays legible
VARIANCE_FLOOR = 1e-6  # log-scale axes cannot show a zero variance
STAT_NAMES = ["posterior variance σ²", "Cov_x(μ)"]  # the per-dimension columns drawn on a log axis

Reduction = Literal["sum", "mean"]
ArrayLike = float | np.ndarray


def _out(value: np.ndarray) -> ArrayLike:
    """A float for scalar input, an array otherwise."""
    return float(value) if np.ndim(value) == 0 else value


def _checked(mu: ArrayLike, sigma: ArrayLike) -> tuple[np.ndarray, np.ndarray]:
    mu, sigma = np.asarray(mu, dtype=float), np.asarray(sigma, dtype=float)
    if np.any(~(sigma > 0)):
        raise ValueError("sigma is a standard deviation and must be positive")
    return mu, sigma


# ---- one dimension: the closed form and its gradients --------------------------------------------
def kl_1d(mu: ArrayLike, sigma: ArrayLike) -> ArrayLike:
    """KL(N(mu, sigma^2) || N(0, 1)) in nats, elementwise: 1/2 (mu^2 + sigma^2 - log sigma^2 - 1)."""
    mu, sigma = _checked(mu, sigma)
    var = sigma**2
    return _out(0.5 * (mu**2 + var - np.log(var) - 1.0))


class KLGradients(NamedTuple):
    """Partial derivatives of kl_1d; which variable you differentiate by changes the formula."""

    mu: ArrayLike  # d/d mu = mu
    sigma: ArrayLike  # d/d sigma (standard deviation) = sigma - 1/sigma
    var: ArrayLike  # d/d v with v = sigma^2 = 1/2 (1 - 1/v)
    logvar: ArrayLike  # d/d log sigma^2 = 1/2 (sigma^2 - 1), what an encoder's logvar head gets


def kl_1d_grads(mu: ArrayLike, sigma: ArrayLike) -> KLGradients:
    """All four gradients at (mu, sigma). d/d mu vanishes at mu = 0 whatever sigma is, the others
    at sigma = 1 whatever mu is; all of them together only at (mu, sigma) = (0, 1)."""
    mu, sigma = _checked(mu, sigma)
    var = sigma**2
    return KLGradients(
        mu=_out(mu.copy()),
        sigma=_out(sigma - 1.0 / sigma),
        var=_out(0.5 * (1.0 - 1.0 / var)),
        logvar=_out(0.5 * (var - 1.0)),
    )


# ---- the mistakes learners make, as numbers ------------------------------------------------------
def kl_without_half(mu: ArrayLike, sigma: ArrayLike) -> ArrayLike:
    """The formula with the 1/2 dropped: exactly twice the KL, i.e. a silently doubled beta."""
    return _out(2.0 * np.asarray(kl_1d(mu, sigma)))


def kl_with_log_sigma(mu: ArrayLike, sigma: ArrayLike) -> ArrayLike:
    """1/2 (mu^2 + sigma^2 - log sigma - 1): not a divergence; it is smallest at sigma^2 = 1/2,
    where it is negative, so it pulls the posterior to the wrong width."""
    mu, sigma = _checked(mu, sigma)
    return _out(0.5 * (mu**2 + sigma**2 - np.log(sigma) - 1.0))


def mistakes_table(mu: float, sigma: float) -> pd.DataFrame:
    """The right value next to the wrong ones at one (mu, sigma), for a small table on the page."""
    grads = kl_1d_grads(mu, sigma)
    var = sigma**2
    rows = [
        ("½ (μ² + σ² − log σ² − 1)", "correct KL", kl_1d(mu, sigma)),
        ("(μ² + σ² − log σ² − 1)", "missing ½: twice the KL", kl_without_half(mu, sigma)),
        ("½ (μ² + σ² − log σ − 1)", "log σ for log σ²: not a KL", kl_with_log_sigma(mu, sigma)),
        ("∂KL/∂σ = σ − 1/σ", "gradient w.r.t. σ (correct)", grads.sigma),
        ("∂KL/∂v = ½ (1 − 1/v), v = σ²", "gradient w.r.t. the variance", grads.var),
        ("(σ − 1)/σ", "forum derivation, σ = std: wrong", (sigma - 1.0) / sigma),
        ("(v − 1)/v, v = σ²", "forum derivation, its σ = variance: 2× ∂KL/∂v", (var - 1.0) / var),
    ]
    return pd.DataFrame(rows, columns=["expression", "what it is", "value"])


# ---- sum, not mean ---------------------------------------------------------------------------------
def effective_beta(beta: float, d: int, reduction: Reduction = "sum") -> float:
    """The beta the optimiser really sees when the KL of d latent dims is summed or averaged.

    Summing gives the KL of the whole posterior, so the weight is beta. Averaging divides the KL
    by d, which is the same loss as summing with beta / d.
    """
    if d < 1:
        raise ValueError("d (the number of latent dimensions) must be at least 1")
    if reduction == "sum":
        return float(beta)
    if reduction == "mean":
        return float(beta) / d
    raise ValueError(f"reduction must be 'sum' or 'mean', not {reduction!r}")


def summed_kl(mu: np.ndarray, logvar: np.ndarray) -> np.ndarray:
    """KL of each row of a batch: the per-dimension terms summed over the last (latent) axis."""
    mu, logvar = np.asarray(mu, dtype=float), np.asarray(logvar, dtype=float)
    return 0.5 * (mu**2 + np.exp(logvar) - logvar - 1.0).sum(axis=-1)


def keras_mean_kl(mu: np.ndarray, logvar: np.ndarray) -> np.ndarray:
    """The old Keras example's term, -0.5 * K.mean(1 + logvar - mu^2 - exp(logvar), axis=-1):
    the right per-dimension terms, but averaged over the latent axis, so it is summed_kl / d."""
    mu, logvar = np.asarray(mu, dtype=float), np.asarray(logvar, dtype=float)
    return -0.5 * np.mean(1.0 + logvar - mu**2 - np.exp(logvar), axis=-1)


def sum_vs_mean_example(beta: float, d: int, batch: int = 4, seed: int = 0) -> pd.DataFrame:
    """A random batch of posteriors: summed KL, averaged KL, their ratio (d) and the weighted terms."""
    rng = np.random.default_rng(seed)
    mu = rng.normal(0.0, 1.0, size=(batch, d))
    logvar = rng.normal(-1.0, 0.5, size=(batch, d))
    total, averaged = summed_kl(mu, logvar), keras_mean_kl(mu, logvar)
    return pd.DataFrame(
        {
            "example": np.arange(1, batch + 1),
            "KL summed over dims": total,
            "KL averaged over dims": averaged,
            "ratio": total / averaged,
            "β · summed": beta * total,
            "β · averaged": beta * averaged,
        }
    )


# ---- Monte Carlo check of the closed form ------------------------------------------------------------
class MonteCarloEstimate(NamedTuple):
    estimate: float
    stderr: float
    n: int


def monte_carlo_kl(mu: float, sigma: float, n: int, seed: int = 0) -> MonteCarloEstimate:
    """E_q[log q(z) - log p(z)] from n samples z ~ q = N(mu, sigma^2), with its standard error.

    With z = mu + sigma * eps, log q(z) - log p(z) = -log sigma - eps^2 / 2 + z^2 / 2 (the
    log 2 pi terms cancel); the sample mean estimates the KL without using the closed form.
    """
    _checked(mu, sigma)
    if n < 2:
        raise ValueError("n must be at least 2 to estimate a standard error")
    eps = np.random.default_rng(seed).standard_normal(int(n))
    z = mu + sigma * eps
    log_ratio = -math.log(sigma) - 0.5 * eps**2 + 0.5 * z**2
    return MonteCarloEstimate(
        estimate=float(log_ratio.mean()),
        stderr=float(log_ratio.std(ddof=1) / math.sqrt(n)),
        n=int(n),
    )


# ---- curves -----------------------------------------------------------------------------------------
def kl_curves(mu: float, sigma: float, points: int = 121) -> pd.DataFrame:
    """Long-form data for two small charts: KL and its gradient along mu (sigma fixed) and along
    sigma (mu fixed). Columns: panel, x, quantity, value, chosen (True on the marker rows)."""
    _checked(mu, sigma)
    mus = np.linspace(*MU_RANGE, points)
    sigmas = np.geomspace(*SIGMA_RANGE, points)
    frames = []
    for panel, xs, kl, grad in (
        ("mu", mus, kl_1d(mus, sigma), kl_1d_grads(mus, sigma).mu),
        ("sigma", sigmas, kl_1d(mu, sigmas), kl_1d_grads(mu, sigmas).sigma),
    ):
        for quantity, values in (("KL", kl), ("gradient", grad)):
            frames.append(
                pd.DataFrame(
                    {
                        "panel": panel,
                        "x": xs,
                        "quantity": quantity,
                        "value": values,
                        "chosen": False,
                    }
                )
            )
    grads = kl_1d_grads(mu, sigma)
    marker = pd.DataFrame(
        {
            "panel": ["mu", "mu", "sigma", "sigma"],
            "x": [mu, mu, sigma, sigma],
            "quantity": ["KL", "gradient", "KL", "gradient"],
            "value": [kl_1d(mu, sigma), grads.mu, kl_1d(mu, sigma), grads.sigma],
            "chosen": True,
        }
    )
    return pd.concat([*frames, marker], ignore_index=True)


def _curve_panel(data: pd.DataFrame, panel: str, title: str, x_title: str) -> alt.LayerChart:
    """One small chart: KL and gradient lines along one variable, the chosen point as dots."""
    part = data[data["panel"] == panel]
    log_x = panel == "sigma"
    x = alt.X("x:Q", title=x_title, scale=alt.Scale(type="log" if log_x else "linear", nice=False))
    y = alt.Y("value:Q", title="nats / gradient", scale=alt.Scale(domain=list(CURVE_Y_LIMITS)))
    color = alt.Color(
        "quantity:N",
        title=None,
        scale=alt.Scale(domain=["KL", "gradient"], range=["#1f77b4", "#ff7f0e"]),
    )
    tooltip = [
        alt.Tooltip("quantity:N"),
        alt.Tooltip("x:Q", title=x_title, format=".3f"),
        alt.Tooltip("value:Q", format=".4f"),
    ]
    lines = (
        alt.Chart(part[~part["chosen"]]).mark_line(clip=True).encode(x, y, color, tooltip=tooltip)
    )
    dots = (
        alt.Chart(part[part["chosen"]])
        .mark_point(filled=True, size=90, clip=True)
        .encode(x, y, color, tooltip=tooltip)
    )
    zero = alt.Chart(pd.DataFrame({"value": [0.0]})).mark_rule(color="gray", strokeDash=[4, 4])
    return alt.layer(zero.encode(y=alt.Y("value:Q")), lines, dots).properties(
        title=title, width=300, height=220
    )


def kl_curves_chart(mu: float, sigma: float) -> alt.HConcatChart:
    """KL and its gradient against mu (sigma fixed) and against sigma (mu fixed, log axis)."""
    data = kl_curves(mu, sigma)
    return alt.hconcat(
        _curve_panel(data, "mu", f"along μ, with σ = {sigma:g}", "μ"),
        _curve_panel(data, "sigma", f"along σ, with μ = {mu:g}", "σ (log scale)"),
    )


# ---- a trained run: KL per latent dimension ----------------------------------------------------------
def per_dim_frame(metrics: dict) -> pd.DataFrame:
    """One row per latent dimension from one epoch's metrics, sorted by KL (largest first).

    Raises ValueError when the row lacks the per-dimension lists or they disagree in length, so
    the page can say so instead of drawing a wrong chart.
    """
    try:
        kl = [float(v) for v in metrics["kl_per_dim"]]
        var = [float(v) for v in metrics["posterior_var"]]
        cov = [float(v) for v in metrics["mean_cov"]]
    except (KeyError, TypeError, ValueError) as exc:
        raise ValueError(f"this epoch has no usable per-dimension statistics ({exc})") from None
    if not kl or not len(kl) == len(var) == len(cov):
        raise ValueError("the per-dimension statistics are empty or of different lengths")
    frame = dims_frame({"kl_per_dim": kl, "posterior_var": var, "mean_cov": cov})
    names = {"label": "dimension", "kl": "KL (nats)", "posterior_var": "posterior variance σ²"}
    names |= {"mean_cov": "Cov_x(μ)", "active": "active", "unit": "unit"}
    return frame[list(names)].rename(columns=names)


def per_dim_chart(frame: pd.DataFrame) -> alt.VConcatChart:
    """Bars of KLⱼ sorted by size; below, sigma_j^2 and Cov_x(mu_j) on a log axis with the
    active-unit threshold, so the few dimensions that carry information stand out."""
    order = list(frame["dimension"])
    x = alt.X(
        "dimension:N",
        sort=order,
        title="latent dimension (sorted by KL)",
        axis=alt.Axis(labelAngle=0),
    )
    width = min(720, max(320, 48 * len(frame)))
    bars_data = frame.assign(status=frame["unit"])
    bars = (
        alt.Chart(bars_data)
        .mark_bar()
        .encode(
            x,
            alt.Y("KL (nats):Q", title="KLⱼ (nats)"),
            alt.Color(
                "status:N",
                title="unit",
                scale=alt.Scale(domain=list(UNIT_CLASSES), range=list(UNIT_COLOURS)),
                legend=alt.Legend(orient="bottom", columns=1),
            ),
            tooltip=[
                "dimension:N",
                alt.Tooltip("KL (nats):Q", format=".4f"),
                alt.Tooltip("posterior variance σ²:Q", format=".4f"),
                alt.Tooltip("Cov_x(μ):Q", format=".4g"),
                "status:N",
            ],
        )
        .properties(width=width, height=220, title="KL per latent dimension (last epoch)")
    )
    long = frame.melt(
        id_vars=["dimension"],
        value_vars=STAT_NAMES,
        var_name="statistic",
        value_name="value",
    )
    long["value"] = long["value"].clip(lower=VARIANCE_FLOOR)
    stats = (
        alt.Chart(long)
        .mark_point(filled=True, size=70)
        .encode(
            x,
            alt.Y(
                "value:Q",
                scale=alt.Scale(type="log"),
                axis=alt.Axis(tickCount=6, grid=False),
                title="σⱼ² and Cov_x(μⱼ)",
            ),
            alt.Color(
                "statistic:N",
                title=None,
                scale=alt.Scale(domain=STAT_NAMES, range=["#ff7f0e", "#9467bd"]),
            ),
            alt.Shape("statistic:N", title=None, scale=alt.Scale(domain=STAT_NAMES)),
            tooltip=["dimension:N", "statistic:N", alt.Tooltip("value:Q", format=".4g")],
        )
    )
    threshold = (
        alt.Chart(pd.DataFrame({"threshold": [ACTIVE_UNIT_THRESHOLD]}))
        .mark_rule(color="crimson", strokeDash=[6, 3])
        .encode(
            y="threshold:Q", tooltip=[alt.Tooltip("threshold:Q", title="active-unit threshold")]
        )
    )
    lower = alt.layer(stats, threshold).properties(
        width=width,
        height=180,
        title=f"active if Cov_x(μⱼ) > {ACTIVE_UNIT_THRESHOLD:g} (dashed line)",
    )
    return alt.vconcat(bars, lower).resolve_scale(color="independent", shape="independent")
