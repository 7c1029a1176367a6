"""Streamlit glue the pages share: the one job manager per server, the cached run listing, the
live refresh, and run pickers tied to the URL.

Everything else (charts, tables, numbers) comes from `vae/`; this file only knows Streamlit.
"""

from __future__ import annotations

import contextlib
import gc
import importlib
import os
import sys
import tempfile
import threading
import time
from collections.abc import Callable
from typing import TYPE_CHECKING

import streamlit as st
from streamlit.delta_generator import DeltaGenerator
from streamlit.runtime import Runtime
from streamlit.runtime.pages_manager import PagesManager
from streamlit.runtime.scriptrunner import get_script_run_ctx

from vae import settings
from vae.execution import root_files
from vae.execution.backends import backend_from_settings
from vae.execution.jobs import JobManager, make_manager
from vae.execution.layout import cache_dir
from vae.execution.states import ACTIVE, RunState
from vae.execution.store import RunRecord, RunStore, is_valid_run_id
from vae.learn.fields import beta_text
from vae.present.text import code_span, plain_text
from vae.present.views import difference_text, newest, vega_lite_spec

if TYPE_CHECKING:  # a hint only: Altair loads with the first page that draws a chart
    import altair as alt

POLL_ACTIVE_S = 2.0  # how often an open page looks for changes while a run it shows trains
POLL_IDLE_S = 20.0  # ... and while nothing does (a run started elsewhere still shows up)
_SEEN = "_live_seen"  # session state: (store generation, {run id: record}) of the listing drawn
_ACTIVE = "_live_active"  # session state: ids of the queued or running runs in that listing
_PENDING = "_live_pending"  # session state: runs the address names that the page cannot draw yet

# What the pages that show models need (torch: seconds to import). The first page a visitor
# opens (Train, Tradeoff, Posterior, the KL term) needs none of it, so it is loaded afterwards.
WARM_UP_MODULES = ("vae.execution.checkpoint", "vae.learn.evaluate", "vae.present.gallery")
WARM_UP_DELAY_S = 2.0  # after the first page is out and drawn, so it is not slowed

# The modules imported by now live as long as the server: keep them out of the garbage
# collector's full passes, which otherwise walk a few hundred thousand objects (0.2 s) each time.
gc.freeze()


if PagesManager.uses_pages_directory:
    # The server's first visitor opened a page URL, so Streamlit took pages/ for an old-style
    # multipage folder and never ran app.py's st.navigation. Switch it off and run app.py.
    PagesManager.uses_pages_directory = False
    st.rerun()


@st.cache_resource
def _server() -> tuple[JobManager, tuple[str, ...]]:
    """One manager per server process, shared by every session; it schedules in a daemon thread.

    Its backend is VAE_BACKEND's (local processes by default, or a Ray cluster: see backends).
    Every refused setting becomes a message (shown once per page run by `job_manager`) and its
    default is used: a bad setting never stops the app.
    """
    root, store_problem = settings.read_or_default(settings.STORE)
    max_jobs, jobs_problem = settings.read_or_default(settings.MAX_JOBS)
    backend, backend_problems = backend_from_settings()
    problems = tuple(filter(None, (store_problem, jobs_problem, *backend_problems)))
    manager = make_manager(RunStore(root), backend, max_concurrent=max_jobs)
    try:
        manager.reconcile()  # adopt or mark interrupted whatever a previous server left running
    except Exception as exc:  # a read-only or broken store must not stop the app from opening
        print(f"job manager: {exc}")
    manager.start_scheduler()
    return manager, problems


def job_manager() -> JobManager:
    """The server's manager; the first call in each script run shows the setting warnings."""
    manager, problems = _server()
    root_problems = root_files.problems(manager.store.root, cache_dir())
    _warn_once_per_run((*problems, *root_problems))
    return manager


def _warn_once_per_run(problems: tuple[str, ...]) -> None:
    """Each refused setting and each damaged store-root file, once per page run (a page calls
    job_manager() several times; a fragment's own reruns show none: the page already does)."""
    ctx = get_script_run_ctx()
    if not problems or ctx is None or ctx.fragment_ids_this_run:
        return
    marker = ctx.parallel_coordinator  # a new object for every script run
    if getattr(ctx, "_vae_warned_in", None) is marker:
        return
    ctx._vae_warned_in = marker
    for problem in problems:
        st.warning(plain_text(problem))


