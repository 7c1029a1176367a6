"""The KL term: where ½ Σ (μ² + σ² − log σ² − 1) comes from, how it behaves, and the usual slips.

A thin page: every number and chart comes from `vae.present.kl_teaching`; this file only lays them out.
"""

from __future__ import annotations

import streamlit as st

import ui
from vae.present import kl_teaching as kt
from vae.present.beta_conventions import conventions_table
from vae.present.text import plain_text
from vae.present.units import ACTIVE_RULE, INFORMATIVE_RULE, WHY_COUNTS_DIFFER, unit_counts


def formula_section() -> None:
    st.latex(
        r"D_{\mathrm{KL}}\big(q(z\mid x)\,\|\,\mathcal N(0, I)\big)"
        r" = \tfrac12 \sum_{j=1}^{d} \left(\mu_j^2 + \sigma_j^2 - \log \sigma_j^2 - 1\right)"
    )
    st.markdown(
        "The encoder outputs a mean $\\mu_j$ and a variance $\\sigma_j^2$ (usually as "
        "$\\log\\sigma_j^2$) for each of the $d$ latent dimensions. This term is the **rate**: "
        "how many nats the code spends on $x$ beyond what the prior already says."
    )
    derivation = ui.lazy_expander(
        "Where the formula comes from (one dimension, then sum)", key="kl_derivation"
    )
    if derivation:  # its KaTeX is a tenth of the page's drawing: only once asked for
        derivation.markdown(DERIVATION)  # one element: drawn in one go


DERIVATION = r"""
Start from the definition, an expectation under $q = \mathcal N(\mu, \sigma^2)$:

$$D_{\mathrm{KL}}(q\,\|\,p) = \mathbb E_{q}\left[\log q(z) - \log p(z)\right]$$

Write out both Gaussian log-densities:

$$\log q(z) = -\tfrac12\log 2\pi - \tfrac12\log\sigma^2 - \frac{(z-\mu)^2}{2\sigma^2},\qquad \log p(z) = -\tfrac12\log 2\pi - \frac{z^2}{2}$$

The $\log 2\pi$ terms cancel in the difference:

$$\log q(z) - \log p(z) = -\tfrac12\log\sigma^2 - \frac{(z-\mu)^2}{2\sigma^2} + \frac{z^2}{2}$$

Only two expectations are needed, both standard facts about $z \sim q$:

$$\mathbb E_q\left[(z-\mu)^2\right] = \sigma^2, \qquad \mathbb E_q\left[z^2\right] = \mu^2 + \sigma^2$$

Substituting them:

$$D_{\mathrm{KL}} = -\tfrac12\log\sigma^2 - \tfrac12 + \tfrac12(\mu^2 + \sigma^2) = \tfrac12\left(\mu^2 + \sigma^2 - \log\sigma^2 - 1\right)$$

With a diagonal covariance both densities factor over dimensions, their logs add, and so do the
KLs: **sum over $j$**.
"""


def curves_legend_below(mu: float, sigma: float):
    """The two curve panels with their legend underneath: at 800 px a legend on the right is cut."""
    return kt.kl_curves_chart(mu, sigma).configure_legend(orient="bottom")


def one_dimension_section() -> tuple[float, float]:
    """Sliders for one dimension; returns the chosen (mu, sigma) for the mistakes table."""
    st.subheader("One dimension")
    left, right = st.columns(2)
    mu = left.slider(
        "μ (posterior mean)", *kt.MU_RANGE, value=kt.DEFAULT_MU, step=0.05, key="kl_mu"
    )
    sigma = right.select_slider(
        "σ (posterior standard deviation, log-spaced)",
        options=list(kt.SIGMA_CHOICES),
        value=kt.DEFAULT_SIGMA,
        key="kl_sigma",
    )
    grads = kt.kl_1d_grads(mu, sigma)
    cols = st.columns(4)
    cols[0].metric("KL (nats)", f"{kt.kl_1d(mu, sigma):.4f}")
    cols[1].metric("∂KL/∂μ = μ", f"{grads.mu:.4f}")
    cols[2].metric("∂KL/∂σ = σ − 1/σ", f"{grads.sigma:.4f}")
    cols[3].metric("∂KL/∂log σ² = ½(σ² − 1)", f"{grads.logvar:.4f}")
    ui.chart(curves_legend_below, mu, sigma, width="content", figure="kl-curves")
    st.caption(
        "∂KL/∂μ vanishes at μ = 0 whatever σ is, and the σ gradients at σ = 1 whatever μ is; "
        "only together do they vanish at the single point μ = 0, σ = 1: the KL pulls every "
        "posterior towards the prior. Shrinking σ is punished by −log σ² (steeply, as the curve on the right shows); "
        f"the y axis is cut at {kt.CURVE_Y_LIMITS[0]:g}, where σ − 1/σ keeps falling."
    )
    monte_carlo_check(mu, sigma)
    return mu, sigma


