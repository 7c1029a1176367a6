"""A backend on a Ray cluster: each job is a named, detached Ray actor that trains its runs.

The actor asks Ray for the CPUs (and GPU) its job needs, so Ray places jobs across the cluster's
nodes. It runs the same `run_job` as a local worker, on a node-local temporary run store seeded
with the runs' config.json, status.json, metrics.jsonl and model.pt sent from the app's machine.
The store of the machine that runs the app stays the one source of truth: on each reconcile the
job manager calls `RayJob.sync`, which pulls the files that changed on the node (metrics lines,
checkpoints, evaluation, status) through Ray and writes them into it (vae.execution.file_sync). No
file system shared between nodes is assumed.

A job's ref names its actor (name and namespace), so a restarted app finds it again with
`ray.get_actor` as long as the cluster lives (a cluster started with `ray start`, named by
VAE_RAY_ADDRESS); a local Ray instance started by the app ends with the app, and its runs become
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
from dataclasses import dataclass, field
from pathlib import Path

import ray
from ray.exceptions import ActorUnavailableError, GetTimeoutError, RayActorError

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
from vae.execution.procs import TRAINING_ENV
from vae.execution.store import RunStore
from vae.execution.worker import run_job

NAMESPACE = "vae"  # the Ray namespace of every job actor (get_actor finds them by name in it)
PULL_WAIT_S = 0.2  # a reconcile waits this long for a job's files, then picks them up next time
CAPACITY_CACHE_S = 5.0  # the cluster's size is asked at most this often
CLOSE_WAIT_S = 5.0  # an actor that does not end this long after `close` is killed
RETRY_CONNECT_S = 30.0  # a failed connection is reported again, not retried, for this long
_CONNECT_LOCK = threading.Lock()  # two sessions of the app must not start two instances
WORKER_ENV = TRAINING_ENV  # as the local backend: keep glibc from returning each step's memory


class JobActor:
    """Runs on a cluster node (as a Ray actor): trains one job into a node-local store.

    Training runs in a thread of its own, so that `pull`, `cancel` and `stop` are answered while
    it trains. The actor stays after training ends until a driver has pulled the last files and
    calls `close`, so a job that ends while no app watches still delivers its results later.
    """

    def __init__(self, seed: dict[str, dict[str, bytes]], run_ids, threads: int, owner: dict):
        self.root = Path(tempfile.mkdtemp(prefix="vae-ray-job-"))
        self.store = RunStore(self.root)
        for run_id, files in seed.items():
            write_files(self.store.folders, run_id, files)
        self.run_ids = list(run_ids)
        self.control = JobControl(self.store.folders)
        self.error = ""
        self.done = threading.Event()
        context = ray.get_runtime_context()
        self.placement = {
            "host": socket.gethostname(),
            "ip": ray.util.get_node_ip_address(),
            "node_id": context.get_node_id(),
            "pid": os.getpid(),
        }
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

    def pull(self, known: dict[str, dict[str, Signature]]) -> dict:
        """Files changed since `known`; `done` is read first, so when it is True the files are final."""
        done = self.done.is_set()
        files = {r: changed_files(self.store.folders, r, known.get(r, {})) for r in self.run_ids}
        return {"done": done, "error": self.error, "files": files, "placement": self.placement}

    def cancel(self, run_id: str) -> None:
        self.control.cancel(run_id)

    def stop(self) -> None:
        self.control.stop()

    def close(self) -> None:
        """The driver has every file: remove the node-local store and end the actor."""
        shutil.rmtree(self.root, ignore_errors=True)
        ray.actor.exit_actor()


def describe_placement(placement: dict | None) -> str:
    if not placement:
        return "ray (waiting for a node)"
    return f"ray node {placement['host']} ({placement['ip']})"


@dataclass
class RayJob:
    """The driver's side of one job actor (started here, or found again by its name)."""

    store: RunStore
    run_ids: list[str]
    actor: object = field(repr=False)
    actor_name: str
    placement: dict | None = None
    known: dict[str, dict[str, Signature]] = field(default_factory=dict)
    ended: str | None = None  # why the job is over (None while it lives)
    _pending: object = field(default=None, repr=False)

    def ref(self) -> dict:
        return {"backend": "ray", "actor": self.actor_name, "namespace": NAMESPACE}

    def alive(self) -> bool:
        return self.ended is None

    def sync(self) -> None:
        """Bring what the job wrote on its node since the last call into the app's store."""
        if self.ended is not None:
            return
        if self._pending is None:
            self._pending = self.actor.pull.remote(self.known)
        try:
            reply = ray.get(self._pending, timeout=PULL_WAIT_S)
        except GetTimeoutError:
            return  # not placed yet, or busy: the same pull is collected next time
        except ActorUnavailableError:
            self._pending = None
            return  # a passing network problem: ask again next time
        except RayActorError as exc:
            self._pending = None
            self.ended = f"the Ray worker training this run died ({_first_line(exc)})"
            return
        self._pending = None
        self.placement = reply["placement"]
        where = describe_placement(self.placement)
        for run_id, changes in reply["files"].items():
            apply_changes(self.store.folders, run_id, changes, where)
            known = self.known.setdefault(run_id, {})
            known.update({name: signature for name, (signature, _) in changes.items()})
        if reply["done"]:
            self.ended = reply["error"] or "the Ray job ended without finishing this run"
            self._close()

    def _close(self) -> None:
        """End the actor now that its files are here (waited for: a CLI exits right after)."""
        ready, _ = ray.wait([self.actor.close.remote()], timeout=CLOSE_WAIT_S)
        if not ready:
            ray.kill(self.actor, no_restart=True)

    def cancel_run(self, run_id: str) -> None:
        self.actor.cancel.remote(run_id)

    def stop(self, force: bool = False) -> None:
        if force:
            ray.kill(self.actor, no_restart=True)
        else:
            self.actor.stop.remote()

    def describe_exit(self) -> str:
        return self.ended or "the Ray job is gone"

    def where(self) -> str:
        return describe_placement(self.placement)


