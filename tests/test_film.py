"""Training as a film: one small frame per epoch, bounded on long runs, read safely, as a GIF."""

from __future__ import annotations

import io
from dataclasses import replace

import numpy as np
import pytest
from PIL import Image

from tests.helpers import open_app, train_run
from vae.execution.files import atomic_write_bytes
from vae.execution.film import (
    FILM_FILE,
    INPUTS,
    SAMPLES,
    Film,
    FilmError,
    FilmRecorder,
    read_film,
    thin,
)
from vae.execution.series import DISPLAY_POINTS
from vae.execution.worker import JobControl, run_job
from vae.learn.config import RunConfig
from vae.learn.data import load_dataset
from vae.learn.model import build_model
from vae.present.film_view import film_epochs, frame_pictures, read_films, run_gif, sweep_gif
from vae.present.gallery import sweeps


def save_to(folder):
    """What the worker's store does with a film, for a recorder outside a run store."""
    return lambda film: atomic_write_bytes(folder / FILM_FILE, film.to_bytes())


def test_training_keeps_one_frame_per_epoch(store, tiny_config):
    run_id = store.create_run(replace(tiny_config, epochs=3))
    assert train_run(store, run_id) == "finished"
    film = read_film(store.run_dir(run_id))
    assert film.epochs.tolist() == [1, 2, 3]
    assert film.samples.shape == (3, SAMPLES, 1, 28, 28)
    assert film.reconstructions.shape == (3, INPUTS, 1, 28, 28)
    assert film.inputs.shape == (INPUTS, 1, 28, 28)
    samples, recons, shown = frame_pictures(film, 2)
    assert shown == 2 and samples.ndim == 3 and recons.ndim == 3
    gif = Image.open(io.BytesIO(run_gif(store.get(run_id))))
    assert gif.format == "GIF" and gif.n_frames == 3


def test_a_film_that_cannot_be_saved_never_costs_the_run(store, tiny_config, capsys):
    """film.npz is written behind the step loop; a folder in its place fails each write, which
    is printed, while the run trains, saves its other files and finishes."""
    run_id = store.create_run(replace(tiny_config, epochs=2))
    store.path(run_id, FILM_FILE).mkdir()
    assert train_run(store, run_id) == "finished"
    assert [m["epoch"] for m in store.read_metrics(run_id)] == [1, 2]
    assert store.read_eval(run_id) is not None
    assert store.path(run_id, FILM_FILE).is_dir()
    assert capsys.readouterr().err.count(f"film of {run_id} not saved") == 2


def test_the_film_stays_bounded_on_a_long_run(tmp_path):
    """10,000 epochs: at most DISPLAY_POINTS + 1 frames, evenly spaced, the latest kept."""
    config = RunConfig(hidden_dims=[8], latent_dim=2)
    model = build_model(config, (1, 28, 28))
    x = load_dataset("digits").test.x
    recorder = FilmRecorder(tmp_path, x, save_to(tmp_path))
    for epoch in range(1, 301):  # real frames through the recorder
        recorder.record(model, epoch)
    film = read_film(tmp_path)
    assert len(film.epochs) <= DISPLAY_POINTS + 1 and film.epochs[-1] == 300
    assert (tmp_path / FILM_FILE).stat().st_size < 2 * 2**20
    # the thinning rule alone, on 10,000 epochs
    frame = film.samples[:1]
    long = Film(np.zeros(0, np.int64), frame[:0], film.reconstructions[:0], film.inputs)
    for epoch in range(1, 10_001):
        long = thin(
            Film(
                np.append(long.epochs, epoch), np.concatenate([long.samples, frame]),
                np.concatenate([long.reconstructions, film.reconstructions[:1]]),
                long.inputs, long.stride,
            )
        )  # fmt: skip
        assert len(long.epochs) <= DISPLAY_POINTS + 1
    assert long.epochs[0] == 1 and long.epochs[-1] == 10_000
    steps = np.diff(long.epochs[:-1])
    assert len(set(steps.tolist())) == 1  # evenly spaced