def monte_carlo_check(mu: float, sigma: float) -> None:
    with st.container(border=True):
        st.markdown("**Check by sampling**: average $\\log q(z) - \\log p(z)$ over $z \\sim q$.")
        left, right = st.columns(2)
        n = left.select_slider(
            "samples n", options=[100, 1_000, 10_000, 100_000], value=10_000, key="kl_mc_n"
        )
        seed = right.number_input(
            "seed", min_value=0, max_value=2**31 - 1, value=0, step=1, key="kl_mc_seed"
        )
        mc = kt.monte_carlo_kl(mu, sigma, n, int(seed))
        exact = kt.kl_1d(mu, sigma)
        off = abs(mc.estimate - exact) / mc.stderr if mc.stderr > 0 else 0.0
        st.text(
            f"Monte Carlo: {mc.estimate:.4f} ± {mc.stderr:.4f} (n = {mc.n:,})   "
            f"closed form: {exact:.4f}   difference: {off:.1f} standard errors"
        )


def sum_not_mean_section() -> None:
    st.subheader("Sum, not mean")
    left, right = st.columns(2)
    d = left.slider("latent dimensions d", 1, 128, value=32, key="kl_d")
    beta = right.number_input(
        "β", min_value=0.0, max_value=1000.0, value=4.0, step=0.5, key="kl_beta"
    )
    eff = kt.effective_beta(beta, d, "mean")
    cols = st.columns(2)
    cols[0].metric("β with the KL summed over dims", f"{kt.effective_beta(beta, d, 'sum'):g}")
    cols[1].metric(
        "effective β with the KL averaged",
        f"{eff:.4g}",
        delta=f"β / {d}",
        delta_color="off",
        delta_arrow="off",
    )
    st.markdown(
        f"Averaging the per-dimension terms divides the KL by d, which is the same loss as summing "
        f"with β/d: with β = {beta:g} and d = {d} you are really training at β ≈ {eff:.3g}. The KL "
        "is under-weighted d-fold, so the encoder spends more nats per input and its posterior "
        "collapses to the prior less than the β you set suggests."
    )
    example = kt.sum_vs_mean_example(beta, d)
    st.table(example.round(4), hide_index=True)  # a static table: a few rows, no grid to load
    st.caption(
        "A random batch of 4 posteriors: the averaged KL (as in an old Keras example's K.mean over "
        "the latent axis) is exactly the summed KL divided by d. The same bookkeeping applies to "
        "the reconstruction term: averaging it over P pixels as well makes the KL's "
        "effective weight β·P/d, since only the ratio of the two weights matters."
    )


def beta_conventions_section() -> None:
    st.subheader("β as other code writes it")
    st.markdown(
        "Here the loss per image is D + β·R: D = −log p(x|z) **summed** over the n pixels, R "
        "**summed** over the J latents. Only the ratio of the two weights matters, so another "
        "codebase trains at this app's β when its own weight w satisfies the formula in its row. "
        "Set the sizes of the model you compare with."
    )
    cols = st.columns(3)
    beta = cols[0].number_input("this app's β", 0.0, 1000.0, 4.0, step=0.5, key="conv_beta")
    latent = cols[1].number_input("latent size J (M)", 1, 4096, 20, key="conv_latent")
    pixels = cols[2].number_input("input size n (N pixels)", 1, 10**7, 784, key="conv_pixels")
    cols = st.columns(3)
    noise_var = cols[0].number_input(
        "Gaussian σ² that squared error stands for", 1e-6, 100.0, 0.01, format="%.4g",
        key="conv_var",
    )  # fmt: skip
    batch = cols[1].number_input("minibatch size M", 1, 10**6, 128, key="conv_batch")
    size = cols[2].number_input("data-set size N", 1, 10**9, 4000, key="conv_size")
    rows = conventions_table(beta, int(pixels), int(latent), noise_var, int(batch), int(size))
    table = {
        "convention": [r.name for r in rows],
        "their loss": [r.loss for r in rows],
        "their number": [r.weight for r in rows],
        "formula": [r.formula for r in rows],
    }
    st.dataframe(table, hide_index=True, key="conventions_table")
    st.caption(
        "Which way each goes: averaging the KL over J latents divides it by J, so that code needs "
        "w = β·J to match (its w = β trains at β/J here). Higgins et al. (2017) report "
        "β_norm = β·M/N with M latents and N pixels. Squared error Σ(x − x̂)² is 2σ²·D plus a "
        "constant for a Gaussian of variance σ², so a KL weight w there is β = w/(2σ²) here: "
        "the variance acts as β. The last row goes the other way: the β here that a KL weight of "
        "M/N (minibatch over data-set size) with a mean squared error trains at."
    )


