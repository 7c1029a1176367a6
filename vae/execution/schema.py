"""What each file of a run folder must hold, checked field by field when it is read.

The pages, the CLI and the scheduler index these dictionaries directly (`status["updated"]`,
`row["rate"]`); a file that passes here cannot make them raise. Each check raises SchemaError
naming the file and the field, which the store turns into the run's `broken` reason.
"""

from __future__ import annotations

import math

from vae.execution.states import RunState
from vae.learn.fields import SETTINGS

STATES = tuple(RunState)  # defined in vae.execution.states
MAX_TIME = 1e11  # seconds since 1970: year 5138; later values overflow time.localtime
MAX_LATENT = 4096  # per-dimension lists longer than this are not a run of this app
MAX_TEXT = 10_000
MAX_EPOCH = 10**7  # far beyond any run (the settings stop at thousands), far below absurd


class SchemaError(ValueError):
    """A file's content does not have the expected fields and types."""


def _number(value) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool) and math.isfinite(value)


def _numbers(values: list) -> bool:
    """Every item a finite int or float (bools excluded), at C speed: lists hold 256 numbers."""
    return set(map(type, values)) <= {int, float} and all(map(math.isfinite, values))


def _whole(value) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _check(ok: bool, where: str, field: str, expected: str, value) -> None:
    if not ok:
        shown = repr(value)
        shown = shown if len(shown) <= 60 else shown[:57] + "..."
        raise SchemaError(f"{where}: {field} must be {expected}, not {shown}")


def check_status(status) -> dict:
    """status.json: a known state, creation and update times; optional fields of the right type."""
    where = "status.json"
    if not isinstance(status, dict):
        raise SchemaError(f"{where} must hold a dictionary, not {type(status).__name__}")
    _check(status.get("state") in STATES, where, "state", "one of " + ", ".join(STATES),
           status.get("state"))  # fmt: skip
    for name in ("created", "updated"):
        value = status.get(name)
        _check(_number(value) and 0 <= value <= MAX_TIME, where, name, "a time in seconds", value)
    for name in ("started", "ended"):
        if status.get(name) is not None:
            value = status[name]
            _check(_number(value) and 0 <= value <= MAX_TIME, where, name, "a time", value)
    reason = status.get("reason", "")
    _check(isinstance(reason, str) and len(reason) <= MAX_TEXT, where, "reason", "text", reason)
    group = status.get("group")
    _check(group is None or (isinstance(group, str) and len(group) <= 200), where, "group",
           "text or null", group)  # fmt: skip
    job = status.get("job")
    _check(job is None or _job_ref(job), where, "job", "a job reference (backend, host, ids)", job)
    place = status.get("where")
    _check(place is None or (isinstance(place, str) and len(place) <= 200), where, "where",
           "text or null", place)  # fmt: skip
    epoch = status.get("epoch")
    _check(epoch is None or (_whole(epoch) and epoch >= 0), where, "epoch", "a whole number", epoch)
    return status


def _job_ref(job) -> bool:
    """A backend's job ref (vae.execution.backend): a few short texts and whole numbers."""
    if not (isinstance(job, dict) and len(job) <= 16 and isinstance(job.get("backend"), str)):
        return False
    for key, value in job.items():
        if not isinstance(key, str) or len(key) > 40:
            return False
        if not (value is None or _whole(value) or (isinstance(value, str) and len(value) <= 200)):
            return False
    pid = job.get("pid")
    return pid is None or (_whole(pid) and 0 < pid < 2**31)


# Fields every epoch line must have: what the Tradeoff, Posterior and Train pages draw.
METRIC_NUMBERS = ("rate", "distortion", "elbo")
METRIC_LISTS = ("kl_per_dim", "posterior_var", "mean_cov")
OPTIONAL_NUMBERS = (
    "train_loss", "train_distortion", "train_rate", "kl_weight", "images_per_s", "seconds",
    "time", "capacity", "decoder_std",
)  # fmt: skip