def test_a_resumed_run_redoes_later_frames(tmp_path):
    config = RunConfig(hidden_dims=[8], latent_dim=2)
    model = build_model(config, (1, 28, 28))
    x = load_dataset("digits").test.x
    recorder = FilmRecorder(tmp_path, x, save_to(tmp_path))
    for epoch in (1, 2, 3):
        recorder.record(model, epoch)
    FilmRecorder(tmp_path, x, save_to(tmp_path)).record(model, 2)  # resumed from epoch 1
    assert read_film(tmp_path).epochs.tolist() == [1, 2]


def test_damaged_or_pickled_films_are_refused(tmp_path):
    (tmp_path / FILM_FILE).write_bytes(b"not a zip")
    with pytest.raises(FilmError):
        read_film(tmp_path)
    buffer = io.BytesIO()
    np.savez(buffer, epochs=np.array([object()], dtype=object))  # needs pickle to load
    (tmp_path / FILM_FILE).write_bytes(buffer.getvalue())
    with pytest.raises(FilmError):
        read_film(tmp_path)
    assert read_film(tmp_path / "elsewhere") is None


def test_a_sweep_gif(store, tiny_config):
    ids = [
        store.create_run(replace(tiny_config, beta=b, epochs=2), group="sweep-film")
        for b in (1.0, 4.0)
    ]
    assert set(run_job(store, ids, JobControl(store)).values()) == {"finished"}
    sweep = sweeps(store.list_runs())[0]
    films = read_films({r.run_id: str(r.path) for r in sweep.runs})
    assert film_epochs(films) == [1, 2]
    data = sweep_gif(sweep)
    image = Image.open(io.BytesIO(data))
    assert image.format == "GIF" and image.n_frames == 2


def test_the_gallery_epoch_slider_moves_every_row(store, tiny_config, monkeypatch):
    ids = [
        store.create_run(replace(tiny_config, beta=b, epochs=2), group="sweep-slider")
        for b in (1.0, 4.0)
    ]
    assert set(run_job(store, ids, JobControl(store)).values()) == {"finished"}
    at = open_app(monkeypatch, store.root, "pages/gallery.py")
    assert not at.exception, at.exception
    assert at.slider(key="gallery_epoch").value == 2
    at.slider(key="gallery_epoch").set_value(1).run()
    assert not at.exception, at.exception
    captions = [img.caption for element in at.get("image") for img in element.proto.imgs]
    assert captions.count("prior samples · epoch 1") == 2
    assert captions.count("inputs | reconstructions · epoch 1") == 2


def test_checkpoints_offers_the_runs_film(store, tiny_config, monkeypatch):
    run_id = store.create_run(tiny_config)
    assert train_run(store, run_id) == "finished"
    at = open_app(monkeypatch, store.root, "pages/checkpoints.py", run=run_id)
    assert not at.exception, at.exception
    keys = [b.key for b in at.get("download_button")]
    assert "download-film" in keys and "download-export" in keys


def test_a_row_without_a_film_says_its_pictures_are_of_its_latest_epoch(
    store, tiny_config, monkeypatch
):
    ids = [
        store.create_run(replace(tiny_config, beta=b, epochs=2), group="sweep-no-film")
        for b in (1.0, 4.0)
    ]
    assert set(run_job(store, ids, JobControl(store)).values()) == {"finished"}
    store.path(ids[1], FILM_FILE).write_bytes(b"not a film")  # damaged: the row has no frames
    at = open_app(monkeypatch, store.root, "pages/gallery.py")
    at.slider(key="gallery_epoch").set_value(1).run()
    assert not at.exception, at.exception
    captions = [img.caption for element in at.get("image") for img in element.proto.imgs]
    assert captions.count("prior samples · epoch 1") == 1  # the run with a film
    assert captions.count("prior samples · epoch 2") == 1  # the other, saying so
    notes = [c.value for c in at.caption if c.value.startswith("No film of this run")]
    assert len(notes) == 1 and "not of epoch 1" in notes[0], notes
