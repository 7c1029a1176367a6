"""Out-of-range and non-numeric settings are refused with the field's name, wherever they come from:
a RunConfig, a damaged config dict, typed text (parse_number/parse_number_list) or the CLI."""

import math

import pytest

from vae import cli
from vae.execution.store import RunStore
from vae.learn.config import (
    LIMITS,
    ConfigError,
    RunConfig,
    parse_number,
    parse_number_list,
    validation_errors,
)


@pytest.mark.parametrize(
    "field, value, words",
    [
        ("beta", -0.5, "between"),
        ("beta", math.nan, "finite"),
        ("beta", math.inf, "finite"),
        ("beta", -math.inf, "finite"),
        ("beta", 1e9, "between"),
        ("beta", "4", "number"),
        ("latent_dim", 0, "between"),
        ("latent_dim", 10_000, "between"),
        ("latent_dim", 2.5, "whole"),
        ("latent_dim", True, "number"),
        ("epochs", 0, "between"),
        ("batch_size", 0, "between"),
        ("lr", 0.0, "between"),
        ("lr", -1e-3, "between"),
        ("lr", math.nan, "finite"),
        ("seed", -1, "between"),
        ("dataset", "imagenet", "unknown value 'imagenet'"),
        ("architecture", "transformer", "unknown value"),
        ("likelihood", "poisson", "unknown value"),
        ("objective", "", "unknown value"),
        ("hidden_dims", [], "non-empty"),
        ("hidden_dims", [0], "between"),
        ("hidden_dims", [64, 1e9], "between"),
        ("name", "x" * 201, "200 characters"),
    ],
)
def test_each_bad_value_is_named(field, value, words):
    config = RunConfig(**{field: value})
    errors = validation_errors(config)
    assert set(errors) == {field}, errors
    assert words in errors[field]
    with pytest.raises(ConfigError) as info:
        config.validated()
    assert field in info.value.errors and field in str(info.value)


def test_limits_edges_are_accepted():
    for field in ("beta", "latent_dim", "epochs", "lr"):
        for edge in LIMITS[field]:
            if field == "lr" and edge <= 0:
                continue
            value = int(edge) if field in ("latent_dim", "epochs") else float(edge)
            assert validation_errors(RunConfig(**{field: value})) == {}, (field, edge)


def test_several_bad_fields_are_all_reported():
    errors = validation_errors(RunConfig(beta=-1, latent_dim=0, epochs=0, lr=0, dataset="x"))
    assert set(errors) == {"beta", "latent_dim", "epochs", "lr", "dataset"}


@pytest.mark.parametrize(
    "data, field",
    [
        ([1, 2], "config"),
        ("digits", "config"),
        (None, "config"),
        ({"hidden_dims": ["many"]}, "hidden_dims"),
        ({"hidden_dims": [math.inf]}, "hidden_dims"),
        ({"hidden_dims": [math.nan]}, "hidden_dims"),
        ({"hidden_dims": 400}, "hidden_dims"),
        ({"hidden_dims": None}, "hidden_dims"),
    ],
)
def test_from_dict_refuses_damaged_data_with_config_error(data, field):
    """config.json or a checkpoint's config from a damaged/foreign file: a ConfigError, not a
    TypeError/OverflowError that would escape the store's and the checkpoint reader's handlers."""
    with pytest.raises(ConfigError) as info:
        RunConfig.from_dict(data)
    assert field in info.value.errors


def test_from_dict_ignores_unknown_keys_and_validates_values():
    config = RunConfig.from_dict({"beta": -3, "not_a_field": 1})
    assert validation_errors(config) == {"beta": "must be between 0 and 1000"}


@pytest.mark.parametrize("text", ["", "  ", "abc", "1,5", "0x10", "1e999", "--1", "None", "½"])
def test_parse_number_refuses_junk(text):
    with pytest.raises(ValueError, match="not a"):
        parse_number(text)


@pytest.mark.parametrize("text", ["nan", "NaN", "inf", "-inf", "Infinity", "1e400"])
def test_parse_number_refuses_non_finite(text):
    with pytest.raises(ValueError, match="not a finite number|not a number"):
        parse_number(text)


def test_parse_number_accepts_plain_numbers():
    assert parse_number(" 2.5 ") == 2.5
    assert parse_number("1e-3") == 0.001
    assert parse_number("-4") == -4.0


@pytest.mark.parametrize(
    "text, words",
    [
        ("", "at least one"),
        (" , ,", "at least one"),
        ("1 2 x", "'x' is not a number"),
        ("0.5, nan", "not a finite number"),
        ("1; 2", "is not a number"),
        (" ".join(["1"] * 33), "at most 32"),
    ],
)
def test_parse_number_list_refuses_junk(text, words):
    with pytest.raises(ValueError, match=words):
        parse_number_list(text)


def test_parse_number_list_accepts_commas_and_spaces():
    assert parse_number_list("0.25, 0.5 1,2") == [0.25, 0.5, 1.0, 2.0]


CLI_BASE = ["train", "--dataset", "digits", "--epochs", "1", "--hidden-dims", "16"]


@pytest.mark.parametrize(
    "extra, words",
    [
        (["--beta", "nan"], "beta: must be finite"),
        (["--beta", "inf"], "beta: must be finite"),
        (["--beta", "-1"], "beta: must be between"),
        (["--beta", "1e9"], "beta: must be between"),
        (["--latent-dim", "0"], "latent_dim: must be between"),
        (["--latent-dim", "10000"], "latent_dim: must be between"),
        (["--epochs", "0"], "epochs: must be between"),
        (["--lr", "0"], "lr: must be between"),
        (["--dataset", "imagenet"], "invalid choice: 'imagenet'"),  # refused by argparse
    ],
)
def test_cli_refuses_bad_values_and_creates_no_run(tmp_path, capsys, extra, words):
    root = tmp_path / "runs"
    try:
        code = cli.main(["--store", str(root), *CLI_BASE, *extra])
    except SystemExit as exc:  # argparse refuses a value outside a flag's choices itself
        code = exc.code
    assert code == 2
    assert words in capsys.readouterr().err
    assert RunStore(root).list_runs() == []
    assert not root.exists() or list(root.iterdir()) == []  # not even a temp folder


def test_cli_sweep_with_one_bad_beta_creates_nothing(tmp_path, capsys):
    root = tmp_path / "runs"
    code = cli.main(["--store", str(root), "sweep", "--betas", "1", "nan", "--epochs", "1"])
    assert code == 2
    assert "β = nan is outside" in capsys.readouterr().err
    assert RunStore(root).list_runs() == []


@pytest.mark.parametrize("extra", [["--beta", "four"], ["--latent-dim", "2.5"], ["--epochs", ""]])
def test_cli_refuses_non_numbers_before_anything_runs(tmp_path, capsys, extra):
    root = tmp_path / "runs"
    with pytest.raises(SystemExit) as info:
        cli.main(["--store", str(root), *CLI_BASE, *extra])
    assert info.value.code == 2
    assert "invalid" in capsys.readouterr().err
    assert not root.exists()
