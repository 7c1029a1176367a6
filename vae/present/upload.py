"""Inspecting an uploaded checkpoint within a bounded amount of memory, all of it given back.

A legal upload may hold 64 million weights (128 MB in fp16). What the view needs afterwards is
small: the config, the metrics and one picture of prior samples. So the upload is checked and
drawn once, into an `Inspection` of a few hundred KB, and everything else is dropped at once:
the file's bytes after torch has read them, the tensors after the picture is drawn (the model
shares the checkpoint's tensors instead of copying them), and glibc is asked to return the freed
pages to the system (`release_memory`). The page runs one inspection at a time per server.
"""

from __future__ import annotations

import contextlib
import ctypes
import ctypes.util
import gc
import os
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch

from vae.execution.checkpoint import CheckpointError, model_sharing_weights, read_checkpoint
from vae.learn.evaluate import grid, prior_samples

SAMPLES = 32  # prior samples drawn for a small image; fewer for large ones
MAX_PICTURE_PIXELS = 1024 * 1024  # the samples' picture is scaled down to at most this


@dataclass(frozen=True)
class Inspection:
    """What the page shows of one upload (kept in the session: small by construction)."""

    name: str
    problem: str | None = None  # why the file was refused (the app's own words)
    epoch: int = 0
    step: int = 0
    config: dict = field(default_factory=dict)
    metrics: dict = field(default_factory=dict)
    samples: np.ndarray | None = None  # H x W x 3 uint8
    samples_problem: str | None = None


def inspect_checkpoint_file(path: str | os.PathLike, name: str, max_bytes: int) -> Inspection:
    """Check the checkpoint at `path` (then delete the file) and draw its prior samples."""
    try:
        try:
            checkpoint = read_checkpoint(Path(path), max_bytes=max_bytes, mapped=True)
        finally:
            with contextlib.suppress(OSError):
                os.unlink(path)
    except CheckpointError as exc:
        return Inspection(name, problem=str(exc))
    metrics = {k: v for k, v in checkpoint["metrics"].items() if not isinstance(v, list)}
    samples, samples_problem = None, None
    try:
        samples = _samples_picture(checkpoint)
    except (RuntimeError, ValueError, MemoryError):  # e.g. a dtype this CPU cannot compute in
        samples_problem = "its prior samples could not be drawn on this machine"
    inspection = Inspection(
        name, None, int(checkpoint["epoch"]), int(checkpoint["step"]),
        dict(checkpoint["config"]), metrics, samples, samples_problem,
    )  # fmt: skip
    del checkpoint
    return inspection


def _samples_picture(checkpoint: dict) -> np.ndarray:
    channels, height, width = checkpoint["image_shape"]
    count = max(4, min(SAMPLES, MAX_PICTURE_PIXELS // (height * width) * 2))
    model = model_sharing_weights(checkpoint)
    with torch.inference_mode():
        images = prior_samples(model, count).float()
    del model
    picture = grid(images[:, :3] if channels == 4 else images, nrow=min(8, count))
    step = int(np.ceil(np.sqrt(picture.shape[0] * picture.shape[1] / MAX_PICTURE_PIXELS)))
    return np.ascontiguousarray(picture[::step, ::step]) if step > 1 else picture


def release_memory() -> None:
    """Collect garbage and hand freed heap pages back to the system (glibc's malloc_trim): a
    server that inspected a large upload returns to its idle size."""
    gc.collect()
    with contextlib.suppress(OSError, AttributeError, TypeError):
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
        libc.malloc_trim(0)
