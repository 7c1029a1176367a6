"""Hostile and damaged run folders: every file is read carefully, a bad one makes only its run
`broken` (with the reason), the pages render and the scheduler never blocks.

Real files throughout: a run trained for real, then copied and damaged one field at a time;
named pipes, links to devices and to files outside the store, a file larger than its limit.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import threading
from pathlib import Path

import pytest
from helpers import PAGES, open_app, train_run, wait_for

from vae.cli import main
from vae.execution import safe_read
from vae.execution.checkpoint import checkpoint_problem
from vae.execution.files import HOST_TAG
from vae.execution.jobs import JobManager
from vae.execution.store import RunStore, StoreError, new_run_id
from vae.learn.config import RunConfig
from vae.present.views import BROKEN_SHOWN


def tiny(**changes) -> RunConfig:
    base = dict(dataset="digits", hidden_dims=[32], latent_dim=3, epochs=2, batch_size=256)
    return RunConfig(**{**base, "threads": 1, **changes})


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    """A store holding one run trained for real (2 epochs, final.pt, eval.json)."""
    store = RunStore(tmp_path_factory.mktemp("trained") / "runs")
    run_id = store.create_run(tiny(name="good"))
    assert train_run(store, run_id) == "finished"
    return store, run_id


def copy_run(store: RunStore, source: str) -> str:
    """A copy of a real run under a new id (the id sorts after the source's)."""
    run_id = new_run_id()
    shutil.copytree(store.run_dir(source), store.run_dir(run_id))
    return run_id


def edit_json(path: Path, change) -> None:
    data = json.loads(path.read_text())
    change(data)
    path.write_text(json.dumps(data))


def edit_metrics_line(path: Path, index: int, change) -> None:
    lines = path.read_text().splitlines()
    row = json.loads(lines[index])
    change(row)
    lines[index] = json.dumps(row)
    path.write_text("\n".join(lines) + "\n")
    (path.parent / "summary.jsonl").unlink(missing_ok=True)  # as an editor would leave it


def setter(key, value):
    return lambda d: d.__setitem__(key, value)


def remover(key):
    return lambda d: d.pop(key)


STATUS_DAMAGE = {
    "created is text": (setter("created", "yesterday"), "created"),
    "created is null": (setter("created", None), "created"),
    "created is huge": (setter("created", 1e300), "created"),
    "no updated": (remover("updated"), "updated"),
    "unknown state": (setter("state", "paused"), "state"),
    "job is text": (setter("job", "123"), "job"),
    "job pid is text": (setter("job", {"backend": "local", "pid": "123"}), "job"),
    "reason is a number": (setter("reason", 5), "reason"),
    "group is a list": (setter("group", [1]), "group"),
    "epoch is negative": (setter("epoch", -3), "epoch"),
}
METRICS_DAMAGE = {
    "no rate": (remover("rate"), "rate"),
    "rate is text": (setter("rate", "abc"), "rate"),
    "distortion is null": (setter("distortion", None), "distortion"),
    "elbo is a list": (setter("elbo", [1.0]), "elbo"),
    "epoch is a float": (setter("epoch", 1.5), "epoch"),
    "active_units is text": (setter("active_units", "3"), "active_units"),
    "kl_per_dim too short": (lambda r: r["kl_per_dim"].pop(), "differ in length"),
    "lists too short": (
        lambda r: [r[k].pop() for k in ("kl_per_dim", "posterior_var", "mean_cov")],
        "latent dimensions",
    ),
    "posterior_var holds text": (lambda r: r["posterior_var"].__setitem__(0, "x"), "posterior_var"),
    "mean_cov missing": (remover("mean_cov"), "mean_cov"),
    "images_per_s is text": (setter("images_per_s", "fast"), "images_per_s"),
}
EVAL_DAMAGE = {
    "elbo is text": (setter("elbo", "bad"), "elbo"),
    "active_units is a float": (setter("active_units", 2.5), "active_units"),
    "iw_samples is negative": (setter("iw_samples", -1), "iw_samples"),
}
CONFIG_DAMAGE = {
    "data_root is a number": (setter("data_root", 5), "data_root"),
    "learn_variance is text": (setter("learn_variance", "yes"), "learn_variance"),
    "latent_dim is text": (setter("latent_dim", "ten"), "latent_dim"),
    "hidden_dims is huge": (setter("hidden_dims", [64] * 100), "hidden_dims"),
}


def damage(store: RunStore, source: str) -> dict[str, tuple[str, str]]:
    """Copies of the trained run, each damaged in one field: {case: (run id, word in reason)}."""
    cases = {}
    for table, name in (
        (STATUS_DAMAGE, "status.json"),
        (EVAL_DAMAGE, "eval.json"),
        (CONFIG_DAMAGE, "config.json"),
    ):
        for case, (change, word) in table.items():
            run_id = copy_run(store, source)
            edit_json(store.path(run_id, name), change)
            cases[f"{name}: {case}"] = (run_id, word)
    for case, (change, word) in METRICS_DAMAGE.items():
        run_id = copy_run(store, source)
        edit_metrics_line(store.path(run_id, "metrics.jsonl"), 0, change)
        cases[f"metrics.jsonl: {case}"] = (run_id, word)
    run_id = copy_run(store, source)
    path = store.path(run_id, "metrics.jsonl")
    lines = path.read_text().splitlines()
    path.write_text(lines[0] + "\n{not json\n" + lines[1] + "\n")
    cases["metrics.jsonl: a garbage line in the middle"] = (run_id, "line 2")
    run_id = copy_run(store, source)
    store.path(run_id, "eval.json").write_text('{"elbo": ')
    cases["eval.json: cut short"] = (run_id, "eval.json")
    return cases


@pytest.fixture(scope="module")
def damaged(trained):
    store, good = trained
    return store, good, damage(store, good)


def test_each_damaged_field_makes_only_its_run_broken_with_the_reason(damaged):
    store, good, cases = damaged
    records = {r.run_id: r for r in RunStore(store.root).list_runs()}
    assert records[good].broken is None and records[good].state == "finished"
    for case, (run_id, word) in cases.items():
        record = records[run_id]
        assert record.state == "broken", case
        assert word in record.broken, (case, record.broken)


def test_a_torn_last_metrics_line_is_not_damage(trained):
    store, good = trained
    run_id = copy_run(store, good)
    with open(store.path(run_id, "metrics.jsonl"), "ab") as handle:
        handle.write(b'{"epoch": 3, "ra')  # a crash mid-append
    reader = RunStore(store.root)
    record = reader.get(run_id)
    assert record.broken is None
    assert [m["epoch"] for m in reader.epoch_rows(record)] == [1, 2]


def test_the_scheduler_and_the_cli_cope_with_every_damaged_run(damaged, capsys):
    store, good, cases = damaged
    fresh = RunStore(store.root)
    JobManager(fresh).reconcile()  # must not raise, must not start or touch broken runs
    states = {r.run_id: r.state for r in fresh.list_runs()}
    assert states[good] == "finished"
    assert all(states[run_id] == "broken" for run_id, _ in cases.values())
    assert main(["--store", str(store.root), "list"]) == 0
    assert capsys.readouterr().out.count("broken") >= len(cases)


@pytest.mark.parametrize("page", PAGES)
def test_every_page_renders_with_each_kind_of_damage(monkeypatch, damaged, page):
    store, good, cases = damaged
    at = open_app(monkeypatch, store.root, page)
    assert not at.exception, at.exception
    if page == "pages/checkpoints.py":  # the page that lists broken folders says why
        warnings = " ".join(w.value for w in at.warning)
        named = [run_id for run_id, _ in cases.values() if run_id in warnings]
        assert len(named) == min(len(cases), BROKEN_SHOWN)  # one warning each, up to the cap
        if len(cases) > BROKEN_SHOWN:  # the rest are counted, not dropped silently
            more = len(cases) - BROKEN_SHOWN
            assert any(f"{more:,} more broken run folders" in c.value for c in at.caption)


# ---- special files: no hang, no memory blow-up -------------------------------------------------
def list_with_deadline(store: RunStore, seconds: float = 20.0):
    """list_runs in a daemon thread: a hang fails the test instead of freezing it."""
    result = {}
    thread = threading.Thread(target=lambda: result.update(r=store.list_runs()), daemon=True)
    thread.start()
    thread.join(seconds)
    assert not thread.is_alive(), f"listing the store hung for {seconds} s"
    return {r.run_id: r for r in result["r"]}


@pytest.fixture
def hostile(trained, tmp_path):
    """A fresh store with the good run and runs whose files are pipes, links and giants."""
    store_src, good = trained
    root = tmp_path / "runs"
    shutil.copytree(store_src.run_dir(good), root / good)
    store = RunStore(root)
    cases = {}

    def case(name, make):
        run_id = copy_run(store, good)
        make(store.run_dir(run_id))
        cases[name] = run_id

    case("status.json is a named pipe", lambda d: _replace(d / "status.json", os.mkfifo))
    case("metrics.jsonl is a named pipe", lambda d: _replace(d / "metrics.jsonl", os.mkfifo))
    case("config.json is a named pipe", lambda d: _replace(d / "config.json", os.mkfifo))
    case("eval.json is a named pipe", lambda d: _replace(d / "eval.json", os.mkfifo))
    case(
        "metrics.jsonl links to /dev/zero",
        lambda d: _replace(d / "metrics.jsonl", lambda p: os.symlink("/dev/zero", p)),
    )
    outside = tmp_path / "outside.json"
    outside.write_text((root / good / "status.json").read_text())
    case(
        "status.json links outside the store",
        lambda d: _replace(d / "status.json", lambda p: os.symlink(outside, p)),
    )
    case(
        "metrics.jsonl is 1 GiB",  # sparse: costs no disk, but reading it would cost the memory
        lambda d: os.truncate(d / "metrics.jsonl", 1024**3),
    )
    case("status.json is 1 GiB", lambda d: os.truncate(d / "status.json", 1024**3))
    link_id = new_run_id()
    os.symlink(store.run_dir(good), root / link_id)
    cases["the run folder is a link"] = link_id
    return store, good, cases


def _replace(path: Path, make) -> None:
    path.unlink()
    make(path)


def rss_peak_kib() -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1])
    raise AssertionError("no VmHWM in /proc/self/status")


