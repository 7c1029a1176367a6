"""The Ray backend on a real local Ray cluster (2 CPUs), started once for this module.

Each job is a detached Ray actor training into a node-local store; the job manager pulls its files
into the test's store. These tests check what a user relies on: the same numbers as local
processes, cancelling one run of a stack, a killed Ray worker leaving an interrupted run that
resumes, a restarted app finding its jobs again, and every page opening on the store.
"""

import os
import signal
import threading

import pytest
import ray
import streamlit as st
from helpers import PAGES, open_app, wait_for

import ui
from vae import cli
from vae.execution.backends import make_backend
from vae.execution.checkpoint import load_run_checkpoint
from vae.execution.jobs import JobManager, make_manager
from vae.execution.local import WORKER_NICENESS
from vae.execution.ray_backend import NAMESPACE, JobActor, RayBackend
from vae.execution.states import RunState
from vae.execution.store import RunStore
from vae.learn.config import RunConfig

BETAS = [0.5, 1.0, 4.0]
TIMING_KEYS = {"images_per_s", "seconds", "time", "eval_seconds", "evaluated_at"}


@pytest.fixture(scope="module")
def ray_backend():
    """One local Ray instance with 2 CPUs for every test here (a start costs seconds).

    Started from a thread that ends at once, as a Streamlit script thread does after each rerun:
    the instance must outlive it.
    """
    backend = RayBackend(num_cpus=2)
    starter = threading.Thread(target=backend.connect)
    starter.start()
    starter.join()
    assert ray.is_initialized()
    yield backend
    ray.shutdown()


@pytest.fixture(scope="module")
def ray_sweep(ray_backend, tmp_path_factory):
    """A 3-β sweep of two epochs trained through the job manager on Ray: (store, run ids)."""
    store = RunStore(tmp_path_factory.mktemp("ray") / "runs")
    manager = make_manager(store, ray_backend, max_concurrent=2)
    run_ids = manager.submit_sweep(_config(epochs=2), BETAS)
    manager.wait(run_ids, timeout_s=300)
    return store, run_ids


def _config(**changes) -> RunConfig:
    tiny = {"dataset": "digits", "hidden_dims": [64], "latent_dim": 4, "batch_size": 256}
    return RunConfig.from_dict({**tiny, "epochs": 1, "threads": 1, **changes})


def _numbers(row: dict) -> dict:
    return {k: v for k, v in row.items() if k not in TIMING_KEYS}


def _job_actors() -> list[str]:
    names = ray.util.list_named_actors(all_namespaces=True)
    return [a["name"] for a in names if a["namespace"] == NAMESPACE]


def _actor(name: str):
    return ray.get_actor(name, namespace=NAMESPACE)


def _held_jobs(name: str) -> list[str]:
    return ray.get(_actor(name).held_jobs.remote(), timeout=30)


def test_sweep_on_ray_matches_local_processes(ray_sweep, tmp_path):
    store, run_ids = ray_sweep
    local_store = RunStore(tmp_path / "local")
    local = JobManager(local_store, max_concurrent=2, threads_per_job=1)
    local_ids = local.submit_sweep(_config(epochs=2), BETAS)
    local.wait(local_ids, timeout_s=300)
    for ray_id, local_id in zip(run_ids, local_ids, strict=True):
        status = store.read_status(ray_id)
        assert status["state"] == RunState.FINISHED, status
        assert status["where"].startswith("ray node ")
        assert local_store.read_status(local_id)["where"] == "local"
        assert "job" not in status  # an ended run names no job
        ray_rows, local_rows = store.read_metrics(ray_id), local_store.read_metrics(local_id)
        assert [r["epoch"] for r in ray_rows] == [1, 2]
        assert [_numbers(r) for r in ray_rows] == [_numbers(r) for r in local_rows]
        ray_eval, local_eval = store.read_eval(ray_id), local_store.read_eval(local_id)
        assert _numbers(ray_eval) == _numbers(local_eval)
        assert load_run_checkpoint(store, ray_id)["epoch"] == 2
    # The actors stay, warm, for the next job; every job's node-local store is closed.
    wait_for(lambda: all(not _held_jobs(a) for a in _job_actors()), 60, what="jobs to close")


