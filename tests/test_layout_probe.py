"""The job layout measurement never gets in the way, and files at the store root are read with
care: real probe processes, real named pipes, a real sweep on a loaded machine."""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
import stat
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
from helpers import wait_for

from vae.execution import layout
from vae.execution.jobs import JobManager
from vae.execution.store import RunStore

REPO = Path(__file__).resolve().parent.parent
ROOT_NAMES = [".scheduler.lock", ".changes", ".index.json", ".layout.json", ".worker.log"]


@pytest.fixture
def cache(tmp_path, monkeypatch) -> Path:
    folder = tmp_path / "layout-cache"
    monkeypatch.setenv(layout.CACHE_ENV, str(folder))
    return folder


def processes_with(marker: str) -> list[int]:
    """Live processes whose environment holds `marker` (a probe and its children inherit it)."""
    found = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit() or int(entry.name) == os.getpid():
            continue
        with contextlib.suppress(OSError):
            state = (entry / "stat").read_text().rsplit(")", 1)[1].split()[0]
            if state != "Z" and marker.encode() in (entry / "environ").read_bytes():
                found.append(int(entry.name))
    return found


def probe_running(marker: str) -> bool:
    for pid in processes_with(marker):
        with contextlib.suppress(OSError):
            if b"vae.execution.layout_probe" in Path(f"/proc/{pid}/cmdline").read_bytes():
                return True
    return False


# ---- the per-machine cache, read carefully -------------------------------------------------
@pytest.mark.parametrize(
    "entry",
    [
        {"processes": 0, "threads": 1},
        {"processes": -3, "threads": 1},
        {"processes": 2, "threads": 1e9},
        {"processes": 2, "threads": 10**9},
        {"processes": True, "threads": 1},
        {"processes": 2, "threads": "2"},
        {"processes": 2, "threads": 1, "images_per_s": float("nan")},
        {"processes": 2, "threads": 1, "surprise": 1},
        [2, 1],
    ],
)
def test_damaged_layout_values_are_refused_and_the_safe_default_used(cache, store, entry):
    cache.mkdir()
    path = cache / layout.CACHE_FILE
    path.write_text(json.dumps({layout.machine_key(): entry, "another machine": {"x": 1}}))
    assert layout.cached_layout() is None
    manager = JobManager(store)  # the layout chosen on this machine
    assert manager.slots() == layout.default_layout().processes >= 1
    assert manager.threads() == 1
    kept = json.loads(path.read_text())
    assert layout.machine_key() not in kept and "another machine" in kept  # replaced, not trusted


def test_a_good_layout_is_used(cache, store):
    cache.mkdir()
    entry = {"processes": 1, "threads": 2, "images_per_s": 1234.0}
    (cache / layout.CACHE_FILE).write_text(json.dumps({layout.machine_key(): entry}))
    assert JobManager(store).layout() == layout.Layout(1, 2, 1234.0)


@pytest.mark.parametrize("kind", ["fifo", "huge", "folder", "junk", "list"])
def test_a_damaged_layout_file_is_reported_and_removed(cache, kind, capfd):
    cache.mkdir()
    path = cache / layout.CACHE_FILE
    if kind == "fifo":
        os.mkfifo(path)
    elif kind == "huge":
        path.write_bytes(b" " * (50 * 2**20))
    elif kind == "folder":
        path.mkdir()
    else:
        path.write_text("{not json" if kind == "junk" else "[1, 2]")
    assert layout.cached_layout() is None  # at once: no pipe waited on, no 50 MB parsed
    assert not path.exists() or path.is_file() and path.stat().st_size < 1024
    assert layout.CACHE_FILE in capfd.readouterr().err


def test_the_cache_folder_follows_the_environment(monkeypatch, tmp_path):
    monkeypatch.delenv(layout.CACHE_ENV, raising=False)
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path))
    assert layout.cache_dir() == tmp_path / "vae-dashboard"


def test_one_measurement_at_a_time_per_machine(cache):
    """Another process holds the machine's lock: nobody else measures, nobody waits."""
    cache.mkdir()
    holder = os.open(cache / layout.LOCK_FILE, os.O_RDWR | os.O_CREAT)
    fcntl.flock(holder, fcntl.LOCK_EX)
    try:
        assert layout.choose_layout(cores=1) is None
        assert not probe_running(str(cache))
    finally:
        os.close(holder)


@pytest.mark.slow
def test_the_layout_is_measured_by_a_probe_process_and_cached_per_machine(cache, tmp_path):
    """One candidate (one core): a real measurement in `python -m vae.execution.layout_probe`,
    cached for the machine: a store elsewhere reads it instead of measuring."""
    found = layout.choose_layout(cores=1)
    assert (found.processes, found.threads) == (1, 1) and found.images_per_s > 0
    assert layout.cached_layout() == found
    assert JobManager(RunStore(tmp_path / "other-store")).layout() == found
    assert not probe_running(str(cache))


# ---- the probe never outlives what started it ---------------------------------------------
SERVER = textwrap.dedent(
    """
    import sys, time
    from vae.execution.jobs import JobManager
    from vae.execution.store import RunStore
    manager = JobManager(RunStore(sys.argv[1]))  # chooses its layout: measures in the background
    manager.start_scheduler(interval_s=0.2)
    time.sleep(3600)
    """
)