@st.fragment(run_every=5.0)
def cluster_sidebar(manager: JobManager) -> None:
    """With a cluster backend (Ray): the cluster's free CPUs and GPUs, and the node of each running run."""
    if not manager.backend.cluster:
        return
    try:
        res = manager.backend.resources()
    except ConnectionError as exc:
        st.error(plain_text(exc, 300))
        return
    gpus = f" · {res['gpu_free']:g} of {res['gpu_total']:g} GPUs free" if res["gpu_total"] else ""
    st.markdown(
        f"**Ray cluster** · {res['nodes']} node(s) · "
        f"{res['cpu_free']:g} of {res['cpu_total']:g} CPUs free{gpus}"
    )
    running = [r for r in manager.store.list_runs() if r.state == RunState.RUNNING]
    for record in running[:8]:
        st.caption(f"{record.run_id}: {plain_text(record.status.get('where') or 'starting')}")
    if len(running) > 8:
        st.caption(f"… and {len(running) - 8} more running")


def one_torch_thread() -> None:
    """The server's own torch work (a few decoded samples, a probe, a latent map) in one thread:
    while workers train on every core, a second intra-op thread waits for a core at each
    parallel region, and a page's small tensor work then takes several times as long. Called
    before each page runs and after the warm-up's imports; a no-op until torch is imported, and
    while another thread is still importing it (half a module has no get_num_threads yet)."""
    torch = sys.modules.get("torch")
    spec = getattr(torch, "__spec__", None)
    if torch is None or getattr(spec, "_initializing", False):  # the warm-up thread imports it
        return  # now: it sets the thread count itself once the import is done
    if torch.get_num_threads() != 1:
        torch.set_num_threads(1)


@st.cache_resource
def warm_up() -> threading.Thread:
    """Load WARM_UP_MODULES once per server in a background thread (call it after the page has
    run), so the first visit to Samples, the gallery or Checkpoints does not wait for torch."""

    def load() -> None:
        time.sleep(WARM_UP_DELAY_S)
        for name in WARM_UP_MODULES:
            importlib.import_module(name)  # a preload, not a deferred import: the pages import it
        one_torch_thread()
        gc.freeze()  # as above, for what these modules keep

    thread = threading.Thread(target=load, name="vae-warm-up", daemon=True)
    thread.start()
    return thread


def run_store() -> RunStore:
    return job_manager().store


def epoch_rows(record: RunRecord) -> list[dict]:
    """A listed run's thinned per-epoch rows, for a chart (read once per record, then cached)."""
    return run_store().epoch_rows(record)


def list_runs() -> list[RunRecord]:
    """Every run, oldest first (shared records: do not modify them); remembers what was drawn.

    The store keeps one cached listing per server and hands out the same record object while a
    run's files are unchanged, so "changed" is "another object", and its generation number says
    cheaply whether anything changed at all (see refresh_on_change).
    """
    generation, records = run_store().snapshot()
    st.session_state[_SEEN] = (generation, {r.run_id: r for r in records})
    st.session_state[_ACTIVE] = {r.run_id for r in records if r.state in ACTIVE}
    return records


@st.cache_data(max_entries=256, show_spinner=False)
def _cached_spec(name: str, _build: Callable[..., alt.TopLevelMixin], args: tuple) -> dict:
    return vega_lite_spec(_build(*args))  # `name` keys the cache: a function cannot be hashed


def chart(
    build: Callable[..., alt.TopLevelMixin],
    *args,
    figure: str = "",
    figure_key: str = "",
    **options,
):
    """`st.altair_chart(build(*args), **options)`, built once per distinct args: a rerun with the
    same data (a click elsewhere, a refresh) skips Altair's building and validation. The one way
    pages draw a chart (only a chart whose clicks select, Tradeoff's plane, is drawn directly).
    With `figure` (a file name), SVG, PNG and PDF downloads of it follow the chart (`figure_key`
    tells apart two of one name on a page)."""
    name = f"{build.__module__}.{build.__qualname__}"
    spec = _cached_spec(name, build, args)
    shown = st.vega_lite_chart(spec=spec, **options)
    if figure:
        figure_downloads(spec, figure, key=figure_key)
    return shown


