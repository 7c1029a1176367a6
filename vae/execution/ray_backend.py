"""A backend on a Ray cluster: jobs train on named, detached Ray actors that stay warm between jobs.

An actor asks Ray for the CPUs (and GPU) a job needs, so Ray places jobs across the cluster's
nodes. It runs the same `run_job` as a local worker, on a node-local temporary run store seeded
with the runs' config.json, status.json, metrics.jsonl and model.pt sent from the app's machine.
The store of the machine that runs the app stays the one source of truth: on each reconcile the
job manager calls `RayJob.sync`, which collects the files that changed on the node (metrics lines,
checkpoints, evaluation, status) and writes them into it (vae.execution.file_sync). No file system
shared between nodes is assumed.

Why actors stay warm: a new Ray worker process importing torch costs seconds per job. An actor
whose job has ended and been collected waits, torch loaded, for the next job of the same size
(`_POOL`, this process's idle actors); a local instance starts one per slot as it starts. An idle
actor ends itself after IDLE_EXIT_S, so a cluster's CPUs are not held for good by an app that left.

Why nothing waits on a poll interval: `pull` is a long poll. It answers at once when files
changed, else when the job's store is next written (every write in it wakes it, and the rest of
that epoch's files are gathered for BATCH_S), else after PULL_WAIT_S. The driver always keeps one
pull in flight and only looks whether it came back (`ray.wait(timeout=0)`), so a reconcile never
blocks on the node.

A job's ref names its actor (name and namespace) and the job on it, so a restarted app finds it
again with `ray.get_actor` as long as the cluster lives (a cluster started with `ray start`, named
by VAE_RAY_ADDRESS); a local Ray instance started by the app ends with the app, and its runs become
interrupted, resumable from their last completed epoch. An actor whose worker process dies
(killed, node lost) leaves its runs interrupted the same way.
"""

from __future__ import annotations

import logging
import os
import secrets
import shutil
import socket
import tempfile
import threading
import time
import traceback
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import ray
from ray.exceptions import ActorUnavailableError, RayActorError

import vae
from vae.execution.cancel import JobControl
from vae.execution.file_sync import (
    SEED_FILES,
    Signature,
    apply_changes,
    changed_files,
    read_files,
    write_files,
)
from vae.execution.local import WORKER_NICENESS
from vae.execution.procs import TRAINING_ENV
from vae.execution.store import RunStore
from vae.execution.worker import run_job

NAMESPACE = "vae"  # the Ray namespace of every job actor (get_actor finds them by name in it)
PULL_WAIT_S = 5.0  # a pull with nothing new answers after this long (the driver never waits)
BATCH_S = 0.05  # after a write wakes a pull, the rest of that epoch's files are gathered this long
IDLE_EXIT_S = 300.0  # an actor that has held no job this long ends itself (its CPUs are freed)
HAND_OVER_MARGIN_S = 30.0  # an idle actor is not handed a job this close to ending itself
IDLE_CHECK_S = 5.0  # how often an actor looks whether it has been idle long enough to end
WARM_WAIT_S = 120.0  # a new local instance waits this long for its warm actors to be ready
CAPACITY_CACHE_S = 5.0  # the cluster's size is asked at most this often
CLOSE_WAIT_S = 5.0  # an actor that does not answer `close` this long is killed
RETRY_CONNECT_S = 30.0  # a failed connection is reported again, not retried, for this long
ACTOR_CONCURRENCY = 8  # a pull may wait on the node: take, cancel, stop and close still answer
_CONNECT_LOCK = threading.Lock()  # two sessions of the app must not start two instances
WORKER_ENV = TRAINING_ENV  # as the local backend: keep glibc from returning each step's memory

# (CPUs, GPUs) an actor holds: a job is handed only to an actor of its shape
Shape = tuple[int, int]


