"""Cancelling, in one place: how a stop reaches a worker, and how the worker hears it.

Two kinds of stop reach a job (`JobControl`): the whole job (SIGTERM/SIGINT, or `stop`), or one run
alone, at its last completed epoch, while the others of its stack train on. One run is cancelled by
a `cancel.request` note in its folder, which its worker looks for every CANCEL_POLL_S and at once
when woken by SIGUSR1 (`ask_local_worker`), or, for a job whose worker runs in this process's
reach by other means (a Ray actor), by `JobControl.cancel` directly. The job manager decides which
(vae.execution.jobs.JobManager.cancel); a worker that consumed a note removes it (`take_note`).
"""

from __future__ import annotations

import signal
import time
from collections.abc import Sequence

from vae.execution.procs import signal_process
from vae.execution.run_folder import RunFolders

CANCEL_FILE = "cancel.request"
CANCEL_POLL_S = 2.0  # cancel notes are looked for this often even without SIGUSR1


def leave_note(folders: RunFolders, run_id: str) -> None:
    """Ask the run's worker, wherever it reads this store, to stop this run alone."""
    folders.write_file(run_id, CANCEL_FILE, str(time.time()).encode(), f"cancel run {run_id}")


def note_left(folders: RunFolders, run_id: str) -> bool:
    return folders.path(run_id, CANCEL_FILE).exists()


def take_note(folders: RunFolders, run_id: str) -> None:
    """The note was answered (or the run starts again): remove it."""
    folders.remove_file(run_id, CANCEL_FILE)


def ask_local_worker(folders: RunFolders, run_id: str, pid: int) -> None:
    """Leave the note and wake the worker process `pid`, so it answers within a step."""
    leave_note(folders, run_id)
    signal_process(pid, signal.SIGUSR1)


class JobControl:
    """What stops a worker: the whole job (SIGTERM/SIGINT, `stop`), or single runs (cancel notes,
    or `cancel` from within the worker's own process)."""

    def __init__(self, folders: RunFolders):
        self.folders = folders  # (or a RunStore: only `path` is used)
        self.stop_requested = False
        self._look_now = True
        self._looked_at = 0.0
        self._noted: set[str] = set()
        self._asked: set[str] = set()  # cancelled in this process (no note needed)

    def install(self) -> None:
        """Hear the whole job's stop and the wake-up of a cancel note as signals."""
        for sig in (signal.SIGTERM, signal.SIGINT):
            signal.signal(sig, self._stop)
        signal.signal(signal.SIGUSR1, self._wake)

    def _stop(self, signum, frame) -> None:
        self.stop_requested = True

    def _wake(self, signum, frame) -> None:
        self._look_now = True

    def stop(self) -> None:
        self.stop_requested = True

    def cancel(self, run_id: str) -> None:
        self._asked.add(run_id)

    def cancelled(self, run_ids: Sequence[str]) -> set[str]:
        """The runs among `run_ids` asked to stop; cheap enough to ask before every step."""
        now = time.monotonic()
        if self._look_now or now - self._looked_at > CANCEL_POLL_S:
            self._look_now, self._looked_at = False, now
            self._noted = {r for r in run_ids if note_left(self.folders, r)}
        return (self._noted | self._asked) & set(run_ids)