def reset_rss_peak() -> None:
    Path("/proc/self/clear_refs").write_text("5")  # resets VmHWM to the current RSS


def test_special_files_make_their_runs_broken_without_blocking(hostile):
    store, good, cases = hostile
    reset_rss_peak()
    before = rss_peak_kib()
    records = list_with_deadline(store)
    assert rss_peak_kib() - before < 100 * 1024  # no 1 GiB read: under 100 MiB of growth
    assert records[good].broken is None
    for case, run_id in cases.items():
        assert records[run_id].state == "broken", case
    reasons = {case: records[run_id].broken for case, run_id in cases.items()}
    assert "named pipe" in reasons["status.json is a named pipe"]
    assert "named pipe" in reasons["metrics.jsonl is a named pipe"]
    assert "symbolic link" in reasons["metrics.jsonl links to /dev/zero"]
    assert "symbolic link" in reasons["status.json links outside the store"]
    assert "limit" in reasons["metrics.jsonl is 1 GiB"]
    assert "limit" in reasons["status.json is 1 GiB"]
    assert "symbolic link" in reasons["the run folder is a link"]


def test_the_scheduler_does_not_block_on_special_files(hostile):
    store, good, cases = hostile
    manager = JobManager(store)
    thread = threading.Thread(target=manager.reconcile, daemon=True)
    thread.start()
    thread.join(20)
    assert not thread.is_alive(), "reconcile hung on a special file"
    # and the careful reader refuses a pipe without opening it for long
    with pytest.raises(safe_read.UnsafeFileError, match="named pipe"):
        safe_read.read_bytes(store.path(cases["status.json is a named pipe"], "status.json"), 100)


