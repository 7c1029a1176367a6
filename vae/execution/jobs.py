"""The job manager: a queue of runs on disk, executed by a pluggable backend.

The store is the source of truth: a run is queued when its status.json says so, running while its
worker process lives. The manager only reconciles the two: it starts queued runs when a slot is
free, notices workers that died (their runs become `interrupted`, resumable from the last epoch),
and adopts workers that outlived a previous server process. A restarted server therefore lists and
continues everything. The one seam for other execution engines is `Backend`.
"""

from __future__ import annotations

import contextlib
import fcntl
import os
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Protocol

from vae.execution.store import ACTIVE_STATES, RunStore, StoreError
from vae.execution.worker import process_start_time
from vae.learn.batched import can_train_together
from vae.learn.config import RunConfig

PROJECT_ROOT = Path(__file__).resolve().parent.parent
CANCEL_GRACE_S = 10.0
STARTUP_GRACE_S = 60.0


class Handle(Protocol):
    """A started job, as the backend sees it."""

    pid: int | None

    def alive(self) -> bool: ...
    def stop(self, force: bool = False) -> None: ...
    def describe_exit(self) -> str: ...


class Backend(Protocol):
    """Where jobs run. Local processes by default; a cluster engine (e.g. Ray) can plug in here."""

    def start(self, store_root: Path, run_ids: list[str], threads: int) -> Handle: ...
    def adopt(self, pid: int, pid_start: str | None, run_id: str) -> Handle | None: ...


@dataclass
class ProcessHandle:
    process: subprocess.Popen

    @property
    def pid(self) -> int:
        return self.process.pid

    def alive(self) -> bool:
        return self.process.poll() is None

    def stop(self, force: bool = False) -> None:
        _signal_group(self.process.pid, signal.SIGKILL if force else signal.SIGTERM)

    def describe_exit(self) -> str:
        code = self.process.poll()
        if code is not None and code < 0:
            return f"the worker process was killed by signal {-code} ({signal.Signals(-code).name})"
        return f"the worker process exited with code {code} without finishing the run"


@dataclass
class AdoptedHandle:
    """A worker left running by an earlier server process: watched through /proc, not wait()."""

    pid: int
    pid_start: str | None

    def alive(self) -> bool:
        start = process_start_time(self.pid)
        if start is None:
            return False
        if _is_zombie(self.pid):
            return False
        return self.pid_start is None or start == self.pid_start

    def stop(self, force: bool = False) -> None:
        _signal_group(self.pid, signal.SIGKILL if force else signal.SIGTERM)

    def describe_exit(self) -> str:
        return "the worker process is gone (it ended while no server was watching it)"