def figure_downloads(
    chart: alt.TopLevelMixin | dict | Callable[[], str],
    name: str,
    label: str = "Download figure",
    key: str = "",
) -> None:
    """SVG, PNG and PDF downloads of a figure, for slides: a chart (Altair or its Vega-Lite dict)
    or a function that returns an SVG document (the β gallery). Each file is made only when its
    button is pressed (vl-convert, no browser). `key` (default: `name`) tells apart two figures
    of one name on a page (the same run on both sides of a comparison)."""
    from vae.present import figures

    def make(fmt: str) -> Callable[[], bytes]:
        if callable(chart) and not hasattr(chart, "to_dict"):
            return lambda: figures.svg_figure(chart(), fmt)
        return lambda: figures.chart_figure(chart, fmt)

    key = key or name
    with st.popover(label, icon=":material/download:", key=f"figures-{key}"):
        for fmt, mime in figures.FORMATS.items():
            st.download_button(
                fmt.upper(), make(fmt), file_name=figures.file_name(name, fmt), mime=mime,
                key=f"figure-{key}-{fmt}", on_click="ignore",
            )  # fmt: skip


def altair_chart(chart: alt.TopLevelMixin, name: str, figure_key: str = "", **options):
    """`st.altair_chart(chart, **options)` with its SVG, PNG and PDF downloads below it: for a
    chart whose clicks select (`on_select`), which `chart` cannot cache."""
    event = st.altair_chart(chart, **options)
    figure_downloads(chart, name, key=figure_key)
    return event


def lazy_expander(label: str, key: str) -> DeltaGenerator | None:
    """An expander whose content is computed and sent only while it is open: the container
    while open, else None. For content a reader opens rarely (a long derivation, a full table,
    a chart of its own): a page switch neither runs nor draws it, and a live panel does not
    resend it every refresh. Opening it reruns the script (or the fragment it is in) once.

    Streamlit tells expanders apart by label as well as key, so one whose label changes (a count
    in it) is a new expander; it opens as the last one was left, not closed under the reader."""
    was_open = f"_{key}_was_open"
    box = st.expander(
        label, expanded=st.session_state.get(was_open, False), key=key, on_change="rerun"
    )
    st.session_state[was_open] = box.open
    return box if box.open else None


def refresh_on_change(run_ids: list[str] | None = None, *, added_or_removed: bool = False) -> None:
    """Rerun the page when the runs it shows change on disk (all runs when run_ids is None).

    Call it once, at the end of a page that drew from `list_runs()`. An invisible fragment asks
    the store, every 2 s while a watched run is queued or running and every 20 s otherwise,
    whether its listing changed since the page drew (one number, whatever the store's size), and
    only then whether a watched run's record did; it reruns the page only in that case. The
    timer never changes while the page shows. With `added_or_removed`, only a run added to or
    deleted from the store reruns the page (the page's `live_fragment` follows the runs' progress).
    """
    pending = st.session_state.pop(_PENDING, set())  # runs named in the address, not drawn yet
    if run_ids is not None and pending:
        run_ids = [*run_ids, *pending]
    active = st.session_state.get(_ACTIVE, set())
    watched_active = bool(active) if run_ids is None else bool(active.intersection(run_ids))
    every = POLL_ACTIVE_S if watched_active else POLL_IDLE_S
    watched = None if run_ids is None else list(run_ids)
    st.fragment(_watch_store, run_every=every)(watched, added_or_removed)


def live_fragment(draw: Callable[[], None]) -> None:
    """Draw `draw` as a fragment that redraws itself every 2 s while a run is queued or running.

    For a page whose only live part is one panel (Train's jobs): its progress redraws alone, and
    the rest of the page (dozens of settings) is neither rerun nor redrawn by the browser. Pair
    it with `refresh_on_change(added_or_removed=True)`, which watches from the listing read here.
    """
    active = any(r.state in ACTIVE for r in list_runs())
    st.fragment(draw, run_every=POLL_ACTIVE_S if active else None)()


def _watch_store(run_ids: list[str] | None, added_or_removed: bool = False) -> None:
    if _store_changed(run_ids, added_or_removed):
        st.rerun()


def _store_changed(run_ids: list[str] | None, added_or_removed: bool = False) -> bool:
    drawn = st.session_state.get(_SEEN)
    if drawn is None:
        return False
    generation, drawn_records = drawn
    now, records = run_store().snapshot()
    if now == generation:  # nothing anywhere in the store changed: no file is looked at
        return False
    current = {r.run_id: r for r in records}
    watched = current if run_ids is None else run_ids
    added_or_deleted = current.keys() != drawn_records.keys()  # the pickers change
    changed = added_or_deleted or (
        not added_or_removed
        and any(current.get(run_id) is not drawn_records.get(run_id) for run_id in watched)
    )  # or a watched run re-read
    if not changed:  # others changed: remember this generation, so the next look is cheap again
        st.session_state[_SEEN] = (now, current)
    return changed


