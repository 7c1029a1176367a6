"""Every setting declared once (vae/learn/fields.py): each RunConfig field has a declaration, a CLI
flag, a Train page control where it applies, a runs-table column and a key in `list --json`; and
what refuses or warns before a run is created creates nothing."""

from __future__ import annotations

import json
from dataclasses import fields
from pathlib import Path

import pytest
from helpers import open_app, train_run

from vae import cli
from vae.execution.jobs import JobManager
from vae.execution.preflight import schedule_findings, sweep_finding
from vae.learn import fields as F
from vae.learn.config import RunConfig, comparison_key, stack_key
from vae.present import runs_table as rt

REPO = Path(__file__).resolve().parent.parent
FIELD_NAMES = [f.name for f in fields(RunConfig)]


def where_it_applies(name: str) -> dict:
    """Page choices under which a setting applies (the defaults, or its objective/likelihood)."""
    for objective, info in F.OBJECTIVES.items():
        if name in info.settings:
            return {"setting_objective": objective}
    for likelihood, names in F.LIKELIHOODS.items():
        if name in names:
            return {"setting_likelihood": likelihood}
    if name == "data_root":
        return {"setting_dataset": "mnist"}
    return {}


def test_every_field_is_declared_with_a_known_role():
    assert list(F.SETTINGS) == FIELD_NAMES  # one declaration each, in the dataclass's order
    for setting in F.SETTINGS.values():
        assert setting.role in F.ROLES and setting.help and setting.label
        assert setting.kind in (bool, int, float, str, list)
        if setting.kind in (int, float) and setting.name not in ("seed",):
            assert setting.low is not None and setting.high is not None, setting.name


def test_every_field_has_a_cli_flag_a_column_and_a_json_key(
    store, tiny_config, monkeypatch, capsys
):
    parser = cli.build_parser()
    flags = {
        command: {o for a in sub._actions for o in a.option_strings}
        for command, sub in parser._subparsers._group_actions[0].choices.items()
    }
    run_id = store.create_run(tiny_config)
    train_run(store, run_id)
    row = rt.run_row(store.get(run_id))
    monkeypatch.setenv("VAE_STORE", str(store.root))
    assert cli.main(["list", "--json"]) == 0
    listed = json.loads(capsys.readouterr().out)
    for name in FIELD_NAMES:
        flag = "--" + name.replace("_", "-")
        assert flag in flags["train"], name
        assert flag in flags["sweep"] or name == "beta", name
        assert name in rt.headers() and name in row, name
        assert name in listed[0]["settings"], name
    assert listed[0]["metrics"]["rate"] == pytest.approx(store.get(run_id).last_metrics["rate"])


def test_every_field_has_a_train_page_control_where_it_applies(monkeypatch, tmp_path):
    at = open_app(monkeypatch, tmp_path / "runs")
    for name in FIELD_NAMES:
        for key, value in where_it_applies(name).items():
            chooser = at.selectbox(key=key) if key != "setting_likelihood" else at.radio(key=key)
            chooser.set_value(value).run()
        assert f"setting_{name}" in at.session_state, name
        assert not at.exception
    # A setting that does not apply is not shown: σ only for the gaussian likelihood.
    at.radio(key="setting_likelihood").set_value("bernoulli").run()
    assert "setting_gaussian_std" not in [w.key for w in at.number_input]
    # Seeds per β: six β of the default list, two seeds each.
    at.selectbox(key="setting_objective").select("beta").run()
    at.number_input(key="sweep_seeds").set_value(2).run()
    assert at.button(key="sweep_button").label == "Sweep β (12 runs)"


def test_keys_follow_the_roles(tiny_config):
    base = tiny_config.to_dict()

    def with_(**changes):
        return {**base, **changes}

    assert comparison_key(tiny_config) == F.comparison_key(with_(beta=8.0, seed=3, name="x"))
    assert F.comparison_key(base) == F.comparison_key(with_(threads=4, precision="bf16"))
    for name, value in (("lr", 3e-3), ("batch_size", 64), ("epochs", 2), ("latent_dim", 5)):
        assert F.comparison_key(base) != F.comparison_key(with_(**{name: value})), name
    # A setting that does not apply never separates: σ of a bernoulli run, λ of a β-VAE.
    assert F.comparison_key(base) == F.comparison_key(with_(gaussian_std=0.05, free_bits=2.0))
    gauss = with_(likelihood="gaussian")
    assert F.comparison_key(gauss) != F.comparison_key({**gauss, "gaussian_std": 0.05})
    free = with_(objective="free_bits")
    assert F.comparison_key(free) != F.comparison_key({**free, "free_bits": 2.0})
    # β means nothing to capacity: two capacity runs of different β are replicates.
    cap = with_(objective="capacity")
    assert F.comparison_key(cap) == F.comparison_key({**cap, "beta": 4.0})
    # The stack key: β, name and threads may differ inside one stack; the seed may not.
    assert stack_key(tiny_config) == F.stack_key(with_(beta=4.0, name="y", threads=3))
    assert stack_key(tiny_config) != F.stack_key(with_(seed=1))


