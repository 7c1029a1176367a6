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

from vae.execution import safe_read
from vae.execution.store import RunStore
from vae.learn.config import ConfigError, RunConfig
from vae.learn.model import VAE, build_model

FORMAT = "beta-vae-dashboard/checkpoint-v1"
MAX_UPLOAD_BYTES = 200 * 1024 * 1024
# model.pt of the largest model allowed below, with Adam's two moments: 3 x 4 bytes x 64 M.
MAX_STORE_CHECKPOINT_BYTES = 1024 * 1024 * 1024
MAX_PARAMETERS = 64_000_000  # 256 MB of float32 weights; checked on the config before building
MAX_PICKLE_BYTES = 4 * 1024 * 1024  # data.pkl: the dict around the tensors (a few KB in practice)
MAX_ENTRIES = 10_000  # files inside the archive: one per tensor
MAX_IMAGE_SIDE = 512
MAX_CHANNELS = 4
REQUIRED_KEYS = {"format", "config", "image_shape", "epoch", "step", "model_state", "metrics"}
FLOAT_TYPES = (torch.float16, torch.bfloat16, torch.float32, torch.float64)


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


def save_run_checkpoint(store: RunStore, run_id: str, checkpoint: dict, final: bool = False):
    """model.pt (to resume from); with `final`, also final.pt without the optimizer state."""
    slim = {k: v for k, v in checkpoint.items() if k != "optimizer_state"} if final else None
    store.write_checkpoint(
        run_id, checkpoint_bytes(checkpoint), None if slim is None else checkpoint_bytes(slim)
    )


def load_run_checkpoint(store: RunStore, run_id: str, final: bool = True) -> dict:
    """final.pt if asked and present, else model.pt. Raises CheckpointError if unusable."""
    path = store.checkpoint_path(run_id, final)
    if path is None:
        raise CheckpointError(f"run {run_id} has no checkpoint yet")
    return read_checkpoint(path)


def checkpoint_problem(store: RunStore, run_id: str) -> str | None:
    """Why the run's checkpoint cannot be used, or None when it loads (or none exists yet)."""
    for name in ("final.pt", "model.pt"):
        path = store.path(run_id, name)
        if os.path.lexists(path):
            try:
                read_checkpoint(path)
            except CheckpointError as exc:
                return f"{name}: {exc}"
    return None


