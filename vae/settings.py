"""Every setting that comes from outside a run's config, each with its range.

Environment variables (VAE_STORE, VAE_MAX_JOBS, VAE_WARM_WORKERS, VAE_BACKEND, VAE_RAY_ADDRESS) and command-line
numbers (sweep --jobs, eval --iw-samples) are read here and nowhere else, so a zero, a word or a huge number gets the
same kind of message everywhere: the setting's name, the value given and the range allowed.
"""

from __future__ import annotations

import argparse
import os
import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path


class SettingError(ValueError):
    """A setting's value is not allowed; the message names the setting and its range."""


@dataclass(frozen=True)
class IntSetting:
    """A whole number between `low` and `high`; `default` may depend on the machine."""

    name: str
    low: int
    high: int
    default: Callable[[], int | None]  # None: decided elsewhere (e.g. measured on the machine)
    meaning: str

    def range_text(self) -> str:
        return f"a whole number from {self.low} to {self.high}"

    def parse(self, raw: str) -> int:
        text = str(raw).strip()
        shown = text if len(text) <= 40 else text[:37] + "..."
        try:
            value = int(text)
        except ValueError:
            raise SettingError(
                f"{self.name}={shown!r} is not valid: {self.meaning} must be {self.range_text()}"
            ) from None
        if not self.low <= value <= self.high:
            raise SettingError(
                f"{self.name}={value} is out of range: {self.meaning} must be {self.range_text()}"
            )
        return value


@dataclass(frozen=True)
class PathSetting:
    """A folder path: text without NUL characters, at most 4,096 characters, not a file."""

    name: str
    meaning: str

    def range_text(self) -> str:
        return "a folder path of at most 4,096 characters (created when missing)"

    def parse(self, raw: str) -> Path:
        text = str(raw)
        problem = None
        if not text.strip():
            problem = "is empty"
        elif "\0" in text or len(text) > 4096:
            problem = "is not a usable path"
        elif Path(text).exists() and not Path(text).is_dir():
            problem = "names something that is not a folder"
        if problem:
            shown = text if len(text) <= 60 else text[:57] + "..."
            raise SettingError(
                f"{self.name}={shown!r} {problem}: {self.meaning} must be {self.range_text()}"
            )
        return Path(text)


@dataclass(frozen=True)
class ChoiceSetting:
    """One of a few words (case and surrounding spaces ignored); unset: the first."""

    name: str
    choices: tuple[str, ...]
    meaning: str

    def range_text(self) -> str:
        return "one of " + ", ".join(self.choices)

    def default(self) -> str:
        return self.choices[0]

    def parse(self, raw: str) -> str:
        text = str(raw).strip().lower()
        if text not in self.choices:
            shown = text if len(text) <= 40 else text[:37] + "..."
            raise SettingError(
                f"{self.name}={shown!r} is not valid: {self.meaning} must be {self.range_text()}"
            )
        return text


@dataclass(frozen=True)
class PatternSetting:
    """Text of a given form (e.g. a network address); unset: None."""

    name: str
    pattern: str
    meaning: str
    form: str

    def range_text(self) -> str:
        return self.form

    def default(self) -> None:
        return None

    def parse(self, raw: str) -> str:
        text = str(raw).strip()
        if len(text) > 300 or not re.fullmatch(self.pattern, text):
            shown = text if len(text) <= 60 else text[:57] + "..."
            raise SettingError(
                f"{self.name}={shown!r} is not valid: {self.meaning} must be {self.range_text()}"
            )
        return text


def _cores() -> int:
    return max(1, os.cpu_count() or 1)


MAX_JOBS = IntSetting(  # unset: the job layout measured on this machine (vae.execution.layout)
    "VAE_MAX_JOBS", 1, 64, lambda: None, "the number of jobs trained at once"
)
WARM_WORKERS = IntSetting(  # unset: one per job trained at once
    "VAE_WARM_WORKERS", 0, 8, lambda: None, "the number of worker processes kept ready"
)
STORE = PathSetting("VAE_STORE", "the run store folder")
SWEEP_JOBS = IntSetting("--jobs", 1, 64, lambda: 1, "runs trained at once")
IW_SAMPLES = IntSetting("--iw-samples", 1, 10_000, lambda: 100, "importance samples k")
BACKEND = ChoiceSetting("VAE_BACKEND", ("local", "ray"), "the backend that trains runs")
RAY_ADDRESS = PatternSetting(  # unset: a local Ray instance started by this process
    "VAE_RAY_ADDRESS",
    r"auto|(ray://)?[A-Za-z0-9.\-\[\]:]+:\d{1,5}",
    "the Ray cluster's address",
    "auto, ray://HOST:10001 or HOST:6379",
)
Setting = IntSetting | PathSetting | ChoiceSetting | PatternSetting


def read(setting: Setting, environ: Mapping[str, str] | None = None):
    """The setting's value from the environment; its default when unset or blank.

    Raises SettingError for a value outside its range. A PathSetting's default is None (the
    store picks its own folder).
    """
    environ = os.environ if environ is None else environ
    raw = environ.get(setting.name)
    if raw is None or not raw.strip():  # set but blank counts as unset
        return None if isinstance(setting, PathSetting) else setting.default()
    return setting.parse(raw)


def read_or_default(
    setting: Setting, environ: Mapping[str, str] | None = None
) -> tuple[object, str | None]:
    """(value, None), or (default, message) when the environment's value is refused: for the app,
    which must open anyway and show the message rather than fail on every page."""
    try:
        return read(setting, environ), None
    except SettingError as exc:
        default = None if isinstance(setting, PathSetting) else setting.default()
        if setting is MAX_JOBS:  # a refused value falls back to the safe layout: a job per core
            default = min(setting.high, _cores())
        used = f"{default}" if default is not None else "the default folder"
        if setting is RAY_ADDRESS:
            used = "local processes"  # the caller trains locally rather than guess a cluster
        if setting is WARM_WORKERS:
            used = "one warm worker per job slot"
        return default, f"{exc}. Using {used} instead."


def argument(setting: IntSetting) -> Callable[[str], int]:
    """An argparse `type=` that refuses values outside the setting's range with its message."""

    def parse(text: str) -> int:
        try:
            return setting.parse(text)
        except SettingError as exc:
            raise argparse.ArgumentTypeError(str(exc)) from None

    parse.__name__ = setting.name.lstrip("-")
    return parse