def check_metrics_line(row, latent_dim: int | None = None, line: int | None = None) -> dict:
    """One metrics.jsonl line: epoch, R, D, ELBO, active units and the per-dimension lists."""
    where = "metrics.jsonl" + (f" line {line}" if line is not None else "")
    if not isinstance(row, dict):
        raise SchemaError(f"{where} must hold a dictionary, not {type(row).__name__}")
    _check(_whole(row.get("epoch")) and 1 <= row["epoch"] <= MAX_EPOCH, where, "epoch",
           f"a whole number from 1 to {MAX_EPOCH:,}", row.get("epoch"))  # fmt: skip
    step = row.get("step", 0)
    _check(_whole(step) and step >= 0, where, "step", "a whole number", step)
    for name in METRIC_NUMBERS:
        _check(_number(row.get(name)), where, name, "a finite number", row.get(name))
    units = row.get("active_units")
    _check(_whole(units) and 0 <= units <= MAX_LATENT, where, "active_units", "a whole number",
           units)  # fmt: skip
    lengths = set()
    for name in METRIC_LISTS:
        values = row.get(name)
        ok = isinstance(values, list) and 0 < len(values) <= MAX_LATENT and _numbers(values)
        _check(ok, where, name, "a list of finite numbers", values)
        lengths.add(len(values))
    if len(lengths) > 1:
        raise SchemaError(f"{where}: kl_per_dim, posterior_var and mean_cov differ in length")
    if latent_dim is not None and lengths != {latent_dim}:
        raise SchemaError(
            f"{where}: per-dimension lists have {lengths.pop()} entries; the config says "
            f"{latent_dim} latent dimensions"
        )
    dims = latent_dim if latent_dim is not None else next(iter(lengths))
    _check(units <= dims, where, "active_units", f"at most the {dims} latent dimensions", units)
    for name in OPTIONAL_NUMBERS:
        if name in row and row[name] is not None:
            _check(_number(row[name]), where, name, "a finite number or null", row[name])
    return row


def check_next_epoch(row: dict, previous: dict | None, line: int | None = None) -> dict:
    """Epochs strictly increase from line to line (a repeated line is damage, not a new epoch)."""
    if previous is not None and row["epoch"] <= previous["epoch"]:
        where = "metrics.jsonl" + (f" line {line}" if line is not None else "")
        raise SchemaError(
            f"{where}: epoch {row['epoch']} does not follow epoch {previous['epoch']} "
            "(epochs must increase)"
        )
    return row


EVAL_NUMBERS = ("elbo", "iwae", "rate", "distortion", "mig", "eval_seconds", "evaluated_at")
EVAL_NUMBERS += ("mutual_info", "marginal_kl", "log_n")  # where the rate goes (vae.learn.theory)
EVAL_WHOLE = ("active_units", "n_test", "iw_samples", "epoch", "seed")


def check_eval(evaluation) -> dict:
    """eval.json: the numbers the Checkpoints page shows; any of them may be null."""
    where = "eval.json"
    if not isinstance(evaluation, dict):
        raise SchemaError(f"{where} must hold a dictionary, not {type(evaluation).__name__}")
    for name in EVAL_NUMBERS:
        value = evaluation.get(name)
        _check(value is None or _number(value), where, name, "a finite number or null", value)
    for name in EVAL_WHOLE:
        value = evaluation.get(name)
        ok = value is None or (_whole(value) and value >= 0)
        _check(ok, where, name, "a whole number or null", value)
    for name in METRIC_LISTS:
        values = evaluation.get(name)
        ok = values is None or (isinstance(values, list) and _numbers(values))
        _check(ok, where, name, "a list of numbers or null", values)
    return evaluation


def check_config_types(data) -> None:
    """Types RunConfig.validated() does not look at (it checks ranges and choices)."""
    where = "config.json"
    if not isinstance(data, dict):
        return  # RunConfig.from_dict reports it
    root = data.get("data_root")
    _check(root is None or (isinstance(root, str) and len(root) <= 4096), where, "data_root",
           "text or null", root)  # fmt: skip
    for name in (s.name for s in SETTINGS.values() if s.kind is bool):
        if name in data:
            _check(isinstance(data[name], bool), where, name, "true or false", data[name])
    hidden = data.get("hidden_dims", [])
    _check(isinstance(hidden, list) and len(hidden) <= 64, where, "hidden_dims",
           "a list of at most 64 layer sizes", hidden)  # fmt: skip
