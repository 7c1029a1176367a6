"""Checkpoint files: plain dicts of tensors and built-in types, safe to open with weights_only=True.

A checkpoint holds the model's state_dict, the run config as a dict, the image shape, the epoch,
the last metrics and (for resuming) the optimizer and RNG states. Anything that does not match
this layout, from disk or from an upload, is refused with a CheckpointError that says why.
"""

from __future__ import annotations

import io
import math
import mmap
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
MAX_COUNTER = 10**12  # epochs and steps: far beyond any real run, far below what breaks a table
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
    checkpoint = read_checkpoint(path)
    check_belongs_to_run(store, run_id, checkpoint, path.name)
    return checkpoint


# Settings that may differ between a run's config.json and its checkpoint: how and where it ran.
RUNTIME_FIELDS = frozenset({"threads", "device", "precision", "name", "data_root", "epochs"})


def check_belongs_to_run(store: RunStore, run_id: str, checkpoint: dict, name: str) -> None:
    """A checkpoint in a run's folder must be that run's: another run's final.pt copied in
    (another β, another architecture) is refused, never shown as this run's model."""
    try:
        own = store.read_config(run_id).to_dict()
    except Exception:  # noqa: BLE001 - the listing reports an unreadable config.json itself
        return
    theirs = RunConfig.from_dict(checkpoint["config"]).to_dict()  # defaults filled, as own
    differ = sorted(key for key in own.keys() - RUNTIME_FIELDS if theirs.get(key) != own[key])
    if differ:
        shown = ", ".join(differ[:5]) + (" …" if len(differ) > 5 else "")
        raise CheckpointError(f"{name} was not trained by this run: its config differs in {shown}")


def checkpoint_problem(store: RunStore, run_id: str) -> str | None:
    """Why the run's checkpoint cannot be used, or None when it loads (or none exists yet)."""
    for name in ("final.pt", "model.pt"):
        path = store.path(run_id, name)
        if os.path.lexists(path):
            try:
                check_belongs_to_run(store, run_id, read_checkpoint(path), name)
            except CheckpointError as exc:
                return f"{name}: {exc}"
    return None


def read_checkpoint(
    source: str | os.PathLike | bytes, max_bytes: int | None = None, mapped: bool = False
) -> dict:
    """Open a checkpoint from a path or bytes without running any code, then check its layout.

    Nothing is built or decompressed before its size is known to be within limits: the zip
    directory's declared sizes (`_check_container`), then the config's parameter count
    (`parameter_count`) before any model is built. Whatever goes wrong, including an exception
    type nobody foresaw, comes back as a CheckpointError with a message of our own.

    With `mapped` (a path only), the weights stay in the file, mapped into memory rather than
    copied (an upload's temporary file): a large checkpoint costs its size once, not twice.
    """
    if mapped and not isinstance(source, bytes):
        return _read_mapped(Path(source), max_bytes or MAX_STORE_CHECKPOINT_BYTES)
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
    return _load_checked(
        lambda: torch.load(io.BytesIO(data), map_location="cpu", weights_only=True)
    )


def _read_mapped(path: Path, limit: int) -> dict:
    try:
        fd, info = safe_read.open_regular(path, limit)
    except FileNotFoundError:
        raise CheckpointError(f"{path.name} does not exist") from None
    except (safe_read.UnsafeFileError, OSError) as exc:
        raise CheckpointError(str(exc)) from None
    with os.fdopen(fd, "rb") as handle:
        if info.st_size == 0:
            raise CheckpointError("the file is empty")
        with mmap.mmap(handle.fileno(), 0, access=mmap.ACCESS_READ) as view:
            _check_container(view)
        opened = f"/proc/self/fd/{handle.fileno()}"  # the file checked, whatever the path is now
        return _load_checked(
            lambda: torch.load(opened, mmap=True, map_location="cpu", weights_only=True)
        )


def _load_checked(load) -> dict:
    """`load()` then `validate_checkpoint`, every failure a CheckpointError in our words."""
    try:
        checkpoint = load()
    except pickle.UnpicklingError as exc:
        found = re.search(r"GLOBAL ([\w.]+)", str(exc))
        if found is None:
            raise CheckpointError(f"not a loadable checkpoint: {_own_words(exc)}") from None
        # torch's own text suggests weights_only=False: exactly what must not be done here.
        raise CheckpointError(
            f"refused: the file asks to import {found.group(1)[:100]}; a checkpoint may hold "
            "only tensors, numbers and text, so nothing in it was run"
        ) from None
    except MemoryError:
        raise CheckpointError("refused: the file needs more memory than a checkpoint may") from None
    except Exception as exc:  # torch raises many types for foreign, truncated or damaged files
        raise CheckpointError(f"not a loadable checkpoint: {_own_words(exc)}") from None
    try:
        validate_checkpoint(checkpoint)
    except CheckpointError:
        raise
    except MemoryError:
        raise CheckpointError("refused: checking it needs more memory than allowed") from None
    except Exception as exc:  # e.g. a RuntimeError from torch on a shape nobody foresaw
        raise CheckpointError(
            f"refused: its contents could not be checked: {_own_words(exc)}"
        ) from None
    return checkpoint


def _own_words(exc: BaseException) -> str:
    """What went wrong in the app's words: torch's text (C++ file names, operator names, its
    advice to pass weights_only=False) is never shown to the user."""
    text = str(exc)
    if isinstance(exc, RecursionError) or "recursion" in text:
        return "its contents are nested too deeply"
    if isinstance(exc, MemoryError) or "alloc" in text:
        return "it asks for more memory than a checkpoint may use"
    if "Sparse" in text or "sparse" in text:
        return "it holds sparse tensors; a checkpoint's weights are dense"
    if "inline_container" in text or "zip" in text.lower() or "archive" in text:
        return "its archive is damaged or truncated"
    if "storage" in text.lower() or "size" in text.lower():
        return "a tensor's stored data does not match its declared size"
    return "its contents are damaged or not what torch.save writes"


