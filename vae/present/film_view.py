"""Training as a film on the pages: a run's frame at an epoch, and a GIF of a run or a sweep.

Frames come from `vae.execution.film` (one small grid per epoch, kept in the run folder).
"""

from __future__ import annotations

import io
from collections.abc import Sequence

import numpy as np
import torch
from PIL import Image, ImageDraw, ImageFont

from vae.execution.film import Film, FilmError, read_film
from vae.learn.evaluate import grid

GIF_FRAME_MS = 250
GIF_LAST_FRAME_MS = 1500  # the end holds a moment before the loop starts again
FONT_FILES = ("DejaVuSans.ttf", "/usr/share/fonts/truetype/dejavu/DejaVuSans.ttf")


def read_films(folders: dict[str, str]) -> dict[str, Film]:
    """Run id -> film, for the runs (id -> run folder) that have a readable one."""
    films = {}
    for run_id, folder in folders.items():
        try:
            film = read_film(folder)
        except FilmError:
            continue
        if film is not None and len(film.epochs):
            films[run_id] = film
    return films


def film_epochs(films: dict[str, Film]) -> list[int]:
    """Every epoch any of the films holds a frame of, in order."""
    return sorted({int(e) for film in films.values() for e in film.epochs})


def frame_pictures(film: Film, epoch: int) -> tuple[np.ndarray, np.ndarray, int] | None:
    """(samples grid, inputs | reconstructions grid, the frame's epoch) at the latest frame at or
    before `epoch`, as H x W x 3 uint8 arrays; None when the film starts later."""
    index = film.frame_at(epoch)
    if index is None:
        return None
    samples = torch.from_numpy(film.samples[index]).float() / 255
    recons = torch.from_numpy(film.reconstructions[index]).float() / 255
    inputs = torch.from_numpy(film.inputs).float() / 255
    pairs = torch.stack([inputs, recons], dim=1).reshape(-1, *inputs.shape[1:])
    return grid(samples, nrow=4), grid(pairs, nrow=4), int(film.epochs[index])


def _font(size: int):
    for name in FONT_FILES:
        try:
            return ImageFont.truetype(name, size)
        except OSError:
            continue
    return ImageFont.load_default()


def film_gif(rows: Sequence[tuple[str, Film]], title: str = "", zoom: int = 2) -> bytes:
    """An animated GIF: one frame per epoch held by any film, one row per (label, film), each
    row showing its latest frame at or before that epoch. Raises ValueError without frames."""
    films = {str(i): film for i, (_, film) in enumerate(rows)}
    epochs = film_epochs(films)
    if not epochs:
        raise ValueError("no run has a film yet: frames are kept from the first epoch on")
    font, small = _font(16), _font(13)
    frames = []
    for epoch in epochs:
        blocks = []
        for label, film in rows:
            pictures = frame_pictures(film, epoch)
            blocks.append((label, pictures))
        tile_h = max((p[0].shape[0] for _, p in blocks if p), default=60)
        widths = [p[0].shape[1] + p[1].shape[1] + 12 for _, p in blocks if p]
        row_h, text_w = tile_h * zoom + 10, 130
        width = text_w + (max(widths, default=200)) * zoom
        height = 34 + row_h * len(blocks)
        canvas = Image.new("RGB", (width, height), "white")
        draw = ImageDraw.Draw(canvas)
        draw.text((8, 8), f"{title} · epoch {epoch}".strip(" ·"), fill="black", font=font)
        for i, (label, pictures) in enumerate(blocks):
            top = 34 + i * row_h
            draw.text((8, top + 4), label, fill="black", font=font)
            if pictures is None:
                draw.text((8, top + 26), "no frame yet", fill="#666", font=small)
                continue
            samples, recons, shown = pictures
            draw.text((8, top + 26), f"frame of epoch {shown}", fill="#666", font=small)
            left = text_w
            for picture in (samples, recons):
                image = Image.fromarray(picture).resize(
                    (picture.shape[1] * zoom, picture.shape[0] * zoom), Image.Resampling.NEAREST
                )
                canvas.paste(image, (left, top))
                left += image.width + 12 * zoom
        frames.append(canvas)
    size = (max(f.width for f in frames), max(f.height for f in frames))
    frames = [f if f.size == size else _padded(f, size) for f in frames]
    durations = [GIF_FRAME_MS] * (len(frames) - 1) + [GIF_LAST_FRAME_MS]
    buffer = io.BytesIO()
    frames[0].save(
        buffer, format="GIF", save_all=True, append_images=frames[1:], duration=durations, loop=0
    )
    return buffer.getvalue()


def _padded(frame: Image.Image, size: tuple[int, int]) -> Image.Image:
    canvas = Image.new("RGB", size, "white")
    canvas.paste(frame, (0, 0))
    return canvas


def sweep_gif(sweep) -> bytes:
    """The film of every run of a sweep, one row per β (a `gallery.Sweep`)."""
    films = read_films({r.run_id: str(r.path) for r in sweep.runs})
    rows = [(f"β = {r.config.beta:g}", films[r.run_id]) for r in sweep.runs if r.run_id in films]
    first = sweep.runs[0].config
    return film_gif(rows, f"{first.dataset} {first.architecture} z={first.latent_dim}")


def run_gif(record) -> bytes:
    """The film of one run (a RunRecord) as a GIF."""
    films = read_films({record.run_id: str(record.path)})
    if record.run_id not in films:
        raise ValueError(f"run {record.run_id} has no film yet")
    label = f"β = {record.config.beta:g}"
    return film_gif([(label, films[record.run_id])], record.run_id)
