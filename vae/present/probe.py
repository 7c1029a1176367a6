"""Your own input through a sweep: prepare a drawn, uploaded or test image the way the data set's
images are, then read what each β's model makes of it (reconstruction, μⱼ, σⱼ², KLⱼ, the rate),
walk between two inputs, and decode points of the latent plane.

The Probe page only puts these results on screen (no Streamlit here).
"""

from __future__ import annotations

import io
import warnings
from dataclasses import dataclass

import numpy as np
import pandas as pd
import torch
from PIL import Image

from vae.learn.data import TEST_BINARIZATION_SEED, bernoulli_draw
from vae.learn.evaluate import _images, model_device, most_informative_dims
from vae.learn.metrics import eval_mode
from vae.learn.objective import kl_per_dim

MAX_UPLOAD_BYTES = 8 * 2**20  # a photo of a digit is far smaller
MAX_UPLOAD_PIXELS = 40_000_000  # checked from the header, before any pixel is decoded
MNIST_LIKE = ("digits", "mnist", "fashion-mnist")
DIGIT_BOX = 20  # MNIST: each digit fitted into 20 x 20, centred by its centre of mass in 28 x 28
INK_THRESHOLD = 0.1  # grey level above which a pixel counts as ink (for the bounding box)
INTERPOLATION_STEPS = 9

PREPARATION = {
    "digits": "as MNIST was made: grey levels in [0, 1] (ink bright on black; a light background "
    "is inverted), the ink's bounding box scaled to fit 20 × 20 pixels keeping its aspect, placed "
    "in a 28 × 28 image with its centre of mass at the centre",
    "other": "grey levels in [0, 1] (ink bright on black; a light background is inverted), the "
    "ink's bounding box scaled to fill the image keeping its aspect, centred",
    "bernoulli": "then binarised like the test split: each pixel is 1 with probability its grey "
    "level (one fixed seed, so every β sees the same pixels)",
    "gaussian": "grey levels kept (a Gaussian decoder models them directly)",
}


class ProbeInputError(ValueError):
    """An input that cannot be used; the message says why and what to do."""


# ---- reading inputs ------------------------------------------------------------------------------
def grey_from_upload(data: bytes) -> np.ndarray:
    """An uploaded image file as H x W grey levels in [0, 1], ink bright.

    Bytes and pixel count are checked before anything is decoded; any mode PIL reads (palette,
    alpha, 16-bit, CMYK...) is converted; animated files give their first frame.
    """
    if not data:
        raise ProbeInputError("the file is empty")
    if len(data) > MAX_UPLOAD_BYTES:
        raise ProbeInputError(
            f"the file is {len(data):,} bytes; images up to {MAX_UPLOAD_BYTES // 2**20} MiB "
            "are accepted (a digit needs far less)"
        )
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            image = Image.open(io.BytesIO(data))  # reads the header only
            width, height = image.size
            if width * height > MAX_UPLOAD_PIXELS:
                raise ProbeInputError(
                    f"the image is {width:,} × {height:,} pixels; at most "
                    f"{MAX_UPLOAD_PIXELS:,} pixels are accepted"
                )
            image.seek(0)
            image.load()
    except ProbeInputError:
        raise
    except (Image.DecompressionBombError, Image.DecompressionBombWarning):
        raise ProbeInputError("the image declares too many pixels to open safely") from None
    except Exception as exc:  # PIL raises many types for foreign or damaged files
        raise ProbeInputError(
            f"not an image this app can read ({type(exc).__name__}); try PNG or JPEG"
        ) from None
    if image.mode in ("RGBA", "LA", "PA") or "transparency" in image.info:
        rgba = image.convert("RGBA")  # transparent parts become the background (white)
        white = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
        image = Image.alpha_composite(white, rgba)
    grey = np.asarray(image.convert("L"), dtype=np.float32) / 255.0
    return _ink_bright(grey)


def grey_from_canvas(rgba: np.ndarray | None) -> np.ndarray:
    """The drawing canvas's H x W x 4 pixels (light strokes on a transparent or dark background)
    as grey levels in [0, 1]; ProbeInputError when nothing is drawn."""
    if rgba is None:
        raise ProbeInputError("draw a digit on the canvas: one stroke is enough")
    pixels = np.asarray(rgba, dtype=np.float32) / 255.0
    if pixels.ndim != 3 or pixels.shape[2] not in (3, 4):
        raise ProbeInputError("the canvas sent an unexpected picture; draw again")
    grey = pixels[..., :3].mean(-1)
    if pixels.shape[2] == 4:
        grey = grey * pixels[..., 3]
    if float(grey.max(initial=0.0)) < INK_THRESHOLD:
        raise ProbeInputError("the canvas is empty: draw a digit with one or more strokes")
    return grey


