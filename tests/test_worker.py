"""vae.execution.worker and what its faults leave, with real worker processes and real files:
nothing is lost, nothing is left half-done.

SIGKILL mid-epoch, SIGKILL during checkpoint writes, torn files, a full disk (before and during
training), a read-only store, NaN during training, ten clients at once and a bad data root. The
disk faults use small tmpfs mounts (root only; skipped where `mount` is not allowed). The server
restart with a real `streamlit run` is in test_app.py.
"""

from __future__ import annotations

import contextlib
import errno
import os
import random
import shutil
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest
import streamlit as st
import torch
from helpers import PAGES, open_app, train_run, wait_for, worker_pid
from streamlit.testing.v1 import AppTest

from vae.execution.checkpoint import (
    CheckpointError,
    checkpoint_problem,
    load_run_checkpoint,
    save_run_checkpoint,
)
from vae.execution.jobs import JobManager
from vae.execution.store import FILES, RunStore, StoreError
from vae.learn.config import RunConfig

REPO = Path(__file__).resolve().parent.parent
TINY = dict(hidden_dims=[32], latent_dim=3, epochs=1, batch_size=256, threads=1)


def tiny(**changes) -> RunConfig:
    return RunConfig(**{**TINY, **changes})


def leftovers(root: Path) -> list[str]:
    """Temp files/folders anywhere in the store: half-written things that should not remain."""
    return sorted(
        str(p.relative_to(root))
        for p in root.rglob("*")
        if p.name.startswith((".new-", ".deleted-")) or p.name.endswith(".tmp")
    )


def run_folders(root: Path) -> list[str]:
    return sorted(p.name for p in root.iterdir() if p.is_dir() and not p.name.startswith("."))


