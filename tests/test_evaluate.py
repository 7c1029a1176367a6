"""Evaluation: the IWAE bound against a closed form, MIG on codes we build, the page images, and
the full evaluation of a real (tiny) training run."""

import json
import math
from types import SimpleNamespace

import numpy as np
import pytest
import torch
from helpers import train_run
from torch import nn

from vae.execution.evaluation import evaluate_run
from vae.learn.config import RunConfig
from vae.learn.engine import train
from vae.learn.evaluate import (
    decoder_elements,
    evaluate_model,
    grid,
    iwae_bound,
    latent_map,
    latent_traversal,
    most_informative_dims,
    mutual_information_gap,
    posterior_means,
    prior_samples,
    reconstructions,
)
from vae.learn.model import build_model

EVAL_KEYS = {
    "elbo", "rate", "distortion", "kl_per_dim", "posterior_var", "mean_cov", "active_units",
    "iwae", "iw_samples", "n_test", "likelihood", "mig", "evaluated_at",
}  # fmt: skip


# ---- a linear-Gaussian model (probabilistic PCA) with a known log p(x) --------------------------
class IdentityGaussian(nn.Module):
    """N(x; mean=decoder output, var I): the decoder output is the mean itself (no sigmoid)."""

    def __init__(self, var: float):
        super().__init__()
        self.var = var

    def nll(self, x, logits):
        per_pixel = 0.5 * ((x - logits) ** 2 / self.var + math.log(2 * math.pi * self.var))
        return per_pixel.flatten(start_dim=-3).sum(-1)

    def mean(self, logits):
        return logits


class PPCA(nn.Module):
    """p(z)=N(0,I), p(x|z)=N(Wz+b, s^2 I), so p(x)=N(b, WW^T + s^2 I).

    W has orthogonal columns, so the exact posterior is diagonal: N(M(x-b), diag(v)). The encoder
    returns that mean with the variance multiplied by `q_scale` (1: exact posterior).
    """

    def __init__(self, q_scale: float, dim: int = 6, latent_dim: int = 2, sigma: float = 0.5):
        super().__init__()
        g = torch.Generator().manual_seed(0)
        q, _ = torch.linalg.qr(torch.randn(dim, latent_dim, generator=g, dtype=torch.float64))
        w = q * torch.linspace(2.0, 1.0, latent_dim, dtype=torch.float64)
        b = 0.3 * torch.randn(dim, generator=g, dtype=torch.float64)
        post_var = 1.0 / (1.0 + (w * w).sum(0) / sigma**2)
        self.w64, self.b64, self.sigma2 = w, b, sigma**2
        self.register_buffer("w", w.float())
        self.register_buffer("b", b.float())
        self.register_buffer("m", (post_var[:, None] * w.T / sigma**2).float())
        self.register_buffer("logvar", torch.log(q_scale * post_var).float())
        self.q_scale, self.dim, self.latent_dim = q_scale, dim, latent_dim
        self.likelihood = IdentityGaussian(sigma**2)

    def encode(self, x):
        mu = (x.flatten(1) - self.b) @ self.m.T
        return mu, self.logvar.expand_as(mu)

    def decode(self, z):
        return (z @ self.w.T + self.b).reshape(-1, 1, 1, self.dim)

    def log_px(self, x) -> torch.Tensor:
        cov = self.w64 @ self.w64.T + self.sigma2 * torch.eye(self.dim, dtype=torch.float64)
        px = torch.distributions.MultivariateNormal(self.b64, cov)
        return px.log_prob(x.flatten(1).double())

    def elbo(self, x) -> torch.Tensor:
        """log p(x) - KL(q || posterior); same means, variances off by q_scale in every dim."""
        c = self.q_scale
        return self.log_px(x) - 0.5 * self.latent_dim * (c - 1.0 - math.log(c))

    def sample(self, n: int, seed: int = 1) -> torch.Tensor:
        g = torch.Generator().manual_seed(seed)
        z = torch.randn(n, self.latent_dim, generator=g, dtype=torch.float64)
        noise = math.sqrt(self.sigma2) * torch.randn(n, self.dim, generator=g, dtype=torch.float64)
        return (z @ self.w64.T + self.b64 + noise).float().reshape(n, 1, 1, self.dim)


def gap_and_error(bound: torch.Tensor, reference: torch.Tensor) -> tuple[float, float]:
    """Mean of bound - reference and its Monte Carlo standard error."""
    diff = bound - reference
    return float(diff.mean()), float(diff.std() / math.sqrt(len(diff)))