def run_label(record: RunRecord, with_state: bool = True) -> str:
    if record.broken:
        return f"{record.run_id} (broken)"
    name = f" {record.config.name}" if record.config.name else ""
    state = f" · {record.state}" if with_state else ""
    what = beta_text(record.config.to_dict())  # never "β = 1" for a run whose β does nothing
    return f"{record.run_id}{name} · {what} · z={record.config.latent_dim}{state}"


def _sweep_default(usable: list[RunRecord]) -> str | None:
    """With ?sweep=GROUP (and no run named): that sweep's run with the largest β."""
    group = st.query_params.get("sweep")
    members = [r for r in usable if group and r.status.get("group") == group]
    return max(members, key=lambda r: r.config.beta).run_id if members else None


def _not_shown_yet(run_id: str | None) -> RunRecord | None:
    """The run of that id in the store's listing, when the page left it out (no epoch yet)."""
    drawn = st.session_state.get(_SEEN)
    return drawn[1].get(run_id) if drawn and run_id else None


def pick_run(
    records: list[RunRecord],
    key: str = "run",
    label: str = "Run",
    index_default: int = -1,
    default_id: str | None = None,
) -> RunRecord | None:
    """A select box of runs whose choice lives in the URL (?run=ID), so a view can be shared.

    A query value that is not a valid, existing run id is reported and ignored. A run that exists
    but that the page cannot show yet (still in its first epoch) keeps its place in the address:
    the page says so, and redraws when it has an epoch (refresh_on_change watches it).
    """
    wanted = st.query_params.get(key)
    usable = [r for r in records if not r.broken]
    listed = st.session_state.get(_SEEN, (0, {}))[1]  # the whole listing this page drew
    broken = next((r for r in records if r.broken and r.run_id == wanted), listed.get(wanted))
    broken = broken if broken is not None and broken.broken else None
    if broken is not None:  # listed as broken on Checkpoints: say so, not "not found"
        st.warning(
            f"The run in the address (`{key}`), {code_span(wanted)}, is broken and cannot be "
            f"shown: {plain_text(broken.broken, 300)}"
        )
        wanted = None
    if not usable:
        return None
    listed, _ = newest(usable)  # a picker of 10,000 options would be sent on every rerun
    usable = listed + [r for r in usable[: len(usable) - len(listed)] if r.run_id == wanted]
    ids = [r.run_id for r in usable]
    index = index_default % len(ids)
    default_id = default_id if default_id in ids else _sweep_default(usable)
    if default_id in ids:
        index = ids.index(default_id)
    if wanted is not None:
        waiting = _not_shown_yet(wanted) if is_valid_run_id(wanted) else None
        if is_valid_run_id(wanted) and wanted in ids:
            index = ids.index(wanted)
        elif waiting is not None and not waiting.broken:
            st.info(
                f"Run {wanted} ({waiting.state}) has no finished epoch yet; this page shows it "
                "as soon as it has one."
            )
            st.session_state.setdefault(_PENDING, set()).add(wanted)
            return None
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


def sweep_of_address_run(members: dict[str, list[str]]) -> None:
    """A page of sweeps opened with ?run=ID (and no ?sweep=) opens the sweep holding that run."""
    run_id = st.query_params.get("run")
    if run_id and "sweep" not in st.query_params:
        group = next((g for g, ids in members.items() if run_id in ids), None)
        if group is not None:
            st.query_params["sweep"] = group


def pick_sweep(
    options: list[tuple[str, str]], key: str = "sweep", widget_key: str = ""
) -> str | None:
    """A select box of sweeps, (group id, label) newest first, whose choice lives in the URL
    (?sweep=GROUP), so a view of a sweep can be shared. An unknown value is reported."""
    if not options:
        return None
    groups = [g for g, _ in options]
    labels = dict(options)
    wanted = st.query_params.get(key)
    state_key, written_key = widget_key or f"pick_{key}", f"_url_{key}"
    if wanted is not None and wanted not in groups:
        st.warning(
            f"The sweep in the address (`{key}`) was not found in the store; showing another."
        )
    elif wanted is not None and wanted != st.session_state.get(written_key):
        st.session_state[state_key] = wanted  # an address from outside (a link) wins
    if st.session_state.get(state_key) not in groups:
        st.session_state.pop(state_key, None)  # a deleted sweep: back to the newest
    chosen = st.selectbox(
        "Sweep", groups, key=state_key, format_func=lambda g: labels.get(g, g),
        help="Runs started together by Sweep β (or the demo); the newest first.",
    )  # fmt: skip
    st.query_params[key] = st.session_state[written_key] = chosen
    return chosen