class RayBackend:
    """Jobs as detached Ray actors on the cluster at `address` (None: a local Ray instance)."""

    name = "ray"
    cluster = True
    threads_per_job = 1  # CPUs each job asks for (a run's `threads` setting asks for more)

    def __init__(self, address: str | None = None, num_cpus: int | None = None):
        self.address = address
        self.num_cpus = num_cpus  # of a local instance started here (None: all cores)
        self._capacity: tuple[float, int | None] = (0.0, None)
        self._failed: tuple[float, str] | None = None  # when and why connecting last failed

    def connect(self) -> None:
        """Join the cluster (or start a local instance) once per process; ConnectionError if not."""
        with _CONNECT_LOCK:
            if ray.is_initialized():
                return
            if self._failed and time.monotonic() - self._failed[0] < RETRY_CONNECT_S:
                raise ConnectionError(self._failed[1])
            runtime_env = {
                # The cluster's nodes need not have this project: Ray ships the package to them.
                "py_modules": [vae],
                "env_vars": WORKER_ENV,
            }
            try:
                _init_in_lasting_thread(
                    address=self.address,
                    num_cpus=None if self.address else self.num_cpus,
                    namespace=NAMESPACE,
                    include_dashboard=False,
                    log_to_driver=False,
                    logging_level=logging.WARNING,
                    runtime_env=runtime_env,
                )
            except (ConnectionError, RuntimeError, ValueError) as exc:
                where = self.address or "a new local instance"
                reason = f"could not connect to Ray at {where}: {_first_line(exc)}"
                if self.address and not os.environ.get("RAY_AUTH_MODE"):
                    reason += " (a cluster that uses token authentication, as `ray start` does "
                    reason += "by default, also needs RAY_AUTH_MODE=token and its token here)"
                self._failed = (time.monotonic(), reason)
                raise ConnectionError(reason) from None

    def start(self, store: RunStore, run_ids: list[str], threads: int) -> RayJob:
        self.connect()
        configs = [store.read_config(r) for r in run_ids]
        cpus = max([threads, *(c.threads for c in configs)])
        gpus = 1 if any(self._wants_gpu(c.device) for c in configs) else 0
        seed = {r: read_files(store.folders, r, SEED_FILES) for r in run_ids}
        name = f"vae-job-{run_ids[0]}-{secrets.token_hex(3)}"
        owner = {"backend": self.name, "actor": name, "namespace": NAMESPACE}
        actor_class = ray.remote(JobActor).options(
            name=name,
            namespace=NAMESPACE,
            lifetime="detached",  # outlives the app, so a restarted app can attach to it
            num_cpus=cpus,
            num_gpus=gpus,
            max_restarts=0,  # a dead worker's runs become interrupted and resume from model.pt
            max_concurrency=2,  # `pull` is answered while another call waits
        )
        actor = actor_class.remote(seed, run_ids, threads, owner)
        return RayJob(store, list(run_ids), actor, name)

    def owns(self, ref: dict) -> bool:
        return ref.get("backend") == self.name

    def attach(self, store: RunStore, ref: dict, run_ids: list[str]) -> RayJob | None:
        name = ref.get("actor")
        if not isinstance(name, str):
            return None
        self.connect()
        try:
            actor = ray.get_actor(name, namespace=ref.get("namespace", NAMESPACE))
        except ValueError:  # no such actor: it died, or the cluster it ran on is gone
            return None
        return RayJob(store, list(run_ids), actor, name)

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
        """Nothing to prepare: the cluster starts each job's actor."""

    def resources(self) -> dict:
        """Total and free CPUs and GPUs, and the number of live nodes (for the sidebar)."""
        self.connect()
        total, free = ray.cluster_resources(), ray.available_resources()
        nodes = sum(1 for n in ray.nodes() if n.get("Alive"))
        return {
            "nodes": nodes,
            **{f"{k.lower()}_total": total.get(k, 0) for k in ("CPU", "GPU")},
            **{f"{k.lower()}_free": free.get(k, 0) for k in ("CPU", "GPU")},
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
