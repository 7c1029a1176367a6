"""What is wrong with a run before it is created: settings that cannot take effect, a data root
without its files, a β sweep of an objective that ignores β. No torch here: the Train page and the
CLI call it on every submit, and nothing is written when it refuses.

Each finding carries a short message (one line at 800 px) and the numbers behind it as detail.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from vae.learn.config import RunConfig
from vae.learn.datasets import DATASETS
from vae.learn.fields import OBJECTIVES

# Where torchvision keeps each data set's files under a data root (see vae/learn/data.py).
RAW_FOLDERS = {"mnist": "MNIST", "fashion-mnist": "FashionMNIST"}
RAW_FILES = (
    "train-images-idx3-ubyte",
    "train-labels-idx1-ubyte",
    "t10k-images-idx3-ubyte",
    "t10k-labels-idx1-ubyte",
)


@dataclass(frozen=True)
class Finding:
    """One problem: `refuse` findings stop the submit, the others are warnings."""

    setting: str
    message: str
    detail: str = ""
    refuse: bool = False


def steps_of(config: RunConfig) -> int | None:
    """Optimizer steps the whole run takes (None when the data set's size is unknown)."""
    info = DATASETS.get(config.dataset)
    if info is None or not info.n_train:
        return None
    return config.epochs * -(-info.n_train // config.batch_size)


def schedule_findings(config: RunConfig) -> list[Finding]:
    """A capacity or warm-up schedule longer than the run: the objective never reaches its end."""
    steps = steps_of(config)
    if steps is None:
        return []
    found = []
    if config.objective == "capacity" and config.capacity_steps > steps:
        reached = config.capacity_max * steps / config.capacity_steps
        found.append(
            Finding(
                "capacity_steps",
                f"C reaches only {reached:.3g} of {config.capacity_max:g} nats in this run.",
                f"The run takes {steps:,} steps ({config.epochs} epochs of "
                f"{steps // config.epochs:,}); C rises over {config.capacity_steps:,}. Set C "
                f"steps to at most {steps:,} or train longer.",
            )
        )
    if config.objective == "warmup" and config.warmup_steps > steps:
        reached = config.beta * steps / config.warmup_steps
        found.append(
            Finding(
                "warmup_steps",
                f"The KL weight reaches only {reached:.3g} of β = {config.beta:g} in this run.",
                f"The run takes {steps:,} steps ({config.epochs} epochs of "
                f"{steps // config.epochs:,}); the warm-up lasts {config.warmup_steps:,}. Set "
                f"warm-up steps to at most {steps:,} or train longer.",
            )
        )
    return found


def data_root_finding(config: RunConfig) -> Finding | None:
    """A data set that needs files, under a root that does not hold them (checked at submit, so a
    run that cannot load its data is never created)."""
    info = DATASETS.get(config.dataset)
    if info is None or not info.needs_root:
        return None
    root = Path(config.data_root or "data").expanduser()
    raw = root / RAW_FOLDERS.get(config.dataset, "") / "raw"
    missing = [f for f in RAW_FILES if not (raw / f).is_file()]
    legacy = all((raw.parent / "processed" / f).is_file() for f in ("training.pt", "test.pt"))
    if not missing or legacy:
        return None
    zipped = any((raw / f"{f}.gz").is_file() for f in missing)
    return Finding(
        "data_root",
        f"No {info.title} files under this data root.",  # no user text: the page draws markdown
        f"Data root {root}. Expected {', '.join(RAW_FILES)} in {raw} (missing: {', '.join(missing)})."
        + (" Found .gz archives there: unpack them (gunzip)." if zipped else "")
        + " With a connection, download them first (the Train page's button, or --download).",
        refuse=True,
    )


def sweep_finding(config: RunConfig) -> Finding | None:
    """A β sweep of an objective that ignores β would train identical models."""
    objective = OBJECTIVES.get(config.objective)
    if objective is None or objective.uses_beta:
        return None
    return Finding(
        "objective",
        f"The {objective.title} objective ignores β: a β sweep would train identical runs.",
        f"{objective.title} minimises {objective.formula}; vary its own settings "
        f"({', '.join(objective.settings)}) with separate runs instead.",
        refuse=True,
    )


def run_findings(config: RunConfig) -> list[Finding]:
    """Everything to say before one run is created."""
    found = schedule_findings(config)
    if (root := data_root_finding(config)) is not None:
        found.insert(0, root)
    return found


def sweep_findings(config: RunConfig) -> list[Finding]:
    """Everything to say before a β sweep is created."""
    found = run_findings(config)
    if (sweep := sweep_finding(config)) is not None:
        found.insert(0, sweep)
    return found


def refusal(found: list[Finding]) -> str | None:
    """The refusing findings as one message (None: nothing refuses)."""
    refused = [f for f in found if f.refuse]
    return " ".join(f"{f.message} {f.detail}" for f in refused) or None


def fetch_data(config: RunConfig) -> None:
    """Download a data set's missing files into its data root (torchvision, needs a
    connection); DataError says what failed. Called on request, before the run is created."""
    from vae.learn.data import load_dataset  # torch and torchvision: only when asked

    load_dataset(config.dataset, config.data_root, download=True)
