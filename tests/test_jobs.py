"""The job manager with real worker processes: kill, interrupt, resume, cancel, queue limits."""

import contextlib
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from helpers import wait_for, worker_pid

from vae.execution.checkpoint import load_run_checkpoint, save_run_checkpoint
from vae.execution.jobs import JobManager
from vae.execution.local import WORKER_NICENESS
from vae.execution.procs import local_ref
from vae.execution.store import StoreError
from vae.learn.config import RunConfig


@pytest.fixture
def slow_config(tiny_config):
    """Enough epochs that a worker is still busy when the test acts on it."""
    return RunConfig.from_dict({**tiny_config.to_dict(), "epochs": 40, "batch_size": 64})


def test_run_in_a_worker_process_finishes(store, tiny_config):
    manager = JobManager(store, max_concurrent=1)
    run_id = manager.submit(tiny_config)
    manager.wait([run_id], timeout_s=180)
    record = store.get(run_id)
    assert record.state == "finished", record.status
    assert [m["epoch"] for m in store.epoch_rows(record)] == [1]
    checkpoint = torch.load(store.path(run_id, "final.pt"), weights_only=True)
    assert checkpoint["epoch"] == 1 and checkpoint["config"]["latent_dim"] == 4


def test_sigkill_marks_interrupted_and_resume_completes(store, slow_config):
    manager = JobManager(store, max_concurrent=1, batch_sweeps=False)
    config = RunConfig.from_dict({**slow_config.to_dict(), "epochs": 4})
    run_id = manager.submit(config)
    # status.json's epoch is written after that epoch's checkpoint (metrics come before it)
    wait_for(lambda: store.read_status(run_id).get("epoch", 0) >= 2 or manager.reconcile(), 120)
    pid = worker_pid(store.read_status(run_id))
    os.kill(pid, signal.SIGKILL)
    wait_for(lambda: manager.reconcile() or store.read_status(run_id)["state"] == "interrupted")
    status = store.read_status(run_id)
    assert "signal 9" in status["reason"] and "SIGKILL" in status["reason"]
    done_epochs = load_run_checkpoint(store, run_id, final=False)["epoch"]
    assert done_epochs >= 2
    manager.resume(run_id)
    manager.wait([run_id], timeout_s=180)
    metrics = store.read_metrics(run_id)
    assert store.read_status(run_id)["state"] == "finished"
    assert [m["epoch"] for m in metrics] == [1, 2, 3, 4]  # no epoch lost, none doubled
    assert load_run_checkpoint(store, run_id)["epoch"] == 4


def test_cancel_running_and_queued(store, slow_config):
    manager = JobManager(store, max_concurrent=1, batch_sweeps=False)
    first = manager.submit(slow_config)
    second = manager.submit(slow_config)
    assert store.read_status(second)["state"] == "queued"  # only one slot
    manager.cancel(second)
    assert store.read_status(second)["state"] == "cancelled"
    wait_for(lambda: len(store.read_metrics(first)) >= 1 or manager.reconcile())
    manager.cancel(first)
    manager.wait([first], timeout_s=60)
    assert store.read_status(first)["state"] == "cancelled"
    with pytest.raises(StoreError):
        manager.cancel(first)
    manager.resume(second)  # a cancelled run can be queued again
    assert store.read_status(second)["state"] in ("queued", "running")
    manager.cancel(second)
    manager.wait([second], timeout_s=60)


def test_sweep_queue_respects_concurrency(store, tiny_config):
    manager = JobManager(store, max_concurrent=2, batch_sweeps=False)
    run_ids = manager.submit_sweep(tiny_config, [0.5, 1, 4])
    states = [store.read_status(r)["state"] for r in run_ids]
    assert states.count("running") == 2 and states.count("queued") == 1
    manager.wait(run_ids, timeout_s=300)
    records = [store.get(r) for r in run_ids]
    assert all(r.state == "finished" for r in records)
    assert [r.config.beta for r in records] == [0.5, 1.0, 4.0]
    assert len({r.status["group"] for r in records}) == 1


def test_restarted_manager_adopts_a_live_worker(store, slow_config):
    first = JobManager(store, max_concurrent=1, batch_sweeps=False)
    config = RunConfig.from_dict({**slow_config.to_dict(), "epochs": 3})
    run_id = first.submit(config)
    wait_for(lambda: first.reconcile() or worker_pid(store.read_status(run_id)))
    # The server process "restarts": a new manager on the same store; the worker lives on.
    second = JobManager(store, max_concurrent=1, batch_sweeps=False)
    second.reconcile()
    assert run_id in second.jobs  # adopted, not marked interrupted
    second.wait([run_id], timeout_s=180)
    assert store.read_status(run_id)["state"] == "finished"
    assert [m["epoch"] for m in store.read_metrics(run_id)] == [1, 2, 3]


