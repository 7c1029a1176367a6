"""Bad input is refused with a message and runs nothing: malicious, foreign, truncated, oversized or
mismatched checkpoint files; and the security defaults (weights_only loads, no raw HTML, a server
bound to 127.0.0.1) are checked in the source and the Streamlit config."""

from __future__ import annotations

import ast
import io
import os
import pickle
import random
import re
import subprocess
import sys
import tomllib
import zipfile
from pathlib import Path

import pytest
import torch
from helpers import with_byte_changed
from PIL import Image

from vae.execution.checkpoint import (
    MAX_UPLOAD_BYTES,
    CheckpointError,
    checkpoint_bytes,
    make_checkpoint,
    read_checkpoint,
)
from vae.learn.config import RunConfig
from vae.learn.engine import new_state

REPO = Path(__file__).resolve().parent.parent
APP_CODE = [REPO / "app.py", REPO / "ui.py", *sorted((REPO / "pages").glob("*.py"))]
APP_CODE += sorted((REPO / "vae").rglob("*.py"))
SHAPE = (1, 28, 28)


class RunsACommand:
    """Unpickling this runs `touch <marker>`: what a malicious checkpoint would do."""

    def __init__(self, marker: Path):
        self.marker = marker

    def __reduce__(self):
        return (os.system, (f"touch {self.marker}",))


def checkpoint_for(config: RunConfig) -> dict:
    return make_checkpoint(config, new_state(config, SHAPE, torch.device("cpu")), SHAPE, {})


@pytest.fixture
def config():
    return RunConfig(hidden_dims=[32], latent_dim=3, epochs=1, batch_size=256, threads=1)


@pytest.fixture
def good(config) -> dict:
    return checkpoint_for(config)


def refused(data, words: str, **kwargs) -> str:
    with pytest.raises(CheckpointError) as info:
        read_checkpoint(data, **kwargs)
    message = str(info.value)
    assert re.search(words, message), message
    return message


def test_a_good_checkpoint_loads(good):
    assert read_checkpoint(checkpoint_bytes(good))["config"]["latent_dim"] == 3


# ---- malicious pickles --------------------------------------------------------------------------
def malicious_files(marker: Path) -> dict[str, bytes]:
    evil = RunsACommand(marker)
    zipped, legacy = io.BytesIO(), io.BytesIO()
    torch.save({"format": "beta-vae-dashboard/checkpoint-v1", "model_state": evil}, zipped)
    torch.save(evil, legacy, _use_new_zipfile_serialization=False)
    return {
        "torch.save zip": zipped.getvalue(),
        "torch.save legacy": legacy.getvalue(),
        "raw pickle protocol 2": pickle.dumps(evil, protocol=2),
        "raw pickle protocol 0": pickle.dumps(evil, protocol=0),
    }


def test_the_payload_is_real(tmp_path):
    """Control: plain pickle.loads of the same bytes does run the command."""
    marker = tmp_path / "RAN"
    pickle.loads(malicious_files(marker)["raw pickle protocol 2"])
    assert marker.exists()


@pytest.mark.parametrize("kind", list(malicious_files(Path("M"))))
@pytest.mark.parametrize("as_path", [False, True, "mapped"], ids=["bytes", "path", "mapped"])
def test_malicious_pickle_is_refused_and_not_run(tmp_path, monkeypatch, kind, as_path):
    # Even with the variable that flips torch.load's *default* to unsafe: the call passes True.
    monkeypatch.setenv("TORCH_FORCE_NO_WEIGHTS_ONLY_LOAD", "1")
    marker = tmp_path / "MARKER"
    data = malicious_files(marker)[kind]
    source: bytes | Path = data
    if as_path:
        source = tmp_path / "upload.pt"
        source.write_bytes(data)
    message = refused(source, "refused|not a checkpoint", mapped=as_path == "mapped")
    assert not marker.exists()
    assert "weights_only" not in message  # no advice to load it unsafely
    if kind == "torch.save zip":
        assert "posix.system" in message or "os.system" in message


def test_malicious_file_over_the_limit_is_refused_before_parsing(tmp_path):
    marker = tmp_path / "MARKER"
    data = malicious_files(marker)["torch.save zip"]
    refused(data, "limit is 100", max_bytes=100)
    assert not marker.exists()


# ---- foreign, truncated, oversized files --------------------------------------------------------
def png_bytes() -> bytes:
    buffer = io.BytesIO()
    Image.new("L", (28, 28), 128).save(buffer, "PNG")
    return buffer.getvalue()


def zip_bytes(files: dict[str, bytes]) -> bytes:
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w") as archive:
        for name, content in files.items():
            archive.writestr(name, content)
    return buffer.getvalue()


