"""Every setting bounded: environment variables, CLI numbers and address prefills.

A zero, a word or an out-of-range number gets a message naming the setting and its range; the
app still opens (on the default, saying so), the CLI exits with status 2 instead of looping.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
from helpers import PAGES, open_app

from vae import settings
from vae.cli import build_parser
from vae.execution import store as store_module

REPO = Path(__file__).resolve().parent.parent


@pytest.mark.parametrize("raw", ["0", "-1", "65", "abc", "1.5", "1e3", "", " "])
def test_max_jobs_values_outside_the_range_are_refused_with_name_and_range(raw):
    if not raw.strip():
        assert settings.read(settings.MAX_JOBS, {"VAE_MAX_JOBS": raw}) is None  # unset: measured
        return
    with pytest.raises(settings.SettingError) as caught:
        settings.read(settings.MAX_JOBS, {"VAE_MAX_JOBS": raw})
    assert "VAE_MAX_JOBS" in str(caught.value)
    assert "from 1 to 64" in str(caught.value)


def test_max_jobs_in_range_and_default():
    assert settings.read(settings.MAX_JOBS, {"VAE_MAX_JOBS": " 3 "}) == 3
    assert settings.read(settings.MAX_JOBS, {}) is None  # the layout measured on the machine
    value, problem = settings.read_or_default(settings.MAX_JOBS, {"VAE_MAX_JOBS": "0"})
    assert value == min(64, os.cpu_count() or 1)
    assert "VAE_MAX_JOBS=0" in problem and "Using" in problem


@pytest.mark.parametrize("raw", ["-1", "9", "two"])
def test_the_app_opens_with_a_bad_warm_workers_and_says_so(monkeypatch, tmp_path, raw):
    monkeypatch.setenv("VAE_WARM_WORKERS", raw)
    at = open_app(monkeypatch, tmp_path / "runs", PAGES[0])
    assert not at.exception, at.exception
    warnings = " ".join(w.value for w in at.warning)
    assert "VAE_WARM_WORKERS" in warnings and "from 0 to 8" in warnings
    assert "one warm worker per job slot" in warnings


def test_store_setting_refuses_a_file_and_junk(tmp_path):
    a_file = tmp_path / "file"
    a_file.write_text("x")
    for raw in (str(a_file), "x" * 5000, "a\0b"):
        with pytest.raises(settings.SettingError, match="VAE_STORE"):
            settings.read(settings.STORE, {"VAE_STORE": raw})
    assert settings.read(settings.STORE, {"VAE_STORE": str(tmp_path / "new")}) == tmp_path / "new"
    assert settings.read(settings.STORE, {}) is None


@pytest.mark.parametrize("raw", ["0", "abc", "1000"])
@pytest.mark.parametrize("page", [PAGES[0], PAGES[1], PAGES[-1]])
def test_the_app_opens_with_a_bad_max_jobs_and_says_so(monkeypatch, tmp_path, raw, page):
    monkeypatch.setenv("VAE_MAX_JOBS", raw)
    at = open_app(monkeypatch, tmp_path / "runs", page)
    assert not at.exception, at.exception
    warnings = " ".join(w.value for w in at.warning)
    assert "VAE_MAX_JOBS" in warnings and "from 1 to 64" in warnings


def test_the_app_opens_with_a_store_path_that_is_a_file(monkeypatch, tmp_path):
    a_file = tmp_path / "not-a-folder"
    a_file.write_text("x")
    monkeypatch.setattr(store_module, "DEFAULT_ROOT", tmp_path / "default")  # not the real one
    at = open_app(monkeypatch, a_file, PAGES[0])  # open_app sets VAE_STORE to this path
    assert not at.exception, at.exception
    assert any("VAE_STORE" in w.value for w in at.warning)
    assert (tmp_path / "default").is_dir()  # the default store was used instead


# ---- CLI ---------------------------------------------------------------------------------------
@pytest.mark.parametrize(
    "argv, words",
    [
        (["sweep", "--betas", "1", "--jobs", "0"], "--jobs=0 is out of range"),
        (["sweep", "--betas", "1", "--jobs", "many"], "from 1 to 64"),
        (["sweep", "--betas", "1", "--jobs", "65"], "from 1 to 64"),
        (["eval", "20250101-000000-abcdef", "--iw-samples", "0"], "from 1 to 10000"),
        (["eval", "20250101-000000-abcdef", "--iw-samples", "10001"], "from 1 to 10000"),
    ],
)
def test_cli_numbers_outside_their_range_exit_with_status_2(argv, words, capsys):
    with pytest.raises(SystemExit) as caught:
        build_parser().parse_args(argv)
    assert caught.value.code == 2
    assert words in capsys.readouterr().err


def test_sweep_with_zero_jobs_exits_at_once_instead_of_looping(tmp_path):
    """The real command line, in its own process: it used to loop forever."""
    command = [sys.executable, "-m", "vae", "--store", str(tmp_path), "sweep"]
    command += ["--betas", "1", "2", "--jobs", "0", "--epochs", "1"]
    done = subprocess.run(command, cwd=REPO, capture_output=True, text=True, timeout=120)
    assert done.returncode == 2
    assert "--jobs" in done.stderr and "from 1 to 64" in done.stderr
    assert not any(tmp_path.iterdir())  # no run was created


# ---- address prefills --------------------------------------------------------------------------
def slider(at, label):
    return next(s for s in at.slider if s.label == label)


def test_a_prefill_beyond_the_slider_is_clamped_and_said(monkeypatch, tmp_path):
    at = open_app(monkeypatch, tmp_path / "runs", "pages/train.py", latent_dim="100")
    assert not at.exception
    assert slider(at, "Latent dimensions J").value == 64
    assert any("latent_dim=100" in w.value and "using 64" in w.value for w in at.warning)


@pytest.mark.parametrize(
    "query, words",
    [
        ({"latent_dim": "2.5"}, "whole number"),
        ({"latent_dim": "0"}, "between 1 and 256"),
        ({"epochs": "abc"}, "not a number"),
        ({"epochs": "nan"}, "not a finite number"),
        ({"beta": "-1"}, "between 0 and 1000"),
    ],
)
def test_bad_prefills_are_refused_visibly_and_the_default_used(monkeypatch, tmp_path, query, words):
    at = open_app(monkeypatch, tmp_path / "runs", "pages/train.py", **query)
    assert not at.exception
    (name,) = query
    assert any(f"Ignored `{name}`" in w.value and words in w.value for w in at.warning)
    if name == "latent_dim":
        assert slider(at, "Latent dimensions J").value == 20


def test_a_prefill_of_epochs_above_the_slider_is_clamped(monkeypatch, tmp_path):
    at = open_app(monkeypatch, tmp_path / "runs", "pages/train.py", epochs="5000")
    assert slider(at, "Epochs").value == 200
    assert any("using 200" in w.value for w in at.warning)