def alive(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/stat") as handle:
            return handle.read().rsplit(")", 1)[1].split()[0] != "Z"
    except OSError:
        return False


def kill_workers(root: Path) -> None:
    """SIGKILL every `vae.execution.worker` process started on this store (found by its command line)."""
    wanted = str(root).encode()
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        with contextlib.suppress(OSError):
            argv = (entry / "cmdline").read_bytes().split(b"\0")
            if b"vae.execution.worker" in argv and wanted in argv:
                with contextlib.suppress(ProcessLookupError, PermissionError):
                    os.kill(int(entry.name), signal.SIGCONT)
                    os.kill(int(entry.name), signal.SIGKILL)


@pytest.fixture
def workers():
    """Register store roots; every worker still running on them is killed after the test."""
    roots: list[Path] = []
    yield roots.append
    for root in roots:
        kill_workers(root)


@pytest.fixture
def tmpfs(tmp_path, workers):
    """mount(size) -> a fresh tmpfs folder; unmounted (after its workers are killed) at the end."""
    mounts: list[Path] = []

    def mount(size: str = "1m") -> Path:
        folder = tmp_path / f"mnt{len(mounts)}"
        folder.mkdir()
        done = subprocess.run(
            ["mount", "-t", "tmpfs", "-o", f"size={size},mode=0755", "tmpfs", str(folder)],
            capture_output=True, text=True,
        )  # fmt: skip
        if done.returncode != 0:
            pytest.skip(f"cannot mount a tmpfs here: {done.stderr.strip()}")
        mounts.append(folder)
        workers(folder)
        return folder

    yield mount
    for folder in reversed(mounts):
        kill_workers(folder)
        time.sleep(0.2)
        subprocess.run(["umount", str(folder)], capture_output=True)
        subprocess.run(["umount", "-l", str(folder)], capture_output=True)  # if still busy


def fill_disk(folder: Path, leave_pages: int = 0, name: str = "filler") -> Path:
    """Write a file until ENOSPC; then free `leave_pages` 4 KiB pages (reserved beforehand)."""
    reserve = folder / f".reserve-{name}"
    if leave_pages:
        reserve.write_bytes(b"r" * 4096 * leave_pages)
    path = folder / name
    with open(path, "ab", buffering=0) as handle:
        for chunk in (1 << 20, 4096, 1):
            with contextlib.suppress(OSError):
                while True:
                    handle.write(b"f" * chunk)
    if leave_pages:
        reserve.unlink()
    return path


def remount(folder: Path, mode: str) -> None:
    subprocess.run(["mount", "-o", f"remount,{mode}", str(folder)], check=True)


@pytest.fixture
def app(monkeypatch):
    """open(store_root, page, **query) -> AppTest; the job managers the app made are stopped after."""
    managers: list[JobManager] = []
    original = JobManager.start_scheduler

    def tracking_start(self, *args, **kwargs):
        managers.append(self)
        return original(self, *args, **kwargs)

    monkeypatch.setattr(JobManager, "start_scheduler", tracking_start)

    yield lambda store_root, page=None, **query: open_app(monkeypatch, store_root, page, **query)
    for manager in managers:
        manager.shutdown()
    st.cache_resource.clear()


def texts(at: AppTest) -> str:
    parts = [e.value for kind in ("error", "warning", "success", "info") for e in getattr(at, kind)]
    parts += [t.value for t in at.text] + [m.value for m in at.markdown]
    return "\n".join(str(p) for p in parts)


# ---- 1. SIGKILL mid-epoch --------------------------------------------------------------------
@pytest.mark.slow
def test_sigkill_mid_epoch_interrupts_only_that_run_and_resume_matches(store, workers):
    """Two identical runs train side by side; one worker is SIGKILLed in the middle of an epoch.
    Only that run becomes `interrupted`; its last completed epoch loads; resumed, it finishes with
    the same weights as the run that was never stopped, which itself is untouched throughout."""
    workers(store.root)
    config = tiny(epochs=3, batch_size=8, seed=7)  # 500 steps per epoch: the kill lands inside one
    manager = JobManager(store, max_concurrent=2, batch_sweeps=False, threads_per_job=1)
    victim, other = manager.submit(config), manager.submit(config)

    def both_running_victim_past_epoch_1():
        manager.reconcile()
        a, b = store.read_status(victim), store.read_status(other)
        return a.get("epoch", 0) >= 1 and worker_pid(b) and b["state"] == "running" and (a, b)

    victim_status, other_status = wait_for(both_running_victim_past_epoch_1, what="epoch 1")
    time.sleep(0.3)  # into the next epoch's steps
    os.kill(worker_pid(victim_status), signal.SIGKILL)
    other_pid = worker_pid(other_status)

    wait_for(
        lambda: manager.reconcile() or store.read_status(victim)["state"] == "interrupted",
        what="victim interrupted",
    )
    status = store.read_status(victim)
    assert "SIGKILL" in status["reason"] and "job" not in status
    now = store.read_status(other)
    assert now["state"] in ("running", "finished"), now
    if now["state"] == "running":
        assert worker_pid(now) == other_pid and alive(other_pid)

    saved = load_run_checkpoint(store, victim, final=False)  # the last completed epoch, loadable
    assert 1 <= saved["epoch"] < config.epochs
    assert not store.path(victim, "final.pt").exists()
    epochs = [m["epoch"] for m in store.read_metrics(victim)]
    assert epochs in (list(range(1, saved["epoch"] + 1)), list(range(1, saved["epoch"] + 2)))

    manager.resume(victim)
    manager.wait([victim, other], timeout_s=300)
    for run_id in (victim, other):
        record = store.get(run_id)
        assert record.state == "finished", record.status
        assert [m["epoch"] for m in store.epoch_rows(record)] == [
            1,
            2,
            3,
        ]  # none lost, none doubled
        assert load_run_checkpoint(store, run_id)["epoch"] == 3
    assert store.read_status(other)["started"] == other_status["started"]  # never restarted
    resumed = load_run_checkpoint(store, victim)["model_state"]
    reference = load_run_checkpoint(store, other)["model_state"]
    for key, tensor in reference.items():
        assert torch.allclose(resumed[key], tensor, rtol=1e-5, atol=1e-6), key
    assert run_folders(store.root) == sorted([victim, other])
    assert [p for p in leftovers(store.root) if ".pt." in p] == []  # the resume cleaned up


# ---- 3. crash in the middle of writing -------------------------------------------------------
WRITER = """
import sys, torch
from vae.execution.checkpoint import load_run_checkpoint, make_checkpoint, save_run_checkpoint
from vae.execution.store import RunStore
from vae.learn.engine import new_state
store, run_id = RunStore(sys.argv[1]), sys.argv[2]
config = store.read_config(run_id)
state = new_state(config, (1, 28, 28), torch.device("cpu"))
epoch = load_run_checkpoint(store, run_id, final=False)["epoch"] if store.path(run_id, "model.pt").exists() else 0
store.truncate_metrics(run_id, epoch)  # as the worker's restore_state does
print("ready", flush=True)
while True:  # what a worker does after each epoch, as fast as the disk allows
    epoch += 1
    state.epoch = state.step = epoch
    with torch.no_grad():
        for p in state.model.parameters():
            p.fill_(epoch / 1000)  # every weight says which save it came from
    lists = {k: [0.0] * config.latent_dim for k in ("kl_per_dim", "posterior_var", "mean_cov")}
    store.append_metrics(run_id, {"epoch": epoch, "rate": float(epoch), "distortion": 1.0,
                                  "elbo": -1.0 - epoch, "active_units": 0, **lists})
    save_run_checkpoint(store, run_id, make_checkpoint(config, state, (1, 28, 28), {"rate": 1.0}))
    store.update_status(run_id, "running", epoch=epoch)
"""


@pytest.mark.slow
def test_sigkill_during_checkpoint_writes_never_leaves_a_torn_checkpoint(store):
    """A process saving checkpoints in a loop is SIGKILLed at random moments, 6 times: after a
    random delay, as soon as one of its temp files exists (so mid-write). After each kill model.pt
    loads completely (all weights from one save), metrics and status read back, the run is not
    broken, and a temp file is never taken for a checkpoint."""
    config = tiny(hidden_dims=[1024])  # about 6 MB per checkpoint: writes take a while
    run_id = store.create_run(config)
    folder = store.run_dir(run_id)
    env = {**os.environ, "PYTHONPATH": str(REPO), "OMP_NUM_THREADS": "1"}
    rng = random.Random(1234)
    last_epoch, killed_mid_write = 0, 0
    for _ in range(6):
        process = subprocess.Popen(
            [sys.executable, "-c", WRITER, str(store.root), run_id],
            cwd=REPO, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
        )  # fmt: skip
        try:
            ready = process.stdout.readline().strip() == b"ready"
            if ready:
                time.sleep(rng.uniform(0.0, 0.5))
                with contextlib.suppress(AssertionError):  # a kill between writes is fine too
                    wait_for(lambda: any(p.suffix == ".tmp" for p in folder.iterdir()), 5, 0)
        finally:
            process.kill()
            _, errors = process.communicate()
        assert ready, errors.decode()
        temps = [p for p in folder.iterdir() if p.name not in FILES]
        assert all(p.name.startswith(".") and p.name.endswith(".tmp") for p in temps), temps
        killed_mid_write += any(".pt." in p.name for p in temps)

        checkpoint = load_run_checkpoint(store, run_id, final=False)
        epoch = checkpoint["epoch"]
        assert epoch >= last_epoch
        for key, tensor in checkpoint["model_state"].items():
            assert torch.all(tensor == torch.tensor(epoch / 1000)), (key, epoch)  # one save only
        assert checkpoint_problem(store, run_id) is None
        rows = [m["epoch"] for m in store.read_metrics(run_id)]
        assert rows == list(range(1, len(rows) + 1)) and len(rows) in (epoch, epoch + 1)
        status = store.read_status(run_id)
        assert status.get("epoch", 0) in (epoch - 1, epoch) or epoch == 0
        (record,) = store.list_runs()
        assert record.broken is None and record.run_id == run_id
        last_epoch = epoch
    print(f"{killed_mid_write} of 6 kills left a checkpoint temp file behind")
    assert killed_mid_write >= 1
    assert last_epoch > 0

    # The next save (the run's worker resuming) removes the checkpoint-sized temp files the
    # killed writers left behind (a tiny .status.json temp file may stay: the server writes
    # status too, so the worker leaves those alone).
    checkpoint = load_run_checkpoint(store, run_id, final=False)
    save_run_checkpoint(store, run_id, {**checkpoint, "epoch": last_epoch + 1})
    assert [p for p in leftovers(store.root) if ".pt." in p] == []
    assert load_run_checkpoint(store, run_id, final=False)["epoch"] == last_epoch + 1


@pytest.fixture(scope="module")
def damaged_store(tmp_path_factory):
    """One good finished run and one of each kind of damage a crash or a bad edit can leave."""
    store = RunStore(tmp_path_factory.mktemp("damaged") / "runs")
    good = store.create_run(tiny(epochs=2, name="good"))
    train_run(store, good)
    bad_checkpoint = store.create_run(tiny(name="bad checkpoint"))
    train_run(store, bad_checkpoint)
    for name in ("model.pt", "final.pt"):
        path = store.path(bad_checkpoint, name)
        path.write_bytes(path.read_bytes()[:3000])  # torn, as if written in place and cut off
    torn = {}
    for name in ("config.json", "status.json"):
        run_id = store.create_run(tiny())
        path = store.path(run_id, name)
        path.write_bytes(path.read_bytes()[: path.stat().st_size // 2])
        torn[name] = run_id
    not_a_dict = store.create_run(tiny())
    store.path(not_a_dict, "config.json").write_text("[1, 2, 3]")
    # Leftovers of killed writers: a half-created run folder and a checkpoint temp file.
    (store.root / ".new-20250101-000000-abcdef-x1y2").mkdir()
    (store.root / ".new-20250101-000000-abcdef-x1y2" / "config.json").write_text("{")
    (store.run_dir(good) / ".model.pt.k3j4.tmp").write_bytes(b"PK\x03\x04half")
    return store, dict(good=good, bad_checkpoint=bad_checkpoint, not_a_dict=not_a_dict, **torn)


def test_damaged_files_are_listed_as_broken_with_a_reason(damaged_store):
    store, ids = damaged_store
    records = {r.run_id: r for r in store.list_runs()}
    assert set(records) == set(ids.values())  # temp folders are not runs
    assert records[ids["good"]].broken is None
    assert records[ids["good"]].state == "finished"
    assert [m["epoch"] for m in store.epoch_rows(records[ids["good"]])] == [1, 2]
    assert "config.json is unreadable" in records[ids["config.json"]].broken
    assert "status.json is unreadable" in records[ids["status.json"]].broken
    assert "must be a dictionary" in records[ids["not_a_dict"]].broken
    assert records[ids["bad_checkpoint"]].broken is None  # listed; its checkpoint is refused
    assert "truncated or damaged" in checkpoint_problem(store, ids["bad_checkpoint"])
    with pytest.raises(CheckpointError):
        load_run_checkpoint(store, ids["bad_checkpoint"])
    assert (
        load_run_checkpoint(store, ids["good"])["epoch"] == 2
    )  # the temp file beside it is ignored
    JobManager(store).reconcile()  # the scheduler copes with the broken folders
    assert {r.run_id: r.state for r in store.list_runs()}[ids["good"]] == "finished"


@pytest.mark.parametrize("page", PAGES)
def test_every_page_renders_with_broken_runs_in_the_store(app, damaged_store, page):
    store, ids = damaged_store
    at = app(store.root, page)
    assert not at.exception, at.exception


@pytest.mark.parametrize("page", ["pages/checkpoints.py", "pages/samples.py"])
def test_a_run_with_a_torn_checkpoint_shows_an_error_not_a_crash(app, damaged_store, page):
    store, ids = damaged_store
    at = app(store.root, page, run=ids["bad_checkpoint"])
    assert not at.exception, at.exception
    assert "truncated or damaged" in texts(at)


def test_checkpoints_page_names_each_broken_folder(app, damaged_store):
    store, ids = damaged_store
    shown = texts(app(store.root, "pages/checkpoints.py"))
    for key in ("config.json", "status.json", "not_a_dict"):
        assert f"Run folder {ids[key]} is broken" in shown


# ---- 4. full disk, read-only store -----------------------------------------------------------
def test_full_disk_refuses_a_new_run_and_leaves_nothing(tmpfs, tiny_config):
    root = tmpfs("1m")
    store = RunStore(root / "runs")
    store.root.mkdir()
    fill_disk(root)
    manager = JobManager(store)
    for start in (lambda: store.create_run(tiny_config), lambda: manager.submit(tiny_config)):
        with pytest.raises(StoreError, match="could not create the run: the disk is full"):
            start()
    with pytest.raises(StoreError, match="the disk is full"):
        manager.submit_sweep(tiny_config, [0.5, 1, 2])
    assert store.list_runs() == [] and run_folders(store.root) == []
    assert leftovers(root) == []


def test_disk_filling_halfway_through_a_sweep_creates_none_of_it(tmpfs, tiny_config):
    root = tmpfs("1m")
    store = RunStore(root / "runs")
    store.root.mkdir()
    fill_disk(root, leave_pages=5)  # room for two runs (two small files each), not six
    with pytest.raises(StoreError, match="the disk is full"):
        JobManager(store).submit_sweep(tiny_config, [0.25, 0.5, 1, 2, 4, 8])
    assert store.list_runs() == [] and run_folders(store.root) == []
    assert leftovers(root) == []
    run_id = store.create_run(tiny_config)  # the space the rollback freed is usable again
    assert store.read_status(run_id)["state"] == "queued"


@pytest.fixture
def readonly_store(tmpfs):
    """A store with one finished run on a tmpfs that is then remounted read-only."""
    root = tmpfs("8m")
    store = RunStore(root / "runs")
    run_id = store.create_run(tiny(name="kept"))
    train_run(store, run_id)
    JobManager(store).reconcile()  # as a server would have: the lock file exists
    remount(root, "ro")
    return store, run_id


def test_read_only_store_refuses_changes_with_a_message(readonly_store, tiny_config):
    store, run_id = readonly_store
    manager = JobManager(store)
    attempts = {
        "create the run": lambda: store.create_run(tiny_config),
        "submit": lambda: manager.submit(tiny_config),
        "sweep": lambda: manager.submit_sweep(tiny_config, [1, 2]),
        f"delete run {run_id}": lambda: manager.delete(run_id),
        f"cancel run {run_id}": lambda: store.request_cancel(run_id),
    }
    for what, attempt in attempts.items():
        with pytest.raises(StoreError, match="read-only file system") as info:
            attempt()
        if what not in ("submit", "sweep"):
            assert f"could not {what}" in str(info.value)
    (record,) = store.list_runs()  # still readable, unchanged
    assert record.run_id == run_id and record.state == "finished"
    assert load_run_checkpoint(store, run_id)["config"]["name"] == "kept"


@pytest.mark.parametrize("fault", ["read-only", "full"])
def test_train_page_on_a_broken_disk_says_why_and_adds_nothing(app, tmpfs, fault):
    if fault == "read-only":
        root = tmpfs("1m")
        (root / "runs").mkdir()
        remount(root, "ro")
        expected = "the run store is on a read-only file system"
    else:
        root = tmpfs("1m")
        (root / "runs").mkdir()
        fill_disk(root)
        expected = "the disk is full"
    store = RunStore(root / "runs")
    at = app(store.root, "pages/train.py", epochs="1", latent_dim="3")
    assert not at.exception, at.exception
    at.button(key="train_button").click().run()
    assert not at.exception, at.exception
    assert any(expected in e.value and "Nothing was started" in e.value for e in at.error), [
        e.value for e in at.error
    ]
    at.button(key="sweep_button").click().run()
    assert not at.exception, at.exception
    assert store.list_runs() == [] and leftovers(root) == []


def test_pages_on_a_read_only_store_show_runs_and_refuse_deletion(app, readonly_store):
    store, run_id = readonly_store
    for page in PAGES:
        at = app(store.root, page)
        assert not at.exception, (page, at.exception)
    at = app(store.root, "pages/checkpoints.py")
    at.button(key="confirm-delete").click().run()
    assert not at.exception, at.exception
    assert any("read-only" in e.value for e in at.error), [e.value for e in at.error]
    assert [r.run_id for r in store.list_runs()] == [run_id]


@pytest.mark.slow
def test_disk_filling_during_training_fails_the_run_and_keeps_its_checkpoint(tmpfs):
    """The disk fills while a worker trains: it cannot save the next checkpoint. The run ends
    `failed` saying the disk is full, model.pt from the last good epoch still loads, no temp
    file is left, and once space is freed the run resumes and finishes without losing epochs."""
    root = tmpfs("16m")
    store = RunStore(root / "runs")
    manager = JobManager(store, max_concurrent=1, threads_per_job=1)
    run_id = manager.submit(tiny(epochs=8))

    def saved_epoch():
        manager.reconcile()
        with contextlib.suppress(CheckpointError, StoreError):
            return load_run_checkpoint(store, run_id, final=False)["epoch"]
        return 0

    wait_for(saved_epoch, what="a first checkpoint")
    stop_filling = threading.Event()

    def keep_disk_full():  # whatever the worker frees (its failed temp file) is taken again
        while not stop_filling.is_set():
            fill_disk(root)
            time.sleep(0.02)

    filler = threading.Thread(target=keep_disk_full, daemon=True)
    filler.start()
    try:
        manager.wait([run_id], timeout_s=180)
    finally:
        stop_filling.set()
        filler.join()
    status = store.read_status(run_id)
    assert status["state"] == "failed", status
    assert "the disk is full" in status["reason"]
    assert "job" not in status
    checkpoint = load_run_checkpoint(store, run_id, final=False)
    assert 1 <= checkpoint["epoch"] < 8
    assert leftovers(store.root) == []

    (root / "filler").unlink()
    manager.resume(run_id)
    manager.wait([run_id], timeout_s=180)
    assert store.read_status(run_id)["state"] == "finished"
    assert [m["epoch"] for m in store.read_metrics(run_id)] == list(range(1, 9))


def test_status_is_recorded_on_a_completely_full_disk(tmpfs, tiny_config):
    """The last resort behind the test above, on its own: no free byte, and the status still
    changes (rewritten within the file's own space) instead of raising."""
    root = tmpfs("1m")
    store = RunStore(root / "runs")
    run_id = store.create_run(tiny_config)
    store.update_status(run_id, "running", job={"backend": "local", "pid": 1234}, epoch=3)
    fill_disk(root)
    with pytest.raises(OSError) as info:
        (root / "probe").write_bytes(b"x" * 10)
    assert info.value.errno == errno.ENOSPC
    store.update_status(run_id, "failed", "could not save the checkpoint: the disk is full")
    status = store.read_status(run_id)
    assert status["state"] == "failed" and "disk is full" in status["reason"]
    assert "job" not in status and status["epoch"] == 3
    assert leftovers(root) == []


# ---- 5. NaN during training ------------------------------------------------------------------
@pytest.mark.slow
def test_diverged_checkpoint_makes_the_resumed_run_fail_without_replacing_it(store, workers):
    """A real run is cancelled after an epoch; its model.pt is replaced by a diverged one (finite
    weights scaled by 1e30, as after a blow-up). Resumed, the forward pass overflows: the run ends
    `failed` naming the step, and model.pt is byte for byte the same afterwards."""
    workers(store.root)
    manager = JobManager(store, max_concurrent=1, threads_per_job=1)
    run_id = manager.submit(tiny(epochs=50))
    wait_for(lambda: manager.reconcile() or store.read_status(run_id).get("epoch", 0) >= 1)
    manager.cancel(run_id)
    manager.wait([run_id], timeout_s=60)
    assert store.read_status(run_id)["state"] == "cancelled"

    checkpoint = load_run_checkpoint(store, run_id, final=False)
    checkpoint["model_state"] = {k: v * 1e30 for k, v in checkpoint["model_state"].items()}
    save_run_checkpoint(store, run_id, checkpoint)  # still finite, so it passes validation
    before = store.path(run_id, "model.pt").read_bytes()
    epochs_before = [m["epoch"] for m in store.read_metrics(run_id)]

    manager.resume(run_id)
    manager.wait([run_id], timeout_s=120)
    status = store.read_status(run_id)
    assert status["state"] == "failed", status
    expected_step = checkpoint["step"] + 1  # the first step after the resume
    assert f"loss became NaN/inf at step {expected_step} " in status["reason"], status["reason"]
    assert f"(epoch {checkpoint['epoch'] + 1})" in status["reason"]
    assert store.path(run_id, "model.pt").read_bytes() == before
    assert not store.path(run_id, "final.pt").exists()
    assert [m["epoch"] for m in store.read_metrics(run_id)] == epochs_before[: checkpoint["epoch"]]


# ---- 6. many sessions at once ----------------------------------------------------------------
@pytest.mark.slow
def test_ten_clients_at_once_queue_at_the_configured_concurrency(store, workers):
    """Ten threads submit through one shared JobManager (as ten browser sessions do) while its
    scheduler thread runs. Never more than two runs train at once; every run has one folder, one
    worker process, finishes once, and its metrics hold each epoch exactly once."""
    workers(store.root)
    manager = JobManager(store, max_concurrent=2, batch_sweeps=False, threads_per_job=1)
    manager.start_scheduler(interval_s=0.2)
    seen_running, pids = [], {}
    done = threading.Event()

    def watch():
        while not done.is_set():
            records = store.list_runs()
            seen_running.append(sum(r.state == "running" for r in records))
            for r in records:
                if r.state == "running" and worker_pid(r.status):
                    pids.setdefault(r.run_id, set()).add(worker_pid(r.status))
            time.sleep(0.02)

    watcher = threading.Thread(target=watch, daemon=True)
    watcher.start()
    run_ids, errors = [], []
    barrier = threading.Barrier(10)

    def client(i: int):
        try:
            barrier.wait()
            run_ids.append(manager.submit(tiny(epochs=2, seed=i, name=f"client {i}")))
        except Exception as exc:  # noqa: BLE001 - reported below
            errors.append(exc)

    clients = [threading.Thread(target=client, args=(i,)) for i in range(10)]
    for thread in clients:
        thread.start()
    for thread in clients:
        thread.join()
    try:
        assert errors == [] and len(set(run_ids)) == 10
        manager.wait(run_ids, timeout_s=600)
    finally:
        done.set()
        watcher.join()
        manager.shutdown()
    assert max(seen_running) <= 2, max(seen_running)
    assert max(seen_running) == 2  # the slots were used
    assert run_folders(store.root) == sorted(run_ids)
    records = store.list_runs()
    assert sorted(r.config.name for r in records) == sorted(f"client {i}" for i in range(10))
    for record in records:
        assert record.state == "finished", record.status
        assert [m["epoch"] for m in store.epoch_rows(record)] == [1, 2]
        assert load_run_checkpoint(store, record.run_id)["epoch"] == 2
        assert len(pids.get(record.run_id, ())) <= 1, pids[record.run_id]  # started once
    assert leftovers(store.root) == []


# ---- bad data root, through the worker -------------------------------------------------------
@pytest.mark.slow
def test_bad_data_root_fails_the_run_with_what_was_expected(store, tmp_path, workers):
    workers(store.root)
    wrong = tmp_path / "wrong"
    (wrong / "MNIST" / "raw").mkdir(parents=True)
    for name in ("train-images-idx3-ubyte", "train-labels-idx1-ubyte"):
        (wrong / "MNIST" / "raw" / name).write_bytes(b"<html>not found</html>")
    for name in ("t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte"):
        (wrong / "MNIST" / "raw" / name).write_bytes(b"\x89PNG\r\n\x1a\n")
    manager = JobManager(store, max_concurrent=2, batch_sweeps=False, threads_per_job=1)
    missing = manager.submit(tiny(dataset="mnist", data_root=str(tmp_path / "nowhere")))
    broken = manager.submit(tiny(dataset="mnist", data_root=str(wrong)))
    manager.wait([missing, broken], timeout_s=180)

    status = store.read_status(missing)
    assert status["state"] == "failed"
    assert str(tmp_path / "nowhere" / "MNIST" / "raw") in status["reason"]
    assert "train-images-idx3-ubyte" in status["reason"]
    status = store.read_status(broken)
    assert status["state"] == "failed"
    assert "is not an unpacked IDX file" in status["reason"], status["reason"]
    for run_id in (missing, broken):
        assert not store.path(run_id, "model.pt").exists()
    shutil.rmtree(wrong)