def _check_container(data: bytes | mmap.mmap) -> None:
    """A torch.save file is a zip archive holding <name>/data.pkl; check it before torch reads it.

    torch.save stores every entry uncompressed, so an entry that is compressed (which could
    expand far beyond the file) is refused, and the declared sizes of all entries together must
    fit in the file itself: torch allocates each tensor's storage from its declared size.
    """
    if not data:
        raise CheckpointError("the file is empty")
    if data[:4] != b"PK\x03\x04":
        raise CheckpointError(
            "not a checkpoint: files saved by torch.save are zip archives and this one is not "
            "(an image, a text file, a bare pickle or damaged data?)"
        )
    try:
        readable = _MappedFile(data) if isinstance(data, mmap.mmap) else io.BytesIO(data)
        archive = zipfile.ZipFile(readable)
        entries = archive.infolist()
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
    _check_checksums(archive, entries)


class _MappedFile:
    """A memory map read as a file by zipfile, without copying it (before Python 3.13 an mmap
    has every file method zipfile uses but seekable())."""

    def __init__(self, view: mmap.mmap):
        self._view = view

    def __getattr__(self, name: str):
        return getattr(self._view, name)

    def seekable(self) -> bool:
        return True


def _check_checksums(archive: zipfile.ZipFile, entries: list[zipfile.ZipInfo]) -> None:
    """Every entry's bytes against the CRC-32 that torch.save recorded beside them.

    torch.load never looks at these checksums: a byte changed on disk or on the way (a bit
    flip in a weight) would load as a different model, and nothing else would notice. A CRC of 0
    is skipped: torch writes 0 throughout when told not to compute them (compute_crc32=False).
    Reading streams through the entry a MiB at a time; zipfile compares the CRC at its end.
    """
    for entry in entries:
        if entry.CRC == 0:
            continue
        try:
            with archive.open(entry) as stream:
                while stream.read(1 << 20):
                    pass
        except (zipfile.BadZipFile, OSError, ValueError, EOFError):
            raise CheckpointError(
                f"the file is damaged: {entry.filename[:80]} does not match the checksum saved "
                "with it (a byte changed on disk or in transfer); nothing was loaded"
            ) from None


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
        with torch.device("meta"):  # shapes only: no memory for a model that is never used
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
        if isinstance(tensor, torch.Tensor) and tensor.layout != torch.strided:
            raise CheckpointError(f"{key} is a sparse tensor; weights must be dense")
        if not isinstance(tensor, torch.Tensor) or tensor.shape != expected.shape:
            got = tuple(tensor.shape) if isinstance(tensor, torch.Tensor) else type(tensor).__name__
            raise CheckpointError(f"{key} has shape {got}, expected {tuple(expected.shape)}")
        if tensor.dtype not in FLOAT_TYPES:
            raise CheckpointError(f"{key} holds {tensor.dtype} values; weights must be real floats")
        if not _all_finite(tensor):
            raise CheckpointError(f"{key} contains NaN or inf weights")
    for key in ("epoch", "step"):
        if not _whole(checkpoint[key]) or not 0 <= checkpoint[key] <= MAX_COUNTER:
            raise CheckpointError(
                f"{key} must be a whole number from 0 to {MAX_COUNTER:,}, "
                f"not {str(checkpoint[key])[:40]}"
            )
    if not isinstance(checkpoint["metrics"], dict):
        raise CheckpointError("metrics must be a dictionary")
    for key, value in checkpoint["metrics"].items():
        if isinstance(value, float) and not math.isfinite(value) and key != "capacity":
            raise CheckpointError(f"metric {key} is {value}")
    return config


def _all_finite(tensor: torch.Tensor, chunk: int = 1 << 22) -> bool:
    """No NaN or inf, checked a few million values at a time (fp16 is widened to check it: a
    whole 32-million-value tensor at once would need 128 MB more)."""
    flat = tensor.reshape(-1)
    return all(bool(torch.isfinite(part).all()) for part in flat.split(chunk))


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


def parameter_count(config: RunConfig, image_shape: tuple[int, int, int]) -> int:
    """How many numbers build_model(config, image_shape) would allocate, counted on a model built
    on the meta device (shapes only, no memory), so the architecture is written once.

    Lets a hostile config (forty 4,096-unit layers, 512x512x4 images) be refused before a single
    real tensor exists.
    """
    try:
        with torch.device("meta"):
            model = build_model(config, image_shape)
    except (ConfigError, TypeError, ValueError, AttributeError) as exc:
        raise CheckpointError(f"config is not valid: {exc}") from None
    return sum(t.numel() for t in model.state_dict().values())


def model_sharing_weights(checkpoint: dict) -> VAE:
    """The checkpoint's model on its own tensors (no copy, in their dtype when they share one):
    what an upload's pictures need without a second model's worth of memory."""
    config = RunConfig.from_dict(checkpoint["config"])
    state = checkpoint["model_state"]
    dtypes = {t.dtype for t in state.values()}
    if len(dtypes) != 1 or dtypes == {torch.float64}:
        state = {k: t.float() for k, t in state.items()}
    with torch.device("meta"):
        model = build_model(config, tuple(checkpoint["image_shape"]))
    model.load_state_dict(state, assign=True)
    return model.eval()


def model_from_checkpoint(checkpoint: dict, device: str | torch.device = "cpu") -> VAE:
    config = RunConfig.from_dict(checkpoint["config"])
    model = build_model(config, tuple(checkpoint["image_shape"]))
    model.load_state_dict(checkpoint["model_state"])
    return model.to(device).eval()
