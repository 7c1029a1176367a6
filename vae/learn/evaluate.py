"""Evaluation of a trained VAE: the IWAE bound on log p(x), MIG, and the images the pages show.

Everything here takes a model that only needs `encode`, `decode` and a `likelihood` with `nll` and
`mean`, and runs on the model's device. `evaluate_run` is what the worker calls after training;
it writes eval.json, so every number in it is a plain, finite JSON value.
"""

from __future__ import annotations

import itertools
import math
import time
from collections.abc import Callable, Sequence

import numpy as np
import torch

from vae.learn.data import test_inputs
from vae.learn.datasets import SHAPES_FACTOR_SIZES
from vae.learn.metrics import eval_mode, posterior_summary
from vae.learn.objective import kl_per_dim
from vae.learn.theory import covariance_spectrum, predict, rate_split, theory_baseline, theory_exact

# Elements in the largest tensor of one decoder call (2**24 float32 = 64 MB, logits or a hidden
# layer), so k=5000 fits in memory for any image size. Not smaller: on CPU, glibc serves blocks of
# 4-32 MB from its heap, and thousands of such calls grew the process by gigabytes (k=5000 on the
# digits test set); blocks above 32 MB are mapped and unmapped each call, so memory stays flat.
DECODE_BUDGET = 2**24
# Elements in the largest tensor of one decoder *block* inside such a call (2 MB float32). The
# draws stay per call (so the numbers do not depend on it); the decoding and the likelihood go a
# block at a time, so the logits and their element-wise work stay in the core's cache: the IWAE
# bound of a digits run takes 1.1 s instead of 1.7 (k=100, one thread, bench/RESULTS.md).
DECODE_BLOCK = 2**19
ENCODE_BATCH = 2048
TRAVERSAL_VALUES = torch.linspace(-3.0, 3.0, 9)
MIG_NOTE = (
    "MIG bins each code dimension into 20 equal-width bins, too few to resolve 40 orientations "
    "or 32 positions: a perfectly disentangled code (each factor itself as one dimension) scores "
    "0.864 on the shapes test split, not 1 (0.929 with 40 bins), so read MIG against that ceiling"
)


# ---- small helpers -------------------------------------------------------------------------
def model_device(model: torch.nn.Module) -> torch.device:
    """Where the model lives (CPU for a module without tensors)."""
    for tensor in itertools.chain(model.parameters(), model.buffers()):
        return tensor.device
    return torch.device("cpu")


def _model_dtype(model: torch.nn.Module) -> torch.dtype:
    for tensor in itertools.chain(model.parameters(), model.buffers()):
        if tensor.is_floating_point():
            return tensor.dtype
    return torch.float32


def _as_input(model: torch.nn.Module, x: torch.Tensor) -> torch.Tensor:
    """x on the model's device and in its float type."""
    return x.to(model_device(model), _model_dtype(model))


def _generator(model: torch.nn.Module, seed: int) -> torch.Generator:
    return torch.Generator(device=model_device(model)).manual_seed(seed)


def posterior_means(
    model, x: torch.Tensor, batch_size: int = ENCODE_BATCH
) -> tuple[torch.Tensor, torch.Tensor]:
    """(mu, logvar) of q(z|x) for every row of x, encoded in chunks, returned on the CPU."""
    mus, logvars = [], []
    with eval_mode(model):
        for chunk in x.split(batch_size):
            mu, logvar = model.encode(_as_input(model, chunk))
            mus.append(mu.cpu())
            logvars.append(logvar.cpu())
    return torch.cat(mus), torch.cat(logvars)


