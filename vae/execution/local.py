"""The default backend: each job is `python -m vae.execution.worker` in a new local session.

A long-lived server keeps spare workers ready (`keep_ready`): started with `--wait`, they import
torch, load the digits and train a few steps, then wait on a pipe for their job, so a run asked
for starts training at once instead of seconds later. A spare ends at the end of its input, so
none outlives the server that started it; once it has its job it is a worker like any other.

A job started by this process is watched through its Popen object; one found in a status file
(after a restart, or started by a `python -m vae train` beside the app) through its host, pid and
kernel start time. Cancelling one run leaves a note in its folder and wakes the worker with
SIGUSR1; stopping the whole job sends SIGTERM (then SIGKILL) to the worker's session.
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import subprocess
import sys
import time
from dataclasses import dataclass, field

from vae.execution.cancel import ask_local_worker
from vae.execution.procs import (
    PROJECT_ROOT,
    describe_signal,
    is_running,
    local_ref,
    project_env,
    signal_process,
    this_host,
)
from vae.execution.root_files import LOG_MAX_BYTES, open_root_file
from vae.execution.store import RunStore

# Workers run below the server's priority: on a machine as busy as its cores, the page still
# answers at once, and training loses nothing while nobody clicks.
WORKER_NICENESS = 10


@dataclass
class LocalJob:
    """A worker process on this machine (started here, or attached to by its ref)."""

    store: RunStore
    run_ids: list[str]
    pid: int
    pid_start: str | None
    process: subprocess.Popen | None = field(default=None, repr=False)

    def ref(self) -> dict:
        return {**local_ref(self.pid), "pid_start": self.pid_start}

    def alive(self) -> bool:
        if self.process is not None:
            return self.process.poll() is None
        return is_running(self.pid, self.pid_start)

    def cancel_run(self, run_id: str) -> None:
        ask_local_worker(self.store.folders, run_id, self.pid)

    def stop(self, force: bool = False) -> None:
        signal_process(self.pid, signal.SIGKILL if force else signal.SIGTERM, group=True)

    def describe_exit(self) -> str:
        if self.process is not None:
            return describe_signal(self.process.poll())
        return "the worker process is gone (it ended while no server was watching it)"

    def where(self) -> str:
        return "local"

    def sync(self) -> None:
        pass  # the worker writes into the store itself


class LocalProcessBackend:
    """Jobs as local worker processes, each in its own session (it outlives the server)."""

    name = "local"
    cluster = False
    threads_per_job = 0

    def __init__(self, warm: int | None = 0):
        self.warm = warm  # spare workers kept ready: None, one per job at once; 0, none
        self._spares: list[subprocess.Popen] = []
        self._spare_failed = False  # a spare died before its job: make no more (jobs start cold)

    def start(self, store: RunStore, run_ids: list[str], threads: int) -> LocalJob:
        process = self._hand_to_spare(store, run_ids, threads) or self._start_cold(
            store, run_ids, threads
        )
        start = local_ref(process.pid)["pid_start"]
        return LocalJob(store, list(run_ids), process.pid, start, process)

    def _start_cold(self, store: RunStore, run_ids: list[str], threads: int) -> subprocess.Popen:
        env = project_env(os.environ)
        env.update(OMP_NUM_THREADS=str(threads), MKL_NUM_THREADS=str(threads))
        command = [*self._worker_command(), "--store", str(store.root)]
        command += ["--threads", str(threads), *run_ids]
        store.root.mkdir(parents=True, exist_ok=True)
        # Not a plain open(): a named pipe at this name would block the scheduler for good.
        log = open_root_file(store.root / ".worker.log", LOG_MAX_BYTES, append=True)
        try:
            return subprocess.Popen(
                command, env=env, cwd=PROJECT_ROOT, stdin=subprocess.DEVNULL,
                stdout=log, stderr=log, start_new_session=True,
            )  # fmt: skip
        finally:
            os.close(log)

    @staticmethod
    def _worker_command() -> list[str]:
        return [sys.executable, "-m", "vae.execution.worker", "--nice", str(WORKER_NICENESS)]

    # ---- spare workers ---------------------------------------------------------------------
    def keep_ready(self, jobs: int) -> None:
        """Start spare workers until `warm` (None: `jobs`) are ready or warming up.

        The manager calls this while none of its jobs trains, so warming up never slows a run,
        and under the lock its `start` runs under (the spares' list is not shared unguarded).
        """
        wanted = jobs if self.warm is None else self.warm
        for spare in self._spares:
            if spare.poll() is not None and not self._spare_failed:
                self._spare_failed = True  # e.g. its warm-up failed: never respawn in a loop
                print(f"local backend: a spare worker exited ({spare.returncode}) before its "
                      "job; jobs start cold from now on", file=sys.stderr)  # fmt: skip
        self._spares = [p for p in self._spares if p.poll() is None]
        while len(self._spares) < wanted and not self._spare_failed:
            try:
                spare = subprocess.Popen(
                    [*self._worker_command(), "--wait"], env=project_env(os.environ),
                    cwd=PROJECT_ROOT, stdin=subprocess.PIPE, stdout=subprocess.DEVNULL,
                    stderr=subprocess.DEVNULL, start_new_session=True, text=True,
                )  # fmt: skip
            except OSError as exc:  # no spare: jobs start cold, as they always could
                print(f"local backend: no spare worker: {exc}", file=sys.stderr)
                return
            self._spares.append(spare)

    def spares(self) -> list[int]:
        """The pids of the spare workers ready or warming up."""
        return [p.pid for p in self._spares if p.poll() is None]

    def _hand_to_spare(self, store, run_ids, threads) -> subprocess.Popen | None:
        """A spare that took this job (it then logs into the store itself), or None."""
        job = json.dumps({"store": str(store.root), "threads": threads, "run_ids": list(run_ids)})
        store.root.mkdir(parents=True, exist_ok=True)
        while self._spares:
            spare = self._spares.pop(0)
            if spare.poll() is not None:
                continue
            try:
                spare.stdin.write(job + "\n")
                spare.stdin.close()  # one job per spare; it needs nothing more from here
            except (OSError, ValueError):  # it ended before it read its job: try the next
                continue
            return spare
        return None

    def close(self) -> None:
        """Let the spares go (each ends at the end of its input; killed if it lingers)."""
        spares, self._spares = self._spares, []
        for spare in spares:
            with contextlib.suppress(OSError):
                spare.stdin.close()
        deadline = time.monotonic() + 5.0
        for spare in spares:
            try:
                spare.wait(timeout=max(0.0, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                spare.kill()
                spare.wait()

    def owns(self, ref: dict) -> bool:
        return ref.get("backend") == self.name and ref.get("host") == this_host()

    def capacity(self, threads: int) -> int | None:
        return None  # this machine's cores: the manager's max_concurrent

    def resources(self) -> dict:
        cores = float(os.cpu_count() or 1)  # nothing is reserved: every core counts as free
        return {"nodes": 1, "cpu_total": cores, "cpu_free": cores, "gpu_total": 0, "gpu_free": 0}

    def attach(self, store: RunStore, ref: dict, run_ids: list[str]) -> LocalJob | None:
        pid, start = ref.get("pid"), ref.get("pid_start")
        if not isinstance(pid, int) or not is_running(pid, start):
            return None
        return LocalJob(store, list(run_ids), pid, start)
