"""Probe: inputs prepared like the data set's, per-β readings, interpolation, decoded points."""

from __future__ import annotations

import io
import zlib

import numpy as np
import pytest
import torch
from PIL import Image

from tests.helpers import open_app, train_sweep
from vae.execution.checkpoint import load_run_checkpoint, model_from_checkpoint
from vae.execution.store import RunStore
from vae.learn.data import load_dataset
from vae.present import probe as pr


@pytest.fixture(scope="module")
def sweep_store(tmp_path_factory):
    store = RunStore(tmp_path_factory.mktemp("probe") / "runs")
    train_sweep(store, (0.5, 2.0, 8.0), "sweep-probe", hidden_dims=[32])
    return store


def models(store):
    return [
        (r, model_from_checkpoint(load_run_checkpoint(store, r.run_id))) for r in store.list_runs()
    ]


def png(array: np.ndarray, mode: str | None = None) -> bytes:
    buffer = io.BytesIO()
    image = Image.fromarray(array)
    if mode:
        image = image.convert(mode)
    image.save(buffer, format="PNG")
    return buffer.getvalue()


def test_a_dark_on_light_upload_is_inverted_centred_and_sized_like_mnist():
    paper = np.full((300, 200), 255, dtype=np.uint8)
    paper[40:200, 20:60] = 0  # a thick dark bar off centre
    x = pr.prepare(pr.grey_from_upload(png(paper)), (1, 28, 28), "digits")
    assert x.shape == (1, 1, 28, 28) and float(x.min()) >= 0.0 and float(x.max()) <= 1.0
    ink = x[0, 0] > 0.1
    rows, cols = np.flatnonzero(ink.any(1)), np.flatnonzero(ink.any(0))
    assert max(rows[-1] - rows[0], cols[-1] - cols[0]) + 1 <= 21  # fitted into 20 x 20
    ys, xs = np.indices((28, 28))
    weights = x[0, 0].numpy()
    centre = (ys * weights).sum() / weights.sum(), (xs * weights).sum() / weights.sum()
    assert abs(centre[0] - 14) < 1.5 and abs(centre[1] - 14) < 1.5
    assert float(x[0, 0, 0, 0]) == 0.0  # the background is black, as in MNIST


@pytest.mark.parametrize("mode", ["RGBA", "P", "I;16", "CMYK", "1"])
def test_any_mode_is_converted(mode):
    array = np.zeros((40, 40, 3), dtype=np.uint8)
    array[10:30, 18:22] = 255
    fmt = "JPEG" if mode == "CMYK" else "PNG"
    buffer = io.BytesIO()
    Image.fromarray(array).convert(mode).save(buffer, format=fmt)
    grey = pr.grey_from_upload(buffer.getvalue())
    assert grey.shape == (40, 40)
    pr.prepare(grey, (1, 28, 28), "digits")


def test_bad_uploads_are_refused_with_a_message():
    with pytest.raises(pr.ProbeInputError, match="empty"):
        pr.grey_from_upload(b"")
    with pytest.raises(pr.ProbeInputError, match="not an image"):
        pr.grey_from_upload(b"hello, this is text")
    with pytest.raises(pr.ProbeInputError, match="bytes"):
        pr.grey_from_upload(b"\x89PNG" + bytes(pr.MAX_UPLOAD_BYTES))
    # a small file that declares a huge image: refused from its header, nothing decoded
    huge = png(np.zeros((1, 1), dtype=np.uint8))
    ihdr = huge[12:16] + (9_000).to_bytes(4, "big") + (9_000).to_bytes(4, "big") + huge[24:29]
    huge = huge[:12] + ihdr + zlib.crc32(ihdr).to_bytes(4, "big") + huge[33:]
    with pytest.raises(pr.ProbeInputError, match="pixels"):
        pr.grey_from_upload(huge)


def test_an_empty_canvas_asks_for_a_stroke():
    with pytest.raises(pr.ProbeInputError, match="stroke"):
        pr.grey_from_canvas(np.zeros((196, 196, 4), dtype=np.uint8))
    with pytest.raises(pr.ProbeInputError, match="draw"):
        pr.grey_from_canvas(None)
    drawn = np.zeros((196, 196, 4), dtype=np.uint8)
    drawn[50:150, 90:106] = 255
    assert pr.grey_from_canvas(drawn).max() == 1.0


def test_every_beta_reads_the_input_and_kl_sums_to_its_rate(sweep_store):
    data = load_dataset("digits")
    x = pr.model_input(data.test.x[:1].clone(), "bernoulli")
    assert set(torch.unique(x).tolist()) <= {0.0, 1.0}
    probes = [pr.probe(m, x, r.run_id, r.config.beta) for r, m in models(sweep_store)]
    assert [p.beta for p in probes] == [0.5, 2.0, 8.0]
    for p, (_, model) in zip(probes, models(sweep_store), strict=True):
        with torch.no_grad():
            mu, logvar = model.encode(x)
        expected = 0.5 * (mu.pow(2) + logvar.exp() - logvar - 1).sum()
        assert p.rate == pytest.approx(float(expected), rel=1e-4, abs=1e-5)
        assert p.reconstruction.shape == (1, 1, 28, 28)
        assert list(p.dims.columns) == ["dim", "j", "mu", "var", "kl"]


def test_interpolation_ends_are_the_inputs_decoded_means(sweep_store):
    data = load_dataset("digits")
    a, b = data.test.x[:1], data.test.x[1:2]
    for _, model in models(sweep_store):
        path = pr.interpolation(model, a, b, steps=7)
        assert path.shape == (7, 1, 28, 28)
        with torch.no_grad():
            ends = [model.likelihood.mean(model.decode(model.encode(x)[0])) for x in (a, b)]
        torch.testing.assert_close(path[0], ends[0][0])
        torch.testing.assert_close(path[-1], ends[1][0])


def test_decoded_points_and_the_manifold_grid(sweep_store):
    _, model = models(sweep_store)[0]
    image = pr.decode_point(model, [0, 2], (1.5, -0.5))
    with torch.no_grad():
        z = torch.tensor([[1.5, 0.0, -0.5]])
        torch.testing.assert_close(image, model.likelihood.mean(model.decode(z)))
    assert pr.manifold_grid(model, [0, 1], n=5).shape == (25, 1, 28, 28)
    assert pr.map_dims([0.1, 3.0, 2.0], 3) == [1, 2]


def image_captions(at) -> list[str]:
    return [img.caption for element in at.get("image") for img in element.proto.imgs]


def test_probe_page_shows_one_reconstruction_per_beta(sweep_store, monkeypatch):
    at = open_app(monkeypatch, sweep_store.root, "pages/probe.py", sweep="sweep-probe")
    assert not at.exception, at.exception
    assert any("stroke" in i.value for i in at.info)  # the canvas starts empty
    at.radio(key="probe_source").set_value("Test digit").run()
    assert not at.exception, at.exception
    captions = image_captions(at)
    for beta in ("0.5", "2", "8"):
        assert sum(c.startswith(f"β = {beta} · R = ") for c in captions) == 1, captions
        assert sum(c.startswith(f"β = {beta}: μ(input) → μ(test image)") for c in captions) == 1
    assert any("How the input is prepared" in c.value for c in at.caption)
    assert at.query_params["sweep"] == "sweep-probe"