class NodeJob:
    """One job on an actor: its node-local store, its runs, its stops and its training thread.

    Every write into the store calls `wake` (through the run folders' change hook), which is what
    a waiting `pull` waits on.
    """

    def __init__(self, seed: dict[str, dict[str, bytes]], run_ids, threads: int, owner: dict,
                 wake: Callable[[], None]):  # fmt: skip
        self.root = Path(tempfile.mkdtemp(prefix="vae-ray-job-"))
        self.store = RunStore(self.root)
        tell_listing = self.store.folders.on_change

        def changed(run_id: str, rewritten: bool = False) -> None:
            if tell_listing is not None:
                tell_listing(run_id, rewritten)
            wake()

        self.store.folders.on_change = changed
        for run_id, files in seed.items():
            write_files(self.store.folders, run_id, files)
        self.run_ids = list(run_ids)
        self.control = JobControl(self.store.folders)
        self.error = ""
        self.done = threading.Event()
        self._wake = wake
        self.thread = threading.Thread(
            target=self._train, args=(threads, owner), name="vae-train", daemon=True
        )
        self.thread.start()

    def _train(self, threads: int, owner: dict) -> None:
        try:
            run_job(self.store, self.run_ids, self.control, threads=threads, owner=owner)
        except BaseException as exc:  # reported to the driver, which interrupts the runs left
            self.error = f"{type(exc).__name__}: {exc} ({traceback.format_exc(limit=2)[-300:]})"
        finally:
            self.done.set()
            self._wake()

    def changes(self, known: dict[str, dict[str, Signature]]) -> dict:
        """Files changed since `known`; `done` is read first, so when it is True they are final."""
        done = self.done.is_set()
        files = {r: changed_files(self.store.folders, r, known.get(r, {})) for r in self.run_ids}
        return {"done": done, "error": self.error, "files": files}

    def remove(self) -> None:
        shutil.rmtree(self.root, ignore_errors=True)


class JobActor:
    """Runs on a cluster node (as a Ray actor): trains the jobs it is handed, one at a time.

    Training runs in a thread of its own, so `pull`, `cancel` and `stop` are answered while it
    trains. A job's store stays until a driver has collected its last files and calls `close`, so
    a job that ends while no app watches still delivers its results later. Then the actor waits,
    warm, for its next job, and ends itself after IDLE_EXIT_S without one.
    """

    def __init__(self, shape: Shape, idle_exit_s: float = IDLE_EXIT_S):
        self.shape = tuple(shape)
        self.idle_exit_s = idle_exit_s
        self.jobs: dict[str, NodeJob] = {}
        self.changed = threading.Condition()
        self.version = 0  # counts the writes into the jobs' stores (what a pull waits on)
        self.idle_since = time.monotonic()
        self.ending = False
        context = ray.get_runtime_context()
        self.placement = {
            "host": socket.gethostname(),
            "ip": ray.util.get_node_ip_address(),
            "node_id": context.get_node_id(),
            "pid": os.getpid(),
        }
        threading.Thread(target=self._end_when_idle, name="vae-idle", daemon=True).start()

    def ready(self) -> dict:
        """Where it runs, once torch and the worker are imported (a new instance waits on this)."""
        return self.placement

    def take(self, job_id: str, seed, run_ids, threads: int, owner: dict) -> bool:
        """Start training a job; False if this actor is training one, or about to end."""
        with self.changed:
            if self.ending or any(not job.done.is_set() for job in self.jobs.values()):
                return False
            self.jobs[job_id] = NodeJob(seed, run_ids, threads, owner, self._wake)
            return True

    def held_jobs(self) -> list[str]:
        """The jobs whose stores are still here (not yet collected and closed by a driver)."""
        return list(self.jobs)

    def pull(
        self, job_id: str, known: dict[str, dict[str, Signature]], wait_s: float = PULL_WAIT_S
    ) -> dict:
        """The job's files changed since `known`: at once if there are any, else as soon as the
        job writes (with the rest of that write's batch), else after `wait_s` with none."""
        deadline = time.monotonic() + wait_s
        while True:
            with self.changed:
                seen = self.version
            job = self.jobs.get(job_id)
            if job is None:
                return {"gone": True, "placement": self.placement, "shape": self.shape}
            reply = job.changes(known)
            left = deadline - time.monotonic()
            if reply["done"] or any(reply["files"].values()) or left <= 0:
                return {**reply, "placement": self.placement, "shape": self.shape}
            with self.changed:
                woken = self.changed.wait_for(lambda seen=seen: self.version != seen, timeout=left)
            if woken:
                time.sleep(BATCH_S)  # the worker writes an epoch's files one after another

    def cancel(self, job_id: str, run_id: str, _after: object = None) -> None:
        """Stop one run of the job (`_after`: the job's `take`, which Ray resolves first, so a
        cancel sent at once is not lost on a threaded actor that runs calls out of order)."""
        if job_id in self.jobs:
            self.jobs[job_id].control.cancel(run_id)

    def stop(self, job_id: str, _after: object = None) -> None:
        if job_id in self.jobs:
            self.jobs[job_id].control.stop()

    def close(self, job_id: str) -> None:
        """The driver has every file of this job: remove its node-local store."""
        with self.changed:
            job = self.jobs.pop(job_id, None)
            self.idle_since = time.monotonic()
        if job is not None:
            job.remove()

    def _wake(self) -> None:
        with self.changed:
            self.version += 1
            self.changed.notify_all()

    def _end_when_idle(self) -> None:
        """End this worker process once it has held no job for IDLE_EXIT_S (frees its CPUs)."""
        while True:
            time.sleep(min(IDLE_CHECK_S, self.idle_exit_s))
            with self.changed:
                if not self.jobs and time.monotonic() - self.idle_since > self.idle_exit_s:
                    self.ending = True  # `take` refuses from now on
                    break
        os._exit(0)  # a detached actor with max_restarts=0: Ray frees its name and resources


