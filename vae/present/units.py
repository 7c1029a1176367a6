"""Two counts of the latent dimensions a run uses, from any epoch's metrics line.

Burda's active-unit count asks whether the posterior mean moves with x at all; the informative
count asks whether a dimension carries a real amount of information (its KL). Both come from the
per-dimension lists in every metrics line, so runs recorded before these counts existed work too.
"""

from __future__ import annotations

from dataclasses import dataclass

from vae.learn.thresholds import ACTIVE_UNIT_THRESHOLD, INFORMATIVE_KL_THRESHOLD

ACTIVE_RULE = f"Cov_x(μⱼ) > {ACTIVE_UNIT_THRESHOLD:g}"
INFORMATIVE_RULE = f"KLⱼ > {INFORMATIVE_KL_THRESHOLD:g} nats"

# The three kinds of dimension, named with their rule so a chart legend explains itself.
INFORMATIVE = f"informative (KLⱼ > {INFORMATIVE_KL_THRESHOLD:g})"
ACTIVE_ONLY = f"active only ({ACTIVE_RULE})"
COLLAPSED = "collapsed"
UNIT_CLASSES = (INFORMATIVE, ACTIVE_ONLY, COLLAPSED)
UNIT_COLOURS = ("#1f77b4", "#9ecae1", "#c7c7c7")
WHY_COUNTS_DIFFER = (
    f"They can disagree early in training and at large β: a dimension whose mean still wanders "
    f"a little with x passes {ACTIVE_RULE} while its posterior variance is near the prior's 1, "
    f"so it carries almost nothing (with σⱼ² ≈ 1, KLⱼ ≈ ½·Cov_x(μⱼ), about "
    f"{ACTIVE_UNIT_THRESHOLD / 2:g} nats at Burda's threshold)."
)


@dataclass(frozen=True)
class UnitCounts:
    """How many of a run's `latent_dim` dimensions pass each test at one epoch."""

    latent_dim: int
    active: int  # Burda et al. 2015: Cov_x(mu_j) above ACTIVE_UNIT_THRESHOLD
    informative: int  # KL_j above INFORMATIVE_KL_THRESHOLD


def unit_class(kl: float, mean_cov: float) -> str:
    """informative (KL above the threshold), active by Burda's test only, or collapsed."""
    if kl > INFORMATIVE_KL_THRESHOLD:
        return INFORMATIVE
    if mean_cov > ACTIVE_UNIT_THRESHOLD:
        return ACTIVE_ONLY
    return COLLAPSED


def unit_counts(metrics: dict) -> UnitCounts:
    """Both counts from one metrics line (its kl_per_dim and mean_cov lists)."""
    kl = metrics.get("kl_per_dim") or []
    cov = metrics.get("mean_cov") or []
    return UnitCounts(
        latent_dim=len(kl),
        active=sum(1 for c in cov if c > ACTIVE_UNIT_THRESHOLD),
        informative=sum(1 for k in kl if k > INFORMATIVE_KL_THRESHOLD),
    )
