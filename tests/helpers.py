"""Small things several test files share."""

from __future__ import annotations

import io
import time
import zipfile
from pathlib import Path

import streamlit as st
from streamlit.testing.v1 import AppTest

from vae.execution.worker import JobControl, run_job
from vae.learn.config import RunConfig

APP = str(Path(__file__).resolve().parent.parent / "app.py")  # AppTest needs an absolute path
PAGES = [
    "pages/train.py",
    "pages/gallery.py",
    "pages/tradeoff.py",
    "pages/posterior.py",
    "pages/samples.py",
    "pages/kl_term.py",
    "pages/runs.py",
    "pages/checkpoints.py",
]


def wait_for(predicate, timeout=180, poll=0.1, what="condition"):
    """Poll until predicate() is truthy and return its value; fail after `timeout` seconds."""
    deadline = time.time() + timeout
    while deadline > time.time():  # a polling deadline, not a timing assertion
        value = predicate()
        if value:
            return value
        time.sleep(poll)
    raise AssertionError(f"{what} not reached in {timeout} s")


def open_app(monkeypatch, store_root: Path, page: str | None = None, **query) -> AppTest:
    """Run the app through AppTest on `store_root` (optionally on `page`, with query values)."""
    monkeypatch.setenv("VAE_STORE", str(store_root))
    st.cache_resource.clear()  # one job manager per test, on this test's store
    at = AppTest.from_file(APP, default_timeout=60)
    for key, value in query.items():
        at.query_params[key] = value
    at.run()
    if page:
        at.switch_page(page).run()
    return at


def train_run(store, run_id: str, stop=lambda: False):
    """Train one stored run in this process, as `python -m vae train` does; returns its end state."""
    control = JobControl(store)
    control.stop_requested = False
    if stop is not None:
        control.cancelled = lambda ids: set(ids) if stop() else set()
    return run_job(store, [run_id], control)[run_id]


def worker_pid(status: dict) -> int | None:
    """The pid of the local worker process a running run's status names."""
    job = status.get("job")
    return job.get("pid") if isinstance(job, dict) else None


SMALL = dict(hidden_dims=[32], latent_dim=4, epochs=2, batch_size=256, threads=1)


def train_small(store, group: str | None = None, **settings) -> str:
    """Create and train (in this process) a small run of SMALL's settings; returns its id."""
    run_id = store.create_run(RunConfig(**{**SMALL, **settings}), group=group)
    assert train_run(store, run_id) == "finished"
    return run_id


def train_sweep(store, betas, group: str, **settings) -> list[str]:
    """Create a sweep of small fp32 runs (one per β, in `group`) and train it as one stack, as a
    worker does; returns the run ids."""
    config = RunConfig(**{**SMALL, "epochs": 1, "latent_dim": 3, "precision": "fp32", **settings})
    ids = [
        store.create_run(RunConfig(**{**config.to_dict(), "beta": b}), group=group) for b in betas
    ]
    assert set(run_job(store, ids, JobControl(store)).values()) == {"finished"}
    return ids


def chart_spec(chart) -> dict:
    return chart.to_dict()


def chart_layers(spec: dict) -> list[dict]:
    return spec.get("layer", [spec])


def with_byte_changed(data: bytes, entry_suffix: str, at: int) -> bytes:
    """`data` with one bit flipped `at` bytes into the entry whose name ends with the suffix."""
    info = next(e for e in zipfile.ZipFile(io.BytesIO(data)).infolist()
                if e.filename.endswith(entry_suffix))  # fmt: skip
    header = data[info.header_offset : info.header_offset + 30]
    name_length, extra_length = (
        int.from_bytes(header[26:28], "little"),
        int.from_bytes(header[28:30], "little"),
    )
    start = info.header_offset + 30 + name_length + extra_length
    changed = bytearray(data)
    changed[start + at] ^= 0x40
    return bytes(changed)
