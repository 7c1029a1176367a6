"""Figures for slides: chart and gallery files parse as SVG, PNG and PDF; the CLI writes them."""

from __future__ import annotations

import io
import xml.etree.ElementTree as ET

import pytest
from PIL import Image

from tests.helpers import train_run, train_sweep
from vae.cli import main
from vae.execution.store import RunStore
from vae.present.charts import units_chart
from vae.present.figures import FigureError, chart_figure, file_name, svg_figure
from vae.present.gallery import gallery_frame, sweep_figure_svg, sweeps

PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"


def assert_svg(data: bytes) -> ET.Element:
    root = ET.fromstring(data)
    assert root.tag.endswith("svg")
    return root


def assert_png(data: bytes) -> Image.Image:
    assert data.startswith(PNG_SIGNATURE)
    image = Image.open(io.BytesIO(data))
    image.load()
    assert image.size[0] > 50 and image.size[1] > 50
    return image


def assert_pdf(data: bytes) -> None:
    assert data.startswith(b"%PDF-")
    assert b"%%EOF" in data[-64:]
    assert b"trailer" in data or b"/Root" in data


def check(fmt: str, data: bytes) -> None:
    {"svg": assert_svg, "png": assert_png, "pdf": assert_pdf}[fmt](data)


@pytest.fixture(scope="module")
def sweep_store(tmp_path_factory):
    """Two runs of one sweep (β = 1 and 4), one epoch each, trained as one stack."""
    store = RunStore(tmp_path_factory.mktemp("figures") / "runs")
    train_sweep(store, (1.0, 4.0), "sweep-test", hidden_dims=[32])
    return store


@pytest.mark.parametrize("fmt", ["svg", "png", "pdf"])
def test_chart_files_parse(sweep_store, fmt):
    sweep = sweeps(sweep_store.list_runs())[0]
    chart = units_chart(gallery_frame(sweep))
    check(fmt, chart_figure(chart, fmt))
    check(fmt, chart_figure(chart.to_dict(), fmt))  # the page hands over the Vega-Lite dict


@pytest.mark.parametrize("fmt", ["svg", "png", "pdf"])
def test_gallery_figure_parses_with_one_row_per_beta(sweep_store, fmt):
    sweep = sweeps(sweep_store.list_runs())[0]
    svg = sweep_figure_svg(sweep, sweep_store, seed=3)
    root = assert_svg(svg.encode())
    texts = [t.text for t in root.iter() if t.tag.endswith("text")]
    assert "β = 1" in texts and "β = 4" in texts
    images = [e for e in root.iter() if e.tag.endswith("image")]
    assert len(images) == 2 * 3  # samples, reconstructions, traversal per row
    check(fmt, svg_figure(svg, fmt))


def test_unknown_format_refused(sweep_store):
    sweep = sweeps(sweep_store.list_runs())[0]
    with pytest.raises(FigureError, match="unknown figure format"):
        chart_figure(units_chart(gallery_frame(sweep)), "gif")


def test_file_names_are_safe():
    assert file_name("../../etc/passwd", "svg") == "etc-passwd.svg"
    assert file_name("β gallery <x>", "pdf") == "gallery-x.pdf"


def test_cli_figures_of_a_sweep_and_a_run(sweep_store, tmp_path, capsys):
    out = tmp_path / "figs"
    assert main(["--store", str(sweep_store.root), "figures", "sweep-test", "--out", str(out)]) == 0
    names = {p.name for p in out.iterdir()}
    for fmt in ("svg", "png", "pdf"):
        assert f"sweep-test-beta-gallery.{fmt}" in names
        assert f"sweep-test-rate-distortion.{fmt}" in names
    assert "sweep-test-film.gif" in names
    assert Image.open(out / "sweep-test-film.gif").format == "GIF"
    for path in out.iterdir():
        if path.suffix != ".gif":
            check(path.suffix[1:], path.read_bytes())
    run_id = sweep_store.list_runs()[0].run_id
    one = tmp_path / "one"
    assert main(["--store", str(sweep_store.root), "figures", run_id, "--out", str(one)]) == 0
    assert {p.suffix for p in one.iterdir()} == {".svg", ".png", ".pdf", ".gif"}
    assert f"{run_id}-latent-map.png" in {p.name for p in one.iterdir()}


def test_cli_figures_unknown_target(sweep_store, tmp_path, capsys):
    code = main(["--store", str(sweep_store.root), "figures", "nope", "--out", str(tmp_path)])
    assert code == 2
    assert "neither a run nor a sweep" in capsys.readouterr().err


def test_single_run_without_sweep(store, tiny_config, tmp_path):
    run_id = store.create_run(tiny_config)
    assert train_run(store, run_id) == "finished"
    assert main(["--store", str(store.root), "figures", run_id, "--out", str(tmp_path)]) == 0
    assert (tmp_path / f"{run_id}-kl-per-dim.pdf").exists()
