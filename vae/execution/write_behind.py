"""A worker's per-epoch writes, done on one background thread so the step loop never waits on them.

An epoch's files (a metrics line, an 8 MB checkpoint, the film, the status) cost a run 15–35 ms
of wall time, most of it in fsync; on two busy cores the disk's waits grow, and the steps would
stand still through them. The training thread snapshots what it writes (the checkpoint's bytes,
the metrics line) and hands the writes over; this thread does them in the order they were asked
for, one run's after another's, so every reader sees the files change in the same sequence as
before, a few milliseconds later.

A write that fails marks its run (`failed`); that run's later writes are skipped, and the worker
fails it at its next step, as it did when the write was its own. `flush` waits for everything
asked so far: the worker calls it before a run's final status, so nothing lands after it. The
queue is bounded, so a slow disk slows training down instead of filling memory.
"""

from __future__ import annotations

import queue
import threading
from collections.abc import Callable, Hashable

from vae.execution.files import StoreError

Write = Callable[[], None]
PENDING_PER_RUN = 8  # writes a run may have waiting before the training thread waits for the disk


class WriteBehind:
    """Runs writes in submission order on one thread; records each key's first failure."""

    def __init__(self, runs: int = 1, name: str = "epoch-writes"):
        self._queue: queue.Queue[tuple[Hashable, Write] | None] = queue.Queue(
            maxsize=PENDING_PER_RUN * max(1, runs)
        )
        self._errors: dict[Hashable, str] = {}
        self._lock = threading.Lock()
        self._thread = threading.Thread(target=self._work, name=name, daemon=True)
        self._thread.start()

    def submit(self, key: Hashable, write: Write) -> None:
        """Queue `write` for run `key` (skipped if an earlier write of that run failed)."""
        if not self._thread.is_alive():
            raise RuntimeError("the writer is closed")
        self._queue.put((key, write))

    def failed(self) -> dict[Hashable, str]:
        """Runs whose writes failed so far, each with the first failure's message."""
        with self._lock:
            return dict(self._errors)

    def flush(self) -> None:
        """Wait until every write submitted so far is done (or skipped)."""
        if self._thread.is_alive():
            self._queue.join()

    def close(self) -> None:
        """Flush, then end the thread."""
        if self._thread.is_alive():
            self._queue.put(None)
            self._thread.join()

    def _work(self) -> None:
        while True:
            item = self._queue.get()
            try:
                if item is None:
                    return
                key, write = item
                with self._lock:
                    skip = key in self._errors
                if not skip:
                    self._run(key, write)
            finally:
                self._queue.task_done()

    def _run(self, key: Hashable, write: Write) -> None:
        try:
            write()
        except StoreError as exc:
            with self._lock:
                self._errors.setdefault(key, str(exc))
        except Exception as exc:  # noqa: BLE001 - a bug must fail the run, not kill the thread
            with self._lock:
                self._errors.setdefault(key, f"{type(exc).__name__}: {exc}")
