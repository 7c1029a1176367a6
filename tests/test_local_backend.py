"""The local backend's warm workers: spares that wait on a pipe, take one job, end with the server."""

import ctypes
import dataclasses
import io
import os
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest

from vae.execution.jobs import JobManager
from vae.execution.local import LocalProcessBackend
from vae.execution.procs import PROJECT_ROOT, is_running, process_start_time
from vae.execution.states import RunState
from vae.execution.worker import read_job


def wait_until(condition, timeout_s: float, what: str) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if condition():
            return
        time.sleep(0.1)
    raise AssertionError(f"not within {timeout_s:.0f} s: {what}")


def test_a_spare_worker_trains_the_job_it_is_handed_and_logs_into_the_store(store, tiny_config):
    backend = LocalProcessBackend(warm=1)
    backend.keep_ready(jobs=2)  # warm=1 caps it
    spares = backend.spares()
    assert len(spares) == 1
    manager = JobManager(store, max_concurrent=1, backend=backend)
    try:
        run_id = manager.submit(tiny_config)
        assert manager.jobs[run_id].pid == spares[0]  # the spare took it
        assert backend.spares() == []  # and is a spare no more
        manager.wait([run_id], timeout_s=120, poll_s=0.1)
        assert store.read_status(run_id)["state"] == RunState.FINISHED
        assert len(store.read_metrics(run_id)) == tiny_config.epochs
        assert (store.root / ".worker.log").exists()
    finally:
        backend.close()


def test_a_job_starts_cold_when_no_spare_is_left(store, tiny_config):
    backend = LocalProcessBackend(warm=1)
    backend.keep_ready(jobs=1)
    manager = JobManager(store, max_concurrent=2, backend=backend)
    try:
        first = manager.submit(tiny_config)
        second = manager.submit(tiny_config)
        assert manager.jobs[first].pid != manager.jobs[second].pid
        manager.wait([first, second], timeout_s=120, poll_s=0.1)
        assert [store.read_status(r)["state"] for r in (first, second)] == [RunState.FINISHED] * 2
    finally:
        backend.close()


def test_warm_zero_keeps_no_spare():
    backend = LocalProcessBackend(warm=0)
    backend.keep_ready(jobs=4)
    assert backend.spares() == []


def test_the_scheduler_makes_spares_only_while_nothing_trains(store, tiny_config, monkeypatch):
    monkeypatch.setattr("vae.execution.jobs.WARM_AFTER_S", 0.0)
    backend = LocalProcessBackend(warm=None)  # one per job at once
    manager = JobManager(store, max_concurrent=1, backend=backend)
    try:
        manager.start_scheduler(interval_s=0.2)
        wait_until(lambda: len(backend.spares()) == 1, 30, "one spare for one slot")
        run_id = manager.submit(dataclasses.replace(tiny_config, epochs=3))
        assert backend.spares() == []
        while store.read_status(run_id)["state"] in (RunState.QUEUED, RunState.RUNNING):
            assert backend.spares() == [], "a spare was started while a run trained"
            time.sleep(0.1)
        wait_until(lambda: len(backend.spares()) == 1, 30, "a new spare once the run ended")
    finally:
        manager.shutdown()
        backend.close()


def test_a_spare_ends_when_the_server_that_started_it_is_killed(tmp_path):
    server = textwrap.dedent(
        """
        import sys, time
        from vae.execution.local import LocalProcessBackend
        backend = LocalProcessBackend(warm=1)
        backend.keep_ready(jobs=1)
        print(backend.spares()[0], flush=True)
        time.sleep(600)
        """
    )
    env = {**os.environ, "PYTHONPATH": str(PROJECT_ROOT)}
    process = subprocess.Popen(
        [sys.executable, "-c", server], stdout=subprocess.PIPE, text=True, env=env
    )
    spare = int(process.stdout.readline())
    start = process_start_time(spare)
    assert is_running(spare, start)
    process.kill()
    process.wait()
    # It finishes warming up (seconds), reads the end of its input and exits.
    wait_until(lambda: not is_running(spare, start), 120, "the orphaned spare ended")


def test_close_ends_the_spares():
    backend = LocalProcessBackend(warm=2)
    backend.keep_ready(jobs=2)
    pids = backend.spares()
    starts = [process_start_time(p) for p in pids]
    backend.close()
    assert backend.spares() == []
    assert not any(is_running(p, s) for p, s in zip(pids, starts, strict=True))


def test_read_job_takes_one_json_line_and_refuses_anything_else():
    line = '{"store": "/tmp/runs", "threads": 1, "run_ids": ["a", "b"]}\n'
    assert read_job(io.StringIO(line)) == ("/tmp/runs", 1, ["a", "b"])
    assert read_job(io.StringIO("")) is None  # the server is gone
    for bad in (
        '{"store": 3, "threads": 1, "run_ids": ["a"]}',
        '{"store": "s", "threads": 1, "run_ids": []}',
        '{"store": "s", "threads": -1, "run_ids": ["a"]}',
        "not json",
        '{"threads": 1}',
        "[1, 2]",
    ):
        with pytest.raises(ValueError):
            read_job(io.StringIO(bad + "\n"))


