"""The β gallery: one row per run of a sweep, in β order, with its pictures and its numbers.

A sweep is the set of runs that share `status["group"]` (JobManager.submit_sweep gives them one).
Pictures come from a checkpoint file, so the page can cache them by that file's path and mtime.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pandas as pd
import torch

from vae.execution.checkpoint import CheckpointError, load_run_checkpoint, model_from_checkpoint
from vae.execution.states import RunState
from vae.execution.store import RunRecord, RunStore
from vae.learn.config import RunConfig
from vae.learn.data import DataError, load_dataset
from vae.learn.evaluate import (
    grid,
    latent_traversal,
    most_informative_dims,
    posterior_means,
    prior_samples,
    reconstructions,
)
from vae.learn.fields import set_label
from vae.learn.objective import kl_per_dim
from vae.present.figures import FigureRow, rows_svg
from vae.present.units import unit_counts

SAMPLES = 16  # prior samples per row (a 4 x 4 grid)
RECONSTRUCTED = 8  # test images per row, each beside its reconstruction (a 4 x 4 grid)


@dataclass
class Sweep:
    """Runs of one group, sorted by β."""

    group: str
    runs: list[RunRecord]

    @property
    def created(self) -> float:
        return max(r.status.get("created", 0) for r in self.runs)

    @property
    def betas(self) -> list[float]:
        return [r.config.beta for r in self.runs]

    @property
    def seeds(self) -> int:
        """Runs per β (replicates that differ only in seed)."""
        return max(self.betas.count(b) for b in self.betas)

    def label(self) -> str:
        """The sweep's settings in words (every setting that differs from the defaults), its β
        and seeds: two sweeps at two learning rates read differently."""
        first = self.runs[0].config
        name = f"{first.name} · " if first.name else ""
        betas = ", ".join(f"{b:g}" for b in sorted(set(self.betas)))
        seeds = f" × {self.seeds} seeds" if self.seeds > 1 else ""
        done = sum(r.state == RunState.FINISHED for r in self.runs)
        settings = set_label(first.to_dict(), RunConfig().to_dict())
        return f"{name}{settings} · β = {betas}{seeds} · {done}/{len(self.runs)} finished"


def sweeps(records: list[RunRecord]) -> list[Sweep]:
    """Every sweep (a group of two or more readable runs), the newest first."""
    groups: dict[str, list[RunRecord]] = {}
    for r in records:
        group = r.status.get("group")
        if r.broken or not group:
            continue
        groups.setdefault(group, []).append(r)
    found = [
        Sweep(group, sorted(runs, key=lambda r: (r.config.beta, r.config.seed, r.run_id)))
        for group, runs in groups.items()
        if len(runs) >= 2
    ]
    return sorted(found, key=lambda s: (s.created, s.group), reverse=True)


GALLERY_MAX_ROWS = 24  # rows of pictures drawn for one sweep; more are thinned evenly
CHART_MAX_RUNS = 1_000  # points in the sweep's unit-count chart


def evenly(runs: list, most: int) -> list:
    """At most `most` of `runs`, evenly spaced, always keeping the first and the last."""
    if len(runs) <= most:
        return list(runs)
    if most < 2:
        return list(runs[:most])
    step = (len(runs) - 1) / (most - 1)
    return [runs[round(i * step)] for i in range(most)]


def shown_rows(sweep: Sweep) -> tuple[list, str | None]:
    """The runs whose pictures the gallery draws, and a note when some are left out."""
    runs = evenly(sweep.runs, GALLERY_MAX_ROWS)
    if len(runs) == len(sweep.runs):
        return runs, None
    return runs, (
        f"This sweep has {len(sweep.runs):,} runs; the gallery draws {len(runs)} of them, evenly "
        "spaced in β from the smallest to the largest (the chart shows up to "
        f"{CHART_MAX_RUNS:,}; `python -m vae list` lists them all)."
    )


def gallery_frame(sweep: Sweep) -> pd.DataFrame:
    """β, epoch, R, D and both unit counts of every run of a sweep (at its latest epoch)."""
    rows = []
    for r in evenly(sweep.runs, CHART_MAX_RUNS):
        m = r.last_metrics
        counts = unit_counts(m)
        rows.append(
            {
                "run_id": r.run_id,
                "beta": r.config.beta,
                "seed": r.config.seed,
                "epoch": m.get("epoch", 0),
                "epochs": r.config.epochs,
                "state": r.state,
                "rate": m.get("rate"),
                "distortion": m.get("distortion"),
                "active": counts.active if m else None,
                "informative": counts.informative if m else None,
                "latent_dim": r.config.latent_dim,
            }
        )
    return pd.DataFrame(rows)


def unit_ranges(frame: pd.DataFrame) -> pd.DataFrame:
    """Per β: how many runs (seeds), and the fewest and most informative and active units among
    them (replicates' spread, shown beside the rows)."""
    done = frame.dropna(subset=["informative", "active"])
    if done.empty:
        return pd.DataFrame(columns=["beta", "runs", "informative", "active"])
    grouped = done.groupby("beta")
    out = pd.DataFrame(
        {
            "runs": grouped.size(),
            "informative": grouped["informative"].agg(lambda v: _range(v)),
            "active": grouped["active"].agg(lambda v: _range(v)),
        }
    ).reset_index()
    return out


def _range(values) -> str:
    low, high = int(min(values)), int(max(values))
    return str(low) if low == high else f"{low}–{high}"


@dataclass
class Pictures:
    """The three pictures of one gallery row, as H x W x 3 uint8 arrays."""

    samples: np.ndarray
    reconstructions: np.ndarray
    traversal: np.ndarray
    traversal_dim: int
    epoch: int


def run_pictures(store: RunStore, run_id: str, seed: int = 0) -> Pictures:
    """A run's row pictures from its own checkpoint: one copied in from another run (another β)
    is refused, never drawn in this run's row. Raises CheckpointError, DataError or OSError."""
    return checkpoint_pictures(load_run_checkpoint(store, run_id), seed)


def checkpoint_pictures(checkpoint: dict, seed: int = 0) -> Pictures:
    """Prior samples, reconstructions of the first test images, and a traversal of the dimension
    with the largest KL, from one checkpoint (as read_checkpoint checked it).

    Every run of a sweep shows the same test images and the same prior draws (same seed), so rows
    differ only by what β did to the model.
    """
    config = RunConfig.from_dict(checkpoint["config"])
    model = model_from_checkpoint(checkpoint)
    dataset = load_dataset(config.dataset, config.data_root)
    x = dataset.test.x
    kl = checkpoint["metrics"].get("kl_per_dim")
    if not kl or len(kl) != config.latent_dim:  # an old checkpoint: measure it on the test split
        mu, logvar = posterior_means(model, x[:1000])
        kl = kl_per_dim(mu.double(), logvar.double()).mean(0).tolist()
    top = most_informative_dims(kl, 1)[0]
    with torch.no_grad():
        return Pictures(
            samples=grid(prior_samples(model, SAMPLES, seed=seed), nrow=4),
            reconstructions=grid(reconstructions(model, x, RECONSTRUCTED), nrow=4),
            traversal=grid(latent_traversal(model, x[:1], [top]), nrow=9),
            traversal_dim=top,
            epoch=int(checkpoint["epoch"]),
        )


def sweep_figure_svg(sweep: Sweep, store: RunStore, seed: int = 0) -> str:
    """The whole gallery of a sweep as one labelled SVG (figures.svg_figure makes PNG or PDF).

    One row per β with its numbers and the same three pictures as the page; a run without a
    checkpoint yet keeps its row, with its state in place of pictures.
    """
    rows = []
    for record, numbers in zip(sweep.runs, gallery_frame(sweep).itertuples(), strict=True):
        lines = [f"β = {numbers.beta:g}"]
        if numbers.rate is not None and not pd.isna(numbers.rate):
            lines += [
                f"R = {numbers.rate:.2f} nats",
                f"D = {numbers.distortion:.1f} nats",
                f"informative {numbers.informative} / {numbers.latent_dim}",
                f"active (Burda) {numbers.active} / {numbers.latent_dim}",
                f"epoch {numbers.epoch}/{numbers.epochs}",
            ]
        else:
            lines.append(str(numbers.state))
        row = FigureRow(lines)
        if store.checkpoint_path(record.run_id) is not None:
            try:
                shown = run_pictures(store, record.run_id, seed=seed)
            except (CheckpointError, DataError, OSError) as exc:  # the row says so, as the page
                row.lines.append(f"cannot draw this run: {exc}"[:160])
            else:
                row.pictures = [
                    ("prior samples", shown.samples),
                    ("inputs | reconstructions", shown.reconstructions),
                    (f"z{shown.traversal_dim} (largest KL) from −3 to 3", shown.traversal),
                ]
        rows.append(row)
    first = sweep.runs[0].config
    title = f"β gallery · {first.dataset} {first.architecture} z={first.latent_dim}"
    note = f"Rows differ only in β: same data, test digits and prior draws (seed {seed})."
    return rows_svg(title, rows, note=note)