def read_checkpoint(source: str | os.PathLike | bytes, max_bytes: int | None = None) -> dict:
    """Open a checkpoint from a path or bytes without running any code, then check its layout.

    Nothing is built or decompressed before its size is known to be within limits: the zip
    directory's declared sizes (`_check_container`), then the config's parameter count
    (`parameter_count`) before any model is built. Whatever goes wrong, including an exception
    type nobody foresaw, comes back as a CheckpointError with a message of our own.
    """
    if isinstance(source, bytes):
        data = source
    else:
        path = Path(source)
        limit = max_bytes or MAX_STORE_CHECKPOINT_BYTES
        try:
            data = safe_read.read_bytes(path, limit)
        except FileNotFoundError:
            raise CheckpointError(f"{path.name} does not exist") from None
        except (safe_read.UnsafeFileError, OSError) as exc:
            raise CheckpointError(str(exc)) from None
    limit = max_bytes if max_bytes is not None else MAX_STORE_CHECKPOINT_BYTES
    if len(data) > limit:
        raise CheckpointError(f"file is {len(data):,} bytes; the limit is {limit:,}")
    _check_container(data)
    try:
        checkpoint = torch.load(io.BytesIO(data), map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as exc:
        found = re.search(r"GLOBAL ([\w.]+)", str(exc))
        if found is None:
            raise CheckpointError(f"not a loadable checkpoint ({_own_words(exc)})") from None
        # torch's own text suggests weights_only=False: exactly what must not be done here.
        raise CheckpointError(
            f"refused: the file asks to import {found.group(1)[:100]}; a checkpoint may hold "
            "only tensors, numbers and text, so nothing in it was run"
        ) from None
    except MemoryError:
        raise CheckpointError("refused: the file needs more memory than a checkpoint may") from None
    except Exception as exc:  # torch raises many types for foreign, truncated or damaged files
        raise CheckpointError(f"not a loadable checkpoint ({_own_words(exc)})") from None
    try:
        validate_checkpoint(checkpoint)
    except CheckpointError:
        raise
    except MemoryError:
        raise CheckpointError("refused: checking it needs more memory than allowed") from None
    except Exception as exc:  # e.g. a RuntimeError from torch on a shape nobody foresaw
        raise CheckpointError(
            f"refused: the checkpoint could not be checked ({_own_words(exc)})"
        ) from None
    return checkpoint


def _own_words(exc: BaseException) -> str:
    """The kind of failure without torch's advice (which may say to use weights_only=False)."""
    text = _first_line(exc)
    if "weights_only" in text or "weights only" in text.lower():
        return type(exc).__name__
    return text


def _check_container(data: bytes) -> None:
    """A torch.save file is a zip archive holding <name>/data.pkl; check it before torch reads it.

    torch.save stores every entry uncompressed, so an entry that is compressed (which could
    expand far beyond the file) is refused, and the declared sizes of all entries together must
    fit in the file itself: torch allocates each tensor's storage from its declared size.
    """
    if not data:
        raise CheckpointError("the file is empty")
    if not data.startswith(b"PK\x03\x04"):
        raise CheckpointError(
            "not a checkpoint: files saved by torch.save are zip archives and this one is not "
            "(an image, a text file, a bare pickle or damaged data?)"
        )
    try:
        entries = zipfile.ZipFile(io.BytesIO(data)).infolist()
    except (zipfile.BadZipFile, OSError, ValueError, EOFError):
        raise CheckpointError(
            "the file is truncated or damaged (its zip index is unreadable)"
        ) from None
    if len(entries) > MAX_ENTRIES:
        raise CheckpointError(f"refused: {len(entries):,} files inside; at most {MAX_ENTRIES:,}")
    pickles = [e for e in entries if e.filename.endswith("/data.pkl")]
    if not pickles:
        raise CheckpointError("a zip archive, but not a torch checkpoint (no data.pkl inside)")
    declared = 0
    for entry in entries:
        if entry.compress_type != zipfile.ZIP_STORED:
            raise CheckpointError(
                f"refused: {entry.filename[:80]} is compressed; torch.save never compresses, "
                "and a compressed entry could expand far beyond the file's size"
            )
        declared += entry.file_size
    if declared > len(data):
        raise CheckpointError(
            f"refused: its entries declare {declared:,} bytes in a file of {len(data):,} bytes"
        )
    if any(e.file_size > MAX_PICKLE_BYTES for e in pickles):
        raise CheckpointError(
            f"refused: its data.pkl is over {MAX_PICKLE_BYTES // 2**20} MiB (a checkpoint's is a "
            "few KB: the weights live beside it)"
        )


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
    except (ConfigError, TypeError, ValueError, AttributeError) as exc:
        raise CheckpointError(f"config is not valid: {exc}") from None
    image_shape = checked_image_shape(checkpoint["image_shape"])
    count = parameter_count(config, image_shape)
    if count > MAX_PARAMETERS:
        raise CheckpointError(
            f"refused: its config describes {count:,} weights (layers {config.hidden_dims}, "
            f"latent {config.latent_dim}, images {image_shape}); at most {MAX_PARAMETERS:,}"
        )
    try:
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
        if tensor.dtype not in FLOAT_TYPES:
            raise CheckpointError(f"{key} holds {tensor.dtype} values; weights must be real floats")
        if not bool(torch.isfinite(tensor).all()):
            raise CheckpointError(f"{key} contains NaN or inf weights")
    if not isinstance(checkpoint["epoch"], int) or checkpoint["epoch"] < 0:
        raise CheckpointError("epoch must be a non-negative integer")
    if not isinstance(checkpoint["metrics"], dict):
        raise CheckpointError("metrics must be a dictionary")
    for key, value in checkpoint["metrics"].items():
        if isinstance(value, float) and not math.isfinite(value) and key != "capacity":
            raise CheckpointError(f"metric {key} is {value}")
    return config


def checked_image_shape(value) -> tuple[int, int, int]:
    """(channels, height, width), each a whole number within the limits; else CheckpointError."""
    sizes = value if isinstance(value, list | tuple) else None
    if sizes is None or len(sizes) != 3 or not all(_whole(s) and s > 0 for s in sizes):
        raise CheckpointError("image_shape must be three whole numbers (channels, height, width)")
    channels, height, width = sizes
    if channels > MAX_CHANNELS or height > MAX_IMAGE_SIDE or width > MAX_IMAGE_SIDE:
        raise CheckpointError(
            f"image_shape {tuple(sizes)} is outside the limits: at most {MAX_CHANNELS} channels "
            f"and {MAX_IMAGE_SIDE} pixels a side"
        )
    return (channels, height, width)


def _whole(value) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _linear(inputs: int, outputs: int) -> int:
    return inputs * outputs + outputs


def parameter_count(config: RunConfig, image_shape: tuple[int, int, int]) -> int:
    """How many numbers build_model(config, image_shape) would allocate, by arithmetic alone.

    Lets a hostile config (forty 4,096-unit layers, 512x512x4 images) be refused before a single
    tensor exists. tests/test_uploads.py checks it against real models.
    """
    channels, height, width = image_shape
    latent, hidden = config.latent_dim, list(config.hidden_dims)
    hidden = [] if config.architecture == "linear" else hidden  # linear: no hidden layer
    likelihood = 1 if config.likelihood == "gaussian" else 0  # the log-variance (or its buffer)
    if config.architecture == "conv":
        if height != width or height not in (28, 32, 64):
            raise CheckpointError(
                f"conv models need 28, 32 or 64 pixel square images, got {image_shape}"
            )
        k, side = 32, height + (4 if height == 28 else 0)
        n_convs = int(math.log2(side // 4))
        convs = (channels * k * 16 + k) + (n_convs - 1) * (k * k * 16 + k)
        deconvs = (n_convs - 1) * (k * k * 16 + k) + (k * channels * 16 + channels)
        fc = _linear(k * 16, hidden[0]) + _linear(hidden[0], 2 * latent)
        fc += _linear(latent, hidden[0]) + _linear(hidden[0], k * 16)
        return convs + deconvs + fc + likelihood
    pixels = channels * height * width
    encoder = [pixels, *hidden, 2 * latent]
    decoder = [latent, *reversed(hidden), pixels]
    total = sum(_linear(a, b) for a, b in zip(encoder[:-1], encoder[1:], strict=True))
    total += sum(_linear(a, b) for a, b in zip(decoder[:-1], decoder[1:], strict=True))
    return total + likelihood


def model_from_checkpoint(checkpoint: dict, device: str | torch.device = "cpu") -> VAE:
    config = RunConfig.from_dict(checkpoint["config"])
    model = build_model(config, tuple(checkpoint["image_shape"]))
    model.load_state_dict(checkpoint["model_state"])
    return model.to(device).eval()
