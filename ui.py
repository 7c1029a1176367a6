"""Streamlit glue the pages share: the one job manager per server, and run pickers tied to the URL.

Everything else (charts, tables, numbers) comes from `vae/`; this file only knows Streamlit.
"""

from __future__ import annotations

import streamlit as st
from streamlit.runtime.pages_manager import PagesManager

from vae import settings
from vae.execution.backends import make_backend, make_manager
from vae.execution.jobs import JobManager
from vae.execution.states import RunState
from vae.execution.store import RunRecord, RunStore, is_valid_run_id

STORE_ENV = "VAE_STORE"  # run store folder (default: checkpoints/ beside app.py)
MAX_JOBS_ENV = "VAE_MAX_JOBS"  # runs trained at once (default: one per core)


if PagesManager.uses_pages_directory:
    # The server's first visitor opened a page URL, so Streamlit took pages/ for an old-style
    # multipage folder and never ran app.py's st.navigation. Switch it off and run app.py.
    PagesManager.uses_pages_directory = False
    st.rerun()


@st.cache_resource
def job_manager() -> JobManager:
    """One manager per server process, shared by every session; it schedules in a daemon thread.

    Its backend is VAE_BACKEND's (local processes by default, or a Ray cluster: see backends).
    """
    root, store_problem = settings.read_or_default(settings.STORE)
    max_jobs, jobs_problem = settings.read_or_default(settings.MAX_JOBS)
    for problem in filter(None, (store_problem, jobs_problem)):
        st.warning(problem)  # replayed on every page while the cached manager is in use
    manager = make_manager(RunStore(root), make_backend(), max_concurrent=max_jobs)
    try:
        manager.reconcile()  # adopt or mark interrupted whatever a previous server left running
    except Exception as exc:  # a read-only or broken store must not stop the app from opening
        print(f"job manager: {exc}")
    manager.start_scheduler()
    return manager


@st.fragment(run_every=5.0)
def cluster_sidebar(manager: JobManager) -> None:
    """With the Ray backend: the cluster's free CPUs and GPUs, and the node of each running run."""
    if manager.backend.name != "ray":
        return
    try:
        res = manager.backend.resources()
    except ConnectionError as exc:
        st.error(str(exc))
        return
    gpus = f" · {res['gpu_free']:g} of {res['gpu_total']:g} GPUs free" if res["gpu_total"] else ""
    st.markdown(
        f"**Ray cluster** · {res['nodes']} node(s) · "
        f"{res['cpu_free']:g} of {res['cpu_total']:g} CPUs free{gpus}"
    )
    running = [
        r for r in manager.store.list_runs(with_metrics=False) if r.state == RunState.RUNNING
    ]
    for record in running[:8]:
        st.caption(f"{record.run_id}: {record.status.get('where', 'starting')}")
    if len(running) > 8:
        st.caption(f"… and {len(running) - 8} more running")


def run_store() -> RunStore:
    return job_manager().store


def run_label(record: RunRecord, with_state: bool = True) -> str:
    if record.broken:
        return f"{record.run_id} (broken)"
    name = f" {record.config.name}" if record.config.name else ""
    state = f" · {record.state}" if with_state else ""
    return f"{record.run_id}{name} · β={record.config.beta:g} · z={record.config.latent_dim}{state}"


def pick_run(
    records: list[RunRecord], key: str = "run", label: str = "Run", index_default: int = -1
) -> RunRecord | None:
    """A select box of runs whose choice lives in the URL (?run=ID), so a view can be shared.

    A query value that is not a valid, existing run id is reported and ignored.
    """
    usable = [r for r in records if not r.broken]
    if not usable:
        return None
    ids = [r.run_id for r in usable]
    wanted = st.query_params.get(key)
    index = index_default % len(ids)
    if wanted is not None:
        if is_valid_run_id(wanted) and wanted in ids:
            index = ids.index(wanted)
        else:
            st.warning(
                f"The run in the address (`{key}`) was not found in the store; showing another."
            )
    chosen = st.selectbox(
        label, ids, index=index, key=f"pick_{key}",
        format_func=lambda rid: run_label(usable[ids.index(rid)]),
    )  # fmt: skip
    st.query_params[key] = chosen
    return usable[ids.index(chosen)]


def compare_toggle() -> bool:
    """'Compare two runs side by side'; the second run's id lives in the URL as ?compare=ID."""
    compare = st.toggle("Compare two runs side by side", value="compare" in st.query_params)
    if not compare and "compare" in st.query_params:
        del st.query_params["compare"]
    return compare


def side_by_side(records: list[RunRecord], show, compare: bool) -> None:
    """Pick one run (or two, in columns) and call show(record) for each."""
    for column, record in pick_runs(records, compare):
        with column:
            show(record)


def pick_runs(records: list[RunRecord], compare: bool) -> list[tuple]:
    """Pick one run (or two, in columns); returns (column, record) pairs, so a page can compute
    what both sides share (axis ranges) before drawing either."""
    keys = ["run", "compare"] if compare else ["run"]
    columns = st.columns(2) if compare else [st.container()]
    picked = []
    for column, key in zip(columns, keys, strict=True):
        with column:
            default = -2 if key == "compare" and len(records) > 1 else -1
            label = "Run" if key == "run" else "Compare with"
            record = pick_run(records, key=key, label=label, index_default=default)
            if record is not None:
                picked.append((column, record))
    return picked