def test_a_spare_that_dies_before_its_job_is_not_started_again_and_again(monkeypatch, capsys):
    """A spare whose warm-up fails (here: a worker that exits at once) must not be respawned on
    every scheduler tick: the backend makes no more and jobs start cold."""
    monkeypatch.setattr(
        LocalProcessBackend, "_worker_command", staticmethod(lambda: [sys.executable, "-c", "1"])
    )
    backend = LocalProcessBackend(warm=1)
    backend.keep_ready(jobs=1)
    first = backend._spares[0]
    first.wait(timeout=30)
    for _ in range(3):
        backend.keep_ready(jobs=1)
    assert backend.spares() == [] and backend._spares == []
    assert "jobs start cold" in capsys.readouterr().err


LOWER = textwrap.dedent(
    """
    import os, sys
    from vae.execution.procs import lower_priority
    sys.stdin.readline()  # all the children are started: now they ask at once
    set_group = lower_priority(int(sys.argv[1]))
    group = "/proc/self/autogroup"
    print(set_group, os.nice(0))
    print(open(group).read() if os.path.exists(group) else "", end="")  # group_nice reads it
    """
)


def group_nice(text: str) -> str:
    """The nice in an autogroup file's text; "-" where there is none (the file is missing, or
    empty, as it is in the boot session's default group, which CI's processes may share)."""
    words = text.split()
    return words[-1] if words else "-"


LIBC = ctypes.CDLL(None, use_errno=True)  # loaded here: a forked child must not load libraries


def without_sys_admin() -> None:
    """In a child before exec: drop CAP_SYS_ADMIN from the bounding set, so that root's process
    meets the limits an ordinary user's process meets (the one autogroup write per 100 ms).
    An ordinary user has no such capability to drop (the call then fails, harmlessly)."""
    pr_capbset_drop, cap_sys_admin = 24, 21  # from linux/prctl.h and linux/capability.h
    LIBC.prctl(pr_capbset_drop, cap_sys_admin, 0, 0, 0)


def lowered_together(
    increment: int, new_session: bool, processes: int = 1, as_user: bool = False
) -> list[tuple[str, str, str]]:
    """Start `processes` children that each lower their priority at the same moment. Each
    gives (whether lower_priority set its session's nice, its nice, its group's nice)."""
    children = [
        subprocess.Popen(
            [sys.executable, "-c", LOWER, str(increment)],
            cwd=PROJECT_ROOT,
            text=True,
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            start_new_session=new_session,
            preexec_fn=without_sys_admin if as_user else None,
        )
        for _ in range(processes)
    ]
    for child in children:
        child.stdin.write("go\n")
        child.stdin.flush()
    results = []
    for child in children:
        out, err = child.communicate(timeout=60)
        assert child.returncode == 0, err
        first_line, _, group_text = out.partition("\n")
        results.append((*first_line.split(), group_nice(group_text)))
    return results


def lowered(increment: int, new_session: bool) -> tuple[str, str, str]:
    return lowered_together(increment, new_session)[0]


AUTOGROUP = Path("/proc/self/autogroup").exists()


def test_a_process_leading_its_own_session_nices_the_session_too():
    """Where CPU time is shared out by session (sched_autogroup), a worker's nice counts only
    within its own session; its session's nice is what makes it yield to the browser."""
    base = os.nice(0)
    set_group, nice, group = lowered(10, new_session=True)
    assert int(nice) == min(19, base + 10)
    if AUTOGROUP:
        assert (set_group, group) == ("True", nice)
    else:
        assert (set_group, group) == ("False", "-")


def test_lowering_priority_leaves_a_shared_session_alone():
    """A process in its starter's session (the server's) must not nice the starter's group."""
    group_file = Path("/proc/self/autogroup")
    before = group_file.read_text() if AUTOGROUP else "-"
    set_group, nice, group = lowered(10, new_session=False)
    assert set_group == "False"
    assert int(nice) == min(19, os.nice(0) + 10)
    if AUTOGROUP:
        assert group_file.read_text() == before
        assert group == group_nice(before)  # the child is in this session's group, unchanged


def test_workers_started_together_by_an_ordinary_user_all_nice_their_sessions():
    """Without CAP_SYS_ADMIN the kernel takes one autogroup write per 100 ms from the whole
    machine: workers that start together (a sweep) must wait their turn, not give up."""
    results = lowered_together(10, new_session=True, processes=3, as_user=True)
    nice = str(min(19, os.nice(0) + 10))
    assert results == [("True", nice, nice) if AUTOGROUP else ("False", nice, "-")] * 3