@pytest.mark.slow
def test_a_server_killed_mid_measurement_leaves_no_probe(cache, tmp_path):
    env = {**os.environ, layout.CACHE_ENV: str(cache), "PYTHONPATH": str(REPO)}
    env.pop("VAE_MAX_JOBS", None)
    server = subprocess.Popen(
        [sys.executable, "-c", SERVER, str(tmp_path / "runs")], env=env, cwd=REPO,
        start_new_session=True,
    )  # fmt: skip
    try:
        wait_for(lambda: probe_running(str(cache)), timeout=300, what="a layout probe")
        # the probe's own children (the timed stacks, the half-busy load) have started too
        wait_for(lambda: len(processes_with(str(cache))) >= 4, timeout=300, what="its children")
    finally:
        server.kill()
        server.wait()
    wait_for(lambda: not processes_with(str(cache)), timeout=10, what="every probe gone")
    assert not (cache / layout.CACHE_FILE).exists()  # nothing half-measured was kept


@pytest.mark.slow
def test_a_sweep_on_a_fresh_store_under_load_starts_at_once_and_leaves_no_probe(cache, tmp_path):
    """Four busy processes on the cores: the CLI sweep trains on the default layout."""
    busy = [
        subprocess.Popen([sys.executable, "-c", "while True: pass"], start_new_session=True)
        for _ in range(4)
    ]
    env = {**os.environ, layout.CACHE_ENV: str(cache), "PYTHONPATH": str(REPO)}
    env.pop("VAE_MAX_JOBS", None)
    args = ["sweep", "--betas", "0.5", "2", "--epochs", "1", "--hidden-dims", "32"]
    args += ["--latent-dim", "3", "--batch-size", "256", "--threads", "1"]
    try:
        done = subprocess.run(
            [sys.executable, "-m", "vae", "--store", str(tmp_path / "runs"), *args],
            env=env, cwd=REPO, capture_output=True, text=True, timeout=900,
        )  # fmt: skip
    finally:
        for process in busy:
            process.kill()
            process.wait()
    assert done.returncode == 0, done.stdout + done.stderr
    assert "measuring" not in done.stdout
    assert "one job per core" in done.stdout
    assert [r.state for r in RunStore(tmp_path / "runs").list_runs()] == ["finished"] * 2
    assert not probe_running(str(cache))
    wait_for(lambda: not processes_with(str(cache)), timeout=60, what="the workers to exit")


# ---- store-root files: a named pipe at any name blocks nothing -----------------------------
CHECK_ROOT = textwrap.dedent(
    """
    import sys
    from vae.execution.jobs import JobManager
    from vae.execution.store import RunStore
    from vae.learn.config import RunConfig
    store = RunStore(sys.argv[1])
    manager = JobManager(store, max_concurrent=1)
    manager.reconcile()
    run_id = manager.submit(RunConfig(dataset="digits", hidden_dims=[16], latent_dim=2, epochs=1,
                                      batch_size=256, threads=1, precision="fp32"))
    manager.wait([run_id], timeout_s=300)
    print(len(store.list_runs()), store.read_status(run_id)["state"])
    """
)


@pytest.mark.parametrize("name", ROOT_NAMES)
def test_a_named_pipe_at_a_store_root_name_blocks_nothing(tmp_path, name):
    root = tmp_path / "runs"
    root.mkdir()
    os.mkfifo(root / name)
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    done = subprocess.run(
        [sys.executable, "-c", CHECK_ROOT, str(root)], env=env, cwd=REPO,
        capture_output=True, text=True, timeout=600,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr
    assert done.stdout.split() == ["1", "finished"], done.stdout + done.stderr
    listed = subprocess.run(
        [sys.executable, "-m", "vae", "--store", str(root), "list"], env=env, cwd=REPO,
        capture_output=True, text=True, timeout=120,
    )  # fmt: skip
    assert listed.returncode == 0 and "finished" in listed.stdout, listed.stderr
    if name != ".layout.json":  # no longer read at all: the layout is kept per machine
        mode = os.lstat(root / name).st_mode if (root / name).exists() else stat.S_IFREG
        assert stat.S_ISREG(mode)  # reported and replaced by a plain file (or gone)
        assert name in done.stderr + listed.stderr


def test_store_root_files_replaced_when_a_folder_or_link_sits_there(tmp_path):
    from vae.execution.root_files import open_root_file, touch_root_file

    (tmp_path / "lock").mkdir()
    (tmp_path / "changes").symlink_to("/dev/zero")
    os.close(open_root_file(tmp_path / "lock"))
    touch_root_file(tmp_path / "changes")
    assert (tmp_path / "lock").is_file() and not (tmp_path / "changes").is_symlink()
    assert any(p.name.startswith("lock.refused-") for p in tmp_path.iterdir())


def test_store_flag_naming_a_device_is_refused(tmp_path):
    done = subprocess.run(
        [sys.executable, "-m", "vae", "--store", "/dev/null", "list"], cwd=REPO,
        capture_output=True, text=True, timeout=120,
    )  # fmt: skip
    assert done.returncode == 2 and "not a folder" in done.stderr, done.stderr


@pytest.mark.parametrize("name", [".scheduler.lock", ".changes", ".index.json", ".worker.log"])
def test_pages_open_with_a_named_pipe_at_a_store_root_name(monkeypatch, tmp_path, name):
    """The app's first page runs the job manager's first look: it must not wait on a pipe."""
    from helpers import open_app

    root = tmp_path / "runs"
    root.mkdir()
    os.mkfifo(root / name)
    at = open_app(monkeypatch, root, "pages/train.py")  # AppTest fails after 60 s if it hangs
    assert not at.exception, at.exception
    if name in (".scheduler.lock", ".index.json"):  # the ones this first look opens
        assert not stat.S_ISFIFO(os.lstat(root / name).st_mode) if (root / name).exists() else True
        assert any(name in w.value for w in at.warning)  # reported on the page
