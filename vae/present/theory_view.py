"""The closed-form theory beside the runs: predicted frontier, predicted KLⱼ and σⱼ², the spectrum
against βσ², and where the rate goes. Tables and Altair charts only; no Streamlit here.

The prediction (vae.learn.theory) is the optimum of a linear VAE with a fixed-σ Gaussian likelihood
on the training split's covariance. For a linear run it is that run's own optimum; for a non-linear
model with the same likelihood it is the linear baseline, which a better model can beat.
"""

from __future__ import annotations

import functools
import math
from collections.abc import Sequence

import altair as alt
import numpy as np
import pandas as pd

from vae.learn.config import RunConfig
from vae.learn.theory import (
    Prediction,
    covariance_spectrum,
    frontier,
    frontier_betas,
    predict,
    theory_baseline,
    theory_exact,
)

EXACT_NOTE = (
    "Theory: the curve is the closed-form optimum of this linear VAE with a fixed-σ Gaussian "
    "likelihood (probabilistic PCA with noise variance βσ²; Tipping & Bishop 1999, Lucas et al. "
    "2019), computed from the training split's covariance. Trained runs should land on it."
)
BASELINE_NOTE = (
    "Theory: these runs are not linear, so the curve is the linear baseline, the best a linear "
    "VAE with the same fixed-σ Gaussian likelihood can do on this data. A non-linear model can "
    "land below it (less distortion at the same rate); on Gaussian data it cannot do better."
)
NO_THEORY_NOTE = (
    "Theory: no closed form for these runs. It needs a Gaussian likelihood with a fixed σ and "
    "the plain β objective; try the linear demo on the Train page."
)


def theory_note(config: RunConfig) -> str:
    """What the theory curve means for runs of this config (exact, a baseline, or none)."""
    if theory_exact(config):
        return EXACT_NOTE
    if theory_baseline(config):
        return BASELINE_NOTE
    return NO_THEORY_NOTE


def has_theory(config: RunConfig) -> bool:
    return theory_exact(config) or theory_baseline(config)


@functools.lru_cache(maxsize=8)
def data_spectrum(dataset: str, data_root: str | None = None, seed: int = 0) -> tuple[float, ...]:
    """Eigenvalues of the training split's covariance (largest first), cached per data set."""
    from vae.learn.data import load_dataset  # torch: only once a theory is drawn

    return tuple(covariance_spectrum(load_dataset(dataset, data_root, seed=seed).train.x).tolist())


def run_prediction(config: RunConfig) -> Prediction | None:
    """The closed-form optimum at this run's β (None when no closed form applies)."""
    if not has_theory(config):
        return None
    spectrum = data_spectrum(config.dataset, config.data_root, config.seed)
    return predict(spectrum, config.beta, config.gaussian_std**2, config.latent_dim)


# ---- the frontier --------------------------------------------------------------------------------
def frontier_frame(config: RunConfig, run_betas: Sequence[float] = ()) -> pd.DataFrame:
    """The predicted curve (kind "curve") and the predicted point at each run's β ("at run")."""
    spectrum = data_spectrum(config.dataset, config.data_root, config.seed)
    noise_var = config.gaussian_std**2
    betas = sorted({*frontier_betas(spectrum, noise_var).tolist(), *map(float, run_betas)})
    rows = [
        {"beta": p.beta, "rate": p.rate, "distortion": p.distortion, "kind": "curve"}
        for p in frontier(spectrum, noise_var, config.latent_dim, [b for b in betas if b > 0])
    ]
    for p in frontier(spectrum, noise_var, config.latent_dim, [b for b in run_betas if b > 0]):
        rows.append({"beta": p.beta, "rate": p.rate, "distortion": p.distortion, "kind": "at run"})
    return pd.DataFrame(rows, columns=["beta", "rate", "distortion", "kind"])


def frontier_layers(frame: pd.DataFrame, x: alt.X, y: alt.Y) -> list[alt.Chart]:
    """The curve (solid black) and a cross at each run's β, for Tradeoff's chart."""
    tooltip = [
        alt.Tooltip("beta:Q", title="β (theory)", format="~g"),
        alt.Tooltip("rate:Q", title="predicted R", format=".2f"),
        alt.Tooltip("distortion:Q", title="predicted D", format=".2f"),
    ]
    curve = (
        alt.Chart(frame[frame["kind"] == "curve"])
        .mark_line(color="black", strokeWidth=1.5, clip=True)
        .encode(x=x, y=y, order="beta:Q", tooltip=tooltip)
    )
    marks = (
        alt.Chart(frame[frame["kind"] == "at run"])
        .mark_point(shape="cross", size=120, color="black", clip=True)
        .encode(x=x, y=y, tooltip=tooltip)
    )
    return [curve, marks]


