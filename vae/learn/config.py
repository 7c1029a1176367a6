"""Run configuration: one flat dataclass that is saved with every run.

Every knob the user can turn lives here, is validated here, and is written to `config.json` (and
inside every checkpoint) as a plain dict so that `torch.load(weights_only=True)` can read it back.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Sequence
from dataclasses import asdict, dataclass, field, fields

from vae.learn.datasets import DATASETS

ARCHITECTURES = ("mlp", "conv", "linear")
LIKELIHOODS = ("bernoulli", "gaussian")
OBJECTIVES = ("beta", "capacity", "warmup", "free_bits")
DEVICES = ("auto", "cpu", "cuda")
PRECISIONS = ("auto", "fp32", "bf16")

# Bounds the UI sliders and the CLI share; anything outside is refused with a message.
LIMITS: dict[str, tuple[float, float]] = {
    "beta": (0.0, 1000.0),
    "latent_dim": (1, 256),
    "hidden_dim": (8, 4096),
    "epochs": (1, 10_000),
    "batch_size": (1, 16_384),
    "lr": (1e-6, 1.0),
    "seed": (0, 2**31 - 1),
    "threads": (0, 256),
    "gaussian_std": (1e-3, 10.0),
    "capacity_max": (0.0, 1000.0),
    "capacity_gamma": (0.0, 10_000.0),
    "capacity_steps": (1, 10_000_000),
    "warmup_steps": (1, 10_000_000),
    "free_bits": (0.0, 100.0),
}


class ConfigError(ValueError):
    """A config value is out of range or of the wrong kind; `errors` maps field -> message."""

    def __init__(self, errors: dict[str, str]):
        self.errors = errors
        super().__init__("; ".join(f"{k}: {v}" for k, v in errors.items()))


@dataclass
class RunConfig:
    """Everything that defines a training run (and nothing that doesn't)."""

    dataset: str = "digits"
    data_root: str | None = None
    architecture: str = "mlp"
    hidden_dims: list[int] = field(default_factory=lambda: [400])
    latent_dim: int = 20
    likelihood: str = "bernoulli"
    dynamic_binarization: bool = True
    gaussian_std: float = 0.1
    learn_variance: bool = False
    objective: str = "beta"
    beta: float = 1.0
    capacity_max: float = 25.0
    capacity_gamma: float = 100.0
    capacity_steps: int = 10_000
    warmup_steps: int = 1_000
    free_bits: float = 0.5
    epochs: int = 10
    batch_size: int = 128
    lr: float = 1e-3
    seed: int = 0
    threads: int = 0  # 0: let the job runner decide
    device: str = "auto"
    precision: str = "auto"  # auto: bf16 where the hardware computes it natively, else fp32
    name: str = ""

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict) -> RunConfig:
        """Build from a dict, ignoring unknown keys so older/newer files still load.

        Raises ConfigError (never TypeError/OverflowError...) for data from a damaged or foreign
        file: not a dict, or layer sizes that are not whole numbers.
        """
        if not isinstance(data, dict):
            raise ConfigError({"config": f"must be a dictionary, not {type(data).__name__}"})
        known = {f.name for f in fields(cls)}
        config = cls(**{k: v for k, v in data.items() if k in known})
        try:
            config.hidden_dims = [int(h) for h in config.hidden_dims]
        except (TypeError, ValueError, OverflowError):
            raise ConfigError({"hidden_dims": "must be a list of whole numbers"}) from None
        return config

    def validated(self) -> RunConfig:
        """Return self if every field is valid, else raise ConfigError naming each bad field."""
        errors = validation_errors(self)
        if errors:
            raise ConfigError(errors)
        return self

    def describe(self) -> str:
        """One line for tables and tooltips."""
        extra = {
            "capacity": f", C_max={self.capacity_max:g}, γ={self.capacity_gamma:g}",
            "warmup": f", warm-up {self.warmup_steps} steps",
            "free_bits": f", free bits λ={self.free_bits:g}",
        }.get(self.objective, "")
        return (
            f"{self.dataset} {self.architecture} z={self.latent_dim} β={self.beta:g} "
            f"{self.likelihood}{extra}"
        )


def _check_number(value, low: float, high: float, integer: bool) -> str | None:
    if isinstance(value, bool) or not isinstance(value, int | float):
        return "must be a number"
    if not math.isfinite(value):
        return "must be finite"
    if integer and value != int(value):
        return "must be a whole number"
    if not low <= value <= high:
        return f"must be between {low:g} and {high:g}"
    return None