def _is_zombie(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/stat") as handle:
            return handle.read().rsplit(")", 1)[1].split()[0] == "Z"
    except (OSError, IndexError):
        return True


def _signal_group(pid: int, sig: int) -> None:
    try:
        os.killpg(pid, sig)  # workers lead their own session, so this reaches only them
    except (ProcessLookupError, PermissionError):
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.kill(pid, sig)


class LocalProcessBackend:
    """Each job is `python -m vae.execution.worker` in a new session (survives the server, killable alone)."""

    def start(self, store_root: Path, run_ids: list[str], threads: int) -> ProcessHandle:
        env = dict(os.environ)
        env.update(
            OMP_NUM_THREADS=str(threads),
            MKL_NUM_THREADS=str(threads),
            # Keep glibc from returning each step's temporaries to the OS (page faults cost ~25%).
            MALLOC_TRIM_THRESHOLD_="268435456",
            MALLOC_MMAP_THRESHOLD_="268435456",
            PYTHONPATH=os.pathsep.join(filter(None, [str(PROJECT_ROOT), env.get("PYTHONPATH")])),
        )
        command = [sys.executable, "-m", "vae.execution.worker", "--store", str(store_root)]
        command += ["--threads", str(threads), *run_ids]
        log = open(Path(store_root) / ".worker.log", "ab")  # noqa: SIM115 - child owns it
        try:
            process = subprocess.Popen(
                command, env=env, cwd=PROJECT_ROOT, stdin=subprocess.DEVNULL,
                stdout=log, stderr=log, start_new_session=True,
            )  # fmt: skip
        finally:
            log.close()
        return ProcessHandle(process)

    def adopt(self, pid: int, pid_start: str | None, run_id: str) -> AdoptedHandle | None:
        handle = AdoptedHandle(pid, pid_start)
        if not handle.alive():
            return None
        try:
            cmdline = Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")
        except OSError:
            return None
        return handle if run_id.encode() in cmdline else None


@dataclass
class Job:
    run_ids: list[str]
    handle: Handle
    cancel_requested_at: float | None = None


@dataclass
class JobManager:
    """Starts at most `max_concurrent` jobs; call `reconcile()` (or `start_scheduler()`) to advance."""

    store: RunStore
    max_concurrent: int = field(default_factory=lambda: max(1, os.cpu_count() or 1))
    backend: Backend = field(default_factory=LocalProcessBackend)
    threads_per_job: int = 0  # 0: cores / max_concurrent
    batch_sweeps: bool = True  # a sweep's runs that differ only in β train as one batched job

    def __post_init__(self):
        self.jobs: dict[str, Job] = {}  # run id -> its job (one job may own several runs)
        self._lock = threading.RLock()
        self._scheduler: threading.Thread | None = None
        self._stop = threading.Event()

    # ---- what the pages call -----------------------------------------------------------
    def submit(self, config: RunConfig, group: str | None = None) -> str:
        """Queue one run (validated, written to disk) and start it if a slot is free."""
        run_id = self.store.create_run(config, group=group)
        self.reconcile()
        return run_id

    def submit_sweep(self, config: RunConfig, betas: Iterable[float]) -> list[str]:
        """Queue one run per β (all validated before any is written)."""
        configs = []
        for beta in betas:
            c = RunConfig.from_dict({**config.to_dict(), "beta": float(beta)})
            configs.append(c.validated())
        if not configs:
            raise ValueError("the β list is empty")
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

    def cancel(self, run_id: str) -> None:
        with self._lock:
            status = self.store.read_status(run_id)
            if status["state"] == "queued":
                self.store.update_status(run_id, "cancelled", "cancelled while queued")
                return
            if status["state"] == "running" and run_id not in self.jobs:
                self.reconcile()  # a worker started by an earlier server: adopt it first
            job = self.jobs.get(run_id)
            if status["state"] != "running" or job is None:
                raise StoreError(f"run {run_id} is {status['state']}, not queued or running")
            job.cancel_requested_at = time.time()
            job.handle.stop()

    def resume(self, run_id: str) -> None:
        """Queue an interrupted, cancelled or failed run again; it continues from model.pt."""
        with self._lock:
            state = self.store.read_status(run_id)["state"]
            if state not in ("interrupted", "cancelled", "failed"):
                raise StoreError(f"run {run_id} is {state}; only stopped runs can be resumed")
            self.store.update_status(run_id, "queued", f"resumed from {state}")
        self.reconcile()

    def delete(self, run_id: str) -> None:
        with self._lock:
            if run_id in self.jobs:
                raise StoreError(f"run {run_id} is running; cancel it first")
            self.store.delete_run(run_id)

    # ---- the reconcile loop ------------------------------------------------------------
    def threads(self) -> int:
        if self.threads_per_job:
            return self.threads_per_job
        return max(1, (os.cpu_count() or 1) // self.max_concurrent)

    def reconcile(self) -> None:
        """Bring processes and the store into agreement; start queued runs into free slots."""
        with self._lock, _StoreLock(self.store.root):
            self._reap_finished_jobs()
            records = self.store.list_runs(with_metrics=False)
            self._adopt_or_interrupt(r for r in records if r.state == "running")
            queued = [r for r in records if r.state == "queued"]
            queued.sort(key=lambda r: r.status.get("updated", 0))
            started: set[str] = set()
            for record in queued:
                if self._running_job_count() >= self.max_concurrent:
                    break
                if record.run_id not in started:
                    batch = self._batch_for(record, queued, started)
                    started.update(batch)
                    self._start(batch)

    def _batch_for(self, record, queued, started: set[str]) -> list[str]:
        """The queued runs to start in one worker with `record`.

        A sweep whose runs differ only in β trains as stacked models (vae.learn.batched), split into one
        group per slot: measured on 2 cores, 2 workers of 3 stacked models beat 1 worker of 6 and
        6 separate processes (bench/RESULTS.md).
        """
        group = record.status.get("group")
        if not (self.batch_sweeps and group):
            return [record.run_id]
        members = [r for r in queued if r.status.get("group") == group]
        if len(members) < 2 or not can_train_together([r.config for r in members]):
            return [record.run_id]
        size = -(-len(members) // self.max_concurrent)  # ceil: one share per slot
        waiting = [r.run_id for r in members if r.run_id not in started]
        return waiting[:size]

    def _running_job_count(self) -> int:
        return len({id(job) for job in self.jobs.values()})

    def _start(self, run_ids: list[str]) -> None:
        # Claim the runs before the process exists, so a fast worker's own status always wins.
        for run_id in run_ids:
            self.store.update_status(run_id, "running", "starting")
        try:
            handle = self.backend.start(self.store.root, run_ids, self.threads())
        except OSError as exc:
            for run_id in run_ids:
                self.store.update_status(run_id, "failed", f"could not start a worker: {exc}")
            return
        job = Job(run_ids, handle)
        for run_id in run_ids:
            self.jobs[run_id] = job

    def _reap_finished_jobs(self) -> None:
        for run_id, job in list(self.jobs.items()):
            if job.handle.alive():
                if (
                    job.cancel_requested_at
                    and time.time() - job.cancel_requested_at > CANCEL_GRACE_S
                ):
                    job.handle.stop(force=True)
                continue
            del self.jobs[run_id]
            try:
                status = self.store.read_status(run_id)
            except StoreError:
                continue
            if status["state"] == "running":  # the worker died without saying why
                if job.cancel_requested_at:
                    self.store.update_status(run_id, "cancelled", "cancelled (worker stopped)")
                else:
                    self.store.update_status(run_id, "interrupted", job.handle.describe_exit())

    def _adopt_or_interrupt(self, running_records) -> None:
        for record in running_records:
            if record.run_id in self.jobs:
                continue
            pid = record.status.get("pid")
            starting = record.status.get("reason") == "starting"
            if (
                pid is None
                and starting
                and time.time() - record.status["updated"] < STARTUP_GRACE_S
            ):
                continue  # another server process is launching it right now
            handle = None
            if isinstance(pid, int):
                handle = self.backend.adopt(pid, record.status.get("pid_start"), record.run_id)
            if handle is not None:  # one job per worker process, even when it trains a group
                same = [j for j in self.jobs.values() if j.handle.pid == handle.pid]
                job = same[0] if same else Job([], handle)
                job.run_ids.append(record.run_id)
                self.jobs[record.run_id] = job
            else:
                reason = "the worker process is gone (server restarted or process killed)"
                self.store.update_status(record.run_id, "interrupted", reason)

    # ---- background scheduler -----------------------------------------------------------
    def start_scheduler(self, interval_s: float = 1.0) -> None:
        """A daemon thread calling reconcile() every interval (so the server exits promptly)."""
        if self._scheduler and self._scheduler.is_alive():
            return

        def loop():
            while not self._stop.wait(interval_s):
                try:
                    self.reconcile()
                except Exception as exc:  # keep scheduling; a bad folder must not stop the queue
                    print(f"job manager: {exc}", file=sys.stderr)

        self._scheduler = threading.Thread(target=loop, name="vae-job-scheduler", daemon=True)
        self._scheduler.start()

    def shutdown(self) -> None:
        self._stop.set()

    def active_run_ids(self) -> list[str]:
        return [r.run_id for r in self.store.list_runs(False) if r.state in ACTIVE_STATES]

    def wait(self, run_ids: Iterable[str], timeout_s: float = 600, poll_s: float = 0.2) -> None:
        """Block until the runs leave queued/running (CLI and tests; never the page thread)."""
        run_ids = list(run_ids)
        deadline = time.time() + timeout_s
        while time.time() < deadline:
            self.reconcile()
            if all(self.store.read_status(r)["state"] not in ACTIVE_STATES for r in run_ids):
                return
            time.sleep(poll_s)
        raise TimeoutError(f"runs still active after {timeout_s:.0f} s")


class _StoreLock:
    """An flock on the store root: two server processes never start the same queued run."""

    def __init__(self, root: Path):
        self.root = Path(root)
        self.handle = None

    def __enter__(self):
        self.root.mkdir(parents=True, exist_ok=True)
        self.handle = open(self.root / ".scheduler.lock", "a")  # noqa: SIM115
        fcntl.flock(self.handle, fcntl.LOCK_EX)
        return self

    def __exit__(self, *exc):
        fcntl.flock(self.handle, fcntl.LOCK_UN)
        self.handle.close()