def predicted_table(frame: pd.DataFrame, records) -> pd.DataFrame:
    """Each run's R and D beside the prediction at its β."""
    rows = []
    for record in records:
        p = run_prediction(record.config)
        m = record.last_metrics
        if p is None or not m:
            continue
        rows.append(
            {
                "run": record.run_id,
                "β": record.config.beta,
                "R": m["rate"],
                "R theory": p.rate,
                "D": m["distortion"],
                "D theory": p.distortion,
                "informative": sum(1 for k in m["kl_per_dim"] if k > 0.05),
                "active in theory": sum(p.active),
            }
        )
    return pd.DataFrame(rows)


# ---- per dimension ----------------------------------------------------------------------------
def dims_theory_frame(metrics: dict, prediction: Prediction) -> pd.DataFrame:
    """Learned KLⱼ and σⱼ² sorted by KL (largest first) beside the prediction for the j-th largest
    eigenvalue: the learned dimensions come in any order, so they are matched by rank."""
    learned = sorted(
        zip(metrics["kl_per_dim"], metrics["posterior_var"], strict=True), key=lambda t: -t[0]
    )
    rows = []
    for rank, ((kl, var), p_kl, p_var) in enumerate(
        zip(learned, prediction.kl_per_dim, prediction.posterior_var, strict=False)
    ):
        for quantity, value, theory in (("KLⱼ (nats)", kl, p_kl), ("σⱼ²", var, p_var)):
            rows.append({"rank": rank + 1, "quantity": quantity, "learned": value,
                         "theory": theory})  # fmt: skip
    return pd.DataFrame(rows, columns=["rank", "quantity", "learned", "theory"])


def dims_theory_chart(frame: pd.DataFrame) -> alt.FacetChart:
    """Bars: learned; black ticks: predicted; one panel for KLⱼ, one for σⱼ²."""
    base = alt.Chart(frame).encode(x=alt.X("rank:O", title="dimension, by rank of KLⱼ / of λⱼ"))
    bars = base.mark_bar(color="#1f77b4", opacity=0.7).encode(
        y=alt.Y("learned:Q", title=None),
        tooltip=[
            alt.Tooltip("rank:O"),
            alt.Tooltip("learned:Q", format=".3f"),
            alt.Tooltip("theory:Q", format=".3f"),
        ],  # fmt: skip
    )
    ticks = base.mark_tick(color="black", thickness=3, size=18).encode(y="theory:Q")
    return (
        alt.layer(bars, ticks, data=frame)
        .properties(height=180, width=300)
        .facet(column=alt.Column("quantity:N", title=None))
        .resolve_scale(y="independent")
    )


def spectrum_frame(spectrum: Sequence[float], beta: float, noise_var: float,
                   latent_dim: int, most: int = 64) -> pd.DataFrame:  # fmt: skip
    """The top eigenvalues with what the theory does to each at β: kept, collapsed, or beyond
    the J latents (never encoded, whatever β)."""
    threshold = beta * noise_var
    rows = []
    for j, lam in enumerate(list(spectrum)[:most]):
        if j >= latent_dim:
            fate = f"beyond the {latent_dim} latents"
        elif lam > threshold:
            fate = "kept (λⱼ > βσ²)"
        else:
            fate = "collapsed (λⱼ ≤ βσ²)"
        kl = 0.5 * math.log(lam / threshold) if j < latent_dim and lam > threshold else 0.0
        rows.append({"j": j + 1, "eigenvalue": max(lam, 1e-12), "fate": fate, "kl": kl})
    return pd.DataFrame(rows, columns=["j", "eigenvalue", "fate", "kl"])


def spectrum_chart(frame: pd.DataFrame, beta: float, noise_var: float) -> alt.LayerChart:
    """λⱼ on a log axis against the horizontal line βσ²: points above it are kept."""
    fates = sorted(set(frame["fate"]))
    colours = {"kept": "#1f77b4", "collapsed": "#c7c7c7", "beyond": "#ff7f0e"}
    palette = [next(c for k, c in colours.items() if f.startswith(k)) for f in fates]
    points = (
        alt.Chart(frame)
        .mark_circle(size=70)
        .encode(
            x=alt.X("j:Q", title="j (eigenvalues of the training covariance, largest first)"),
            y=alt.Y("eigenvalue:Q", scale=alt.Scale(type="log"), title="λⱼ"),
            color=alt.Color("fate:N", scale=alt.Scale(domain=fates, range=palette),
                            legend=alt.Legend(orient="bottom", title=None)),
            tooltip=[alt.Tooltip("j:Q"), alt.Tooltip("eigenvalue:Q", format=".4g"),
                     alt.Tooltip("fate:N"), alt.Tooltip("kl:Q", title="KLⱼ theory", format=".3f")],
        )
    )  # fmt: skip
    line = pd.DataFrame(
        {"threshold": [beta * noise_var], "label": [f"βσ² = {beta * noise_var:.4g}"]}
    )
    rule = alt.Chart(line).mark_rule(color="red", strokeDash=[6, 3]).encode(y="threshold:Q")
    text = (
        alt.Chart(line)
        .mark_text(align="left", dx=4, dy=-6, color="red")
        .encode(y="threshold:Q", x=alt.value(4), text="label:N")
    )
    return alt.layer(points, rule, text).properties(height=260)