def _ink_bright(grey: np.ndarray) -> np.ndarray:
    """Invert a picture whose border is light (dark ink on paper): the data sets' ink is bright."""
    border = np.concatenate([grey[0], grey[-1], grey[:, 0], grey[:, -1]])
    return 1.0 - grey if float(np.median(border)) > 0.5 else grey


def prepare(grey: np.ndarray, image_shape, dataset: str) -> torch.Tensor:
    """Grey levels (ink bright) -> one image [1, C, H, W] in [0, 1] laid out like the data set's.

    MNIST-like sets: the ink's box fitted into 20 x 20, centred by its centre of mass in 28 x 28
    (how MNIST was made). Others: the box scaled to fill the frame, centred.
    """
    channels, height, width = (int(v) for v in image_shape)
    grey = np.clip(np.nan_to_num(np.asarray(grey, dtype=np.float32)), 0.0, 1.0)
    ink = grey > INK_THRESHOLD
    if not ink.any():
        raise ProbeInputError(
            "the picture has no ink: nothing darker or lighter than its background"
        )
    rows, cols = np.flatnonzero(ink.any(1)), np.flatnonzero(ink.any(0))
    crop = grey[rows[0] : rows[-1] + 1, cols[0] : cols[-1] + 1]
    mnist = dataset in MNIST_LIKE and (height, width) == (28, 28)
    box = DIGIT_BOX if mnist else min(height, width)
    scale = box / max(crop.shape)
    size = (max(1, round(crop.shape[1] * scale)), max(1, round(crop.shape[0] * scale)))
    small = Image.fromarray((crop * 255).astype(np.uint8)).resize(size, Image.Resampling.LANCZOS)
    small = np.asarray(small, dtype=np.float32) / 255.0
    out = np.zeros((height, width), dtype=np.float32)
    if mnist and small.sum() > 0:
        ys, xs = np.indices(small.shape)
        cy, cx = (ys * small).sum() / small.sum(), (xs * small).sum() / small.sum()
        top, left = round(height / 2 - cy), round(width / 2 - cx)
    else:
        top, left = (height - small.shape[0]) // 2, (width - small.shape[1]) // 2
    top = min(max(top, 0), height - small.shape[0])
    left = min(max(left, 0), width - small.shape[1])
    out[top : top + small.shape[0], left : left + small.shape[1]] = small
    image = torch.from_numpy(np.clip(out, 0.0, 1.0))
    return image.expand(channels, height, width).reshape(1, channels, height, width).clone()


def model_input(x: torch.Tensor, likelihood: str) -> torch.Tensor:
    """What the encoder sees: binarised like the test split for Bernoulli runs, else x itself."""
    if likelihood != "bernoulli":
        return x
    generator = torch.Generator().manual_seed(TEST_BINARIZATION_SEED)
    return bernoulli_draw(x.float().contiguous(), generator)


def preparation_text(dataset: str, likelihood: str) -> str:
    first = PREPARATION["digits" if dataset in MNIST_LIKE else "other"]
    return f"{first}; {PREPARATION['bernoulli' if likelihood == 'bernoulli' else 'gaussian']}."


def to_picture(images: torch.Tensor, zoom: int = 1) -> np.ndarray:
    """[N, C, H, W] in [0, 1] side by side as one H x (N W) x 3 uint8 array (1 px white gaps)."""
    tiles = images.float().cpu().clamp(0, 1)
    if tiles.shape[1] == 1:
        tiles = tiles.expand(-1, 3, -1, -1)
    tiles = tiles[:, :3]
    n, _, h, w = tiles.shape
    canvas = torch.ones(3, h, n * (w + 1) - 1)
    for i, tile in enumerate(tiles):
        canvas[:, :, i * (w + 1) : i * (w + 1) + w] = tile
    array = (canvas.permute(1, 2, 0) * 255).round().to(torch.uint8).numpy()
    return array.repeat(zoom, 0).repeat(zoom, 1) if zoom > 1 else array


# ---- what each β makes of the input -------------------------------------------------------------
@dataclass
class Probe:
    """One model's reading of one input."""

    run_id: str
    beta: float
    reconstruction: torch.Tensor  # [1, C, H, W]: the decoded posterior mean
    dims: pd.DataFrame  # dim, mu, var, kl (nats)

    @property
    def rate(self) -> float:
        """KL(q(z|x) ‖ p(z)) of this input: the KLⱼ summed, in nats."""
        return float(self.dims["kl"].sum())


