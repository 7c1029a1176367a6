"""Small things several test files share."""

from __future__ import annotations

import time
from pathlib import Path

APP = str(Path(__file__).resolve().parent.parent / "app.py")  # AppTest needs an absolute path
PAGES = [
    "pages/train.py",
    "pages/tradeoff.py",
    "pages/posterior.py",
    "pages/samples.py",
    "pages/kl_term.py",
    "pages/checkpoints.py",
]


def wait_for(predicate, timeout=180, poll=0.1, what="condition"):
    """Poll until predicate() is truthy and return its value; fail after `timeout` seconds."""
    deadline = time.time() + timeout
    while time.time() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(poll)
    raise AssertionError(f"{what} not reached in {timeout} s")
