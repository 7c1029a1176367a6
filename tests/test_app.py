"""The real server under faults, driven through headless Chromium.

* `streamlit run app.py` is SIGKILLed while two runs train, then started again: every run is
  listed, the finished one is untouched, the worker that kept going is adopted (same pid, never
  restarted), the one whose worker was also killed is `interrupted` and resumes from the page, and
  no run is duplicated.
* A run named with HTML stays text in the DOM, and a malicious checkpoint uploaded on the
  Checkpoints page is refused without running.

Each test starts its own server on a free port and a temporary store; the finalizers stop the
servers (by process group) and the workers started on that store (by their command line).
"""

from __future__ import annotations

import contextlib
import io
import os
import signal
from pathlib import Path

import pytest
import torch
from helpers import train_run, wait_for, worker_pid
from live_app import IDLE, LiveApp, alive, launch_chromium, stop_workers, worker_pids

from vae.execution.checkpoint import load_run_checkpoint
from vae.execution.store import RunStore
from vae.learn.config import RunConfig

pytestmark = [pytest.mark.browser, pytest.mark.slow]

TINY = dict(hidden_dims=[32], latent_dim=3, batch_size=256, threads=1)


@pytest.fixture
def servers(tmp_path):
    """start() -> a Server on <tmp_path>/runs; servers and their workers are stopped after."""
    started: list[LiveApp] = []
    store_root = tmp_path / "runs"

    def start() -> LiveApp:
        started.append(LiveApp(store_root, tmp_path / "streamlit.log", max_jobs=2))
        return started[-1]

    yield start
    for server in started:
        server.stop()
    stop_workers(store_root, grace_s=2.0)


@pytest.fixture
def page():
    from playwright.sync_api import sync_playwright

    with sync_playwright() as playwright:
        browser = launch_chromium(playwright)
        try:
            context = browser.new_context(viewport={"width": 1400, "height": 1000})
            context.set_default_timeout(60_000)
            yield context.new_page()
        finally:
            browser.close()


def open_page(page, url: str) -> None:
    page.goto(url)
    page.wait_for_selector(IDLE, timeout=90_000)
    assert page.locator("[data-testid='stException']").count() == 0


def test_server_sigkill_and_restart_keeps_every_run(tmp_path, servers, page):
    store = RunStore(tmp_path / "runs")
    finished = store.create_run(RunConfig(**TINY, epochs=1, name="finished before"))
    train_run(store, finished)
    finished_files = {p.name: p.read_bytes() for p in store.run_dir(finished).iterdir()}

    first = servers()
    open_page(page, first.url)  # the first script run creates the job manager and its scheduler
    long = dict(TINY, epochs=20, batch_size=32)
    adopted = store.create_run(RunConfig(**long, name="adopted", seed=1))
    killed = store.create_run(RunConfig(**long, name="killed", seed=2))

    def both_training():
        statuses = [store.read_status(r) for r in (adopted, killed)]
        ok = all(s["state"] == "running" and s.get("epoch", 0) >= 1 for s in statuses)
        return ok and statuses

    statuses = wait_for(both_training, what="both runs training")
    before = dict(zip((adopted, killed), statuses, strict=True))
    adopted_pid, killed_pid = worker_pid(before[adopted]), worker_pid(before[killed])

    first.kill()
    assert alive(adopted_pid) and alive(killed_pid)  # the workers outlive the server
    assert [store.read_status(r)["state"] for r in (adopted, killed)] == ["running", "running"]
    os.kill(killed_pid, signal.SIGKILL)  # this one dies too, while no server watches
    os.kill(adopted_pid, signal.SIGSTOP)  # this one is held, so it is surely alive at adoption
    wait_for(lambda: not alive(killed_pid), 30, what="the killed worker gone")

    second = servers()
    open_page(page, second.url)
    wait_for(lambda: store.read_status(killed)["state"] == "interrupted", 60, what="interrupted")
    assert "gone" in store.read_status(killed)["reason"]
    status = store.read_status(adopted)
    assert status["state"] == "running" and worker_pid(status) == adopted_pid, status
    assert worker_pids(store.root) == [adopted_pid]  # adopted, not started a second time
    for run_id in (finished, adopted, killed):  # every run listed on the Train page
        page.locator("[data-testid='stText']", has_text=run_id).first.wait_for()

    os.kill(adopted_pid, signal.SIGCONT)
    page.locator(f".st-key-resume-{killed} button").click()  # resume from the page
    wait_for(lambda: store.read_status(killed)["state"] != "interrupted", 60, what="resumed")

    def all_finished():
        status = store.read_status(adopted)
        if status["state"] == "running":
            assert worker_pid(status) == adopted_pid, status  # the same process until it finishes
        states = [store.read_status(r)["state"] for r in (adopted, killed)]
        assert not {"failed", "interrupted", "cancelled"} & set(states), states
        return states == ["finished", "finished"]

    wait_for(all_finished, 300, 0.2, what="both runs finished")
    assert sorted(p.name for p in store.root.iterdir() if not p.name.startswith(".")) == sorted(
        [finished, adopted, killed]
    )  # no duplicate run
    assert {p.name: p.read_bytes() for p in store.run_dir(finished).iterdir()} == finished_files
    for run_id in (adopted, killed):
        assert [m["epoch"] for m in store.read_metrics(run_id)] == list(range(1, 21))
        assert load_run_checkpoint(store, run_id)["epoch"] == 20
    assert store.read_status(adopted)["started"] == before[adopted]["started"]  # never restarted
    wait_for(lambda: worker_pids(store.root) == [], 30, what="the workers exit")