def test_a_second_sweep_trains_on_the_warm_actors_with_the_same_numbers(ray_sweep, ray_backend):
    first_store, first_ids = ray_sweep
    actors = set(_job_actors())
    pids = {ray.get(_actor(a).ready.remote())["pid"] for a in actors}
    store = RunStore(first_store.root.parent / "again")
    manager = make_manager(store, ray_backend, max_concurrent=2)
    run_ids = manager.submit_sweep(_config(epochs=2), BETAS)
    assert {job.actor_name for job in manager.jobs.values()} <= actors  # no new actor started
    manager.wait(run_ids, timeout_s=300)
    assert set(_job_actors()) == actors
    assert {ray.get(_actor(a).ready.remote())["pid"] for a in actors} == pids  # same processes
    for first_id, run_id in zip(first_ids, run_ids, strict=True):
        assert store.read_status(run_id)["state"] == RunState.FINISHED
        first_rows, rows = first_store.read_metrics(first_id), store.read_metrics(run_id)
        assert [_numbers(r) for r in rows] == [_numbers(r) for r in first_rows]
        assert _numbers(store.read_eval(run_id)) == _numbers(first_store.read_eval(first_id))
        assert load_run_checkpoint(store, run_id)["epoch"] == 2


def test_ray_workers_run_at_the_local_workers_priority(ray_sweep):
    for name in _job_actors():
        pid = ray.get(_actor(name).ready.remote())["pid"]
        assert os.getpriority(os.PRIO_PROCESS, pid) == WORKER_NICENESS


def test_idle_warm_actors_count_as_free_cpus(ray_sweep, ray_backend):
    wait_for(lambda: all(not _held_jobs(a) for a in _job_actors()), 60, what="jobs to close")
    assert ray_backend.resources()["cpu_free"] == 2


def test_cancel_one_run_of_a_stack_on_ray(ray_sweep, ray_backend, store):
    warm = set(_job_actors())  # the sweep's actors, idle now
    manager = make_manager(store, ray_backend, max_concurrent=2)
    run_ids = manager.submit_sweep(_config(epochs=6, batch_size=64), BETAS)
    job = manager.jobs.get(run_ids[0])
    assert job is not None and job.run_ids == run_ids[:2]  # 3 runs, 2 CPUs: stacks of 2 and 1
    assert job.actor_name in warm  # cancelled on an actor that trained a job before
    wait_for(lambda: manager.reconcile() or store.read_metrics(run_ids[0]), 120, what="epoch 1")
    manager.cancel(run_ids[0])
    manager.wait(run_ids, timeout_s=300)
    states = [store.read_status(r)["state"] for r in run_ids]
    assert states == [RunState.CANCELLED, RunState.FINISHED, RunState.FINISHED]
    assert len(store.read_metrics(run_ids[0])) < 6
    assert [len(store.read_metrics(r)) for r in run_ids[1:]] == [6, 6]


def test_cancel_sent_as_a_job_is_handed_to_a_warm_actor(ray_sweep, ray_backend, store):
    manager = make_manager(store, ray_backend, max_concurrent=2)
    run_id = manager.submit(_config(epochs=30, batch_size=64))
    job = manager.jobs[run_id]
    manager.cancel(run_id)  # before the manager has seen the actor take the job
    manager.wait([run_id], timeout_s=120)
    status = store.read_status(run_id)
    assert status["state"] == RunState.CANCELLED, status
    assert status["reason"].startswith("cancelled before it started") or status[
        "reason"
    ].startswith("cancelled after epoch"), (
        status
    )  # the actor heard it: not killed after the grace period
    assert job.actor_name in _job_actors()
    assert len(store.read_metrics(run_id)) < 30


def test_killed_ray_worker_interrupts_and_the_run_resumes(ray_backend, store):
    manager = make_manager(store, ray_backend, max_concurrent=2)
    run_id = manager.submit(_config(epochs=5, batch_size=64))
    job = manager.jobs.get(run_id)
    wait_for(lambda: manager.reconcile() or store.read_status(run_id).get("epoch"), 120)
    os.kill(job.placement["pid"], signal.SIGKILL)  # the actor's worker process, mid-epoch
    wait_for(lambda: manager.reconcile() or store.read_status(run_id)["state"] != "running", 60)
    status = store.read_status(run_id)
    assert status["state"] == RunState.INTERRUPTED, status
    assert "Ray worker" in status["reason"] and "died" in status["reason"]
    saved = load_run_checkpoint(store, run_id, final=False)["epoch"]
    assert 1 <= saved < 5
    manager.resume(run_id)
    manager.wait([run_id], timeout_s=300)
    assert store.read_status(run_id)["state"] == RunState.FINISHED
    assert [m["epoch"] for m in store.read_metrics(run_id)] == [1, 2, 3, 4, 5]
    assert load_run_checkpoint(store, run_id)["epoch"] == 5


