"""`python -m vae figures RUN_OR_SWEEP --out DIR`: the pages' figures as files, for slides.

For a run: its per-dimension KL and posterior variance bars, both heatmaps over epochs and its
latent map (the Posterior and Samples pages). For a sweep (a group id, or any run id of it): the
β gallery as one figure, informative/active dimensions against β, the rate–distortion plane of
its runs and their curves, then every run's figures. Each as SVG, PNG and PDF; and the training
film (one frame per kept epoch) as a GIF.
"""

from __future__ import annotations

import os
from pathlib import Path

from vae.execution.checkpoint import load_run_checkpoint, model_from_checkpoint
from vae.execution.store import RunRecord, RunStore, atomic_write_bytes
from vae.learn.data import load_dataset
from vae.learn.evaluate import latent_map
from vae.present.charts import (
    dims_charts,
    dims_frame,
    dims_over_epochs,
    heatmap_chart,
    latent_map_chart,
    units_chart,
)
from vae.present.figures import FORMATS, chart_figure, file_name, svg_figure
from vae.present.film_view import film_gif, read_films
from vae.present.gallery import Sweep, gallery_frame, sweep_figure_svg
from vae.present.tradeoff import (
    beta_domain,
    beta_values,
    curves_chart,
    curves_frame,
    tradeoff_chart,
    tradeoff_frame,
)

MAP_POINTS = 2000  # test images on a latent map, as on the Samples page


class TargetError(ValueError):
    """Neither a run nor a sweep of the store."""


def find_target(store: RunStore, name: str) -> tuple[str, list[RunRecord]]:
    """('run' | 'sweep', records) for a run id or a sweep's group id."""
    records = [r for r in store.list_runs() if not r.broken]
    group = [r for r in records if r.status.get("group") == name]
    if group:
        return "sweep", sorted(group, key=lambda r: (r.config.beta, r.run_id))
    run = next((r for r in records if r.run_id == name), None)
    if run is None:
        raise TargetError(
            f"{name!r} is neither a run nor a sweep in {store.root}; `python -m vae list` "
            "lists the runs (a sweep's id is the `group` in its runs' status.json)"
        )
    return "run", [run]


def _write(out: Path, stem: str, make) -> list[Path]:
    written = []
    for fmt in FORMATS:
        path = out / file_name(stem, fmt)
        atomic_write_bytes(path, make(fmt))
        written.append(path)
    return written


def run_charts(store: RunStore, record: RunRecord) -> dict[str, object]:
    """The charts of one run, by file stem: what Posterior and Samples draw for it."""
    charts: dict[str, object] = {}
    if not record.last_metrics:
        return charts
    rows = store.epoch_rows(record)
    kl, variance = dims_charts(dims_frame(record.last_metrics))
    rid = record.run_id
    charts[f"{rid}-kl-per-dim"] = kl
    charts[f"{rid}-posterior-variance"] = variance
    for field in ("posterior_var", "kl_per_dim"):
        frame = dims_over_epochs(rows, field)
        charts[f"{rid}-{field}-over-epochs"] = heatmap_chart(frame, field)
    if store.checkpoint_path(rid) is not None:
        model = model_from_checkpoint(load_run_checkpoint(store, rid))
        data = load_dataset(record.config.dataset, record.config.data_root)
        frame = latent_map(model, data.test.x[:MAP_POINTS], data.test.y[:MAP_POINTS])
        charts[f"{rid}-latent-map"] = latent_map_chart(frame)
    return charts


def write_figures(store: RunStore, name: str, out: str | os.PathLike, seed: int = 0) -> list[Path]:
    """Write every figure of a run or a sweep into `out` (made if missing); returns the files."""
    kind, records = find_target(store, name)
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    written: list[Path] = []
    if kind == "sweep":
        sweep = Sweep(name, records)
        svg = sweep_figure_svg(sweep, store, seed)
        written += _write(out, f"{name}-beta-gallery", lambda fmt: svg_figure(svg, fmt))
        with_metrics = [r for r in records if r.last_metrics]
        if with_metrics:
            frame = tradeoff_frame(with_metrics)
            charts = {
                f"{name}-units": units_chart(gallery_frame(sweep)),
                f"{name}-rate-distortion": tradeoff_chart(frame),
                f"{name}-curves": curves_chart(
                    curves_frame([(r, store.epoch_rows(r)) for r in with_metrics]),
                    beta_domain(frame),
                    beta_values(frame),
                ),
            }
            for stem, chart in charts.items():
                written += _write(out, stem, lambda fmt, c=chart: chart_figure(c, fmt))
    films = read_films({r.run_id: str(r.path) for r in records})
    if films:  # training as a film: one row per β (a sweep) or the run alone
        rows = [(f"β = {r.config.beta:g}", films[r.run_id]) for r in records if r.run_id in films]
        path = out / file_name(f"{name}-film", "gif")
        atomic_write_bytes(path, film_gif(rows, name))
        written.append(path)
    for record in records:
        for stem, chart in run_charts(store, record).items():
            written += _write(out, stem, lambda fmt, c=chart: chart_figure(c, fmt))
    return written