def test_iwae_with_one_sample_averages_to_the_analytic_elbo():
    model = PPCA(q_scale=3.0)
    x = model.sample(200).repeat(50, 1, 1, 1)  # 10,000 single-sample estimates
    bound = iwae_bound(model, x, k=1, generator=torch.Generator().manual_seed(0))
    gap, error = gap_and_error(bound, model.elbo(x))
    assert abs(gap) < 4 * error + 1e-3
    assert float((model.log_px(x) - model.elbo(x)).mean()) > 0.5  # the q is visibly wrong


def test_iwae_rises_with_k_towards_the_exact_log_likelihood():
    model = PPCA(q_scale=3.0)
    x = model.sample(500)
    log_px = model.log_px(x)
    g = torch.Generator().manual_seed(0)
    gaps = {
        k: gap_and_error(iwae_bound(model, x, k=k, generator=g), log_px) for k in (1, 10, 100, 1000)
    }
    print(f"\nPPCA exact log p(x) = {float(log_px.mean()):.4f}")
    for k, (gap, error) in gaps.items():
        print(
            f"  k={k:5d}  bound = {float(log_px.mean()) + gap:.4f}  (gap {gap:+.4f} ± {error:.4f})"
        )
    ks = sorted(gaps)
    for a, b in zip(ks[:-1], ks[1:], strict=True):
        tolerance = 3 * math.hypot(gaps[a][1], gaps[b][1])
        assert gaps[b][0] >= gaps[a][0] - tolerance, (a, b, gaps)
    for gap, error in gaps.values():
        assert gap <= 3 * error + 1e-3  # a lower bound, up to Monte Carlo error
    assert gaps[1][0] < -0.5  # k=1 is the loose ELBO...
    assert abs(gaps[1000][0]) < 0.01  # ...k=1000 is nearly exact


@pytest.mark.parametrize("k, batch_size", [(1, None), (7, None), (100, 3), (50, 250)])
def test_iwae_with_the_exact_posterior_is_log_px_for_any_k(k, batch_size):
    """p(x,z)/q(z|x) = p(x) for every z: no variance, and chunking over data and k is invisible."""
    model = PPCA(q_scale=1.0)
    x = model.sample(40)
    bound = iwae_bound(model, x, k=k, batch_size=batch_size)
    assert bound.shape == (40,) and bound.dtype == torch.float64
    torch.testing.assert_close(bound, model.log_px(x), atol=2e-4, rtol=0)


def test_iwae_is_reproducible_with_a_seeded_generator():
    model = PPCA(q_scale=3.0)
    x = model.sample(30)
    a = iwae_bound(model, x, k=20, generator=torch.Generator().manual_seed(5))
    b = iwae_bound(model, x, k=20, generator=torch.Generator().manual_seed(5))
    c = iwae_bound(model, x, k=20, generator=torch.Generator().manual_seed(6))
    assert torch.equal(a, b) and not torch.equal(a, c)
    with pytest.raises(ValueError):
        iwae_bound(model, x, k=0)


def test_default_chunks_are_sized_by_the_largest_decoder_tensor():
    mlp = build_model(RunConfig(hidden_dims=[32], latent_dim=2), (1, 28, 28))
    conv = build_model(RunConfig(architecture="conv", hidden_dims=[32], latent_dim=2), (1, 64, 64))
    assert decoder_elements(mlp, torch.rand(1, 1, 28, 28)) == 784
    assert decoder_elements(conv, torch.rand(1, 1, 64, 64)) == 32 * 32 * 32  # a hidden layer
    assert not mlp._forward_hooks and not any(m._forward_hooks for m in conv.modules())


@pytest.mark.parametrize("architecture", ["mlp", "conv"])
def test_iwae_decoded_in_blocks_is_the_bound_decoded_all_at_once(monkeypatch, architecture):
    """The blocks only bound how much is decoded at a time: the same draws give the same bound,
    whether one block holds a single sample or every sample of the call (up to float32 rounding:
    a one-row product sums in another order)."""
    from vae.learn import evaluate

    torch.manual_seed(0)
    config = RunConfig(architecture=architecture, hidden_dims=[32], latent_dim=3)
    model = build_model(config, (1, 28, 28))
    x = (torch.rand(23, 1, 28, 28) < 0.3).float()
    bounds = []
    for block in (1, 10**9):  # one sample per block; everything in one
        monkeypatch.setattr(evaluate, "DECODE_BLOCK", block)
        bounds.append(iwae_bound(model, x, k=17, generator=torch.Generator().manual_seed(3)))
    torch.testing.assert_close(bounds[0], bounds[1], atol=0, rtol=1e-6)
    assert not torch.equal(bounds[0], iwae_bound(model, x, k=17))  # the draws matter