def test_dead_worker_found_by_a_new_manager_is_interrupted(store, tiny_config):
    run_id = store.create_run(tiny_config)
    store.update_status(
        run_id, "running", job={**local_ref(), "pid": 2**22 + 12345, "pid_start": "1"}
    )
    JobManager(store).reconcile()
    status = store.read_status(run_id)
    assert status["state"] == "interrupted" and "gone" in status["reason"]


def test_invalid_sweep_writes_nothing(store, tiny_config):
    manager = JobManager(store)
    with pytest.raises(ValueError):
        manager.submit_sweep(tiny_config, [1.0, float("nan")])
    with pytest.raises(ValueError):
        manager.submit_sweep(tiny_config, [])
    assert store.list_runs() == []


def test_sweep_trains_as_one_stacked_group_per_slot(store, tiny_config):
    """Four β values, two slots: two worker processes, each training two stacked models."""
    manager = JobManager(store, max_concurrent=2)
    run_ids = manager.submit_sweep(tiny_config, [0.5, 1, 2, 4])
    jobs = {id(manager.jobs[r]) for r in run_ids}
    assert len(jobs) == 2  # every run started at once, in two workers
    assert sorted(len(manager.jobs[r].run_ids) for r in run_ids) == [2, 2, 2, 2]
    manager.wait(run_ids, timeout_s=300)
    records = [store.get(r) for r in run_ids]
    assert [r.state for r in records] == ["finished"] * 4
    assert [r.config.beta for r in records] == [0.5, 1.0, 2.0, 4.0]
    assert all([m["epoch"] for m in store.epoch_rows(r)] == [1] for r in records)
    rates = [r.last_metrics["rate"] for r in records]
    assert rates[0] > rates[-1]  # β = 0.5 keeps more information in z than β = 4


def _sweep_in_one_worker(store, slow_config, epochs=6, betas=(0.5, 2, 8)):
    manager = JobManager(store, max_concurrent=1)
    config = RunConfig.from_dict({**slow_config.to_dict(), "epochs": epochs})
    run_ids = manager.submit_sweep(config, betas)
    assert len({id(manager.jobs[r]) for r in run_ids}) == 1  # one job trains the whole stack
    return manager, run_ids


def test_cancelling_one_run_of_a_stack_stops_only_that_run(store, slow_config):
    manager, run_ids = _sweep_in_one_worker(store, slow_config)
    victim = run_ids[1]
    wait_for(lambda: manager.reconcile() or store.read_status(victim).get("epoch", 0) >= 1)
    manager.cancel(victim)
    manager.wait(run_ids, timeout_s=300)
    status = store.read_status(victim)
    assert status["state"] == "cancelled" and status["reason"].startswith("cancelled after epoch")
    kept = load_run_checkpoint(store, victim, final=False)["epoch"]
    assert [m["epoch"] for m in store.read_metrics(victim)] == list(range(1, kept + 1))
    assert kept < 6
    for other in (run_ids[0], run_ids[2]):
        assert store.read_status(other)["state"] == "finished"
        assert [m["epoch"] for m in store.read_metrics(other)] == [1, 2, 3, 4, 5, 6]
    manager.resume(victim)  # resumable on its own
    manager.wait([victim], timeout_s=300)
    assert store.read_status(victim)["state"] == "finished"
    assert [m["epoch"] for m in store.read_metrics(victim)] == [1, 2, 3, 4, 5, 6]


def test_sigkill_of_a_stacks_worker_interrupts_every_member_and_each_resumes(store, slow_config):
    manager, run_ids = _sweep_in_one_worker(store, slow_config, epochs=4)
    wait_for(lambda: manager.reconcile() or all(
        store.read_status(r).get("epoch", 0) >= 1 for r in run_ids
    ))  # fmt: skip
    os.kill(worker_pid(store.read_status(run_ids[0])), signal.SIGKILL)
    wait_for(lambda: manager.reconcile() or all(
        store.read_status(r)["state"] == "interrupted" for r in run_ids
    ))  # fmt: skip
    for run_id in run_ids:
        assert "SIGKILL" in store.read_status(run_id)["reason"]
        assert load_run_checkpoint(store, run_id, final=False)["epoch"] >= 1
    manager.resume(run_ids[0])  # each alone...
    manager.wait([run_ids[0]], timeout_s=300)
    for run_id in run_ids[1:]:  # ...or the rest together
        manager.resume(run_id)
    manager.wait(run_ids, timeout_s=300)
    for run_id in run_ids:
        assert store.read_status(run_id)["state"] == "finished"
        assert [m["epoch"] for m in store.read_metrics(run_id)] == [1, 2, 3, 4]


