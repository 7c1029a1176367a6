"""The default backend: each job is `python -m vae.execution.worker` in a new local session.

A job started by this process is watched through its Popen object; one found in a status file
(after a restart, or started by a `python -m vae train` beside the app) through its host, pid and
kernel start time. Cancelling one run leaves a note in its folder and wakes the worker with
SIGUSR1; stopping the whole job sends SIGTERM (then SIGKILL) to the worker's session.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
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

    def start(self, store: RunStore, run_ids: list[str], threads: int) -> LocalJob:
        env = project_env(os.environ)
        env.update(OMP_NUM_THREADS=str(threads), MKL_NUM_THREADS=str(threads))
        command = [sys.executable, "-m", "vae.execution.worker", "--store", str(store.root)]
        command += ["--threads", str(threads), "--nice", str(WORKER_NICENESS), *run_ids]
        store.root.mkdir(parents=True, exist_ok=True)
        # Not a plain open(): a named pipe at this name would block the scheduler for good.
        log = open_root_file(store.root / ".worker.log", LOG_MAX_BYTES, append=True)
        try:
            process = subprocess.Popen(
                command, env=env, cwd=PROJECT_ROOT, stdin=subprocess.DEVNULL,
                stdout=log, stderr=log, start_new_session=True,
            )  # fmt: skip
        finally:
            os.close(log)
        start = local_ref(process.pid)["pid_start"]
        return LocalJob(store, list(run_ids), process.pid, start, process)

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