def validation_errors(config: RunConfig) -> dict[str, str]:
    """Every problem with a config, keyed by field name (empty when valid)."""
    errors: dict[str, str] = {}
    integer_fields = {"latent_dim", "epochs", "batch_size", "seed", "threads"}
    integer_fields |= {"capacity_steps", "warmup_steps"}
    for name, (low, high) in LIMITS.items():
        if name == "hidden_dim":
            continue
        problem = _check_number(getattr(config, name), low, high, name in integer_fields)
        if problem:
            errors[name] = problem
    if "lr" not in errors and config.lr <= 0:
        errors["lr"] = "must be positive"
    if not isinstance(config.hidden_dims, list) or not config.hidden_dims:
        errors["hidden_dims"] = "must be a non-empty list of layer sizes"
    else:
        low, high = LIMITS["hidden_dim"]
        for h in config.hidden_dims:
            problem = _check_number(h, low, high, integer=True)
            if problem:
                errors["hidden_dims"] = f"each layer size {problem}"
                break
    choices = {
        "architecture": ARCHITECTURES,
        "likelihood": LIKELIHOODS,
        "objective": OBJECTIVES,
        "device": DEVICES,
        "precision": PRECISIONS,
        "dataset": tuple(DATASETS),
    }
    for name, allowed in choices.items():
        if getattr(config, name) not in allowed:
            errors[name] = (
                f"unknown value {getattr(config, name)!r}; choose one of {', '.join(allowed)}"
            )
    unbounded = config.dataset in DATASETS and DATASETS[config.dataset].unbounded
    if unbounded and config.likelihood != "gaussian":  # Bernoulli needs values in [0, 1]
        errors["likelihood"] = "this data set's values leave [0, 1]: choose gaussian"
    if not isinstance(config.name, str) or len(config.name) > 200:
        errors["name"] = "must be text of at most 200 characters"
    return errors


def parse_number(text: str) -> float:
    """A float from user text, refusing NaN, inf and junk with a message that says so."""
    try:
        value = float(str(text).strip())
    except ValueError:
        raise ValueError(f"{str(text)[:40]!r} is not a number") from None
    if not math.isfinite(value):
        raise ValueError(f"{text!r} is not a finite number")
    return value


def parse_number_list(text: str, most: int = 32) -> list[float]:
    """'0.25, 0.5 1 2' -> [0.25, 0.5, 1.0, 2.0]; commas or spaces; at most `most` values."""
    parts = [p for p in str(text).replace(",", " ").split() if p]
    if not parts:
        raise ValueError("give at least one value")
    if len(parts) > most:
        raise ValueError(f"at most {most} values")
    return [parse_number(p) for p in parts]


def sweep_betas(betas: Iterable[float]) -> list[float]:
    """The β values of a sweep, checked: each within LIMITS and none repeated (a repeat would
    train the same run twice). The app and the CLI both call this before queuing anything."""
    values = [float(b) for b in betas]
    if not values:
        raise ValueError("give at least one β value")
    low, high = LIMITS["beta"]
    for beta in values:
        if not math.isfinite(beta) or not low <= beta <= high:
            raise ValueError(f"β = {beta:g} is outside {low:g}..{high:g}")
    repeated = sorted({b for b in values if values.count(b) > 1})
    if repeated:
        listed = ", ".join(f"{b:g} ({values.count(b)}×)" for b in repeated)
        raise ValueError(f"each β may appear once; repeated: {listed}")
    return values


# ---- which runs can train together (as one stack: see vae/learn/stack.py) ----------------------
STACK_FREE_FIELDS = ("beta", "name", "threads")  # what may differ between the runs of a stack


def stack_key(config: RunConfig) -> tuple:
    """Runs whose configs have equal keys compute the same thing up to β: they can share a stack."""
    return tuple(
        sorted((k, repr(v)) for k, v in config.to_dict().items() if k not in STACK_FREE_FIELDS)
    )


def can_train_together(configs: Sequence[RunConfig]) -> bool:
    """True for two or more valid configs that agree on everything but β (and labels)."""
    if len(configs) < 2:
        return False
    try:
        keys = {stack_key(c.validated()) for c in configs}
    except ConfigError:
        return False
    return len(keys) == 1
