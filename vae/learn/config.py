"""Run configuration: one flat dataclass that is saved with every run.

Every knob the user can turn lives here, is validated here, and is written to `config.json` (and
inside every checkpoint) as a plain dict so that `torch.load(weights_only=True)` can read it back.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field, fields

from vae.learn import fields as F
from vae.learn.datasets import DATASETS
from vae.learn.fields import ARCHITECTURES, DEVICES, PRECISIONS, SETTINGS  # noqa: F401 (re-exported)

LIKELIHOODS = tuple(F.LIKELIHOODS)
OBJECTIVES = tuple(F.OBJECTIVES)

# Bounds the UI controls and the CLI share (from the declarations in fields.py); anything outside
# is refused with a message. "hidden_dim" bounds each layer size of hidden_dims.
LIMITS: dict[str, tuple[float, float]] = {
    ("hidden_dim" if s.kind is list else s.name): (s.low, s.high)
    for s in SETTINGS.values()
    if s.low is not None
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
        """The fields as a plain dict (lists copied): a flat config needs no deep copy, and the
        pages build this for every run they group (10,000 runs: 0.1 s instead of 2.6 s)."""
        return {k: list(v) if isinstance(v, list) else v for k, v in vars(self).items()}

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
        """One line for captions and tooltips: the model and what the objective is."""
        values = self.to_dict()
        hidden = SETTINGS["hidden_dims"].text(self.hidden_dims)
        return (
            f"{self.dataset} {self.architecture} {hidden} z={self.latent_dim} {self.likelihood}, "
            f"{F.objective_text(values)}"
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
    """Every problem with a config, keyed by field name (empty when valid); the kinds, ranges
    and choices come from the declarations in fields.py."""
    errors: dict[str, str] = {}
    for s in SETTINGS.values():
        value = getattr(config, s.name)
        problem = None
        if s.kind is list:
            if not isinstance(value, list) or not value:
                problem = "must be a non-empty list of layer sizes"
            else:
                for item in value:
                    if (inner := _check_number(item, s.low, s.high, integer=True)) is not None:
                        problem = f"each layer size {inner}"
                        break
        elif s.kind is bool:
            if not isinstance(value, bool):
                problem = "must be on or off (true or false)"
        elif s.kind in (int, float):
            problem = _check_number(value, s.low, s.high, s.kind is int)
            if problem is None and s.name == "lr" and value <= 0:
                problem = "must be positive"
        elif s.choices is not None:
            if value not in s.choices:
                problem = f"unknown value {value!r}; choose one of {', '.join(s.choices)}"
        elif value is not None and (not isinstance(value, str) or len(value) > s.max_chars):
            problem = f"must be text of at most {s.max_chars:,} characters"
        if problem:
            errors[s.name] = problem
    data = DATASETS.get(config.dataset)
    if data is not None and data.unbounded and config.likelihood != "gaussian":
        errors["likelihood"] = "this data set's values leave [0, 1]: choose gaussian"
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
STACK_FREE_FIELDS = tuple(s.name for s in SETTINGS.values() if s.stack_free)


def stack_key(config: RunConfig) -> tuple:
    """Runs whose configs have equal keys compute the same thing up to β: they can share a stack."""
    return F.stack_key(config.to_dict())


def comparison_key(config: RunConfig) -> tuple:
    """Runs whose configs have equal keys may be compared: they differ at most in β and seed."""
    return F.comparison_key(config.to_dict())


def can_train_together(configs: Sequence[RunConfig]) -> bool:
    """True for two or more valid configs that agree on everything but β (and labels)."""
    if len(configs) < 2:
        return False
    try:
        keys = {stack_key(c.validated()) for c in configs}
    except ConfigError:
        return False
    return len(keys) == 1