def _partner(records: list[RunRecord], record: RunRecord) -> str | None:
    """The run to compare with by default: in the same sweep, the smallest β (the largest when
    `record` is the smallest), as the pages' texts name them (largest β beside smallest)."""
    group = record.status.get("group")
    members = [r for r in records if group and not r.broken and r.status.get("group") == group]
    others = [r for r in members if r.run_id != record.run_id]
    if not others:
        return None
    smallest = min(members, key=lambda r: r.config.beta)
    if smallest.run_id != record.run_id:
        return smallest.run_id
    return max(others, key=lambda r: r.config.beta).run_id


def compare_toggle() -> bool:
    """'Compare two runs side by side'; the second run's id lives in the URL as ?compare=ID."""
    # Seeded from the address once; a `value=` that follows the address would make a new widget
    # each time the address changes, and a click could flip it straight back.
    if "compare_toggle" not in st.session_state:
        st.session_state.compare_toggle = "compare" in st.query_params
    compare = st.toggle("Compare two runs side by side", key="compare_toggle")
    if not compare and "compare" in st.query_params:
        del st.query_params["compare"]
    return compare


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
            other = _partner(records, picked[0][1]) if key == "compare" and picked else None
            record = pick_run(
                records, key=key, label=label, index_default=default, default_id=other
            )
            if record is not None:
                picked.append((column, record))
    if len(picked) == 2:  # say what the two differ in, and whether that is a fair comparison
        st.caption(difference_text(picked[0][1].config, picked[1][1].config))
    return picked


# ---- uploads: held once, inspected one at a time, released after ------------------------------
_UPLOAD_PENDING = "_upload_pending"  # session state: (temp file, name) waiting to be inspected
UPLOAD_INSPECTION = "_upload_inspection"  # session state: the small Inspection of the last upload


@st.cache_resource
def _inspection_slot() -> threading.Semaphore:
    return threading.Semaphore(1)  # one large upload in memory at a time, whatever the tabs


def forget_upload() -> None:
    """Drop the last upload's inspection (the Clear button)."""
    st.session_state.pop(UPLOAD_INSPECTION, None)
    pending = st.session_state.pop(_UPLOAD_PENDING, None)
    if pending:
        with contextlib.suppress(OSError):
            os.unlink(pending[0])


def take_upload(key: str, max_bytes: int) -> str | None:
    """Move the file in the uploader `key` to a temporary file, take it out of Streamlit's memory
    (the uploader would hold it as long as the tab shows it) and rerun: the next run inspects
    it. No variable of the page holds the file, so its bytes are freed as soon as this returns.
    Returns a refusal instead when the file is over `max_bytes`."""
    upload = st.session_state.get(key)
    if upload is None:
        return None
    ctx = get_script_run_ctx()
    with contextlib.suppress(Exception):  # an internal API: if it moved, the file stays held
        Runtime.instance().uploaded_file_mgr.remove_file(ctx.session_id, upload.file_id)
    with contextlib.suppress(KeyError):  # the widget's cached value holds the bytes too
        del st.session_state[key]
    if upload.size > max_bytes:
        return f"the file is {upload.size:,} bytes; the limit is {max_bytes:,}"
    forget_upload()  # a new file replaces what was shown
    fd, path = tempfile.mkstemp(prefix="vae-upload-", suffix=".pt")
    with os.fdopen(fd, "wb") as handle:
        handle.write(upload.getvalue())  # the shared bytes: getbuffer() would copy them
    st.session_state[_UPLOAD_PENDING] = (path, upload.name)
    del upload
    st.rerun()


def inspect_pending_upload(max_bytes: int):
    """The Inspection of the upload taken by `take_upload` (made now, one at a time per
    server, then its memory released), or of the last one; None when there is none."""
    # torch: loaded by the page that asks (warm_up has usually loaded it), not by every page
    from vae.present.upload import inspect_checkpoint_file, release_memory

    pending = st.session_state.pop(_UPLOAD_PENDING, None)
    if pending is not None:
        path, name = pending
        with st.spinner("Checking the checkpoint…"), _inspection_slot():
            inspection = inspect_checkpoint_file(path, name, max_bytes)
            release_memory()
        st.session_state[UPLOAD_INSPECTION] = inspection
    return st.session_state.get(UPLOAD_INSPECTION)