def test_a_run_whose_loss_turns_nan_fails_alone_in_its_stack(store, tiny_config):
    """Three runs at epoch 1 of one stack; one's weights are blown up: only it fails."""
    from vae.execution.worker import JobControl, run_job

    config = RunConfig.from_dict({**tiny_config.to_dict(), "epochs": 3})
    manager = JobManager(store, max_concurrent=1)
    run_ids = [store.create_run(c, group="g") for c in (
        RunConfig.from_dict({**config.to_dict(), "beta": b}) for b in (0.5, 1, 2)
    )]  # fmt: skip
    control = JobControl(store)
    control.stop_requested = False
    original = control.cancelled
    control.cancelled = lambda ids: set(ids) if store.read_metrics(run_ids[-1]) else original(ids)
    assert set(run_job(store, run_ids, control).values()) == {"cancelled"}  # all at epoch 1
    victim = run_ids[1]
    checkpoint = torch.load(store.path(victim, "model.pt"), weights_only=True)
    checkpoint["model_state"] = {k: v * 1e30 for k, v in checkpoint["model_state"].items()}
    save_run_checkpoint(store, victim, checkpoint)
    for run_id in run_ids:  # queued together, so one worker resumes them as one stack
        store.update_status(run_id, "queued", "resumed")
    manager.reconcile()
    assert len({id(manager.jobs[r]) for r in run_ids}) == 1
    manager.wait(run_ids, timeout_s=300)
    status = store.read_status(victim)
    assert status["state"] == "failed" and "NaN/inf" in status["reason"], status
    assert load_run_checkpoint(store, victim, final=False)["epoch"] == 1  # the last good epoch kept
    for other in (run_ids[0], run_ids[2]):
        assert store.read_status(other)["state"] == "finished"
        assert [m["epoch"] for m in store.read_metrics(other)] == [1, 2, 3]


def test_run_states_refuse_illegal_moves(store, tiny_config):
    from vae.execution.states import IllegalTransition

    run_id = store.create_run(tiny_config)
    with pytest.raises(IllegalTransition):
        store.update_status(run_id, "finished")  # queued runs have not trained
    store.update_status(run_id, "running")
    store.update_status(run_id, "finished")
    for state in ("queued", "running", "failed", "interrupted"):
        with pytest.raises(IllegalTransition):
            store.update_status(run_id, state)  # a finished run stays finished
    assert store.read_status(run_id)["state"] == "finished"
    with pytest.raises(StoreError):
        JobManager(store).resume(run_id)


