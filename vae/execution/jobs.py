"""The job manager: a queue of runs on disk, executed by a pluggable backend.

The store is the source of truth: a run is queued when its status.json says so, running while
the job named in its status (`status["job"]`, a backend's ref) is alive. The manager only
reconciles the two: it starts queued runs when a slot is free (a β sweep's runs as stacks, one per
free slot), notices jobs that ended without finishing their runs (those become `interrupted`,
resumable from their last epoch), and re-attaches to jobs that outlived an earlier server. A
restarted server therefore lists and continues everything. Execution engines plug in through
`vae.execution.backend.Backend`.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
import sys
import threading
import time
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path

from vae.execution.backend import Backend, Job
from vae.execution.backends import backend_from_settings
from vae.execution.layout import Layout, cached_layout, default_layout, start_background_measurement
from vae.execution.lease import is_held, stalled_for
from vae.execution.preflight import sweep_finding
from vae.execution.root_files import open_root_file
from vae.execution.states import ACTIVE, RESUMABLE, RunState
from vae.execution.store import RunRecord, RunStore, StoreError
from vae.learn.config import RunConfig, can_train_together, stack_key, sweep_betas

MAX_SEEDS = 32  # seeds per β in one sweep
CANCEL_GRACE_S = 10.0  # a job asked to stop that still runs after this is killed
CANCEL_POLL_S = 0.05  # how often `cancel(wait_s=…)` looks whether the run has stopped
LAYOUT_LOOK_S = 5.0  # while no layout is measured, how often the cache is looked at again
WARM_AFTER_S = 3.0  # spare workers start this long after the scheduler (not during first paint)


@dataclass
class JobManager:
    """Starts at most `max_concurrent` jobs; call `reconcile()` (or `start_scheduler()`) to advance.

    Left at None, jobs at once and threads per job follow the layout measured on this machine
    (vae.execution.layout; until it is measured: one single-thread job per core).
    """

    store: RunStore
    max_concurrent: int | None = None
    backend: Backend = field(default_factory=lambda: backend_from_settings()[0])  # VAE_BACKEND
    threads_per_job: int = 0  # 0: the backend's, else from the layout, or cores / max_concurrent
    batch_sweeps: bool = True  # a sweep's runs that differ only in β train as stacks

    def __post_init__(self):
        self.threads_per_job = self.threads_per_job or self.backend.threads_per_job
        self.jobs: dict[str, Job] = {}  # run id -> the job training it (one job, several runs)
        self._cancel_asked: dict[str, float] = {}  # run id -> when its cancel was asked
        self._foreign_jobs: set[str] = set()  # live jobs on the store that this one cannot watch
        self._layout: Layout | None = None
        self._layout_looked = 0.0  # when the layout cache was last read (while none was found)
        self._lock = threading.RLock()
        self._scheduler: threading.Thread | None = None
        self._stop = threading.Event()

    # ---- what the pages call -----------------------------------------------------------
    def submit(self, config: RunConfig, group: str | None = None) -> str:
        """Queue one run (validated, written to disk) and start it if a slot is free."""
        run_id = self.store.create_run(config, group=group)
        self.reconcile()
        return run_id

    def submit_sweep(self, config: RunConfig, betas: Iterable[float], seeds: int = 1) -> list[str]:
        """Queue one run per β and seed (seeds config.seed, +1, ...): all validated before any is
        written; no β twice; refused for an objective that ignores β."""
        if (refused := sweep_finding(config)) is not None:
            raise ValueError(f"{refused.message} {refused.detail}")
        if not isinstance(seeds, int) or not 1 <= seeds <= MAX_SEEDS:
            raise ValueError(f"seeds per β must be a whole number from 1 to {MAX_SEEDS}")
        configs = []
        values = sweep_betas(betas)
        for offset in range(seeds):  # one seed's runs together: they can train as one stack
            for beta in values:
                c = RunConfig.from_dict(
                    {**config.to_dict(), "beta": float(beta), "seed": config.seed + offset}
                )
                configs.append(c.validated())
        group = f"sweep-{int(time.time() * 1000):x}"
        run_ids: list[str] = []
        with self._lock:  # the scheduler thread starts none of them before all are written
            try:
                for c in configs:
                    run_ids.append(self.store.create_run(c, group=group))
            except StoreError:  # e.g. the disk filled half-way: all or nothing, like one run
                for run_id in run_ids:
                    with contextlib.suppress(StoreError):
                        self.store.delete_run(run_id)
                raise
        self.reconcile()
        return run_ids

    def cancel(self, run_id: str, wait_s: float = 0.0) -> None:
        """Stop this run only: at once if queued, else at its last completed epoch.

        With `wait_s`, wait up to that long for its worker to stop it (a worker answers within a
        training step), so a caller that shows the run next shows it stopped."""
        self._request_cancel(run_id)
        deadline = time.monotonic() + wait_s
        while time.monotonic() < deadline:
            if self.store.read_status(run_id)["state"] not in ACTIVE:
                return
            job = self.jobs.get(run_id)
            if job is not None and not job.alive():
                self.reconcile()  # its worker is gone (e.g. before it could answer): settle now
            else:
                time.sleep(CANCEL_POLL_S)

    def _request_cancel(self, run_id: str) -> None:
        with self._lock:
            state = self.store.read_status(run_id)["state"]
            if state == RunState.QUEUED:
                self.store.update_status(run_id, RunState.CANCELLED, "cancelled while queued")
                return
            if state == RunState.RUNNING and run_id not in self.jobs:
                self.reconcile()  # a job started by an earlier server: attach to it first
            job = self.jobs.get(run_id)
            if state != RunState.RUNNING or job is None:
                raise StoreError(f"run {run_id} is {state}, not queued or running")
            self._cancel_asked[run_id] = time.time()
            if stalled_for(self.store.run_dir(run_id)) is not None:
                job.stop(force=True)  # it cannot hear a polite request: its other runs interrupt
            else:
                job.cancel_run(run_id)

    def resume(self, run_id: str) -> None:
        """Queue an interrupted, cancelled or failed run again; it continues from model.pt."""
        with self._lock:
            state = self.store.read_status(run_id)["state"]
            if state not in RESUMABLE:
                raise StoreError(f"run {run_id} is {state}; only stopped runs can be resumed")
            if is_held(self.store.run_dir(run_id)):
                raise StoreError(f"run {run_id} is still held by a live process; wait or cancel it")
            self.store.clear_cancel_request(run_id)
            self.store.update_status(run_id, RunState.QUEUED, f"resumed from {state}")
        self.reconcile()

    def delete(self, run_id: str) -> None:
        with self._lock:
            if run_id in self.jobs:
                raise StoreError(f"run {run_id} is running; cancel it first")
            self.store.delete_run(run_id)

    # ---- the reconcile loop ------------------------------------------------------------
    def layout(self) -> Layout:
        """Jobs at once and threads per job: the settings given, else the measured layout, else
        (until a measurement lands) one single-thread job per core. Never waits to measure."""
        cores = os.cpu_count() or 1
        if self.max_concurrent is not None:
            threads = self.threads_per_job or max(1, cores // self.max_concurrent)
            return Layout(self.max_concurrent, threads)
        if self._layout is None and time.monotonic() - self._layout_looked > LAYOUT_LOOK_S:
            self._layout_looked = time.monotonic()
            self._layout = cached_layout()
        found = self._layout or default_layout(cores)
        return Layout(found.processes, self.threads_per_job or found.threads, found.images_per_s)

    def measure_layout_in_background(self) -> None:
        """Start this machine's layout measurement (once per process, one per machine) if none is
        cached, this manager chooses its layout, and nothing of ours trains right now."""
        if self.max_concurrent is not None or self.backend.cluster or self.jobs:
            return
        if self.layout().images_per_s > 0:
            return

        def landed(layout: Layout | None) -> None:
            if layout is not None:
                self._layout = layout

        start_background_measurement(landed)

    def keep_ready(self) -> None:
        """Let the backend get ready for the next jobs (warm workers), while nothing of ours
        trains and no layout measurement could be disturbed by it."""
        measured = self.max_concurrent is not None or self.backend.cluster
        with self._lock:  # never while a reconcile hands a spare its job
            if not self.jobs and (measured or self.layout().images_per_s > 0):
                self.backend.keep_ready(self.slots())

    def threads(self) -> int:
        return self.threads_per_job or self.layout().threads

    def slots(self) -> int:
        """Jobs that may run at once: as many as the backend's cluster holds, else the layout's."""
        return self.backend.capacity(self.threads()) or self.layout().processes

    def reconcile(self) -> None:
        """Bring jobs and the store into agreement; start queued runs into free slots."""
        with self._lock, _StoreLock(self.store.root):
            for job in {id(job): job for job in self.jobs.values()}.values():
                job.sync()  # a job that trains elsewhere delivers its files before being judged
            self._reap_ended_jobs()
            records = self.store.active_runs()  # not the whole listing: this runs every second
            self._attach_or_interrupt([r for r in records if r.state == RunState.RUNNING])
            queued = [r for r in records if r.state == RunState.QUEUED]
            queued.sort(key=lambda r: r.status.get("updated", 0))
            started: set[str] = set()
            slots = self.slots()
            for record in queued:
                if self._running_job_count() >= slots:
                    break
                if record.run_id not in started:
                    batch = self._batch_for(record, queued, started, slots)
                    started.update(batch)
                    self._start(batch)

    def _batch_for(
        self, record: RunRecord, queued: list[RunRecord], started: set[str], slots: int
    ) -> list[str]:
        """The queued runs to start in one job with `record`.

        A sweep whose runs differ only in β trains as stacks, split into one stack per job slot
        of the layout (bench/RESULTS.md has the layouts measured per machine).
        """
        group = record.status.get("group")
        if not (self.batch_sweeps and group):
            return [record.run_id]
        key = stack_key(record.config)  # a sweep over seeds holds one stack per seed
        members = [
            r for r in queued if r.status.get("group") == group and stack_key(r.config) == key
        ]
        if len(members) < 2 or not can_train_together([r.config for r in members]):
            return [record.run_id]
        size = -(-len(members) // slots)  # ceil: one share per slot
        waiting = [r.run_id for r in members if r.run_id not in started]
        return waiting[:size]

    def _running_job_count(self) -> int:
        """Jobs this manager watches plus live ones it cannot attach to (another host, engine)."""
        return len({id(job) for job in self.jobs.values()}) + len(self._foreign_jobs)

    def _start(self, run_ids: list[str]) -> None:
        # Under the store lock: no other server sees these runs between the claim and the ref.
        for run_id in run_ids:
            self.store.update_status(run_id, RunState.RUNNING, "starting a worker")
        try:
            job = self.backend.start(self.store, run_ids, self.threads())
        except OSError as exc:
            for run_id in run_ids:
                self.store.update_status(
                    run_id, RunState.FAILED, f"could not start a worker: {exc}"
                )
            return
        for run_id in run_ids:
            self.store.update_status(
                run_id, RunState.RUNNING, "starting a worker", job=job.ref(), where=job.where()
            )
            self.jobs[run_id] = job

    def _reap_ended_jobs(self) -> None:
        for run_id, job in list(self.jobs.items()):
            asked = self._cancel_asked.get(run_id)
            if job.alive():
                if (
                    asked
                    and time.time() - asked > CANCEL_GRACE_S
                    and self._only_run_of(job, run_id)
                ):
                    job.stop(force=True)  # a lone run that ignored its cancel
                continue
            del self.jobs[run_id]
            self._cancel_asked.pop(run_id, None)
            try:
                state = self.store.read_status(run_id)["state"]
            except StoreError:
                continue
            if state == RunState.RUNNING:  # the job ended without saying how this run ended
                if asked:
                    self.store.update_status(
                        run_id, RunState.CANCELLED, "cancelled (worker stopped)"
                    )
                else:
                    self.store.update_status(run_id, RunState.INTERRUPTED, job.describe_exit())

    def _only_run_of(self, job: Job, run_id: str) -> bool:
        return [r for r, j in self.jobs.items() if j is job] == [run_id]

    def _attach_or_interrupt(self, running: list[RunRecord]) -> None:
        """Runs marked running that no job of ours trains: attach to their job, or interrupt."""
        by_ref: dict[str, list[RunRecord]] = {}
        for record in running:
            if record.run_id not in self.jobs:
                ref = record.status.get("job")
                by_ref.setdefault(json.dumps(ref, sort_keys=True), []).append(record)
        self._foreign_jobs = set()
        for key, records in by_ref.items():
            ref = json.loads(key)
            run_ids = [r.run_id for r in records]
            ours = isinstance(ref, dict) and self.backend.owns(ref)
            job = self.backend.attach(self.store, ref, run_ids) if ours else None
            if job is not None:
                for run_id in run_ids:
                    self.jobs[run_id] = job
                continue
            held = [r for r in run_ids if is_held(self.store.run_dir(r))]
            if held or (isinstance(ref, dict) and not ours):
                self._foreign_jobs.add(key)  # alive, or not ours to judge: it holds a slot
            if ref is not None and not ours:
                continue  # another machine's or another engine's job: not ours to judge
            for run_id in set(run_ids) - set(held):  # nobody holds it: its job is gone
                reason = "the worker process is gone (server restarted or process killed)"
                self.store.update_status(run_id, RunState.INTERRUPTED, reason)

    # ---- background scheduler -----------------------------------------------------------
    def start_scheduler(self, interval_s: float = 1.0) -> None:
        """A daemon thread calling reconcile() every interval (so the server exits promptly)."""
        if self._scheduler and self._scheduler.is_alive():
            return

        started = time.monotonic()

        def loop():
            while not self._stop.wait(interval_s):
                try:
                    self.reconcile()
                    self.measure_layout_in_background()  # in niced processes, while idle
                    if time.monotonic() - started >= WARM_AFTER_S:
                        self.keep_ready()
                except Exception as exc:  # keep scheduling; a bad folder must not stop the queue
                    print(f"job manager: {exc}", file=sys.stderr)

        self._scheduler = threading.Thread(target=loop, name="vae-job-scheduler", daemon=True)
        self._scheduler.start()

    def shutdown(self) -> None:
        self._stop.set()

    def wait(self, run_ids: Iterable[str], timeout_s: float = 600, poll_s: float = 0.2) -> None:
        """Block until the runs leave queued/running (CLI and tests; never the page thread)."""
        run_ids = list(run_ids)
        deadline = time.time() + timeout_s
        while time.time() < deadline:
            self.reconcile()
            if all(self.store.read_status(r)["state"] not in ACTIVE for r in run_ids):
                return
            time.sleep(poll_s)
        raise TimeoutError(f"runs still active after {timeout_s:.0f} s")


def make_manager(store: RunStore, backend: Backend, max_concurrent: int | None) -> JobManager:
    """A job manager on `backend`: local jobs share this machine's cores (`max_concurrent` at
    once, None: as measured), a cluster's jobs as many as it holds."""
    return JobManager(store, None if backend.cluster else max_concurrent, backend)


class _StoreLock:
    """An flock on the store root: two server processes never start the same queued run."""

    def __init__(self, root: Path):
        self.root = Path(root)
        self.handle = None

    def __enter__(self):
        self.root.mkdir(parents=True, exist_ok=True)
        # Never a plain open(): a named pipe at this name would block every page for good.
        self.handle = open_root_file(self.root / ".scheduler.lock")
        fcntl.flock(self.handle, fcntl.LOCK_EX)
        return self

    def __exit__(self, *exc):
        fcntl.flock(self.handle, fcntl.LOCK_UN)
        os.close(self.handle)