# ---- the importance-weighted bound -------------------------------------------------------------
def _chunk_sizes(k: int, per_call: int) -> tuple[int, int]:
    """(data points, importance samples) per decoder call, their product at most `per_call`."""
    if k <= per_call:
        return max(1, per_call // k), k
    return 1, per_call


def decoder_elements(model, x: torch.Tensor) -> int:
    """Elements per sample of the largest tensor the decoder makes (its output or any layer's)."""
    sizes: list[int] = []

    def record(module, inputs, output) -> None:
        if isinstance(output, torch.Tensor):
            sizes.append(output.numel())

    mu, _ = model.encode(x[:1])
    handles = [m.register_forward_hook(record) for m in model.modules()]
    try:
        sizes.append(model.decode(mu).numel())
    finally:
        for handle in handles:
            handle.remove()
    return max(sizes)


def _log_likelihoods(model, x: torch.Tensor, z: torch.Tensor, block: int) -> torch.Tensor:
    """log p(x|z) for z [kc, n, J] and x [n, ...]: float64 [kc, n], decoded `block` rows at a
    time (row r of the flattened z belongs to data point r mod n)."""
    kc, n = z.shape[:2]
    rows = z.reshape(kc * n, z.shape[-1])
    data = x.unsqueeze(0).expand(kc, *x.shape).reshape(kc * n, *x.shape[1:])
    nll = torch.empty(kc * n, dtype=x.dtype, device=x.device)
    for start in range(0, kc * n, block):
        pixels = data[start : start + block]
        logits = model.decode(rows[start : start + block]).reshape(pixels.shape)
        nll[start : start + block] = model.likelihood.nll(pixels, logits)
    return -nll.view(kc, n).double()


def _log_weights(
    model, x: torch.Tensor, k: int, per_call: int, generator, block: int
) -> torch.Tensor:
    """log p(x|z_i) + log p(z_i) - log q(z_i|x) for one data chunk: float64 [n, k]."""
    mu, logvar = model.encode(x)
    std = torch.exp(0.5 * logvar)
    _, k_chunk = _chunk_sizes(k, per_call)
    columns = []
    for start in range(0, k, k_chunk):
        kc = min(k_chunk, k - start)
        eps = torch.randn((kc, *mu.shape), generator=generator, device=mu.device, dtype=mu.dtype)
        z = mu + std * eps  # [kc, n, J]
        log_px_z = _log_likelihoods(model, x, z, block)  # [kc, n]
        # log p(z) - log q(z|x); the log(2 pi) terms cancel.
        log_pz_qz = -0.5 * (z.double().pow(2) - eps.double().pow(2) - logvar.double()).sum(-1)
        columns.append((log_px_z + log_pz_qz).T)
    return torch.cat(columns, dim=1)


def iwae_bound(
    model,
    x: torch.Tensor,
    k: int = 100,
    batch_size: int | None = None,
    generator: torch.Generator | None = None,
    progress: Callable[[int, int], None] | None = None,
) -> torch.Tensor:
    """Per-data-point IWAE bound log (1/k) sum_i p(x, z_i) / q(z_i|x), z_i ~ q(z|x) (Burda et al.).

    It tightens towards log p(x) as k grows, and k=1 is the ELBO in expectation. `batch_size` is the
    number of z samples drawn per call (data points x importance samples); by default the largest
    tensor they would make in one decoder call (logits or a hidden layer) takes at most 64 MB, so
    k=5000 fits anywhere. They are decoded in blocks of DECODE_BLOCK elements, which changes
    nothing in the result (the same draws, each decoded alone). Returns float64 [N] on the CPU.
    `generator` (on the model's device) makes the draw reproducible. `progress(done, total)` is
    called after each chunk of data points.
    """
    if k < 1:
        raise ValueError(f"k must be at least 1, got {k}")
    if len(x) == 0:
        return torch.zeros(0, dtype=torch.float64)
    bounds = []
    with eval_mode(model):
        per_sample = decoder_elements(model, _as_input(model, x[:1]))
        if batch_size is None:
            batch_size = DECODE_BUDGET // per_sample
        per_call = max(1, batch_size)
        block = max(1, DECODE_BLOCK // per_sample)
        n_data, _ = _chunk_sizes(k, per_call)
        for chunk in x.split(n_data):
            log_w = _log_weights(model, _as_input(model, chunk), k, per_call, generator, block)
            bounds.append((torch.logsumexp(log_w, dim=1) - math.log(k)).cpu())
            if progress is not None:
                progress(sum(len(b) for b in bounds), len(x))
    return torch.cat(bounds)


# ---- mutual information gap -------------------------------------------------------------------
def discretize(codes: np.ndarray, bins: int) -> np.ndarray:
    """Each column into `bins` equal-width bins over its own range (disentanglement_lib style)."""
    out = np.zeros(codes.shape, dtype=np.int64)
    for j in range(codes.shape[1]):
        edges = np.histogram(codes[:, j], bins)[1]
        out[:, j] = np.digitize(codes[:, j], edges[:-1]) - 1  # 0 .. bins-1
    return out


def _mutual_information(a: np.ndarray, na: int, b: np.ndarray, nb: int) -> float:
    """Plug-in mutual information (nats) of two discrete variables with values in [0, na), [0, nb)."""
    joint = np.bincount(a * nb + b, minlength=na * nb).reshape(na, nb) / len(a)
    pa, pb = joint.sum(1, keepdims=True), joint.sum(0, keepdims=True)
    nz = joint > 0
    return float((joint[nz] * np.log(joint[nz] / (pa @ pb)[nz])).sum())


def _entropy(a: np.ndarray, na: int) -> float:
    p = np.bincount(a, minlength=na) / len(a)
    p = p[p > 0]
    return float(-(p * np.log(p)).sum())


def mutual_information_gap(
    codes, factors, factor_sizes: Sequence[int] | None = None, bins: int = 20
) -> float:
    """MIG (Chen et al. 2018): mean over factors of (top MI - second MI) / H(factor).

    codes [N, J] are latent means, discretised into `bins` equal-width bins per dimension; factors
    [N, F] are factor indices in [0, factor_sizes[f]) (sizes default to max + 1). Factors that take
    one value (zero entropy) are skipped; NaN when none is left. With one code dimension the
    second MI is 0. With the default 20 bins the ceiling on the shapes sets is below 1 (MIG_NOTE).
    """
    codes = np.asarray(torch.as_tensor(codes, dtype=torch.float64).cpu())
    factors = np.rint(np.asarray(torch.as_tensor(factors, dtype=torch.float64).cpu())).astype(
        np.int64
    )
    if codes.ndim != 2 or factors.ndim != 2 or len(codes) != len(factors):
        raise ValueError("codes must be [N, J] and factors [N, F] with the same N")
    if factor_sizes is None:
        factor_sizes = [int(c.max()) + 1 if len(c) else 1 for c in factors.T]
    if len(factor_sizes) != factors.shape[1]:
        raise ValueError(f"{len(factor_sizes)} factor sizes for {factors.shape[1]} factors")
    if factors.size and (factors.min() < 0 or (factors >= np.asarray(factor_sizes)).any()):
        raise ValueError("factor indices must lie in [0, size) for each factor")
    binned = discretize(codes, bins)
    gaps = []
    for f, size in enumerate(factor_sizes):
        entropy = _entropy(factors[:, f], size)
        if entropy <= 1e-12:
            continue
        mi = [
            _mutual_information(binned[:, j], bins, factors[:, f], size)
            for j in range(len(binned[0]))
        ]
        top = sorted(mi, reverse=True) + [0.0]
        gaps.append((top[0] - top[1]) / entropy)
    return float(np.mean(gaps)) if gaps else float("nan")


# ---- images for the pages ---------------------------------------------------------------------
def _images(model, logits: torch.Tensor) -> torch.Tensor:
    return model.likelihood.mean(logits).clamp(0.0, 1.0).float().cpu()


def prior_samples(model, n: int = 64, seed: int = 0) -> torch.Tensor:
    """Mean images of the decoder at z ~ N(0, I): what the model generates, without pixel noise."""
    with eval_mode(model):
        z = torch.randn(
            (n, model.latent_dim),
            generator=_generator(model, seed),
            device=model_device(model),
            dtype=_model_dtype(model),
        )
        return _images(model, model.decode(z))


def reconstructions(model, x: torch.Tensor, n: int = 16) -> torch.Tensor:
    """[2n, C, H, W] interleaved: input 0, its reconstruction, input 1, its reconstruction, ...

    Reconstructions decode the posterior mean (no sampling). With an even `nrow` in the grid each
    input sits directly left of its reconstruction.
    """
    x = x[:n]
    with eval_mode(model):
        mu, _ = model.encode(_as_input(model, x))
        recon = _images(model, model.decode(mu))
    pairs = torch.stack([x.float().cpu().clamp(0.0, 1.0), recon], dim=1)
    return pairs.reshape(-1, *x.shape[1:])


def latent_traversal(
    model, x_ref: torch.Tensor, dims: Sequence[int], values: torch.Tensor | None = None
) -> torch.Tensor:
    """Vary each of `dims` over `values`, the others held at the posterior mean of x_ref.

    x_ref is one image [C, H, W] (or [1, C, H, W]). Returns [len(dims) * len(values), C, H, W],
    one block of len(values) images per dim: a grid with nrow=len(values) has one row per dim.
    """
    values = TRAVERSAL_VALUES if values is None else torch.as_tensor(values)
    x_ref = x_ref.reshape(1, *x_ref.shape[-3:])
    with eval_mode(model):
        mu, _ = model.encode(_as_input(model, x_ref))
        codes = mu.repeat(len(dims) * len(values), 1)
        values = values.to(codes.device, codes.dtype)
        for i, d in enumerate(dims):
            codes[i * len(values) : (i + 1) * len(values), d] = values
        return _images(model, model.decode(codes))


def most_informative_dims(kl_per_dim: Sequence[float], n: int) -> list[int]:
    """Indices of the n dims with the largest KL (ties: lower index first)."""
    kl = [float(v) for v in kl_per_dim]
    return sorted(range(len(kl)), key=lambda j: (-kl[j], j))[: max(0, n)]


def latent_map(model, x: torch.Tensor, y, method: str = "auto"):
    """2-D picture of the latent means: columns z1, z2, label; df.attrs["method"] says how.

    "auto": the latent itself when latent_dim is 2 ("latent"), else the two dims with the largest
    KL on x ("active"); "active" forces the latter, "pca" projects mu on its top two principal
    axes. df.attrs["dims"] lists the dims shown (active/latent).
    """
    if method not in ("auto", "active", "pca"):
        raise ValueError(f"unknown method {method!r}; choose auto, active or pca")
    mu, logvar = posterior_means(model, x)
    mu = mu.double()
    attrs: dict = {}
    if method == "pca":
        centred = mu - mu.mean(0)
        _, s, vh = torch.linalg.svd(centred, full_matrices=False)
        axes = vh[:2]
        axes = axes * torch.sign(axes[torch.arange(len(axes)), axes.abs().argmax(1)])[:, None]
        coords = centred @ axes.T
        if coords.shape[1] < 2:
            coords = torch.cat([coords, torch.zeros(len(coords), 1, dtype=coords.dtype)], 1)
        variance = s.pow(2)
        explained = (variance[:2] / variance.sum()).tolist() if variance.sum() > 0 else []
        attrs = {"method": "pca", "explained_variance": explained}
    else:
        if method == "auto" and mu.shape[1] == 2:
            dims, name = [0, 1], "latent"
        else:
            kl = kl_per_dim(mu, logvar.double()).mean(0).tolist()
            dims, name = most_informative_dims(kl, 2), "active"
        coords = mu[:, dims]
        if coords.shape[1] < 2:  # latent_dim 1: a strip
            coords = torch.cat([coords, torch.zeros(len(coords), 1, dtype=coords.dtype)], 1)
        attrs = {"method": name, "dims": dims}
    import pandas as pd  # late import: a worker never draws a map, and pandas costs it 0.5 s

    labels = np.asarray(torch.as_tensor(y).cpu()) if y is not None else np.full(len(mu), -1)
    df = pd.DataFrame({"z1": coords[:, 0].numpy(), "z2": coords[:, 1].numpy(), "label": labels})
    df.attrs.update(attrs)
    return df


def grid(images: torch.Tensor, nrow: int = 8, padding: int = 2) -> np.ndarray:
    """Images [N, C, H, W] in [0, 1] as one H x W x 3 uint8 array, ready for st.image."""
    from torchvision.utils import make_grid  # late import: torchvision is slow to load

    tiles = make_grid(images.float().cpu().clamp(0, 1), nrow=nrow, padding=padding, pad_value=1.0)
    return (tiles.permute(1, 2, 0) * 255).round().to(torch.uint8).numpy()


# ---- whole-model evaluation -------------------------------------------------------------------
def _json_ready(value):
    """Plain Python numbers and lists, non-finite floats as None (eval.json forbids NaN)."""
    if isinstance(value, dict):
        return {k: _json_ready(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_json_ready(v) for v in value]
    if isinstance(value, bool | int | str) or value is None:
        return value
    value = float(value)
    return value if math.isfinite(value) else None


def _factor_sizes(dataset, factors: torch.Tensor) -> list[int] | None:
    """The known factor sizes of the shapes sets; None (inferred from the data) otherwise."""
    name = getattr(getattr(dataset, "info", None), "name", "")
    if name.startswith("shapes") and factors.shape[1] == len(SHAPES_FACTOR_SIZES):
        return list(SHAPES_FACTOR_SIZES)
    return None


def evaluate_model(
    model, dataset, config, iw_samples: int = 100, seed: int = 0, progress=None
) -> dict:
    """Test-split numbers for a trained model, JSON-ready; same model and seed -> same numbers.

    Posterior summary (ELBO, rate, distortion, per-dim KL, variances, active units) on the test
    inputs the training loop also uses, the mean IWAE bound with k=iw_samples, and MIG when the
    data set has ground-truth factors (else None), the rate's split into I_q(x; z) and
    KL(q(z) ‖ p(z)) over the N test points (with ln N, I_q's ceiling), and the closed-form
    prediction when the likelihood is a fixed-σ Gaussian (`theory["exact"]`: the model is linear,
    so it is this run's optimum; else a linear baseline). `progress` goes to `iwae_bound`.
    """
    started = time.perf_counter()
    x = test_inputs(config, dataset, model_device(model))
    summary = posterior_summary(model, x, generator=_generator(model, seed))
    iwae = iwae_bound(
        model, x, k=iw_samples, generator=_generator(model, seed + 1), progress=progress
    )
    mu, logvar = posterior_means(model, x)
    split = rate_split(mu, logvar, generator=torch.Generator().manual_seed(seed + 2))
    mig = None
    factors = getattr(dataset.test, "factors", None)
    if factors is not None:
        mig = mutual_information_gap(mu, factors, _factor_sizes(dataset, factors))
    theory = None
    if theory_exact(config) or theory_baseline(config):
        spectrum = covariance_spectrum(dataset.train.x)
        theory = predict(spectrum, config.beta, config.gaussian_std**2, config.latent_dim).to_dict()
        theory["exact"] = theory_exact(config)
    result = {
        **summary.to_dict(),
        "iwae": float(iwae.mean()),
        "iw_samples": int(iw_samples),
        "n_test": len(x),
        "likelihood": config.likelihood,
        "mig": mig,
        **split,
        "theory": theory,
        "seed": int(seed),
        "eval_seconds": time.perf_counter() - started,
        "evaluated_at": time.time(),
    }
    return _json_ready(result)