def test_restarted_app_attaches_to_its_ray_jobs(ray_backend, store):
    first = make_manager(store, ray_backend, max_concurrent=2)
    run_id = first.submit(_config(epochs=5, batch_size=64))
    wait_for(lambda: first.reconcile() or store.read_metrics(run_id), 120, what="epoch 1")
    gone = store.create_run(_config())  # a run whose job's actor no longer exists
    store.update_status(gone, RunState.RUNNING, job={"backend": "ray", "actor": "vae-job-x"})

    second = make_manager(store, make_backend("ray"), max_concurrent=2)  # "the restarted app"
    second.reconcile()
    assert second.jobs.get(run_id) is not None
    assert store.read_status(gone)["state"] == RunState.INTERRUPTED
    second.wait([run_id], timeout_s=300)
    assert store.read_status(run_id)["state"] == RunState.FINISHED
    assert [m["epoch"] for m in store.read_metrics(run_id)] == [1, 2, 3, 4, 5]
    assert [r.run_id for r in store.list_runs()] == [run_id, gone]  # nothing listed twice


def test_every_page_opens_on_a_store_the_ray_backend_wrote(ray_sweep, monkeypatch):
    store, run_ids = ray_sweep
    for page in PAGES:
        at = open_app(monkeypatch, store.root, page, run=run_ids[-1])
        assert not at.exception, (page, at.exception)


def test_sidebar_shows_the_ray_cluster(ray_sweep, monkeypatch):
    store, _ = ray_sweep
    monkeypatch.setenv("VAE_BACKEND", "ray")
    at = open_app(monkeypatch, store.root)
    try:
        assert not at.exception, at.exception
        sidebar = " ".join(str(m.value) for m in at.sidebar.markdown)
        assert "Ray cluster" in sidebar and "of 2 CPUs free" in sidebar, sidebar
    finally:  # the app's manager (the one AppTest built) must not outlive this module's cluster
        ui.job_manager().shutdown()
        st.cache_resource.clear()


def test_cli_sweep_on_ray(ray_backend, tmp_path, capsys):
    root = tmp_path / "runs"
    tiny = ["--hidden-dims", "64", "--latent-dim", "4", "--batch-size", "256", "--threads", "1"]
    code = cli.main(["--store", str(root), "--backend", "ray", "sweep", "--betas", "0.5", "4",
                     "--epochs", "1", *tiny])  # fmt: skip
    assert code == 0, capsys.readouterr()
    records = RunStore(root).list_runs()
    assert [r.state for r in records] == [RunState.FINISHED] * 2
    assert all(r.status["where"].startswith("ray node ") for r in records)
    assert "(2 slots, one job each)" in capsys.readouterr().out  # the cluster's 2 CPUs


def test_an_idle_actor_ends_itself_and_frees_its_name(ray_backend):
    """So an app that left a cluster does not hold its CPUs for good (a zero-CPU actor here, so
    that it is placed beside the warm ones and takes nothing from them)."""
    name = f"vae-worker-idle-test-{os.getpid()}"
    options = {"name": name, "namespace": NAMESPACE, "lifetime": "detached", "num_cpus": 0}
    actor = ray.remote(JobActor).options(**options).remote((0, 0), idle_exit_s=0.5)
    assert ray.get(actor.ready.remote(), timeout=60)["pid"] > 0
    wait_for(lambda: name not in _job_actors(), timeout=60, what="the idle actor to end")
    warm = set(_job_actors())
    assert warm and all(not _held_jobs(a) for a in warm)  # the pool's actors (5 min) stay


def test_bad_backend_settings_are_named(monkeypatch):
    with pytest.raises(ValueError, match="VAE_BACKEND=.slurm. is not valid.*one of local, ray"):
        make_backend("slurm")
    monkeypatch.setenv("VAE_RAY_ADDRESS", "not an address")
    with pytest.raises(ValueError, match="VAE_RAY_ADDRESS"):
        make_backend("ray")