def describe_placement(placement: dict | None) -> str:
    if not placement:
        return "ray (waiting for a node)"
    return f"ray node {placement['host']} ({placement['ip']})"


@dataclass
class WarmActor:
    """A job actor of this process that holds no job, and since when (its idle clock)."""

    actor: object = field(repr=False)
    name: str
    shape: Shape
    since: float = field(default_factory=time.monotonic)


class WarmPool:
    """This process's idle job actors, handed the next job of their shape (one Ray connection
    per process, so one pool: every RayBackend of the process shares it)."""

    def __init__(self):
        self._idle: list[WarmActor] = []
        self._lock = threading.Lock()

    def take(self, shape: Shape) -> WarmActor | None:
        """An idle actor of this shape that is not about to end itself (those are dropped)."""
        fresh = time.monotonic() - (IDLE_EXIT_S - HAND_OVER_MARGIN_S)
        with self._lock:
            self._idle = [w for w in self._idle if w.since > fresh]
            for warm in self._idle:
                if warm.shape == shape:
                    self._idle.remove(warm)
                    return warm
        return None

    def release(self, warm: WarmActor) -> None:
        with self._lock:
            self._idle.append(WarmActor(warm.actor, warm.name, warm.shape))

    def make_room(self, shape: Shape) -> None:
        """End the idle actors of other shapes: a new actor must not wait on CPUs they hold."""
        with self._lock:
            others = [w for w in self._idle if w.shape != shape]
            self._idle = [w for w in self._idle if w.shape == shape]
        for warm in others:
            ray.kill(warm.actor, no_restart=True)

    def held(self) -> dict[str, float]:
        """CPUs and GPUs the idle actors hold (free for this app's next jobs)."""
        with self._lock:
            return {
                "CPU": sum(w.shape[0] for w in self._idle),
                "GPU": sum(w.shape[1] for w in self._idle),
            }


_POOL = WarmPool()


@dataclass
class RayJob:
    """The driver's side of one job on an actor (started here, or found again by its ref)."""

    store: RunStore
    run_ids: list[str]
    actor: object = field(repr=False)
    actor_name: str
    job_id: str
    shape: Shape | None = None  # known once the actor answered (an attached job's, at first)
    placement: dict | None = None
    known: dict[str, dict[str, Signature]] = field(default_factory=dict)
    ended: str | None = None  # why the job is over (None while it lives)
    _taken: object = field(default=None, repr=False)  # the actor's answer to `take`, until read
    _pending: object = field(default=None, repr=False)  # the pull in flight

    def ref(self) -> dict:
        return {"backend": "ray", "actor": self.actor_name, "namespace": NAMESPACE,
                "job": self.job_id}  # fmt: skip

    def alive(self) -> bool:
        return self.ended is None

    def sync(self) -> None:
        """Bring what the job wrote on its node into the app's store, if a pull came back; never
        waits on the node (the next pull is in flight when this returns)."""
        if self.ended is not None or not self._took():
            return
        if self._pending is None:
            self._pending = self.actor.pull.remote(self.job_id, self.known)
        reply = self._collect()
        if reply is None:
            return
        self._apply(reply)
        if self.ended is None:
            self._pending = self.actor.pull.remote(self.job_id, self.known)

    def _took(self) -> bool:
        """Whether the actor has started this job (a pull must not overtake `take`)."""
        if self._taken is None:
            return True
        if not ray.wait([self._taken], timeout=0)[0]:
            return False
        try:
            took = ray.get(self._taken)
        except (RayActorError, ActorUnavailableError) as exc:
            took, reason = (
                False,
                f"the Ray worker meant to train this run died ({_first_line(exc)})",
            )
        else:
            reason = "the warm Ray worker handed this job had ended; resume the run"
        self._taken = None
        if not took:
            self.ended = reason
        return took

    def _collect(self) -> dict | None:
        """The pull's reply if it came back (None: not yet, or the job ended: `ended` says why)."""
        if not ray.wait([self._pending], timeout=0)[0]:
            return None
        try:
            reply = ray.get(self._pending)
        except ActorUnavailableError:
            self._pending = None
            return None  # a passing network problem: ask again next time
        except RayActorError as exc:
            self._pending = None
            self.ended = f"the Ray worker training this run died ({_first_line(exc)})"
            return None
        self._pending = None
        return reply

    def _apply(self, reply: dict) -> None:
        self.placement, self.shape = reply["placement"], tuple(reply["shape"])
        if reply.get("gone"):
            self.ended = "the Ray worker no longer holds this job"
            return
        where = describe_placement(self.placement)
        for run_id, changes in reply["files"].items():
            apply_changes(self.store.folders, run_id, changes, where)
            known = self.known.setdefault(run_id, {})
            known.update({name: signature for name, (signature, _) in changes.items()})
        if reply["done"]:
            self.ended = reply["error"] or "the Ray job ended without finishing this run"
            self._close()

    def _close(self) -> None:
        """Free the job's node-local store now that its files are here (waited for: a CLI exits
        right after), and hand the actor, warm, to the next job."""
        ready, _ = ray.wait([self.actor.close.remote(self.job_id)], timeout=CLOSE_WAIT_S)
        if ready:
            _POOL.release(WarmActor(self.actor, self.actor_name, self.shape))
        else:
            ray.kill(self.actor, no_restart=True)

    def cancel_run(self, run_id: str) -> None:
        self.actor.cancel.remote(self.job_id, run_id, self._taken)

    def stop(self, force: bool = False) -> None:
        if force:
            ray.kill(self.actor, no_restart=True)  # never handed on: it is not released
        else:
            self.actor.stop.remote(self.job_id, self._taken)

    def describe_exit(self) -> str:
        return self.ended or "the Ray job is gone"

    def where(self) -> str:
        return describe_placement(self.placement)


