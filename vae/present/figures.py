"""Figures for slides: every chart as SVG, PNG or PDF, and the β gallery as one labelled figure.

Rendering goes through vl-convert (Altair's own converter, no browser): Vega-Lite specs directly,
the gallery as an SVG of text and embedded PNG tiles that vl-convert turns into PNG or PDF. No
torch and no Streamlit here: the Tradeoff page offers downloads without loading the model code.
"""

from __future__ import annotations

import base64
import copy
import io
import re
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING
from xml.sax.saxutils import escape

import numpy as np

if TYPE_CHECKING:
    import altair as alt

FORMATS = {"svg": "image/svg+xml", "png": "image/png", "pdf": "application/pdf"}
EXPORT_WIDTH = 640  # a chart's width on a slide when the page let it fill its column
PNG_SCALE = 2  # PNG at twice the size: sharp on a projector
FONT = "DejaVu Sans, Liberation Sans, Arial, sans-serif"  # fonts with β, σ and subscripts


class FigureError(ValueError):
    """A figure could not be made; the message says why."""


def _spec(chart: alt.TopLevelMixin | dict) -> dict:
    """A Vega-Lite dict sized for a slide: the page's charts fill their column (no width)."""
    spec = copy.deepcopy(chart) if isinstance(chart, dict) else chart.to_dict(validate=False)
    concat = any(k in spec for k in ("hconcat", "vconcat", "concat", "facet", "repeat"))
    if not concat and "width" not in spec:
        spec["width"] = EXPORT_WIDTH
    spec.setdefault("background", "white")
    return spec


def chart_figure(chart: alt.TopLevelMixin | dict, fmt: str) -> bytes:
    """One chart (an Altair chart or its Vega-Lite dict) as SVG, PNG or PDF bytes."""
    import vl_convert as vlc  # late: a page imports this module before any download is asked

    spec = _spec(chart)
    try:
        if fmt == "svg":
            return vlc.vegalite_to_svg(spec).encode()
        if fmt == "png":
            return vlc.vegalite_to_png(spec, scale=PNG_SCALE)
        if fmt == "pdf":
            return vlc.vegalite_to_pdf(spec)
    except Exception as exc:  # vl-convert raises ValueError with Vega's text
        raise FigureError(f"the chart could not be rendered as {fmt}: {exc}") from None
    raise FigureError(f"unknown figure format {fmt!r}; choose one of {', '.join(FORMATS)}")


def svg_figure(svg: str, fmt: str) -> bytes:
    """An SVG document as SVG, PNG or PDF bytes."""
    import vl_convert as vlc

    if fmt == "svg":
        return svg.encode()
    if fmt == "png":
        return vlc.svg_to_png(svg, scale=PNG_SCALE)
    if fmt == "pdf":
        return vlc.svg_to_pdf(svg)
    raise FigureError(f"unknown figure format {fmt!r}; choose one of {', '.join(FORMATS)}")


def file_name(stem: str, fmt: str) -> str:
    """A safe file name: letters, digits, dots, dashes and underscores only."""
    clean = re.sub(r"[^A-Za-z0-9._-]+", "-", stem).strip("-.") or "figure"
    return f"{clean[:120]}.{fmt}"


# ---- one labelled picture of a sweep -----------------------------------------------------------
@dataclass
class FigureRow:
    """One row of a composed figure: text lines at the left, then captioned pictures."""

    lines: list[str]
    pictures: list[tuple[str, np.ndarray]] = field(default_factory=list)  # (caption, H x W x 3)


def png_bytes(image: np.ndarray, zoom: int = 1) -> bytes:
    """An H x W (x 3) uint8 array as PNG bytes, enlarged `zoom` times without smoothing."""
    from PIL import Image

    array = np.asarray(image, dtype=np.uint8)
    if zoom > 1:
        array = array.repeat(zoom, axis=0).repeat(zoom, axis=1)
    buffer = io.BytesIO()
    Image.fromarray(array).save(buffer, format="PNG")
    return buffer.getvalue()


def rows_svg(title: str, rows: Sequence[FigureRow], zoom: int = 2, note: str = "") -> str:
    """The rows as one SVG document: title, then each row's text and pictures side by side.

    Pictures are embedded as PNG (enlarged `zoom` times, pixels kept sharp); text is real text,
    so it stays crisp in the SVG and the PDF.
    """
    margin, gap, text_width, caption_h, line_h = 16, 14, 190, 18, 20
    y = margin + 26
    parts = [f'<text x="{margin}" y="{y}" font-size="20" font-weight="bold">{escape(title)}</text>']
    if note:
        y += 22
        parts.append(f'<text x="{margin}" y="{y}" font-size="13" fill="#444">{escape(note)}</text>')
    y += gap
    width = 0
    for row in rows:
        heights = [p.shape[0] * zoom for _, p in row.pictures]
        row_h = max([line_h * len(row.lines), *(h + caption_h for h in heights)], default=line_h)
        for i, line in enumerate(row.lines):
            weight = ' font-weight="bold"' if i == 0 else ""
            size = 17 if i == 0 else 13
            parts.append(
                f'<text x="{margin}" y="{y + 16 + i * line_h}" font-size="{size}"{weight}>'
                f"{escape(line)}</text>"
            )
        x = margin + text_width
        for caption, picture in row.pictures:
            w, h = picture.shape[1] * zoom, picture.shape[0] * zoom
            data = base64.b64encode(png_bytes(picture, zoom)).decode()
            parts.append(
                f'<image x="{x}" y="{y}" width="{w}" height="{h}" '
                f'href="data:image/png;base64,{data}" style="image-rendering:pixelated"/>'
            )
            parts.append(
                f'<text x="{x}" y="{y + h + 14}" font-size="12" fill="#333">{escape(caption)}</text>'
            )
            x += w + gap
        width = max(width, x)
        y += row_h + gap
    width, height = max(width, 480) + margin, y + margin
    return (
        f'<svg xmlns="http://www.w3.org/2000/svg" width="{width}" height="{height}" '
        f'viewBox="0 0 {width} {height}" font-family="{FONT}">'
        f'<rect width="{width}" height="{height}" fill="white"/>' + "".join(parts) + "</svg>"
    )
