"""The worker's background writer: writes land in the order asked, a failed run's later writes are
skipped while the others' go on, flush waits for them, and a slow disk holds the trainer back
instead of filling memory. Real files, a real thread."""

from __future__ import annotations

import threading
import time
from pathlib import Path

import pytest

from vae.execution.files import StoreError, append_bytes
from vae.execution.write_behind import PENDING_PER_RUN, WriteBehind


def test_writes_land_in_the_order_they_were_asked_for(tmp_path: Path):
    writes = WriteBehind(runs=2)
    path = tmp_path / "log"
    for i in range(200):
        writes.submit(i % 2, lambda i=i: append_bytes(path, f"{i}\n".encode()))
    writes.flush()
    assert path.read_text().split() == [str(i) for i in range(200)]
    writes.close()


def test_a_failed_run_skips_its_later_writes_and_the_others_go_on(tmp_path: Path):
    writes = WriteBehind(runs=2)
    done: list[str] = []

    def fail() -> None:
        raise StoreError("could not save metrics: the disk is full")

    writes.submit("a", lambda: done.append("a1"))
    writes.submit("b", fail)
    writes.submit("b", lambda: done.append("b2"))  # after b's failure: skipped
    writes.submit("a", lambda: done.append("a2"))
    writes.submit("b", lambda: 1 / 0)  # skipped too, never raised
    writes.flush()
    assert done == ["a1", "a2"]
    assert writes.failed() == {"b": "could not save metrics: the disk is full"}
    writes.close()


def test_a_bug_in_a_write_fails_its_run_and_the_thread_lives_on():
    writes = WriteBehind()
    writes.submit("a", lambda: {}["missing"])
    later: list[int] = []
    writes.submit("b", lambda: later.append(1))
    writes.close()
    assert writes.failed() == {"a": "KeyError: 'missing'"} and later == [1]


def test_flush_waits_for_a_slow_write_and_close_ends_the_thread():
    writes = WriteBehind()
    finished = threading.Event()

    def slow() -> None:
        time.sleep(0.3)
        finished.set()

    writes.submit("a", slow)
    writes.flush()
    assert finished.is_set()
    writes.close()
    assert not writes._thread.is_alive()
    with pytest.raises(RuntimeError, match="closed"):
        writes.submit("a", slow)


def test_a_stuck_disk_holds_the_trainer_back_at_a_bounded_queue():
    writes = WriteBehind(runs=1)
    disk = threading.Event()  # the first write waits until the "disk" answers
    writes.submit("a", disk.wait)
    queued = threading.Event()

    def trainer() -> None:
        for _ in range(PENDING_PER_RUN + 1):  # one more than the queue holds
            writes.submit("a", lambda: None)
        queued.set()

    thread = threading.Thread(target=trainer, daemon=True)
    thread.start()
    assert not queued.wait(0.3), "the queue grew past its bound"
    disk.set()
    assert queued.wait(5)
    writes.close()
    assert writes.failed() == {}
