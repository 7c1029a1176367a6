"""The one seam where execution engines plug in: a `Backend` starts jobs, a `Job` is one of them.

A job trains one or more runs (a stack of a β sweep, or one run) and is named by a JSON-ready
`ref` that is saved in each of its runs' status.json, so that any later process (a restarted
server, a second app, the CLI) can `attach` to it again or learn that it is gone. Local processes
(vae.execution.local) are the default implementation; a cluster engine implements the same two
protocols.
"""

from __future__ import annotations

from typing import Protocol

from vae.execution.store import RunStore


class Job(Protocol):
    """A started job, as the job manager sees it."""

    run_ids: list[str]

    def ref(self) -> dict:
        """JSON-ready identity of the job, saved as status["job"] of each of its runs."""
        ...

    def alive(self) -> bool: ...

    def cancel_run(self, run_id: str) -> None:
        """Stop this one run at its last completed epoch; the job's other runs train on."""
        ...

    def stop(self, force: bool = False) -> None:
        """Stop the whole job (force: at once, without waiting for a step to end)."""
        ...

    def describe_exit(self) -> str:
        """Why the job ended, in words, for runs it left unfinished."""
        ...

    def where(self) -> str:
        """Where it executes, for the pages (e.g. "local" or a cluster node)."""
        ...

    def sync(self) -> None:
        """Bring what the job wrote elsewhere into the store (called on each reconcile, before
        `alive`; nothing to do for a job that writes into the store itself)."""
        ...


class Backend(Protocol):
    """Where jobs run."""

    name: str  # matches ref()["backend"] of the jobs it starts
    # True: a cluster places the jobs (its capacity decides how many run; pages show its
    # resources() in a sidebar). False: jobs share this machine's cores, laid out as measured
    # (vae.execution.layout), and the CLI trains a single run in its own process.
    cluster: bool
    threads_per_job: int  # threads (CPUs) each job asks for; 0: from the measured layout

    def start(self, store: RunStore, run_ids: list[str], threads: int) -> Job: ...

    def attach(self, store: RunStore, ref: dict, run_ids: list[str]) -> Job | None:
        """The job `ref` names if it still runs, else None (its runs are then interrupted)."""
        ...

    def owns(self, ref: dict) -> bool:
        """Whether this backend can tell if `ref` is alive (else its runs are left alone)."""
        ...

    def capacity(self, threads: int) -> int | None:
        """How many jobs of `threads` threads may run at once (None: the manager's own limit)."""
        ...

    def resources(self) -> dict:
        """nodes, cpu_total, cpu_free, gpu_total, gpu_free: where jobs can train, for the pages
        (ConnectionError when the backend cannot be reached)."""
        ...

    def keep_ready(self, jobs: int) -> None:
        """Get ready to start up to `jobs` jobs at once without their start-up cost (e.g. warm
        worker processes); a long-lived server calls it while none of its jobs trains."""
        ...