@pytest.mark.parametrize(
    "make, words",
    [
        (lambda good: b"", "empty"),
        (lambda good: good[:10], "truncated or damaged"),
        (lambda good: good[: len(good) // 2], "truncated or damaged"),
        (lambda good: good[:-100], "truncated or damaged"),
        (lambda good: png_bytes(), "not a checkpoint.*zip archives"),
        (lambda good: random.Random(0).randbytes(4096), "not a checkpoint.*zip archives"),
        (lambda good: b"epoch,rate\n1,2.5\n", "not a checkpoint.*zip archives"),
        (lambda good: zip_bytes({"readme.txt": b"hi"}), "not a torch checkpoint"),
        (lambda good: zip_bytes({"a/data.pkl": b"junk", "a/version": b"3\n"}), "not a loadable"),
        (lambda good: checkpoint_bytes(torch.zeros(3)), "not a checkpoint dictionary"),
        (lambda good: checkpoint_bytes({"weights": torch.zeros(3)}), "missing keys"),
    ],
    ids=[
        "empty", "first-10-bytes", "half", "last-100-bytes-cut", "png", "random", "text",
        "zip-of-text", "zip-with-junk-pickle", "bare-tensor", "foreign-dict",
    ],
)  # fmt: skip
def test_foreign_or_damaged_files_are_refused(good, make, words):
    refused(make(checkpoint_bytes(good)), words)


def test_truncated_file_on_disk_is_refused(tmp_path, good):
    path = tmp_path / "model.pt"
    path.write_bytes(checkpoint_bytes(good)[:5000])
    refused(path, "truncated or damaged")
    refused(tmp_path / "missing.pt", "does not exist")


@pytest.mark.parametrize("entry, at", [("/data/0", 5), ("/data.pkl", 40)], ids=["weight", "pickle"])
@pytest.mark.parametrize("as_path", [False, True, "mapped"], ids=["bytes", "path", "mapped"])
def test_a_byte_changed_on_disk_is_refused_not_loaded_as_another_model(
    tmp_path, good, entry, at, as_path
):
    """torch.load ignores the archive's checksums: a flipped bit in a weight loads silently."""
    damaged = with_byte_changed(checkpoint_bytes(good), entry, at)
    source = damaged
    if as_path:
        source = tmp_path / "model.pt"
        source.write_bytes(damaged)
    refused(
        source, f"damaged: archive{entry} does not match the checksum", mapped=as_path == "mapped"
    )


def test_a_checkpoint_saved_without_checksums_still_loads(good):
    """torch.save writes CRC 0 everywhere with compute_crc32 off: nothing to check, not damage."""
    import torch.utils.serialization.config as serialization

    with serialization.patch({"save.compute_crc32": False}):
        data = checkpoint_bytes(good)
    assert {e.CRC for e in zipfile.ZipFile(io.BytesIO(data)).infolist()} == {0}
    loaded = read_checkpoint(data)
    weight = "decoder.2.weight"
    assert torch.equal(loaded["model_state"][weight], good["model_state"][weight])


def test_oversized_file_is_refused(good):
    data = checkpoint_bytes(good)
    refused(data, f"{len(data):,} bytes; the limit is {len(data) - 1:,}", max_bytes=len(data) - 1)
    assert read_checkpoint(data, max_bytes=len(data))  # exactly at the limit: fine


# ---- checkpoints that load but do not fit ------------------------------------------------------
def with_config(checkpoint: dict, **changes) -> bytes:
    return checkpoint_bytes({**checkpoint, "config": {**checkpoint["config"], **changes}})


def test_weights_for_another_latent_size_are_refused(config, good):
    other = checkpoint_for(RunConfig.from_dict({**config.to_dict(), "latent_dim": 5}))
    data = checkpoint_bytes({**other, "config": good["config"]})  # says 3, holds 5
    refused(data, r"shape \(\d+, 32\), expected \(\d+, 32\)|shape .*expected")


def test_weights_for_another_hidden_size_are_refused(config, good):
    other = checkpoint_for(RunConfig.from_dict({**config.to_dict(), "hidden_dims": [64]}))
    refused(checkpoint_bytes({**other, "config": good["config"]}), "has shape .* expected")


def test_conv_weights_with_an_mlp_config_are_refused(config, good):
    conv = checkpoint_for(RunConfig.from_dict({**config.to_dict(), "architecture": "conv"}))
    message = refused(
        checkpoint_bytes({**conv, "config": good["config"]}), "do not match the architecture"
    )
    assert "mlp" in message and "latent 3" in message


def test_missing_or_extra_weight_is_refused(good):
    state = dict(good["model_state"])
    state.pop(next(iter(state)))
    refused(checkpoint_bytes({**good, "model_state": state}), "do not match the architecture")
    extra = {**good["model_state"], "backdoor": torch.zeros(1)}
    refused(checkpoint_bytes({**good, "model_state": extra}), "do not match the architecture")


@pytest.mark.parametrize("value", [float("nan"), float("inf"), float("-inf")])
def test_nan_or_inf_weights_are_refused(good, value):
    state = {k: v.clone() for k, v in good["model_state"].items()}
    key = next(k for k, v in state.items() if v.dim() == 2)
    state[key][0, 0] = value
    refused(checkpoint_bytes({**good, "model_state": state}), f"{key} contains NaN or inf")


def test_non_finite_metric_is_refused(good):
    refused(checkpoint_bytes({**good, "metrics": {"rate": float("nan")}}), "metric rate is nan")


@pytest.mark.parametrize(
    "changes, words",
    [
        ({"dataset": "imagenet"}, "config is not valid: dataset: unknown value 'imagenet'"),
        ({"beta": -1.0}, "config is not valid: beta: must be between 0 and 1000"),
        ({"beta": float("nan")}, "config is not valid: beta: must be finite"),
        ({"latent_dim": 0}, "config is not valid: latent_dim"),
        ({"hidden_dims": [float("inf")]}, "config is not valid: hidden_dims"),
        ({"hidden_dims": ["wide"]}, "config is not valid: hidden_dims"),
        ({"architecture": "resnet"}, "config is not valid: architecture"),
    ],
)
def test_invalid_config_inside_a_checkpoint_is_refused(good, changes, words):
    refused(with_config(good, **changes), re.escape(words))


@pytest.mark.parametrize("config_value", [[1, 2], "digits", None])
def test_config_that_is_not_a_dict_is_refused(good, config_value):
    refused(checkpoint_bytes({**good, "config": config_value}), "config is not valid")


@pytest.mark.parametrize(
    "changes, words",
    [
        ({"format": "someone-else/v9"}, "unknown format"),
        ({"image_shape": [1, 28]}, "image_shape"),
        ({"image_shape": [1, 100_000, 28]}, "image_shape"),
        ({"epoch": -1}, "epoch must be"),
        ({"metrics": [1, 2]}, "metrics must be"),
    ],
)
def test_other_layout_problems_are_refused(good, changes, words):
    refused(checkpoint_bytes({**good, **changes}), words)


# ---- security defaults in the code and the server config ----------------------------------------
def test_every_torch_load_passes_weights_only_true():
    calls = 0
    for path in APP_CODE:
        source = path.read_text()
        for node in ast.walk(ast.parse(source)):
            if isinstance(node, ast.Call) and ast.unparse(node.func) in ("torch.load", "load"):
                if ast.unparse(node.func) == "load" and "from torch import load" not in source:
                    continue
                calls += 1
                flags = {k.arg: k.value for k in node.keywords}
                value = flags.get("weights_only")
                assert isinstance(value, ast.Constant) and value.value is True, (
                    f"{path.name}:{node.lineno} calls torch.load without weights_only=True"
                )
        for number, line in enumerate(source.splitlines(), 1):  # also text, e.g. code shown
            if "torch.load(" in line:
                assert "weights_only=True" in line, f"{path.name}:{number}: {line.strip()}"
    assert calls >= 1  # vae/checkpoint.py's read_checkpoint


def test_no_pickle_loading_in_app_code():
    pattern = re.compile(
        r"\b(pickle|dill|cloudpickle|joblib)\.loads?\(|\bnp\.load\(.*allow_pickle\s*=\s*True"
    )
    for path in APP_CODE:
        for number, line in enumerate(path.read_text().splitlines(), 1):
            assert not pattern.search(line), f"{path.name}:{number}: {line.strip()}"


def test_no_unsafe_allow_html_anywhere_in_app_code():
    for path in APP_CODE:
        assert "unsafe_allow_html" not in path.read_text(), path.name
        assert "unsafe_allow_javascript" not in path.read_text(), path.name


def test_streamlit_config_is_safe_by_default():
    config = tomllib.loads((REPO / ".streamlit" / "config.toml").read_text())
    server = config["server"]
    assert server["address"] == "127.0.0.1"
    assert server["enableXsrfProtection"] is True
    assert server["fileWatcherType"] == "none"
    assert server["maxUploadSize"] * 2**20 == MAX_UPLOAD_BYTES  # the page's own check agrees
    assert config["browser"]["gatherUsageStats"] is False


def test_streamlit_reads_the_config_from_the_project_folder(tmp_path):
    """`streamlit config show` run where `streamlit run app.py` runs sees the same values."""
    result = subprocess.run(
        [sys.executable, "-m", "streamlit", "config", "show"],
        cwd=REPO, capture_output=True, text=True, timeout=120,
        env={**os.environ, "HOME": str(tmp_path)},  # no user-level config.toml in the way
    )  # fmt: skip
    assert result.returncode == 0, result.stderr
    shown = result.stdout
    for line in (
        'address = "127.0.0.1"',
        "enableXsrfProtection = true",
        'fileWatcherType = "none"',
        "maxUploadSize = 200",
        "gatherUsageStats = false",
    ):
        assert re.search(rf"^{re.escape(line)}$", shown, re.M), line
