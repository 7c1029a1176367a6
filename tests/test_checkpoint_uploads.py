"""Uploads that declare huge sizes are refused before anything is allocated.

Each hostile file is small on disk but asks, through its config, its image shape or a compressed
entry, for gigabytes. The test process's peak memory (VmHWM, reset through /proc/self/clear_refs)
must grow by far less than that, and the refusal must be a CheckpointError in our own words.
"""

from __future__ import annotations

import io
import zipfile
from pathlib import Path

import pytest
import torch

from vae.execution.checkpoint import (
    MAX_PARAMETERS,
    CheckpointError,
    checkpoint_bytes,
    parameter_count,
    read_checkpoint,
)
from vae.learn.config import RunConfig
from vae.learn.model import build_model

SHAPE = (1, 28, 28)
MIB = 1024 * 1024


def checkpoint_for(config: RunConfig, shape=SHAPE) -> dict:
    model = build_model(config, shape)
    return {
        "format": "beta-vae-dashboard/checkpoint-v1", "config": config.to_dict(),
        "image_shape": list(shape), "epoch": 1, "step": 10,
        "model_state": model.state_dict(), "metrics": {"rate": 1.0},
    }  # fmt: skip


@pytest.fixture
def good() -> dict:
    return checkpoint_for(RunConfig(hidden_dims=[32], latent_dim=4))


def peak_kib() -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1])
    raise AssertionError("no VmHWM")


def refused_within(data: bytes, words: str, most_mib: int = 64) -> str:
    """Refused with `words` in the message, the process's peak memory growing < most_mib."""
    Path("/proc/self/clear_refs").write_text("5")  # peak := current
    before = peak_kib()
    with pytest.raises(CheckpointError) as caught:
        read_checkpoint(data, max_bytes=200 * MIB)
    grown_mib = (peak_kib() - before) / 1024
    message = str(caught.value)
    assert words in message, message
    assert "weights_only" not in message  # never torch's advice to turn the safety off
    assert grown_mib < most_mib, f"peak memory grew {grown_mib:.0f} MiB while refusing"
    return message


def test_a_good_checkpoint_still_loads(good):
    loaded = read_checkpoint(checkpoint_bytes(good), max_bytes=200 * MIB)
    assert loaded["epoch"] == 1


def test_forty_wide_layers_in_the_config_are_refused_before_building(good):
    """215 KB on disk; building the model it describes would take about 2.7 GB."""
    config = {**good["config"], "hidden_dims": [4096] * 40}
    message = refused_within(checkpoint_bytes({**good, "config": config}), "weights")
    assert f"{MAX_PARAMETERS:,}" in message


@pytest.mark.parametrize(
    "shape, words",
    [
        ([512, 512, 512], "image_shape"),  # ended in a RuntimeError traceback before
        ([4, 512, 512], "weights"),  # within the shape limits, but a 1M-input first layer
        ([1, 28, 28.5], "whole numbers"),
        ([1, -28, 28], "whole numbers"),
        ("1x28x28", "whole numbers"),
    ],
)
def test_image_shapes_that_ask_for_huge_models_are_refused(good, shape, words):
    config = {**good["config"], "hidden_dims": [4096]}
    refused_within(checkpoint_bytes({**good, "config": config, "image_shape": shape}), words)


def deflated_zeros(good: dict, megabytes: int) -> bytes:
    """The good checkpoint with one weight's storage replaced by `megabytes` of zeros, deflated:
    a few hundred KB that would expand to the full size when read."""
    source = zipfile.ZipFile(io.BytesIO(checkpoint_bytes(good)))
    out = io.BytesIO()
    with zipfile.ZipFile(out, "w") as target:
        for info in source.infolist():
            if info.filename.endswith("/data/0"):
                entry = zipfile.ZipInfo(info.filename)
                entry.compress_type = zipfile.ZIP_DEFLATED
                with target.open(entry, "w", force_zip64=True) as handle:
                    zeros = bytes(MIB)
                    for _ in range(megabytes):
                        handle.write(zeros)
            else:
                target.writestr(info, source.read(info.filename))
    return out.getvalue()


def test_a_deflated_storage_of_zeros_is_refused_before_it_is_expanded(good):
    data = deflated_zeros(good, 512)
    assert len(data) < 2 * MIB  # the bomb is small on disk
    refused_within(data, "compressed")


def test_entries_declaring_more_bytes_than_the_file_holds_are_refused(good):
    """A stored entry whose sizes in the zip directory (which torch trusts to allocate) say 3 GiB."""
    data = bytearray(checkpoint_bytes(good))
    record, patched = data.find(b"PK\x01\x02"), 0  # central directory records
    while record != -1:
        name_length = int.from_bytes(data[record + 28 : record + 30], "little")
        if bytes(data[record + 46 : record + 46 + name_length]).endswith(b"/data/0"):
            for offset in (20, 24):  # compressed and uncompressed size
                data[record + offset : record + offset + 4] = (3 * 1024**3).to_bytes(4, "little")
            patched += 1
        record = data.find(b"PK\x01\x02", record + 4)
    assert patched == 1
    refused_within(bytes(data), "declare")


@pytest.mark.parametrize("dtype", [torch.int64, torch.complex64, torch.bool])
def test_weights_must_be_real_floating_point(good, dtype):
    state = dict(good["model_state"])
    key = next(iter(state))
    state[key] = torch.zeros(state[key].shape, dtype=dtype)
    refused_within(checkpoint_bytes({**good, "model_state": state}), "real floats")


@pytest.mark.parametrize(
    "config, shape",
    [
        (RunConfig(hidden_dims=[400], latent_dim=20), (1, 28, 28)),
        (RunConfig(hidden_dims=[64, 32, 16], latent_dim=7), (3, 8, 8)),
        (RunConfig(likelihood="gaussian", learn_variance=True, hidden_dims=[16]), (1, 8, 8)),
        (RunConfig(likelihood="gaussian", hidden_dims=[16]), (1, 8, 8)),
        (RunConfig(architecture="conv", hidden_dims=[256], latent_dim=10), (1, 28, 28)),
        (RunConfig(architecture="conv", hidden_dims=[128], latent_dim=6), (1, 64, 64)),
        (RunConfig(architecture="conv", hidden_dims=[64], latent_dim=3), (3, 32, 32)),
    ],
)
def test_parameter_count_arithmetic_matches_the_real_model(config, shape):
    """The count that guards build_model is what build_model allocates (state_dict numbers)."""
    model = build_model(config, shape)
    real = sum(t.numel() for t in model.state_dict().values())
    assert parameter_count(config, shape) == real