class RayBackend:
    """Jobs on detached Ray actors on the cluster at `address` (None: a local Ray instance)."""

    name = "ray"
    cluster = True
    threads_per_job = 1  # CPUs each job asks for (a run's `threads` setting asks for more)

    def __init__(self, address: str | None = None, num_cpus: int | None = None):
        self.address = address
        self.num_cpus = num_cpus  # of a local instance started here (None: all cores)
        self._capacity: tuple[float, int | None] = (0.0, None)
        self._failed: tuple[float, str] | None = None  # when and why connecting last failed

    def connect(self) -> None:
        """Join the cluster (or start a local instance, with one warm actor per slot) once per
        process; ConnectionError if not."""
        with _CONNECT_LOCK:
            if ray.is_initialized():
                return
            if self._failed and time.monotonic() - self._failed[0] < RETRY_CONNECT_S:
                raise ConnectionError(self._failed[1])
            try:
                _init_in_lasting_thread(**self._init_options())
            except (ConnectionError, RuntimeError, ValueError) as exc:
                where = self.address or "a new local instance"
                reason = f"could not connect to Ray at {where}: {_first_line(exc)}"
                if self.address and not os.environ.get("RAY_AUTH_MODE"):
                    reason += " (a cluster that uses token authentication, as `ray start` does "
                    reason += "by default, also needs RAY_AUTH_MODE=token and its token here)"
                self._failed = (time.monotonic(), reason)
                raise ConnectionError(reason) from None
            if self.address is None:
                self._warm_up()

    def _init_options(self) -> dict:
        options = {
            "address": self.address,
            "namespace": NAMESPACE,
            "include_dashboard": False,
            "log_to_driver": False,
            "logging_level": logging.WARNING,
            # The cluster's nodes need not have this project: Ray ships the package to them.
            "runtime_env": {"py_modules": [vae], "env_vars": WORKER_ENV},
        }
        if self.address is None:  # a local instance: its workers at the local workers' priority
            options["num_cpus"] = self.num_cpus
            options["_system_config"] = {"worker_niceness": WORKER_NICENESS}
        return options

    def _warm_up(self) -> None:
        """One warm actor per slot of a new local instance, ready (torch imported) before the
        first job: a job then starts without a new worker process."""
        shape = (self.threads_per_job, 0)
        slots = int(ray.cluster_resources().get("CPU", 0) // self.threads_per_job)
        warm = [self._new_actor(shape) for _ in range(slots)]
        if not warm:
            return  # an instance without CPUs: its jobs wait for one, as before
        ray.wait([w.actor.ready.remote() for w in warm], num_returns=len(warm),
                 timeout=WARM_WAIT_S)  # fmt: skip
        for actor in warm:
            _POOL.release(actor)

    def _new_actor(self, shape: Shape) -> WarmActor:
        _POOL.make_room(shape)
        name = f"vae-worker-{secrets.token_hex(4)}"
        actor_class = ray.remote(JobActor).options(
            name=name,
            namespace=NAMESPACE,
            lifetime="detached",  # outlives the app, so a restarted app can attach to it
            num_cpus=shape[0],
            num_gpus=shape[1],
            max_restarts=0,  # a dead worker's runs become interrupted and resume from model.pt
            max_concurrency=ACTOR_CONCURRENCY,
        )
        return WarmActor(actor_class.remote(shape), name, shape)

    def start(self, store: RunStore, run_ids: list[str], threads: int) -> RayJob:
        self.connect()
        configs = [store.read_config(r) for r in run_ids]
        cpus = max([threads, *(c.threads for c in configs)])
        gpus = 1 if any(self._wants_gpu(c.device) for c in configs) else 0
        seed = {r: read_files(store.folders, r, SEED_FILES) for r in run_ids}
        job_id = f"{run_ids[0]}-{secrets.token_hex(3)}"
        warm = _POOL.take((cpus, gpus)) or self._new_actor((cpus, gpus))
        owner = {"backend": self.name, "actor": warm.name, "namespace": NAMESPACE, "job": job_id}
        taken = warm.actor.take.remote(job_id, seed, run_ids, threads, owner)
        return RayJob(store, list(run_ids), warm.actor, warm.name, job_id, warm.shape, _taken=taken)

    def owns(self, ref: dict) -> bool:
        return ref.get("backend") == self.name

    def attach(self, store: RunStore, ref: dict, run_ids: list[str]) -> RayJob | None:
        name, job_id = ref.get("actor"), ref.get("job")
        if not isinstance(name, str) or not isinstance(job_id, str):
            return None  # (a ref without a job: an actor of an earlier version, one per job)
        self.connect()
        try:
            actor = ray.get_actor(name, namespace=ref.get("namespace", NAMESPACE))
        except ValueError:  # no such actor: it died, or the cluster it ran on is gone
            return None
        return RayJob(store, list(run_ids), actor, name, job_id)

    def capacity(self, threads: int) -> int | None:
        """Jobs of `threads` CPUs the cluster holds at once (it may grow or shrink); None while
        the cluster cannot be reached (starting a job then fails with the reason)."""
        asked, slots = self._capacity
        if slots is None or time.monotonic() - asked > CAPACITY_CACHE_S:
            try:
                self.connect()
            except ConnectionError:
                return None
            cpus = ray.cluster_resources().get("CPU", 0)
            slots = max(1, int(cpus // max(1, threads)))
            self._capacity = (time.monotonic(), slots)
        return slots

    def keep_ready(self, jobs: int) -> None:
        """Nothing more to prepare: a local instance starts its warm actors as it connects, and
        an actor freed by a job stays warm for the next (a cluster's are made per job)."""

    def resources(self) -> dict:
        """Total and free CPUs and GPUs, and the number of live nodes (for the sidebar). What
        this app's idle warm actors hold counts as free: the next job gets it at once."""
        self.connect()
        total, free, warm = ray.cluster_resources(), ray.available_resources(), _POOL.held()
        nodes = sum(1 for n in ray.nodes() if n.get("Alive"))
        return {
            "nodes": nodes,
            **{f"{k.lower()}_total": total.get(k, 0) for k in ("CPU", "GPU")},
            **{f"{k.lower()}_free": free.get(k, 0) + warm[k] for k in ("CPU", "GPU")},
        }

    def _wants_gpu(self, device: str) -> bool:
        if device == "cuda":
            return True
        return device == "auto" and ray.cluster_resources().get("GPU", 0) > 0


def _init_in_lasting_thread(**options) -> None:
    """`ray.init` from a daemon thread that never ends.

    A local instance's own processes (GCS, raylet) are killed when the thread that started them
    ends (Ray sets PR_SET_PDEATHSIG on them), and Streamlit runs each script rerun in a thread
    that ends: started from a page, the instance would die a moment later.
    """
    outcome: list[BaseException | None] = []
    ready = threading.Event()

    def keep() -> None:
        try:
            ray.init(**options)
            outcome.append(None)
        except BaseException as exc:  # handed to the caller below
            outcome.append(exc)
        ready.set()
        if outcome[0] is None:
            threading.Event().wait()  # for the life of the process

    threading.Thread(target=keep, name="vae-ray-driver", daemon=True).start()
    ready.wait()
    if outcome[0] is not None:
        raise outcome[0]


def _first_line(exc: Exception) -> str:
    text = str(exc).strip().splitlines()
    return text[0][:300] if text else type(exc).__name__