def test_checkpoint_files_that_are_pipes_or_links_are_refused(hostile):
    store, good, cases = hostile
    run_id = copy_run(store, good)
    _replace(store.path(run_id, "final.pt"), os.mkfifo)
    _replace(store.path(run_id, "model.pt"), lambda p: os.symlink("/dev/zero", p))
    result = {}
    thread = threading.Thread(
        target=lambda: result.update(p=checkpoint_problem(store, run_id)), daemon=True
    )
    thread.start()
    thread.join(20)
    assert not thread.is_alive()
    assert "named pipe" in result["p"]


@pytest.mark.parametrize("page", ["pages/checkpoints.py", "pages/train.py", "pages/tradeoff.py"])
def test_pages_render_with_pipes_and_links_in_the_store(monkeypatch, hostile, page):
    store, good, cases = hostile
    at = open_app(monkeypatch, store.root, page)
    assert not at.exception, at.exception


# ---- 6. temporary files of interrupted writes --------------------------------------------------
WRITER = """
import sys
from vae.execution.store import RunStore
store, run_id = RunStore(sys.argv[1]), sys.argv[2]
payload = {"elbo": -1.0, "padding": "x" * 3_000_000}
while True:
    store.save_eval(run_id, payload)
"""


def interrupted_copy(trained, tmp_path: Path) -> tuple[RunStore, str, Path]:
    """A copy of the trained good run in a store of its own, marked interrupted (resumable)."""
    store_src, good = trained
    store = RunStore(tmp_path / "runs")
    shutil.copytree(store_src.run_dir(good), store.run_dir(good))
    folder = store.run_dir(good)
    status = json.loads((folder / "status.json").read_text())
    (folder / "status.json").write_text(json.dumps({**status, "state": "interrupted"}))
    return store, good, folder


