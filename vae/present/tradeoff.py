"""The rate-distortion plane: runs as points, grouped by the settings that make them comparable.

Runs are only comparable when they differ in β alone (and seed or name): a β=4 run of 60 epochs
beside a β=2 run of 5 epochs says nothing about β. `comparable_sets` groups runs by every setting
that changes what is computed (the comparison key of vae/learn/fields.py) and the page shows one
group at a time. Runs of one set and one β with different seeds are replicates: drawn as their
mean with error bars of one standard deviation. Colours encode β on a log scale, the same in the plane and
in the per-epoch curves.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import altair as alt
import numpy as np
import pandas as pd

from vae.execution.states import RunState
from vae.execution.store import RunRecord
from vae.learn.config import RunConfig, comparison_key
from vae.learn.fields import OBJECTIVES, beta_text, set_label
from vae.present.theory_view import frontier_layers
from vae.present.units import unit_counts

BETA_FLOOR = 1e-3  # β = 0 is drawn at this value on log scales
CHART_HEIGHT = 460
ASSUMED_WIDTH = (
    900  # px, to keep the equal-ELBO labels inside the plot (the chart fills its column)
)
LABEL_WIDTH = 110  # px taken by "−ELBO = 150" at 12 px
LABEL_HEIGHT = 16
SLOPE_LENGTH = 0.09  # length of a slope −β segment, as a fraction of the plot's diagonal
OBJECTIVE_NAMES = {name: objective.title for name, objective in OBJECTIVES.items()}
DEFAULTS = RunConfig().to_dict()


def beta_plot(beta: float) -> float:
    return max(float(beta), BETA_FLOOR)


# ---- grouping ---------------------------------------------------------------------------------
def comparable_key(record: RunRecord) -> str:
    """Runs that share this key differ only in β (and seed, name, how they ran): they may be
    compared. Every setting that changes what is computed and applies to the run is in it."""
    return "|".join(f"{name}={value}" for name, value in comparison_key(record.config))


def settings_label(record: RunRecord) -> str:
    """The set's settings in words: the model, the objective, and every setting that differs
    from the defaults ('digits · mlp 400 · J = 20 · bernoulli · β-VAE · 10 epochs · lr 0.003')."""
    return set_label(record.config.to_dict(), DEFAULTS)


@dataclass
class ComparableSet:
    key: str
    label: str
    run_ids: list[str]

    def describe(self) -> str:
        return f"{self.label} ({len(self.run_ids)} run{'s' if len(self.run_ids) != 1 else ''})"


def comparable_sets(records: list[RunRecord]) -> list[ComparableSet]:
    """Runs with at least one epoch, grouped by comparable settings; the set holding the latest
    sweep (else the latest run) comes first, the rest by their newest run."""
    usable = [r for r in records if not r.broken and r.last_metrics]
    sets: dict[str, ComparableSet] = {}
    newest: dict[str, float] = {}
    for r in usable:
        key = comparable_key(r)
        if key not in sets:  # the label once per set, not once per run
            sets[key] = ComparableSet(key, settings_label(r), [])
        sets[key].run_ids.append(r.run_id)
        newest[key] = max(newest.get(key, 0.0), r.status.get("created", 0.0))
    order = sorted(sets, key=lambda k: newest[k], reverse=True)
    swept = [r for r in usable if r.status.get("group")]
    if swept:
        latest_sweep = max(swept, key=lambda r: r.status.get("created", 0.0))
        first = comparable_key(latest_sweep)
        order.remove(first)
        order.insert(0, first)
    return [sets[k] for k in order]


def runs_of_set(records: list[RunRecord], key: str) -> list[str]:
    """Every run with these comparable settings, queued ones included: what the chart shows now
    or will show at their first epoch (a page follows these, not unrelated training)."""
    return [r.run_id for r in records if not r.broken and r.config and comparable_key(r) == key]


# ---- the plane --------------------------------------------------------------------------------
def tradeoff_frame(records: list[RunRecord]) -> pd.DataFrame:
    """One point per run with at least one epoch: its latest test-set R and D."""
    rows = []
    for r in records:
        if r.broken or not r.last_metrics:
            continue
        c, m = r.config, r.last_metrics
        counts = unit_counts(m)
        rows.append(
            {
                "run_id": r.run_id,
                "run": f"{r.run_id} · {c.name}" if c.name else r.run_id,
                "beta": c.beta,
                "beta_plot": beta_plot(c.beta),
                "rate": m["rate"],
                "distortion": m["distortion"],
                "neg_elbo": -m["elbo"],
                "active_units": counts.active,
                "informative": counts.informative,
                "epoch": m["epoch"],
                "epochs": c.epochs,
                "state": r.state,
                "sweep": r.status.get("group") or r.run_id,
                "settings": settings_label(r),
                "seed": c.seed,
                # Replicates share this: β, or nothing where the objective ignores β (capacity).
                "beta_group": c.beta if OBJECTIVES[c.objective].uses_beta else 0.0,
                "linear": OBJECTIVES[c.objective].linear_in_beta,
                "group_key": comparable_key(r),
            }
        )
    columns = ["run_id", "run", "beta", "beta_plot", "rate", "distortion", "neg_elbo"]
    columns += ["active_units", "informative", "epoch", "epochs", "state", "sweep", "settings"]
    return pd.DataFrame(rows, columns=[*columns, "seed", "beta_group", "linear", "group_key"])


REPLICATE_COLUMNS = [
    "group_key", "beta", "beta_plot", "n", "rate", "distortion", "neg_elbo", "rate_sd",
    "distortion_sd", "rate_low", "rate_high", "distortion_low", "distortion_high",
    "informative_min", "informative_max", "active_min", "active_max", "seeds",
]  # fmt: skip


def replicate_frame(frame: pd.DataFrame) -> pd.DataFrame:
    """One row per (set, β): the mean R, D and −ELBO of its replicates (runs that differ only in
    seed, or for an objective that ignores β, in β), their sample standard deviations (0 for one
    run), mean ± sd as error-bar ends, and the range of the unit counts."""
    rows = []
    for (key, beta), runs in frame.groupby(["group_key", "beta_group"], sort=True):
        n = len(runs)
        row = {"group_key": key, "beta": float(beta), "beta_plot": beta_plot(beta), "n": n}
        for name in ("rate", "distortion", "neg_elbo"):
            row[name] = float(runs[name].mean())
        for name in ("rate", "distortion"):
            sd = float(runs[name].std(ddof=1)) if n > 1 else 0.0
            row[f"{name}_sd"] = sd
            row[f"{name}_low"], row[f"{name}_high"] = row[name] - sd, row[name] + sd
        for name, short in (("informative", "informative"), ("active_units", "active")):
            row[f"{short}_min"] = int(runs[name].min())
            row[f"{short}_max"] = int(runs[name].max())
        row["seeds"] = ", ".join(str(s) for s in sorted(runs["seed"]))
        rows.append(row)
    return pd.DataFrame(rows, columns=REPLICATE_COLUMNS)


def slopes_apply(frame: pd.DataFrame) -> bool:
    """The slope −β overlay holds for objectives of the form D + β·R only."""
    return bool(len(frame)) and bool(frame["linear"].all())


def beta_domain(frame: pd.DataFrame) -> list[float]:
    """[smallest, largest] β of the frame on the log scale (widened when there is one β)."""
    low, high = float(frame["beta_plot"].min()), float(frame["beta_plot"].max())
    if high / low < 1.5:
        low, high = low / 2, high * 2
    return [low, high]


def beta_color(domain: list[float], values: list[float] | None = None) -> alt.Color:
    """β on a log scale, labelled in β (not log β) at `values` (the runs' β); the plane and the
    curves share it."""
    legend = alt.Legend(format="~g", values=values) if values else alt.Legend(format="~g")
    return alt.Color(
        "beta_plot:Q",
        title="β",
        scale=alt.Scale(type="log", scheme="viridis", domain=domain),
        legend=legend,
    )


def beta_values(frame: pd.DataFrame) -> list[float]:
    """The distinct β of a frame (floored like the colour scale), for legend labels."""
    return sorted({float(b) for b in frame["beta_plot"]})


def elbo_levels(frame: pd.DataFrame, count: int = 4) -> list[float]:
    """A few round −ELBO values spanning the runs, for iso-ELBO lines D + R = −ELBO."""
    low, high = frame["neg_elbo"].min(), frame["neg_elbo"].max()
    if not np.isfinite([low, high]).all():
        return []
    if high - low < 1e-9:
        return [round(float(low), 1)]
    step = _nice_step((high - low) / max(1, count - 1))
    start = math.floor(low / step) * step
    return [start + i * step for i in range(count + 1) if start + i * step <= high + step]


def _nice_step(raw: float) -> float:
    exponent = math.floor(math.log10(raw))
    for m in (1, 2, 5, 10):
        if m * 10**exponent >= raw:
            return m * 10**exponent
    return 10 ** (exponent + 1)


def plot_domains(frame: pd.DataFrame) -> tuple[list[float], list[float]]:
    """x (rate) and y (distortion) ranges with a margin around the points."""
    r_pad = max(1.0, 0.08 * (frame["rate"].max() - frame["rate"].min()))
    d_pad = max(1.0, 0.08 * (frame["distortion"].max() - frame["distortion"].min()))
    x_domain = [max(0.0, frame["rate"].min() - r_pad), frame["rate"].max() + r_pad]
    y_domain = [frame["distortion"].min() - d_pad, frame["distortion"].max() + d_pad]
    return [float(v) for v in x_domain], [float(v) for v in y_domain]


def elbo_label_position(
    level: float, x_domain: list[float], y_domain: list[float]
) -> tuple[float, float] | None:
    """A point of the line R + D = level where its label, drawn above and right of the point,
    lies inside the plot and clear of the line (the line falls to the right, below the text).

    Positions are checked in pixels for a plot ASSUMED_WIDTH × CHART_HEIGHT; None when the
    line's visible part leaves no such room.
    """
    (x0, x1), (y0, y1) = x_domain, y_domain
    room_x = (x1 - x0) * (LABEL_WIDTH + 8) / ASSUMED_WIDTH
    room_y = (y1 - y0) * (LABEL_HEIGHT + 8) / CHART_HEIGHT
    # Start where the line enters the plot (top or left edge) and walk down it.
    start = max(x0, level - y1)
    stop = min(x1, level - y0)
    if start >= stop:  # the line misses the plot
        return None
    for rate in np.linspace(start, stop, 60):
        distortion = level - rate
        if rate + room_x <= x1 and distortion + room_y <= y1 and distortion >= y0:
            return float(rate), float(distortion)
    return None


def slope_segments(frame: pd.DataFrame, x_domain: list[float], y_domain: list[float]):
    """Short segments of slope dD/dR = −β through each run, all of one on-screen length."""
    sx = x_domain[1] - x_domain[0]
    sy = y_domain[1] - y_domain[0]
    rows = []
    for row in frame.itertuples():
        # In plot units (each axis scaled to 0..1) the slope is −β·sx/sy.
        unit_slope = row.beta * sx / sy
        half = SLOPE_LENGTH / 2 / math.sqrt(1 + unit_slope**2)
        for side in (-1, 1):
            dr = side * half * sx
            rows.append(
                {
                    "run_id": row.run_id,
                    "beta_plot": row.beta_plot,
                    "rate": row.rate + dr,
                    "distortion": row.distortion - row.beta * dr,
                }
            )
    return pd.DataFrame(rows, columns=["run_id", "beta_plot", "rate", "distortion"])


def tradeoff_chart(
    frame: pd.DataFrame, show_slopes: bool = False, theory: pd.DataFrame | None = None
) -> alt.LayerChart:
    """R on x, D on y; colour β (log scale); lines through each sweep; dashed lines of equal ELBO;
    optionally a segment of slope −β at each run (Alemi et al. 2018), and the closed-form curve
    (`theory`, from vae.present.theory_view.frontier_frame).

    The points layer carries a click selection named `pick` over `run_id`.
    """
    x_domain, y_domain = plot_domains(frame)
    x = alt.X("rate:Q", title="rate R = Σⱼ KLⱼ (nats)", scale=alt.Scale(domain=x_domain))
    y = alt.Y(
        "distortion:Q", title="distortion D = −log p(x|z) (nats)", scale=alt.Scale(domain=y_domain)
    )
    color = beta_color(beta_domain(frame), beta_values(frame))

    iso_rows, label_rows = [], []
    for level in elbo_levels(frame):
        name = f"−ELBO = {level:g}"
        for rate in x_domain:
            iso_rows.append({"rate": rate, "distortion": level - rate, "level": name})
        position = elbo_label_position(level, x_domain, y_domain)
        if position is not None:
            label_rows.append({"rate": position[0], "distortion": position[1], "level": name})
    iso = (
        alt.Chart(pd.DataFrame(iso_rows, columns=["rate", "distortion", "level"]))
        .mark_line(strokeDash=[4, 4], color="#999", clip=True)
        .encode(x=x, y=y, detail="level:N", tooltip=[alt.Tooltip("level:N", title="line of")])
    )
    iso_labels = (
        alt.Chart(pd.DataFrame(label_rows, columns=["rate", "distortion", "level"]))
        .mark_text(align="left", baseline="bottom", dx=6, dy=-6, color="#555", fontSize=12)
        .encode(x=x, y=y, text="level:N")
    )
    means = replicate_frame(frame)
    sweeps = (  # one line through the set's points (through the means of replicates)
        alt.Chart(means)
        .mark_line(opacity=0.5)
        .encode(x=x, y=y, detail="group_key:N", order="beta:Q", color=alt.value("#888"))
    )
    layers = [iso, iso_labels, sweeps]
    replicated = means[means["n"] > 1]
    if len(replicated):  # replicates: the mean as a diamond, ±1 sd of R and D as error bars
        bars = alt.Chart(replicated)
        layers += [
            bars.mark_rule(strokeWidth=2).encode(x="rate_low:Q", x2="rate_high:Q", y=y, color=color),
            bars.mark_rule(strokeWidth=2).encode(
                x=x, y="distortion_low:Q", y2="distortion_high:Q", color=color
            ),
            bars.mark_point(shape="diamond", size=220, filled=True, stroke="black").encode(
                x=x, y=y, color=color,
                tooltip=[
                    alt.Tooltip("beta:Q", title="β", format="~g"),
                    alt.Tooltip("n:Q", title="replicates (seeds)"),
                    alt.Tooltip("seeds:N", title="seeds"),
                    alt.Tooltip("rate:Q", title="mean R (nats)", format=".2f"),
                    alt.Tooltip("rate_sd:Q", title="sd of R", format=".2f"),
                    alt.Tooltip("distortion:Q", title="mean D (nats)", format=".2f"),
                    alt.Tooltip("distortion_sd:Q", title="sd of D", format=".2f"),
                ],
            ),
        ]  # fmt: skip
    if theory is not None and not theory.empty:
        layers += frontier_layers(theory, x, y)
    if show_slopes:
        segments = slope_segments(frame, x_domain, y_domain)
        layers.append(
            alt.Chart(segments)
            .mark_line(strokeWidth=3, clip=True)
            .encode(x=x, y=y, detail="run_id:N", color=color)
        )
    # A click picks one run; shift-click adds or removes one (Vega-Lite's default toggle).
    pick = alt.selection_point(name="pick", fields=["run_id"], on="click")
    points = (
        alt.Chart(frame)
        .mark_circle(size=140, stroke="black")
        .encode(
            x=x,
            y=y,
            color=color,
            strokeWidth=alt.condition(pick, alt.value(2), alt.value(0)),
            opacity=alt.condition(
                f"datum.state == '{RunState.RUNNING.value}'", alt.value(0.55), alt.value(0.95)
            ),
            tooltip=[
                alt.Tooltip("run:N", title="run"),
                alt.Tooltip("beta:Q", title="β", format="~g"),
                alt.Tooltip("rate:Q", title="R (nats)", format=".2f"),
                alt.Tooltip("distortion:Q", title="D (nats)", format=".2f"),
                alt.Tooltip("neg_elbo:Q", title="−ELBO (nats)", format=".2f"),
                alt.Tooltip("informative:Q", title="informative dims"),
                alt.Tooltip("active_units:Q", title="active units (Burda)"),
                alt.Tooltip("epoch:Q", title="epoch"),
                alt.Tooltip("state:N", title="state"),
                alt.Tooltip("settings:N", title="settings"),
            ],
        )
        .add_params(pick)
    )
    layers.append(points)
    return alt.layer(*layers).properties(height=CHART_HEIGHT)


# ---- the theory: slope −β ---------------------------------------------------------------------
def frontier_slopes(frame: pd.DataFrame) -> pd.DataFrame:
    """Chords between runs of neighbouring β: their slope ΔD/ΔR against −β of their two ends.

    At an optimum of D + β·R the frontier's tangent has slope −β (Alemi et al. 2018), so on a
    convex frontier the chord between β₁ < β₂ has a slope between −β₂ and −β₁. Runs of equal β
    are averaged; β = 0 and chords with ΔR ≈ 0 are left out.
    """
    by_beta = frame[frame["beta"] > 0].groupby("beta")[["rate", "distortion"]].mean().sort_index()
    rows = []
    betas = list(by_beta.index)
    for low, high in zip(betas, betas[1:], strict=False):
        d_rate = by_beta.loc[high, "rate"] - by_beta.loc[low, "rate"]
        d_dist = by_beta.loc[high, "distortion"] - by_beta.loc[low, "distortion"]
        if abs(d_rate) < 1e-6:
            continue
        slope = d_dist / d_rate
        rows.append(
            {
                "beta_low": low,
                "beta_high": high,
                "slope": slope,
                "expected": -math.sqrt(low * high),
                "within": -high <= slope <= -low,
            }
        )
    return pd.DataFrame(rows, columns=["beta_low", "beta_high", "slope", "expected", "within"])


def slope_summary(slopes: pd.DataFrame) -> str:
    """One sentence on how close the chords come to the theory."""
    if slopes.empty:
        return "Slopes need at least two runs of different β > 0 in this set."
    within = int(slopes["within"].sum())
    ratio = (slopes["slope"] / slopes["expected"]).to_numpy()
    return (
        f"{within} of {len(slopes)} chords between neighbouring β have a slope between −β₂ and "
        f"−β₁ of their two ends, as a convex frontier at the optimum must; measured slope ÷ "
        f"−√(β₁β₂) ranges from {ratio.min():.2f} to {ratio.max():.2f} (only a guide: the ratio "
        "is 1 exactly when D ∝ 1/R, and the bound is all the theory gives)."
    )


# ---- per-epoch curves -------------------------------------------------------------------------
CURVE_QUANTITIES = ("R", "D", "−ELBO")


def curves_frame(
    runs: list[tuple[RunRecord, list[dict]]], splits: tuple[str, ...] = ("test",)
) -> pd.DataFrame:
    """Long form per-epoch R, D and −ELBO, on the test split and/or the training batches, of
    each (record, its epoch rows: `RunStore.epoch_rows`)."""
    rows = []
    for r, epochs in runs:
        if r.broken:
            continue
        label = f"{r.run_id[-6:]} {beta_text(r.config.to_dict())}"
        for m in epochs:
            values = {
                "test": (m.get("rate"), m.get("distortion"), -m["elbo"] if "elbo" in m else None),
                "train": (m.get("train_rate"), m.get("train_distortion"), None),
            }
            rate, distortion, _ = values["train"]
            if rate is not None and distortion is not None:
                values["train"] = (rate, distortion, rate + distortion)
            for split in splits:
                for name, value in zip(CURVE_QUANTITIES, values[split], strict=True):
                    if value is None:
                        continue
                    rows.append(
                        {
                            "run": label,
                            "beta": r.config.beta,
                            "beta_plot": beta_plot(r.config.beta),
                            "epoch": m["epoch"],
                            "quantity": name,
                            "split": split,
                            "nats": value,
                        }
                    )
    columns = ["run", "beta", "beta_plot", "epoch", "quantity", "split", "nats"]
    return pd.DataFrame(rows, columns=columns)


def curves_chart(
    frame: pd.DataFrame, domain: list[float], values: list[float] | None = None
) -> alt.FacetChart:
    """R, D and −ELBO per epoch, one panel each; colour is β on the plane's scale (`domain`),
    solid lines the test split, dashed the training batches. Points mark epochs while they are
    few enough to tell apart."""
    few_epochs = frame["epoch"].nunique() <= 12
    return (
        alt.Chart(frame)
        .mark_line(point=few_epochs, strokeWidth=2)
        .encode(
            x=alt.X("epoch:Q", axis=alt.Axis(tickMinStep=1, format="d")),
            y=alt.Y("nats:Q", scale=alt.Scale(zero=False), title="nats"),
            color=beta_color(domain, values),
            detail="run:N",
            strokeDash=alt.StrokeDash(
                "split:N",
                title="split",
                scale=alt.Scale(domain=["test", "train"], range=[[1, 0], [5, 3]]),
            ),
            tooltip=[
                alt.Tooltip("run:N", title="run"),
                alt.Tooltip("beta:Q", title="β", format="~g"),
                alt.Tooltip("split:N", title="split"),
                alt.Tooltip("epoch:Q", title="epoch"),
                alt.Tooltip("quantity:N", title="quantity"),
                alt.Tooltip("nats:Q", title="nats", format=".2f"),
            ],
        )
        .properties(width=150, height=200)  # three panels and the legend fit an 800 px window
        .facet(column=alt.Column("quantity:N", title=None, sort=list(CURVE_QUANTITIES)))
        .resolve_scale(y="independent")
    )