def mistakes_section(mu: float, sigma: float) -> None:
    st.subheader("Common mistakes")
    st.markdown(
        """
- **Dropping the ½.** $\\sum_j(\\mu_j^2 + \\sigma_j^2 - \\log\\sigma_j^2 - 1)$ is twice the KL,
  which is the same as doubling β without saying so.
- **$\\log\\sigma$ where $\\log\\sigma^2$ belongs.** $\\tfrac12(\\mu^2 + \\sigma^2 - \\log\\sigma - 1)$
  is not a divergence: it is smallest at $\\sigma^2 = \\tfrac12$, where it is negative (−0.077), so it
  drives the posterior to the wrong width. The usual cause is naming: an encoder head that outputs
  $\\log\\sigma^2$ is called `log_sigma`. Whatever the name, sampling must then use
  $\\sigma = \\exp(\\tfrac12\\,\\text{logvar})$.
- **Averaging over latent dimensions.** A mean over the latent axis divides the KL by $d$:
  β silently becomes β/d (see above).
- **Differentiating by the variance and calling it σ.** A widely copied derivation writes the term
  as $\\tfrac12(\\mu^2 + \\sigma - \\log\\sigma - 1)$ (its "σ" is really the variance
  $v = \\sigma^2$, the `exp` of the log-variance output) and concludes $\\partial/\\partial\\sigma =
  (\\sigma - 1)/\\sigma$. With respect to the variance the derivative is
  $\\tfrac12(1 - 1/v) = (v-1)/(2v)$, half of what it wrote; with respect to the standard deviation
  it is $\\sigma - 1/\\sigma$. All vanish at $\\sigma = 1$, so the conclusion "pushed towards
  N(0, 1)" survives, but the magnitudes differ.
"""
    )
    with st.expander(f"The right and wrong formulas at μ = {mu:g}, σ = {sigma:g}"):
        st.table(kt.mistakes_table(mu, sigma).round({"value": 4}), hide_index=True)


def trained_run_section() -> None:
    st.subheader("In a trained run")
    try:
        records = [r for r in ui.list_runs() if not r.broken and r.last_metrics]
    except OSError as exc:
        st.error(f"The run store could not be read: {plain_text(exc)}")
        return
    if not records:
        st.info(
            "No run has finished an epoch yet. Train one, then come back to see its KL per dimension."
        )
        st.page_link("pages/train.py", label="Go to Train", icon=":material/model_training:")
        return
    record = ui.pick_run(records, key="run", label="Run")
    if record is None:
        return
    ui.refresh_on_change([record.run_id])  # follows the picked run while it trains
    last = record.last_metrics
    try:
        frame = kt.per_dim_frame(last)
    except ValueError as exc:
        st.warning(f"This run's metrics cannot be shown: {plain_text(exc)}")
        return
    d = len(frame)
    counts = unit_counts(last)
    cols = st.columns(4)
    cols[0].metric("rate Σⱼ KLⱼ (nats)", f"{frame['KL (nats)'].sum():.3f}")
    cols[1].metric("informative", f"{counts.informative} of {d}")
    cols[2].metric("active units", f"{int(frame['active'].sum())} of {d}")
    cols[3].metric("epoch", str(last.get("epoch", "?")))
    ui.chart(kt.per_dim_chart, frame, width="content", figure=f"kl-per-dim-{record.run_id}")
    st.caption(
        f"Three kinds of dimension, as on the Posterior page: **informative** ({INFORMATIVE_RULE}) "
        f"carry information about x; **active only** pass Burda's test ({ACTIVE_RULE}: the "
        "posterior mean still moves with x) but carry almost nothing, their σⱼ² can be anywhere "
        "up to 1 (at large β many sit between 0.93 and 1); **collapsed** ones sit at the prior "
        f"(σⱼ² ≈ 1, KLⱼ ≈ 0). {WHY_COUNTS_DIFFER} Larger β switches more of them off."
    )
    table = ui.lazy_expander("Table", key="kl_dims_table")
    if table:
        table.dataframe(frame, hide_index=True)
    st.page_link(
        "pages/posterior.py",
        label="More on this run on the Posterior page",
        icon=":material/bar_chart:",
        query_params={"run": record.run_id},  # the Posterior page's picker reads ?run=
    )


st.title("The KL term")
formula_section()
chosen_mu, chosen_sigma = one_dimension_section()
sum_not_mean_section()
beta_conventions_section()
mistakes_section(chosen_mu, chosen_sigma)
trained_run_section()
