"""Every run setting declared once: what it is called, what values it takes, when it applies and
what role it plays when runs are compared. No torch here (the CLI's --help and `list` read it).

Everything that shows, checks or compares settings derives from `SETTINGS`: RunConfig's
validation and description, the CLI's flags, the Train page's labels and help, the runs tables,
the CSV and `vae list`, the stack key (which runs can train as one stack) and the comparison key
(which runs the Tradeoff page and the gallery draw as one set).

Adding a setting: a field in RunConfig (config.py) and an entry in SETTINGS. Adding a choice
(an architecture, a likelihood): the tuple or dict below. Adding an objective: its loss in
objective.py and an entry in OBJECTIVES naming the settings it reads.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass

from vae.learn.datasets import DATASETS

# ---- the choices ---------------------------------------------------------------------------
ARCHITECTURES = ("mlp", "conv", "linear")
DEVICES = ("auto", "cpu", "cuda")
PRECISIONS = ("auto", "fp32", "bf16")


@dataclass(frozen=True)
class Objective:
    """What an objective is, in words, and which settings it reads."""

    title: str  # "β-VAE"
    formula: str  # "D + β·R"
    own: str  # its own settings in words, formatted with the config's values (β is added)
    settings: tuple[str, ...] = ()  # the settings only this objective reads
    uses_beta: bool = True  # False: β changes nothing, so a β sweep is refused
    linear_in_beta: bool = True  # D + β·R at its optimum: the slope −β overlay applies


OBJECTIVES: dict[str, Objective] = {
    "beta": Objective("β-VAE", "D + β·R", "β-VAE"),
    "capacity": Objective(
        "capacity",
        "D + γ·|R − C(t)|",
        "capacity C → {capacity_max:g} nats over {capacity_steps:,} steps, γ = {capacity_gamma:g}",
        settings=("capacity_max", "capacity_gamma", "capacity_steps"),
        uses_beta=False,
        linear_in_beta=False,
    ),
    # After its warm-up the objective is D + β·R, so the slope −β applies at the end of the run.
    "warmup": Objective(
        "KL warm-up",
        "D + min(1, t/T)·β·R",
        "KL warm-up over {warmup_steps:,} steps",
        settings=("warmup_steps",),
    ),
    "free_bits": Objective(
        "free bits",
        "D + β·Σⱼ max(λ, batch-mean KLⱼ)",
        "free bits λ = {free_bits:g} nats",
        settings=("free_bits",),
        linear_in_beta=False,
    ),
}

# The settings only one likelihood reads.
LIKELIHOODS: dict[str, tuple[str, ...]] = {
    "bernoulli": ("dynamic_binarization",),
    "gaussian": ("gaussian_std", "learn_variance"),
}

# ---- roles in a comparison -----------------------------------------------------------------
VARIED = "varied"  # what a sweep varies: differs within a comparison set
REPLICATE = "replicate"  # runs that differ only here are replicates of one point
EXECUTION = "execution"  # how or where it runs, not what it computes: never separates runs
LABEL = "label"  # a name for people
SEPARATES = "separates"  # changes what is computed: runs that differ here are not comparable
ROLES = (VARIED, REPLICATE, EXECUTION, LABEL, SEPARATES)


@dataclass(frozen=True)
class Setting:
    """One run setting. `kind` is bool, int, float, str or list (of whole numbers)."""

    name: str
    label: str  # for controls and column headers
    help: str  # one line for --help and tooltips
    kind: type
    role: str = SEPARATES
    low: float | None = None
    high: float | None = None
    choices: tuple[str, ...] | None = None
    unit: str = ""
    short: str = ""  # in compact labels: "lr 0.003"; empty: the label
    headline: bool = False  # always named in a comparison set's label
    stack_free: bool = False  # may differ between the runs trained as one stack
    shown_default: str | None = None  # how --help writes a default whose value says nothing
    max_chars: int = 200  # text settings: the longest value accepted
    applies: Callable[[Mapping], bool] | None = None  # None: always

    def applies_to(self, values: Mapping) -> bool:
        """Whether this setting takes effect for a run with these settings."""
        return True if self.applies is None else bool(self.applies(values))

    @property
    def flag(self) -> str:
        return "--" + self.name.replace("_", "-")

    def text(self, value) -> str:
        """A value as a report writes it: on/off, 400-200, 0.001, blank for None."""
        if value is None:
            return ""
        if isinstance(value, bool):
            return "on" if value else "off"
        if isinstance(value, list | tuple):
            return "-".join(str(v) for v in value)
        if isinstance(value, float):
            return f"{value:g}"
        if isinstance(value, int):
            return f"{value:,}" if abs(value) >= 10_000 else str(value)
        return str(value)

    def phrase(self, value) -> str:
        """'lr 0.003', 'σ 0.05', 'learned variance on'."""
        unit = f" {self.unit}" if self.unit and value is not None else ""
        return f"{self.short or self.label} {self.text(value)}{unit}"


def _objective_reads(name: str) -> Callable[[Mapping], bool]:
    return lambda v: name in OBJECTIVES.get(v.get("objective"), Objective("", "", "")).settings


def _likelihood_reads(name: str) -> Callable[[Mapping], bool]:
    return lambda v: name in LIKELIHOODS.get(v.get("likelihood"), ())


def _needs_root(values: Mapping) -> bool:
    info = DATASETS.get(values.get("dataset"))
    return bool(info and info.needs_root)


def _uses_beta(values: Mapping) -> bool:
    objective = OBJECTIVES.get(values.get("objective"))
    return objective is None or objective.uses_beta


def _declare(*settings: Setting) -> dict[str, Setting]:
    return {s.name: s for s in settings}


SETTINGS: dict[str, Setting] = _declare(
    Setting("dataset", "Data set", "data set (digits is built in and works offline)", str,
            choices=tuple(DATASETS), headline=True),
    Setting("data_root", "Data root", "folder holding MNIST/Fashion-MNIST files", str,
            role=EXECUTION, shown_default="./data", max_chars=4096, applies=_needs_root),
    Setting("architecture", "Architecture", "mlp, conv or linear (no hidden layer: the theory's "
            "case)", str, choices=ARCHITECTURES,
            short="arch", headline=True),
    Setting("hidden_dims", "Hidden units", "hidden layer sizes (mlp: the encoder's, mirrored in "
            "the decoder; conv: FC size)", list, low=8, high=4096, short="hidden", headline=True,
            applies=lambda v: v.get("architecture") != "linear"),
    Setting("latent_dim", "Latent dimensions J", "number of latent dimensions J", int, low=1,
            high=256, short="J", headline=True),
    Setting("likelihood", "Likelihood", "bernoulli (binarised pixels) or gaussian (with its "
            "normaliser)", str, choices=tuple(LIKELIHOODS), headline=True),
    Setting("dynamic_binarization", "Dynamic binarisation", "draw fresh binary pixels each "
            "epoch (bernoulli only)", bool, short="dyn. binarisation",
            applies=_likelihood_reads("dynamic_binarization")),
    Setting("gaussian_std", "Decoder σ", "decoder standard deviation (gaussian; the initial "
            "value if learned)", float, low=1e-3, high=10.0, short="σ",
            applies=_likelihood_reads("gaussian_std")),
    Setting("learn_variance", "Learned variance", "learn the gaussian decoder's variance", bool,
            applies=_likelihood_reads("learn_variance")),
    Setting("objective", "Objective", "beta (D + βR), capacity (D + γ|R − C|), warmup (β ramps "
            "up), free_bits", str, choices=tuple(OBJECTIVES), headline=True),
    Setting("beta", "β", "weight β of the KL term", float, role=VARIED, low=0.0, high=1000.0,
            stack_free=True, applies=_uses_beta),
    Setting("capacity_max", "C_max", "capacity objective: final C in nats", float, low=0.0,
            high=1000.0, unit="nats", applies=_objective_reads("capacity_max")),
    Setting("capacity_gamma", "γ", "capacity objective: γ", float, low=0.0, high=10_000.0,
            applies=_objective_reads("capacity_gamma")),
    Setting("capacity_steps", "C steps", "capacity objective: steps over which C rises to its "
            "maximum", int, low=1, high=10_000_000, unit="steps",
            applies=_objective_reads("capacity_steps")),
    Setting("warmup_steps", "Warm-up steps", "warm-up objective: steps over which the KL weight "
            "rises to β", int, low=1, high=10_000_000, short="warm-up", unit="steps",
            applies=_objective_reads("warmup_steps")),
    Setting("free_bits", "λ", "free-bits objective: floor λ (nats) on each dimension's batch-mean KLⱼ", float,
            low=0.0, high=100.0, unit="nats", applies=_objective_reads("free_bits")),
    Setting("epochs", "Epochs", "training epochs", int, low=1, high=10_000, headline=True),
    Setting("batch_size", "Batch size", "minibatch size", int, low=1, high=16_384, short="batch"),
    Setting("lr", "Learning rate", "Adam learning rate", float, low=1e-6, high=1.0, short="lr"),
    Setting("seed", "Seed", "random seed (same seed and config: same numbers)", int,
            role=REPLICATE, low=0, high=2**31 - 1),
    Setting("threads", "Threads", "torch threads (0: all cores for train, shared out for sweep)",
            int, role=EXECUTION, low=0, high=256, stack_free=True),
    Setting("device", "Device", "auto (CUDA when available), cpu or cuda", str, role=EXECUTION,
            choices=DEVICES),
    # bf16 and fp32 round differently but train the same model on the same objective: a
    # precision never makes two runs incomparable (the table shows it).
    Setting("precision", "Precision", "auto (bf16 where the hardware computes it natively), "
            "fp32 or bf16", str, role=EXECUTION, choices=PRECISIONS),
    Setting("name", "Name", "a label for the run", str, role=LABEL, stack_free=True,
            shown_default="none"),
)  # fmt: skip


def applicable(values: Mapping) -> list[Setting]:
    """The settings that take effect for a run with these values, in declaration order."""
    return [s for s in SETTINGS.values() if s.applies_to(values)]


def stack_key(values: Mapping) -> tuple:
    """Runs with equal keys compute the same thing up to β: they can train as one stack."""
    return tuple((s.name, repr(values.get(s.name))) for s in SETTINGS.values() if not s.stack_free)


def comparison_key(values: Mapping) -> tuple:
    """Runs with equal keys differ at most in β, seed and how they ran: they may be compared.

    Only settings that apply count: two capacity runs that differ in β (which capacity ignores)
    are replicates of one point, and a gaussian σ means nothing to a bernoulli run."""
    return tuple(
        (s.name, repr(values.get(s.name)))
        for s in SETTINGS.values()
        if s.role == SEPARATES and s.applies_to(values)
    )


def objective_text(values: Mapping, with_beta: bool = True) -> str:
    """What the objective is, with its numbers: 'capacity C → 25 nats over 10,000 steps, γ = 100',
    'KL warm-up over 1,000 steps, β = 4' (never 'β = 1' for an objective that ignores β)."""
    objective = OBJECTIVES.get(values.get("objective"))
    if objective is None:
        return str(values.get("objective"))
    try:
        text = objective.own.format(**values)
    except (KeyError, ValueError, TypeError):
        text = objective.title
    if with_beta and objective.uses_beta:
        text += f", β = {SETTINGS['beta'].text(values.get('beta'))}"
    return text


def beta_text(values: Mapping) -> str:
    """'β = 4' for a run's short label, or the objective's own words where β does nothing."""
    if _uses_beta(values):
        return f"β = {SETTINGS['beta'].text(values.get('beta'))}"
    return objective_text(values).split(" over ")[0]


def set_label(values: Mapping, defaults: Mapping) -> str:
    """A comparison set in words: the headline settings, then every separating setting that
    differs from the defaults ('digits · mlp 400 · J 20 · bernoulli · β-VAE · 10 epochs · lr 0.003')."""
    parts = [
        SETTINGS["dataset"].text(values.get("dataset")),
        f"{values.get('architecture')} {SETTINGS['hidden_dims'].text(values.get('hidden_dims'))}",
        f"J = {values.get('latent_dim')}",
        str(values.get("likelihood")),
    ]
    objective = OBJECTIVES.get(values.get("objective"))
    parts.append(objective_text(values, with_beta=False))  # without β, which the set varies
    parts.append(f"{values.get('epochs')} epochs")
    own = set(objective.settings) if objective else set()
    for s in SETTINGS.values():
        if s.headline or s.role != SEPARATES or s.name in own or not s.applies_to(values):
            continue
        if values.get(s.name) != defaults.get(s.name):
            parts.append(s.phrase(values.get(s.name)))
    return " · ".join(parts)


def differing(rows: list[Mapping]) -> list[str]:
    """The names of the settings whose values are not all equal across `rows` (a setting that
    applies to none of them is left out; where it does not apply it counts as blank)."""
    names = []
    for s in SETTINGS.values():
        shown = [values.get(s.name) if s.applies_to(values) else None for values in rows]
        if any(v is not None for v in shown) and any(repr(v) != repr(shown[0]) for v in shown):
            names.append(s.name)
    return names


def cell(values: Mapping, name: str):
    """A setting's value for a table: None (a blank cell) where it does not apply."""
    setting = SETTINGS[name]
    return values.get(name) if setting.applies_to(values) else None