def test_a_cli_run_beside_a_job_manager_is_never_interrupted_nor_doubled(store, tmp_path):
    """`python -m vae train` on the app's store: the manager leaves it alone; resume refuses."""
    env = {**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parent.parent)}
    command = [sys.executable, "-m", "vae", "--store", str(store.root), "train", "--epochs", "30"]
    command += ["--hidden-dims", "64", "--latent-dim", "4", "--batch-size", "64", "--threads", "1"]
    cli = subprocess.Popen(command, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    try:
        run_id = wait_for(lambda: next((r.run_id for r in store.list_runs()), None))
        wait_for(lambda: store.read_status(run_id).get("epoch", 0) >= 1)
        manager = JobManager(store, max_concurrent=1)
        for _ in range(3):
            manager.reconcile()
            assert store.read_status(run_id)["state"] == "running"
        assert run_id in manager.jobs  # attached to the CLI's process: a slot, and cancellable
        with pytest.raises(StoreError):
            manager.resume(run_id)  # running: nothing to resume
        store.update_status(run_id, "interrupted", "a careless writer")  # as the old bug did
        with pytest.raises(StoreError, match="held by a live process"):
            manager.resume(run_id)  # the CLI still owns it: a second worker would double it
        store.update_status(run_id, "queued", "forced")  # even when forced into the queue...
        wait_for(lambda: manager.reconcile() or cli.poll() is not None, 300)
        assert cli.returncode == 0, cli.stderr.read().decode()[-2000:]
    finally:
        cli.kill()
    assert store.read_status(run_id)["state"] == "finished"
    assert [m["epoch"] for m in store.read_metrics(run_id)] == list(range(1, 31))  # none twice


def test_two_managers_on_one_store_share_the_slots(store, slow_config):
    first = JobManager(store, max_concurrent=2, batch_sweeps=False)
    second = JobManager(store, max_concurrent=2, batch_sweeps=False)
    config = RunConfig.from_dict({**slow_config.to_dict(), "epochs": 2})
    run_ids = [first.store.create_run(RunConfig.from_dict({**config.to_dict(), "seed": s})) for s in range(5)]  # fmt: skip
    most = 0
    while any(store.read_status(r)["state"] in ("queued", "running") for r in run_ids):
        first.reconcile()
        second.reconcile()
        live = {worker_pid(store.read_status(r)) for r in run_ids}
        most = max(most, len(live - {None}))
        time.sleep(0.1)
    assert most == 2
    assert all(store.read_status(r)["state"] == "finished" for r in run_ids)


def test_a_stopped_worker_shows_as_stalled_and_can_be_cancelled(store, slow_config, monkeypatch):
    import vae.execution.lease
    from vae.present.views import progress

    monkeypatch.setattr(vae.execution.lease, "STALL_AFTER_S", 2.5)  # seconds, for the test

    manager = JobManager(store, max_concurrent=1)
    run_id = manager.submit(slow_config)
    wait_for(lambda: manager.reconcile() or store.read_status(run_id).get("epoch", 0) >= 1)
    pid = worker_pid(store.read_status(run_id))
    os.kill(pid, signal.SIGSTOP)
    try:
        time.sleep(3)  # longer than the heartbeat interval
        manager.reconcile()
        assert store.read_status(run_id)["state"] == "running"  # alive: not interrupted
        stalled = "stalled: no sign of life for"  # known by the listing, which looks every 5 s
        wait_for(lambda: progress(next(r for r in store.list_runs() if r.run_id == run_id))[1]
                 .startswith(stalled))  # fmt: skip
        manager.cancel(run_id)
        wait_for(lambda: manager.reconcile() or store.read_status(run_id)["state"] != "running")
    finally:
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGCONT)
    status = store.read_status(run_id)
    assert status["state"] == "cancelled", status
    manager.resume(run_id)  # its last epoch is kept
    manager.wait([run_id], timeout_s=300)
    epochs = [m["epoch"] for m in store.read_metrics(run_id)]
    assert epochs == list(range(1, slow_config.epochs + 1))


def test_workers_run_below_the_priority_of_the_process_that_starts_them(store, slow_config):
    own_group = Path("/proc/self/autogroup")  # where CPU time is shared out by session first
    own_group_before = own_group.read_text() if own_group.exists() else None
    manager = JobManager(store, max_concurrent=1)
    run_id = manager.submit(slow_config)
    try:
        pid = wait_for(lambda: manager.reconcile() or worker_pid(store.read_status(run_id)))

        def niceness() -> int:  # field 19 of /proc/<pid>/stat
            return int(Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[16])

        expected = min(19, os.nice(0) + WORKER_NICENESS)
        wait_for(lambda: niceness() == expected, what=f"niceness {expected}")  # set at its start
        if own_group_before is not None:  # the worker's session is niced, not this one
            group = Path(f"/proc/{pid}/autogroup")  # e.g. "/autogroup-4223 nice 10"
            wait_for(  # set just after its own nice, when the kernel gives it its turn
                lambda: group.read_text().split()[-1] == str(expected), what="the session's nice"
            )
            assert own_group.read_text() == own_group_before
    finally:
        manager.cancel(run_id, wait_s=30)
    assert store.read_status(run_id)["state"] == "cancelled"


def test_cancel_can_wait_until_the_worker_has_stopped_the_run(store, slow_config):
    manager = JobManager(store, max_concurrent=1)
    run_id = manager.submit(slow_config)
    wait_for(lambda: manager.reconcile() or store.read_status(run_id).get("epoch", 0) >= 1)
    manager.cancel(run_id, wait_s=30)  # returns once the worker has written its last state
    status = store.read_status(run_id)
    assert status["state"] == "cancelled", status
    assert status["reason"].startswith("cancelled after epoch")