# ---- MIG ------------------------------------------------------------------------------------
SIZES = (4, 5, 3)


def random_factors(n: int = 3000, seed: int = 0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    return np.stack([rng.integers(0, s, n) for s in SIZES], axis=1).astype(np.float32)


def test_mig_is_one_for_a_code_that_copies_each_factor():
    factors = random_factors()
    codes = factors * np.array([1.0, -2.0, 0.5]) + 7.0  # any scale or offset per dim
    assert mutual_information_gap(codes, factors, SIZES) > 0.97


def test_mig_is_zero_for_a_code_of_independent_noise():
    factors = random_factors()
    codes = np.random.default_rng(1).normal(size=(len(factors), 4))
    assert mutual_information_gap(codes, factors, SIZES) < 0.05


def test_mig_is_lower_when_one_dim_encodes_two_factors():
    factors = random_factors()
    perfect = mutual_information_gap(factors, factors, SIZES)
    # dim 0 encodes factors 0 and 1 together; dim 1 copies factor 1, so its gap collapses
    both = factors[:, 0] * SIZES[1] + factors[:, 1]
    entangled = np.stack([both, factors[:, 1], factors[:, 2]], axis=1)
    mig = mutual_information_gap(entangled, factors, SIZES)
    assert mig < perfect - 0.2
    assert mig == pytest.approx(2 / 3, abs=0.05)  # factors 0 and 2 keep a gap of 1, factor 1 none


def test_mig_skips_constant_factors_and_accepts_torch_tensors():
    factors = random_factors()
    with_constant = np.concatenate([factors, np.zeros((len(factors), 1), np.float32)], axis=1)
    full = mutual_information_gap(torch.from_numpy(factors), torch.from_numpy(factors), SIZES)
    assert mutual_information_gap(factors, with_constant, (*SIZES, 1)) == pytest.approx(full)
    assert math.isnan(mutual_information_gap(factors, np.zeros((len(factors), 1)), (1,)))
    with pytest.raises(ValueError):
        mutual_information_gap(factors, factors, (2, 2, 2))  # indices beyond the sizes


# ---- images for the pages --------------------------------------------------------------------
@pytest.fixture(scope="module")
def small_model():
    torch.manual_seed(0)
    return build_model(RunConfig(latent_dim=3, hidden_dims=[16]), (1, 8, 8)).eval()


@pytest.fixture(scope="module")
def images():
    return torch.rand(10, 1, 8, 8, generator=torch.Generator().manual_seed(0))


def test_prior_samples_are_mean_images_and_seeded(small_model):
    a = prior_samples(small_model, n=12, seed=3)
    assert a.shape == (12, 1, 8, 8) and a.min() >= 0 and a.max() <= 1
    assert not set(a.unique().tolist()) <= {0.0, 1.0}  # means, not binary draws
    assert torch.equal(a, prior_samples(small_model, n=12, seed=3))
    assert not torch.equal(a, prior_samples(small_model, n=12, seed=4))


def test_reconstructions_interleave_inputs_and_outputs(small_model, images):
    out = reconstructions(small_model, images, n=4)
    assert out.shape == (8, 1, 8, 8) and out.min() >= 0 and out.max() <= 1
    assert torch.equal(out[0::2], images[:4])
    with torch.no_grad():
        mu, _ = small_model.encode(images[:4])
        expected = small_model.likelihood.mean(small_model.decode(mu))
    torch.testing.assert_close(out[1::2], expected)


def test_traversal_moves_only_the_chosen_dimension(small_model, images):
    values = torch.linspace(-2, 2, 5)
    out = latent_traversal(small_model, images[0], dims=[2, 0], values=values)
    assert out.shape == (10, 1, 8, 8) and out.min() >= 0 and out.max() <= 1
    with torch.no_grad():
        base, _ = small_model.encode(images[:1])
        for block, dim in enumerate([2, 0]):
            codes = base.repeat(5, 1)
            codes[:, dim] = values
            expected = small_model.likelihood.mean(small_model.decode(codes))
            torch.testing.assert_close(out[block * 5 : (block + 1) * 5], expected)
    assert latent_traversal(small_model, images[:1], dims=[1]).shape == (9, 1, 8, 8)


def test_most_informative_dims_sorts_by_kl():
    assert most_informative_dims([0.1, 3.0, 0.0, 1.5], 2) == [1, 3]
    assert most_informative_dims([1.0, 1.0, 2.0], 5) == [2, 0, 1]


def test_latent_map_methods(small_model, images):
    y = torch.arange(10)
    df = latent_map(small_model, images, y)
    assert list(df.columns) == ["z1", "z2", "label"] and len(df) == 10
    assert df.attrs["method"] == "active" and len(df.attrs["dims"]) == 2
    mu, _ = posterior_means(small_model, images)
    d1, d2 = df.attrs["dims"]
    np.testing.assert_allclose(df["z1"], mu[:, d1].double().numpy())
    np.testing.assert_allclose(df["z2"], mu[:, d2].double().numpy())
    assert df["label"].tolist() == list(range(10))
    pca = latent_map(small_model, images, y, method="pca")
    assert pca.attrs["method"] == "pca" and len(pca) == 10
    assert abs(pca["z1"].mean()) < 1e-9  # centred projections
    assert pca["z1"].var() >= pca["z2"].var()  # the first axis explains the most
    two = build_model(RunConfig(latent_dim=2, hidden_dims=[16]), (1, 8, 8))
    assert latent_map(two, images, y).attrs["method"] == "latent"


def test_grid_is_uint8_rgb(images):
    array = grid(images, nrow=5, padding=1)
    assert array.dtype == np.uint8 and array.shape == (2 * 9 + 1, 5 * 9 + 1, 3)


# ---- full evaluation of real runs ------------------------------------------------------------
@pytest.fixture(scope="module")
def trained():
    config = RunConfig(dataset="digits", hidden_dims=[64], latent_dim=4, epochs=1, batch_size=256)
    from vae.learn.data import load_dataset

    dataset = load_dataset(config.dataset)
    state = train(config, dataset=dataset)
    return state.model.eval(), dataset, config


def test_evaluate_model_on_a_trained_model(trained):
    model, dataset, config = trained
    result = evaluate_model(model, dataset, config, iw_samples=50, seed=0)
    assert result.keys() >= EVAL_KEYS
    json.dumps(result, allow_nan=False)
    assert result["n_test"] == 1000 and result["iw_samples"] == 50
    assert result["likelihood"] == "bernoulli" and result["mig"] is None
    assert len(result["kl_per_dim"]) == 4 and 0 <= result["active_units"] <= 4
    assert result["elbo"] == pytest.approx(-(result["rate"] + result["distortion"]))
    assert result["iwae"] >= result["elbo"] - 0.5
    again = evaluate_model(model, dataset, config, iw_samples=50, seed=0)
    other = evaluate_model(model, dataset, config, iw_samples=50, seed=1)
    timing = {"evaluated_at", "eval_seconds"}
    assert {k: v for k, v in again.items() if k not in timing} == {
        k: v for k, v in result.items() if k not in timing
    }
    assert other["iwae"] != result["iwae"]


def test_evaluate_model_computes_mig_when_the_data_has_factors(trained):
    model, dataset, config = trained
    test = dataset.test
    factors = torch.stack([test.y, test.y % 2], dim=1).float()  # stand-in factors: digit, parity
    with_factors = SimpleNamespace(
        info=dataset.info, test=SimpleNamespace(x=test.x, factors=factors)
    )
    result = evaluate_model(model, with_factors, config, iw_samples=2)
    assert 0.0 <= result["mig"] <= 1.0
    json.dumps(result, allow_nan=False)


def test_evaluate_run_writes_eval_json(store, tiny_config):
    run_id = store.create_run(tiny_config)
    assert train_run(store, run_id) == "finished"
    saved = store.read_eval(run_id)
    assert saved is not None and saved.keys() >= EVAL_KEYS
    assert saved["iw_samples"] == 100 and saved["epoch"] == 1
    result = evaluate_run(store, run_id, iw_samples=500)
    assert result["iw_samples"] == 500 == store.read_eval(run_id)["iw_samples"]
    assert result["iwae"] >= saved["iwae"] - 0.5  # more samples: a bound at least as tight
