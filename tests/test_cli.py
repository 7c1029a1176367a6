"""`python -m vae`: the store it uses, eval's progress, its help text, and sweeps it refuses."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest
from helpers import open_app, train_run

from vae import cli
from vae.execution.store import RunStore
from vae.learn.config import sweep_betas

REPO = Path(__file__).resolve().parent.parent


@pytest.fixture
def trained(store, tiny_config):
    """A finished one-epoch run in a fresh store."""
    run_id = store.create_run(tiny_config)
    assert train_run(store, run_id) == "finished"
    return run_id


def test_list_reads_the_store_named_by_vae_store(tmp_path, tiny_config):
    """The README's `VAE_STORE=... python -m vae list`, as a real process."""
    moved = RunStore(tmp_path / "moved")
    run_id = moved.create_run(tiny_config)
    env = {**os.environ, "VAE_STORE": str(moved.root)}
    listed = subprocess.run(
        [sys.executable, "-m", "vae", "list"],
        cwd=REPO, env=env, capture_output=True, text=True, timeout=120,
    )  # fmt: skip
    assert listed.returncode == 0, listed.stderr
    assert run_id in listed.stdout
    assert "queued" in listed.stdout


def test_store_flag_wins_over_vae_store(tmp_path, monkeypatch, capsys, tiny_config):
    env_store, flag_store = RunStore(tmp_path / "env"), RunStore(tmp_path / "flag")
    in_env, in_flag = env_store.create_run(tiny_config), flag_store.create_run(tiny_config)
    monkeypatch.setenv("VAE_STORE", str(env_store.root))
    assert cli.main(["--store", str(flag_store.root), "list"]) == 0
    out = capsys.readouterr().out
    assert in_flag in out and in_env not in out


def test_eval_prints_progress_with_an_estimate(store, trained, monkeypatch, capsys):
    monkeypatch.setenv("VAE_STORE", str(store.root))
    monkeypatch.setattr(cli, "EVAL_REPORT_EVERY_S", 0.0)  # a line per chunk, not every 2 s
    # k = 1000 splits the test split into several chunks (the decoder has a memory budget)
    assert cli.main(["eval", trained, "--iw-samples", "1000"]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert "k = 1000" in lines[0]
    progress = [line for line in lines if "IWAE" in line and "images" in line]
    n_test = store.read_eval(trained)["n_test"]
    assert any("left" in line for line in progress), lines[:5]
    assert progress[-1].strip().startswith(f"IWAE {n_test:,}/{n_test:,} images")
    assert progress[-1].endswith("done")
    assert re.search(r"^elbo -?\d", lines[-1])  # the results follow the progress


def test_help_shows_each_default_once_switches_included(capsys):
    with pytest.raises(SystemExit):
        cli.main(["train", "--help"])
    text = " ".join(capsys.readouterr().out.split())  # argparse wraps lines
    assert "(default None)" not in text and "(default )" not in text
    for name in cli.SETTINGS:
        flag = "--" + name.replace("_", "-")
        block = text.split(f" {flag} ", 1)[1].split(" --", 1)[0]
        assert block.count("(default:") == 1, (flag, block)
    assert (
        "--data-root DATA_ROOT folder holding MNIST/Fashion-MNIST files (default: ./data)" in text
    )
    assert "--name NAME a label for the run (default: none)" in text
    assert "--learn-variance learn the gaussian decoder's variance (default: off)" in text
    assert "(default: on; --no-dynamic-binarization turns it off)" in text


def test_switches_turn_on_and_off():
    parser = cli.build_parser()
    assert parser.parse_args(["train"]).dynamic_binarization is True
    assert parser.parse_args(["train", "--no-dynamic-binarization"]).dynamic_binarization is False
    assert parser.parse_args(["train", "--learn-variance"]).learn_variance is True


def test_sweep_refuses_a_repeated_beta_and_queues_nothing(store, monkeypatch, capsys):
    monkeypatch.setenv("VAE_STORE", str(store.root))
    assert cli.main(["sweep", "--betas", "1", "1", "1", "--epochs", "1"]) == 2
    err = capsys.readouterr().err
    assert "each β may appear once" in err and "1 (3×)" in err
    assert store.list_runs() == []


def test_sweep_says_how_it_groups_runs(store, monkeypatch, capsys):
    """Two runs that differ only in β, one slot: one job trains both, stacked."""
    monkeypatch.setenv("VAE_STORE", str(store.root))
    # Workers must find `vae` whatever jobs.py takes for the project root (see the report).
    monkeypatch.setenv("PYTHONPATH", str(REPO))
    args = ["sweep", "--betas", "0.5", "2", "--epochs", "1", "--hidden-dims", "32"]
    args += ["--latent-dim", "3", "--batch-size", "256", "--jobs", "1", "--threads", "1"]
    assert cli.main(args) == 0
    out = capsys.readouterr().out
    assert "sweep: 2 runs: 1 job of 2 stacked runs (1 slot, one job each)" in out, out
    assert [r.state for r in store.list_runs()] == ["finished", "finished"]


def test_sweep_betas_checks_range_and_repeats():
    assert sweep_betas([0.5, 1, 4]) == [0.5, 1.0, 4.0]
    with pytest.raises(ValueError, match="repeated: 1 \\(2×\\)"):
        sweep_betas([1, 2, 1.0])
    with pytest.raises(ValueError, match="outside"):
        sweep_betas([1, 5000])
    with pytest.raises(ValueError, match="at least one"):
        sweep_betas([])


def test_the_app_refuses_a_repeated_beta_too(monkeypatch, tmp_path):
    at = open_app(monkeypatch, tmp_path / "runs")
    sweep = next(t for t in at.text_input if t.label == "β values for a sweep")
    sweep.set_value("1, 1, 1").run()
    assert any("each β may appear once" in e.value for e in at.error)
    assert at.button(key="sweep_button").disabled
    assert RunStore(tmp_path / "runs").list_runs() == []