XSS_NAME = '<img src=x onerror="window.__xss=1">'


class RunsACommand:
    def __init__(self, marker: Path):
        self.marker = marker

    def __reduce__(self):
        return (os.system, (f"touch {self.marker}",))


def test_html_run_name_stays_text_and_malicious_upload_is_refused(tmp_path, servers, page):
    store = RunStore(tmp_path / "runs")
    run_id = store.create_run(RunConfig(**TINY, epochs=1, name=XSS_NAME))
    train_run(store, run_id)
    server = servers()
    for path in ("/", "/checkpoints", "/posterior"):
        open_page(page, f"{server.url}{path}?run={run_id}")
        # The name is on the page, escaped (as text or an input's value), not as an element.
        wait_for(lambda: "&lt;img src=x" in page.content(), 60, 0.5, what=f"the name on {path}")
        assert page.locator("img[src='x']").count() == 0, path
        assert page.evaluate("typeof window.__xss") == "undefined", path

    marker = tmp_path / "MARKER"
    evil = tmp_path / "evil.pt"
    buffer = io.BytesIO()
    torch.save({"format": "beta-vae-dashboard/checkpoint-v1", "x": RunsACommand(marker)}, buffer)
    evil.write_bytes(buffer.getvalue())
    open_page(page, f"{server.url}/checkpoints")
    page.locator("[data-testid='stFileUploaderDropzoneInput']").set_input_files(str(evil))
    refusal = page.locator("[data-testid='stAlertContentError']", has_text="Refused")
    refusal.first.wait_for()
    assert "nothing in it was run" in refusal.first.inner_text()
    assert not marker.exists()


def spares_of(server_pid: int) -> list[int]:
    """The warm workers (`vae.execution.worker --wait`) that the server process started."""
    found = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        with contextlib.suppress(OSError, IndexError):
            argv = (entry / "cmdline").read_bytes().split(b"\0")
            parent = int((entry / "stat").read_text().rsplit(")", 1)[1].split()[1])
            ours = b"vae.execution.worker" in argv and b"--wait" in argv and parent == server_pid
            if ours and alive(int(entry.name)):
                found.append(int(entry.name))
    return found


def test_the_app_hands_a_run_to_a_warm_worker_and_its_spares_end_with_it(
    tmp_path, monkeypatch, page
):
    monkeypatch.setenv("VAE_WARM_WORKERS", "1")
    store = RunStore(tmp_path / "runs")
    server = LiveApp(store.root, tmp_path / "streamlit.log", max_jobs=1)
    try:
        open_page(page, server.url)  # the first script run starts the scheduler
        spare = wait_for(lambda: spares_of(server.process.pid), 60, what="a spare worker")[0]
        run_id = store.create_run(RunConfig(**TINY, epochs=2, name="warm"))
        status = wait_for(
            lambda: (s := store.read_status(run_id))["state"] == "running" and s.get("job") and s,
            60,
            what="the run handed to a worker",
        )
        assert worker_pid(status) == spare  # the spare took it: no cold start
        wait_for(lambda: store.read_status(run_id)["state"] == "finished", 120, what="finished")
        assert [m["epoch"] for m in store.read_metrics(run_id)] == [1, 2]
        replacement = wait_for(
            lambda: [p for p in spares_of(server.process.pid) if p != spare], 60, what="a new spare"
        )  # started once nothing trains; the old one has exited with its job done
        server.kill()  # a crash: the spares are told nothing but the end of their input
        wait_for(lambda: not any(alive(p) for p in replacement), 120, what="the spares ended")
    finally:
        server.stop()
        stop_workers(store.root, grace_s=2.0)