def test_a_temp_eval_json_left_by_a_killed_writer_is_removed_on_the_next_touch(trained, tmp_path):
    """SIGKILL a process while it writes eval.json: its temp file stays; resuming the run (the
    worker's first status write) removes it, and a temp file of a live writer is left alone."""
    store, good, folder = interrupted_copy(trained, tmp_path)
    env = {**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parent.parent)}
    left = []
    for _ in range(20):  # the kill must land between mkstemp and rename; retry until it does
        writer = subprocess.Popen([sys.executable, "-c", WRITER, str(store.root), good], env=env)
        wait_for(lambda: list(folder.glob(".eval.json.*.tmp")), timeout=60, poll=0.01)
        os.kill(writer.pid, signal.SIGKILL)
        writer.wait()
        left = list(folder.glob(".eval.json.*.tmp"))
        if left:
            break
    assert left, "never killed a writer mid-write"
    # A live process's temp file (a writer right now) must survive the clean-up.
    sleeper = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    try:
        live = folder / f".status.json.{sleeper.pid}@{HOST_TAG}-abc123.tmp"
        live.write_text("{")
        store.update_status(good, "queued", "resumed from interrupted")  # what resume() writes
        assert not any(p.exists() for p in left)
        assert live.exists()
    finally:
        sleeper.kill()
        sleeper.wait()
    assert store.read_eval(good) is not None  # the last complete eval.json is intact
    # Once that writer is gone too, the next look at the run (a fresh listing) removes its file.
    RunStore(store.root).list_runs()
    assert not live.exists()


def test_temp_files_of_other_machines_are_left_until_an_hour_old(trained, tmp_path):
    """On a shared disk a pid means nothing to another machine: its temp files are kept while
    they could still be written, and removed once an hour old, like those without a pid."""
    store, good, folder = interrupted_copy(trained, tmp_path)
    other_host = "0badc0de" if HOST_TAG != "0badc0de" else "0badc0df"
    fresh = folder / f".model.pt.999999@{other_host}-abc.tmp"
    stale = folder / f".model.pt.999998@{other_host}-abc.tmp"
    unnamed = folder / ".eval.json.k3j4x9.tmp"
    for path in (fresh, stale, unnamed):
        path.write_bytes(b"PK")
    for path in (stale, unnamed):
        os.utime(path, (0, 0))  # written long ago
    store.update_status(good, "queued")
    assert fresh.exists() and not stale.exists() and not unnamed.exists()


@pytest.mark.parametrize("kind", ["pipe", "link"])
def test_the_worker_never_appends_through_a_pipe_or_a_link(tmp_path, kind):
    """A metrics.jsonl swapped for a pipe (no reader: an append would block forever) or a link
    (the append would land outside the run) is refused with a StoreError the worker reports."""
    store = RunStore(tmp_path / "runs")
    run_id = store.create_run(tiny())
    path = store.path(run_id, "metrics.jsonl")
    target = tmp_path / "outside.jsonl"
    os.mkfifo(path) if kind == "pipe" else os.symlink(target, path)
    result = {}

    def append():
        try:
            store.append_metrics(run_id, {"epoch": 1})
        except StoreError as exc:
            result["error"] = str(exc)

    thread = threading.Thread(target=append, daemon=True)
    thread.start()
    thread.join(20)
    assert not thread.is_alive(), "append_metrics blocked"
    assert "not a plain file" in result["error"]
    assert not target.exists()
