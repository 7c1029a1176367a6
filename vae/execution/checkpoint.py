"""Checkpoint files: plain dicts of tensors and built-in types, safe to open with weights_only=True.

A checkpoint holds the model's state_dict, the run config as a dict, the image shape, the epoch,
the last metrics and (for resuming) the optimizer and RNG states. Anything that does not match
this layout, from disk or from an upload, is refused with a CheckpointError that says why.
"""

from __future__ import annotations

import io
import math
import os
import pickle
import re
import zipfile
from pathlib import Path

import torch

from vae.learn.config import ConfigError, RunConfig
from vae.learn.model import VAE, build_model

FORMAT = "beta-vae-dashboard/checkpoint-v1"
MAX_UPLOAD_BYTES = 200 * 1024 * 1024
REQUIRED_KEYS = {"format", "config", "image_shape", "epoch", "step", "model_state", "metrics"}


class CheckpointError(ValueError):
    """A file is not a checkpoint this app can use; the message says why."""


def make_checkpoint(config: RunConfig, state, image_shape, metrics: dict | None) -> dict:
    return {
        "format": FORMAT,
        "config": config.to_dict(),
        "image_shape": list(image_shape),
        "epoch": state.epoch,
        "step": state.step,
        "model_state": {k: v.detach().cpu() for k, v in state.model.state_dict().items()},
        "optimizer_state": state.optimizer.state_dict(),
        "rng_state": state.generator.get_state().cpu(),
        "metrics": metrics or {},
    }


def checkpoint_bytes(checkpoint: dict) -> bytes:
    buffer = io.BytesIO()
    torch.save(checkpoint, buffer)
    return buffer.getvalue()


def read_checkpoint(source: str | os.PathLike | bytes, max_bytes: int | None = None) -> dict:
    """Open a checkpoint from a path or bytes without running any code, then check its layout."""
    if isinstance(source, bytes):
        data = source
    else:
        path = Path(source)
        if not path.is_file():
            raise CheckpointError(f"{path.name} does not exist")
        data = path.read_bytes()
    if max_bytes is not None and len(data) > max_bytes:
        raise CheckpointError(f"file is {len(data):,} bytes; the limit is {max_bytes:,}")
    _check_container(data)
    try:
        checkpoint = torch.load(io.BytesIO(data), map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as exc:
        found = re.search(r"GLOBAL ([\w.]+)", str(exc))
        if found is None:
            raise CheckpointError(f"not a loadable checkpoint ({_first_line(exc)})") from None
        # torch's own text suggests weights_only=False: exactly what must not be done here.
        raise CheckpointError(
            f"refused: the file asks to import {found.group(1)}; a checkpoint may hold only "
            "tensors, numbers and text, so nothing in it was run"
        ) from None
    except Exception as exc:  # torch raises many types for foreign, truncated or damaged files
        raise CheckpointError(f"not a loadable checkpoint ({_first_line(exc)})") from None
    validate_checkpoint(checkpoint)
    return checkpoint


def _check_container(data: bytes) -> None:
    """A torch.save file is a zip archive holding <name>/data.pkl; say plainly when it is not."""
    if not data:
        raise CheckpointError("the file is empty")
    if not data.startswith(b"PK\x03\x04"):
        raise CheckpointError(
            "not a checkpoint: files saved by torch.save are zip archives and this one is not "
            "(an image, a text file, a bare pickle or damaged data?)"
        )
    try:
        names = zipfile.ZipFile(io.BytesIO(data)).namelist()
    except (zipfile.BadZipFile, OSError, ValueError):
        raise CheckpointError(
            "the file is truncated or damaged (its zip index is unreadable)"
        ) from None
    if not any(name.endswith("/data.pkl") for name in names):
        raise CheckpointError("a zip archive, but not a torch checkpoint (no data.pkl inside)")


def _first_line(exc: Exception) -> str:
    text = str(exc).strip().splitlines()
    return (text[0] if text else type(exc).__name__)[:300]


def validate_checkpoint(checkpoint) -> RunConfig:
    """Check keys, config, shapes and values; return the config. Raises CheckpointError."""
    if not isinstance(checkpoint, dict):
        raise CheckpointError("file holds a single object, not a checkpoint dictionary")
    missing = REQUIRED_KEYS - checkpoint.keys()
    if missing:
        raise CheckpointError(f"missing keys: {', '.join(sorted(missing))}")
    if checkpoint["format"] != FORMAT:
        raise CheckpointError(f"unknown format {str(checkpoint['format'])[:80]!r}")
    try:
        config = RunConfig.from_dict(checkpoint["config"]).validated()
        image_shape = tuple(int(s) for s in checkpoint["image_shape"])
        if len(image_shape) != 3 or not all(0 < s <= 512 for s in image_shape):
            raise ValueError("image_shape must be three sizes up to 512")
        reference = build_model(config, image_shape).state_dict()
    except (ConfigError, TypeError, ValueError, AttributeError) as exc:
        raise CheckpointError(f"config is not valid: {exc}") from None
    state = checkpoint["model_state"]
    if not isinstance(state, dict) or state.keys() != reference.keys():
        raise CheckpointError(
            "weights do not match the architecture in the config "
            f"({config.architecture}, latent {config.latent_dim}, hidden {config.hidden_dims})"
        )
    for key, expected in reference.items():
        tensor = state[key]
        if not isinstance(tensor, torch.Tensor) or tensor.shape != expected.shape:
            got = tuple(tensor.shape) if isinstance(tensor, torch.Tensor) else type(tensor).__name__
            raise CheckpointError(f"{key} has shape {got}, expected {tuple(expected.shape)}")
        if tensor.is_floating_point() and not bool(torch.isfinite(tensor).all()):
            raise CheckpointError(f"{key} contains NaN or inf weights")
    if not isinstance(checkpoint["epoch"], int) or checkpoint["epoch"] < 0:
        raise CheckpointError("epoch must be a non-negative integer")
    if not isinstance(checkpoint["metrics"], dict):
        raise CheckpointError("metrics must be a dictionary")
    for key, value in checkpoint["metrics"].items():
        if isinstance(value, float) and not math.isfinite(value) and key != "capacity":
            raise CheckpointError(f"metric {key} is {value}")
    return config


def model_from_checkpoint(checkpoint: dict, device: str | torch.device = "cpu") -> VAE:
    config = RunConfig.from_dict(checkpoint["config"])
    model = build_model(config, tuple(checkpoint["image_shape"]))
    model.load_state_dict(checkpoint["model_state"])
    return model.to(device).eval()
