"""Four tabs inspect the largest legal checkpoint at once: the server's memory stays bounded and
returns to its idle size once they close (a real server, real uploads from Chromium).

The target (issue #22) is < 600 MB above idle at the peak and within 100 MB of idle 60 s after;
the assertions leave a margin for a busy shared machine, far below what the issue measured
before (3.5 GB for four tabs, 1 GB held 20 minutes later). `python bench/upload_memory.py`
prints the figures.
"""

from __future__ import annotations

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "bench"))

import pytest  # noqa: E402
from upload_memory import measure  # noqa: E402

pytestmark = [pytest.mark.browser, pytest.mark.slow]

PEAK_BOUND_MB = 900  # target 600, with a margin: the peak varies with how the uploads overlap
AFTER_BOUND_MB = 150  # target 100, with a margin


def test_four_tabs_uploading_the_largest_checkpoint_cost_a_bounded_amount(tmp_path):
    figures = measure(tabs=4, settle_s=60, work=tmp_path)
    print(figures)
    assert figures["checkpoint_mb"] > 120  # the legal maximum, not a small stand-in
    assert figures["peak_above_idle_mb"] < PEAK_BOUND_MB, figures
    assert figures["after_above_idle_mb"] < AFTER_BOUND_MB, figures
