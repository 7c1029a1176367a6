"""Training as a film: each epoch, a small grid of prior samples (the same z every epoch) and the
reconstructions of the same test inputs, kept in the run folder as `film.npz`.

Bounded like the metrics series: every `stride`-th epoch from epoch 1 plus the latest, the
stride doubling whenever more than DISPLAY_POINTS frames would be kept, so a 10,000-epoch run
holds at most about 100 frames (digits: 16 images of 28 x 28 bytes each, under 2 MB
uncompressed). Written atomically; read through the careful reader with allow_pickle=False.
"""

from __future__ import annotations

import io
import sys
import zipfile
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from vae.execution import safe_read
from vae.execution.series import DISPLAY_POINTS
from vae.learn.evaluate import prior_samples, reconstructions

FILM_FILE = "film.npz"
SAMPLES = 8  # prior samples per frame (fixed z: seed FILM_SEED)
INPUTS = 8  # fixed test inputs per frame (the first of the test split), each reconstructed
FILM_SEED = 0
MAX_FILM_BYTES = 64 * safe_read.MIB
FILM_KEYS = ("epochs", "samples", "reconstructions", "inputs", "stride")


class FilmError(ValueError):
    """A film file that cannot be used; the message says why."""


@dataclass
class Film:
    """Frames of one run: uint8 images [frames, n, C, H, W], the epoch of each frame."""

    epochs: np.ndarray  # int64 [frames]
    samples: np.ndarray  # uint8 [frames, SAMPLES, C, H, W]
    reconstructions: np.ndarray  # uint8 [frames, INPUTS, C, H, W]
    inputs: np.ndarray  # uint8 [INPUTS, C, H, W]
    stride: int = 1

    def frame_at(self, epoch: int) -> int | None:
        """Index of the latest frame at or before `epoch` (None: none that early)."""
        earlier = np.flatnonzero(self.epochs <= epoch)
        return int(earlier[-1]) if len(earlier) else None

    def to_bytes(self) -> bytes:
        """An .npz archive, deflated at level 1: it is rewritten after every epoch, and level 1
        costs a third of np.savez_compressed's time for a file a few percent larger."""
        arrays = {
            "epochs": self.epochs, "samples": self.samples,
            "reconstructions": self.reconstructions, "inputs": self.inputs,
            "stride": np.array(self.stride, dtype=np.int64),
        }  # fmt: skip
        buffer = io.BytesIO()
        with zipfile.ZipFile(buffer, "w", zipfile.ZIP_DEFLATED, compresslevel=1) as archive:
            for name, array in arrays.items():
                entry = io.BytesIO()
                np.lib.format.write_array(entry, np.asanyarray(array), allow_pickle=False)
                archive.writestr(f"{name}.npy", entry.getvalue())
        return buffer.getvalue()


def _uint8(images: torch.Tensor) -> np.ndarray:
    return (images.float().cpu().clamp(0, 1) * 255).round().to(torch.uint8).numpy()


def thin(film: Film) -> Film:
    """Keep every stride-th epoch (from epoch 1) and the latest; double the stride while more
    than DISPLAY_POINTS frames would remain (the metrics series' rule)."""
    stride = film.stride
    while True:
        keep = ((film.epochs - 1) % stride == 0) | (film.epochs == film.epochs.max(initial=0))
        if keep.sum() <= DISPLAY_POINTS + 1:
            break
        stride *= 2
    return Film(
        film.epochs[keep], film.samples[keep], film.reconstructions[keep], film.inputs, stride
    )


def read_film(run_dir: str | Path) -> Film | None:
    """The run's film, None when it has none; FilmError when the file is damaged or odd."""
    path = Path(run_dir) / FILM_FILE
    try:
        data = safe_read.read_bytes(path, MAX_FILM_BYTES)
    except FileNotFoundError:
        return None
    except (safe_read.UnsafeFileError, OSError) as exc:
        raise FilmError(f"{FILM_FILE}: {exc}") from None
    try:
        with np.load(io.BytesIO(data), allow_pickle=False) as arrays:
            parts = {k: arrays[k] for k in FILM_KEYS}
    except Exception as exc:  # a zip, npy or key error from a damaged or foreign file
        raise FilmError(f"{FILM_FILE} is not a readable film ({type(exc).__name__})") from None
    epochs, samples, recons, inputs = (parts[k] for k in FILM_KEYS[:4])
    frames = len(epochs)
    ok = (
        epochs.dtype == np.int64 and epochs.ndim == 1
        and samples.dtype == recons.dtype == inputs.dtype == np.uint8
        and samples.ndim == recons.ndim == 5 and inputs.ndim == 4
        and len(samples) == len(recons) == frames
        and recons.shape[1:] == inputs.shape and samples.shape[2:] == inputs.shape[1:]
        and parts["stride"].shape == () and int(parts["stride"]) >= 1
    )  # fmt: skip
    if not ok:
        raise FilmError(f"{FILM_FILE} holds arrays of unexpected types or shapes")
    return Film(epochs, samples, recons, inputs, int(parts["stride"]))


class FilmRecorder:
    """Adds one frame per epoch to a run's film; never stops training (errors are printed)."""

    def __init__(self, run_dir: str | Path, test_x: torch.Tensor, save: Callable[[Film], None]):
        # Writes film.npz through the run store (Film.to_bytes, then RunFolders.write_file). It
        # gets the frames, not the file, so a writer thread can do the compression too.
        self.save = save
        self.test_x = test_x[:INPUTS]
        self.film: Film | None = None
        try:
            self.film = read_film(run_dir)  # a resumed run continues its film
        except FilmError as exc:
            print(f"film: starting again: {exc}", file=sys.stderr)

    def record(self, model, epoch: int) -> None:
        try:
            self._record(model, epoch)
        except Exception as exc:  # a picture must never cost a run
            print(f"film: epoch {epoch} not recorded: {exc}", file=sys.stderr)

    def _record(self, model, epoch: int) -> None:
        with torch.no_grad():
            samples = _uint8(prior_samples(model, SAMPLES, seed=FILM_SEED))[None]
            pairs = reconstructions(model, self.test_x, INPUTS)
            recons = _uint8(pairs[1::2])[None]
        inputs = _uint8(self.test_x.float())
        film = self.film
        if film is None or film.inputs.shape != inputs.shape:
            film = Film(np.zeros(0, np.int64), samples[:0], recons[:0], inputs)
        keep = film.epochs < epoch  # a resumed run redoes later epochs
        self.film = thin(
            Film(
                np.concatenate([film.epochs[keep], [epoch]]).astype(np.int64),
                np.concatenate([film.samples[keep], samples]),
                np.concatenate([film.reconstructions[keep], recons]),
                inputs,
                film.stride,
            )
        )
        self.save(self.film)  # a new Film each epoch: what was saved never changes