def test_labels_say_what_the_objective_is():
    capacity = RunConfig(objective="capacity")
    assert "capacity C → 25 nats over 10,000 steps, γ = 100" in capacity.describe()
    assert "β" not in capacity.describe()
    assert "β = 4" in RunConfig(beta=4.0).describe()
    assert "free bits λ = 0.5 nats, β = 1" in RunConfig(objective="free_bits").describe()
    defaults = RunConfig().to_dict()
    label = F.set_label({**defaults, "lr": 3e-3, "objective": "capacity"}, defaults)
    assert "lr 0.003" in label and "capacity C → 25 nats" in label and "β" not in label


def test_a_schedule_longer_than_the_run_is_told_with_its_numbers():
    config = RunConfig(dataset="mnist", objective="capacity", epochs=2, batch_size=128)
    (finding,) = schedule_findings(config)
    assert finding.message == "C reaches only 2.35 of 25 nats in this run."
    assert "938 steps" in finding.detail and "10,000" in finding.detail
    assert len(finding.message) < 80  # one line at 800 px
    warm = RunConfig(objective="warmup", beta=4.0, epochs=1, batch_size=128)  # 32 steps
    assert "reaches only 0.128 of β = 4" in schedule_findings(warm)[0].message
    assert schedule_findings(RunConfig(objective="capacity", capacity_steps=30)) == []


def run_folders(root) -> list[str]:
    """Run folders (and half-written ones): anything but the store's own dot-files."""
    return (
        sorted(p.name for p in root.iterdir() if not p.name.startswith(".scheduler"))
        if root.exists()
        else []
    )


def test_a_capacity_sweep_is_refused_and_creates_nothing(store, monkeypatch, capsys, tmp_path):
    monkeypatch.setenv("VAE_STORE", str(store.root))
    assert cli.main(["sweep", "--objective", "capacity", "--betas", "1", "4"]) == 2
    assert "ignores β" in capsys.readouterr().err
    assert run_folders(store.root) == []
    manager = JobManager(store, max_concurrent=1)
    with pytest.raises(ValueError, match="ignores β"):
        manager.submit_sweep(RunConfig(objective="capacity"), [1.0, 4.0])
    assert store.list_runs() == [] and sweep_finding(RunConfig()) is None
    at = open_app(monkeypatch, tmp_path / "app-runs")
    at.selectbox(key="setting_objective").select("capacity").run()
    assert at.button(key="sweep_button").disabled
    assert any("ignores β" in e.value for e in at.error)
    assert run_folders(tmp_path / "app-runs") == []


def test_a_data_root_without_files_is_refused_and_creates_nothing(
    store, monkeypatch, capsys, tmp_path
):
    monkeypatch.setenv("VAE_STORE", str(store.root))
    empty = tmp_path / "empty-data"
    empty.mkdir()
    args = ["train", "--dataset", "mnist", "--data-root", str(empty), "--epochs", "1"]
    assert cli.main(args) == 2
    err = capsys.readouterr().err
    assert (
        "No MNIST files under this data root" in err
        and str(empty) in err
        and "train-images-idx3-ubyte" in err
    )
    assert run_folders(store.root) == []
    at = open_app(monkeypatch, tmp_path / "app-runs")
    at.selectbox(key="setting_dataset").select("mnist").run()
    at.text_input(key="setting_data_root").set_value(str(empty)).run()
    assert at.button(key="train_button").disabled and at.button(key="sweep_button").disabled
    assert any("No MNIST files" in e.value for e in at.error)
    assert run_folders(tmp_path / "app-runs") == []


def test_a_sweep_takes_seeds_per_beta(store, tiny_config, monkeypatch):
    monkeypatch.setenv("PYTHONPATH", str(REPO))  # the workers import vae
    manager = JobManager(store, max_concurrent=1)
    manager.batch_sweeps = False
    run_ids = manager.submit_sweep(tiny_config, [0.5, 2.0], seeds=2)
    configs = [store.read_config(r) for r in run_ids]
    assert sorted((c.beta, c.seed) for c in configs) == [(0.5, 0), (0.5, 1), (2.0, 0), (2.0, 1)]
    manager.wait(run_ids, timeout_s=300)
    assert {store.read_status(r)["state"] for r in run_ids} == {"finished"}
    with pytest.raises(ValueError, match="seeds per β"):
        manager.submit_sweep(tiny_config, [1.0], seeds=0)