def probe(model, x: torch.Tensor, run_id: str = "", beta: float = float("nan")) -> Probe:
    """Encode x [1, C, H, W]; μⱼ, σⱼ² and KLⱼ of q(z|x), and the decoded mean."""
    with eval_mode(model), torch.no_grad():
        mu, logvar = model.encode(x.to(model_device(model)))
        recon = _images(model, model.decode(mu))
    mu64, logvar64 = mu.double().cpu()[0], logvar.double().cpu()[0]
    kl = kl_per_dim(mu64[None], logvar64[None])[0]
    dims = pd.DataFrame(
        {
            "dim": [f"z{j}" for j in range(len(mu64))],
            "j": range(len(mu64)),
            "mu": mu64.numpy(),
            "var": logvar64.exp().numpy(),
            "kl": kl.numpy(),
        }
    )
    return Probe(run_id, beta, recon, dims)


def probes_frame(probes: list[Probe]) -> pd.DataFrame:
    """Long form (beta, run, dim, j, mu, var, kl) of several probes, for one chart of a sweep."""
    frames = []
    for p in probes:
        frame = p.dims.copy()
        frame["beta"] = p.beta
        frame["run_id"] = p.run_id
        frames.append(frame)
    return pd.concat(frames, ignore_index=True) if frames else pd.DataFrame()


# ---- paths through latent space -----------------------------------------------------------------
def interpolation(
    model, x_a: torch.Tensor, x_b: torch.Tensor, steps: int = INTERPOLATION_STEPS
) -> torch.Tensor:
    """Decoded means along the straight line from μ(x_a) to μ(x_b): [steps, C, H, W].

    The first and last images are the two inputs' reconstructions (their decoded means).
    """
    if steps < 2:
        raise ValueError("an interpolation needs at least its two ends")
    with eval_mode(model), torch.no_grad():
        device = model_device(model)
        mu_a, _ = model.encode(x_a.to(device))
        mu_b, _ = model.encode(x_b.to(device))
        t = torch.linspace(0.0, 1.0, steps, device=device, dtype=mu_a.dtype)[:, None]
        codes = (1 - t) * mu_a + t * mu_b
        codes[0], codes[-1] = mu_a[0], mu_b[0]  # exactly the ends, whatever the rounding
        return _images(model, model.decode(codes))


def map_dims(kl_per_dim_values, latent_dim: int) -> list[int]:
    """The two dimensions a latent map shows: both for J = 2, else the two with the largest KL."""
    if latent_dim <= 2:
        return list(range(latent_dim))
    return sorted(most_informative_dims(kl_per_dim_values, 2))


def decode_point(model, dims: list[int], point: tuple[float, float], base=None) -> torch.Tensor:
    """Decode z with z[dims] = point and the other dimensions at `base` (default: 0, the prior's
    mean): [1, C, H, W]."""
    with eval_mode(model), torch.no_grad():
        device = model_device(model)
        z = torch.zeros(1, model.latent_dim, device=device)
        if base is not None:
            z[0] = torch.as_tensor(base, dtype=z.dtype, device=device).reshape(-1)
        for d, v in zip(dims, point, strict=False):
            z[0, d] = float(v)
        return _images(model, model.decode(z))


def manifold_grid(model, dims: list[int], n: int = 15, base=None) -> torch.Tensor:
    """Kingma & Welling's figure: decode an n x n grid of the plane of `dims`, at the Gaussian
    quantiles 1/(2n) .. 1 - 1/(2n) (so the grid covers the prior's mass evenly), others at `base`.

    Returns [n * n, C, H, W], row by row, the second dimension rising upwards.
    """
    q = (torch.arange(n, dtype=torch.float64) + 0.5) / n
    values = torch.distributions.Normal(0.0, 1.0).icdf(q).float()
    with eval_mode(model), torch.no_grad():
        device = model_device(model)
        z = torch.zeros(n * n, model.latent_dim, device=device)
        if base is not None:
            z[:] = torch.as_tensor(base, dtype=z.dtype, device=device).reshape(1, -1)
        for row in range(n):
            for col in range(n):
                z[row * n + col, dims[0]] = values[col]
                if len(dims) > 1:
                    z[row * n + col, dims[1]] = values[n - 1 - row]
        return _images(model, model.decode(z))


def grid_points(extent: float = 3.0, n: int = 25) -> pd.DataFrame:
    """Clickable points covering [-extent, extent]² (the latent map's click targets)."""
    values = np.linspace(-extent, extent, n)
    z1, z2 = np.meshgrid(values, values)
    return pd.DataFrame({"z1": z1.ravel(), "z2": z2.ravel()})