def spectrum_betas(spectrum: Sequence[float], noise_var: float) -> list[float]:
    """Slider stops: log-spaced β from all kept to all collapsed, rounded to 2 significant digits."""
    values = frontier_betas(spectrum, noise_var, points=25)
    return sorted({float(f"{v:.2g}") for v in values})


def nearest(values: Sequence[float], target: float) -> float:
    return min(values, key=lambda v: abs(math.log(max(v, 1e-12)) - math.log(max(target, 1e-12))))


# ---- where the rate goes ----------------------------------------------------------------------
def rate_split_line(evaluation: dict | None) -> str | None:
    """One sentence on I_q and the marginal KL from eval.json (None before an evaluation)."""
    if not evaluation or evaluation.get("mutual_info") is None:
        return None
    info, marginal = evaluation["mutual_info"], evaluation["marginal_kl"]
    log_n, rate = evaluation["log_n"], evaluation["rate"]
    n = round(math.exp(log_n))
    return (
        f"Where the rate goes (test split, N = {n:,}): R = {rate:.2f} nats = I_q(x; z) "
        f"{info:.2f} + KL(q(z) ‖ p(z)) {marginal:.2f}. I_q can never exceed ln N = {log_n:.2f} "
        f"nats, so at least {max(0.0, rate - log_n):.2f} nats of this rate pay for the aggregate "
        "posterior's mismatch with the prior, not for information about x (Hoffman & Johnson 2016)."
    )


def rate_split_columns(records) -> pd.DataFrame:
    """Per run: I_q and KL(q(z)‖p(z)) from eval.json (NaN before an evaluation)."""
    rows = []
    for r in records:
        e = r.evaluation or {}
        rows.append({"run_id": r.run_id, "mutual_info": e.get("mutual_info", np.nan),
                     "marginal_kl": e.get("marginal_kl", np.nan)})  # fmt: skip
    return pd.DataFrame(rows, columns=["run_id", "mutual_info", "marginal_kl"])


def rate_split_frame(records) -> pd.DataFrame:
    """Long form for the split chart: per evaluated run, I_q and KL(q(z)‖p(z)), with ln N."""
    rows = []
    for r in records:
        e = r.evaluation or {}
        if e.get("mutual_info") is None or e.get("marginal_kl") is None or not e.get("log_n"):
            continue
        label = f"β={r.config.beta:g} · {r.run_id[-6:]}"
        for part, value in (("I_q(x; z)", e["mutual_info"]), ("KL(q(z) ‖ p(z))", e["marginal_kl"])):
            rows.append({"run": label, "beta": r.config.beta, "part": part, "nats": value,
                         "log_n": e["log_n"]})  # fmt: skip
    return pd.DataFrame(rows, columns=["run", "beta", "part", "nats", "log_n"])


def rate_split_chart(frame: pd.DataFrame) -> alt.LayerChart:
    """Stacked bars R = I_q + KL(q(z)‖p(z)) per run, and the ceiling ln N that I_q cannot pass."""
    order = list(dict.fromkeys(frame.sort_values("beta")["run"]))
    bars = (
        alt.Chart(frame)
        .mark_bar()
        .encode(
            x=alt.X("run:N", sort=order, title=None, axis=alt.Axis(labelAngle=-30)),
            y=alt.Y("nats:Q", stack="zero", title="R on the test split (nats)"),
            color=alt.Color("part:N", scale=alt.Scale(range=["#1f77b4", "#ff7f0e"]),
                            legend=alt.Legend(orient="bottom", title=None)),
            tooltip=["run:N", "part:N", alt.Tooltip("nats:Q", format=".3f")],
        )
    )  # fmt: skip
    ceiling = frame.groupby("log_n", as_index=False).size()
    ceiling["label"] = [f"ln N = {v:.2f}: the most I_q can be" for v in ceiling["log_n"]]
    rule = alt.Chart(ceiling).mark_rule(color="black", strokeDash=[6, 3]).encode(y="log_n:Q")
    text = (
        alt.Chart(ceiling)
        .mark_text(align="left", dx=4, dy=-6)
        .encode(y="log_n:Q", x=alt.value(4), text="label:N")
    )
    return alt.layer(bars, rule, text).properties(height=260)
