"""The process that trains runs: `python -m vae.execution.worker --store ROOT RUN_ID [RUN_ID ...]`.

One worker per job, in its own OS process, so a crash or a kill touches only its own runs. It
reads each run's config from the store, resumes from model.pt where there is one, trains runs that
can share a stack together (vae.learn.engine), and writes each run's metrics, checkpoints and
status through the store's run folders (it never asks the listing). It obeys two kinds of stop
(vae.execution.cancel.JobControl): the whole job, or one run alone, at its last completed epoch,
while the others train on.
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import sys
import traceback
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TextIO

import torch

from vae.execution.cancel import JobControl, take_note
from vae.execution.checkpoint import (
    CheckpointError,
    checkpoint_bytes,
    load_run_checkpoint,
    make_checkpoint,
    model_from_checkpoint,
    save_run_checkpoint,
)
from vae.execution.evaluation import evaluate_run
from vae.execution.film import FILM_FILE, Film, FilmRecorder
from vae.execution.lease import Lease
from vae.execution.procs import keep_freed_memory, local_ref, lower_priority
from vae.execution.root_files import LOG_MAX_BYTES, open_root_file
from vae.execution.states import IllegalTransition, RunState
from vae.execution.store import RunStore, StoreError
from vae.execution.write_behind import WriteBehind
from vae.learn.config import RunConfig, stack_key
from vae.learn.data import DataError, Dataset, DataSplit, load_dataset
from vae.learn.engine import (
    NonFiniteLossError,
    TrainCallbacks,
    TrainState,
    make_optimizer,
    new_state,
    resolve_device,
    train_models,
)
from vae.learn.precision import resolve_precision

Evaluate = Callable[[RunStore, str], object]


@dataclass
class Member:
    """One run of a job, ready to train."""

    run_id: str
    config: RunConfig
    state: TrainState


class RunFiles(TrainCallbacks):
    """Writes each run's files as the engine trains a stack, and passes on the job's stops.

    The writes go through a WriteBehind thread: the step loop only snapshots what an epoch leaves
    (the checkpoint's bytes, the metrics line, the film's frames) and goes on. A run that leaves
    the stack early (cancelled alone, its files unwritable, its loss NaN) gets its final status
    once its pending writes are done, and gives up its lease, so it can be resumed while the
    others train. `close` (the end of the stack) waits for every write.
    """

    def __init__(self, store, members: list[Member], dataset, control, leases, progress=None):
        self.store, self.members, self.control, self.progress = store, members, control, progress
        self.leases: dict[str, Lease] = leases
        self.shape = dataset.info.image_shape
        self.run_ids = [m.run_id for m in members]
        self.settled: dict[int, RunState] = {}  # runs whose outcome is already written
        self.writes = WriteBehind(len(members))
        self.films = [
            FilmRecorder(store.run_dir(m.run_id), dataset.test.x, self._film_writer(i))
            for i, m in enumerate(members)
        ]

    @property
    def write_errors(self) -> dict[int, str]:
        """Runs whose files could not be written, with the reason."""
        return self.writes.failed()

    def _film_writer(self, index: int):
        run_id = self.run_ids[index]

        def write(film: Film) -> None:
            try:
                self.store.write_file(run_id, FILM_FILE, film.to_bytes(), "save the film")
            except Exception as exc:  # noqa: BLE001 - a picture must never cost a run
                print(f"film of {run_id} not saved: {exc}", file=sys.stderr)

        return lambda film: self.writes.submit(index, lambda: write(film))

    def on_epoch(self, index: int, metrics: dict, state: TrainState) -> None:
        member, run_id, epoch = self.members[index], self.run_ids[index], state.epoch
        checkpoint = checkpoint_bytes(make_checkpoint(member.config, state, self.shape, metrics))
        self.writes.submit(index, lambda: self._save_epoch(run_id, metrics, checkpoint))
        self.films[index].record(state.model, epoch)  # never raises; its write is queued
        self.writes.submit(
            index, lambda: self.store.update_status(run_id, RunState.RUNNING, epoch=epoch)
        )
        if self.progress is not None:
            self.progress(run_id, metrics)

    def _save_epoch(self, run_id: str, metrics: dict, checkpoint: bytes) -> None:
        self.store.append_metrics(run_id, metrics)
        self.store.write_checkpoint(run_id, checkpoint)

    def close(self) -> None:
        """Wait for every queued write (the outcomes that follow read them)."""
        self.writes.close()

    def stop_all(self) -> bool:
        return self.control.stop_requested

    def to_drop(self) -> set[int]:
        for run_id in self.run_ids:
            self.leases[run_id].beat()
        cancelled = self.control.cancelled(self.run_ids)
        return set(self.write_errors) | {i for i, r in enumerate(self.run_ids) if r in cancelled}

    def on_dropped(self, index: int, error: Exception | None) -> None:
        self.writes.flush()  # its last epoch's files land before its final status
        run_id, write_errors = self.run_ids[index], self.write_errors
        if index in write_errors:
            self.settled[index] = fail(self.store, run_id, write_errors[index])
        elif error is not None:
            self.settled[index] = fail(self.store, run_id, str(error))
        else:
            epoch = self.members[index].state.epoch
            take_note(self.store.folders, run_id)
            reason = f"cancelled after epoch {epoch}"
            self.settled[index] = _set(self.store, run_id, RunState.CANCELLED, reason)
        self.leases[run_id].release()


def load_state(store: RunStore, run_id: str, config: RunConfig, shape) -> TrainState:
    """A fresh state, or the one saved in model.pt when the run was stopped before its end."""
    device = resolve_device(config)
    if not store.path(run_id, "model.pt").exists():
        store.truncate_metrics(run_id, 0)
        return new_state(config, shape, device)
    checkpoint = load_run_checkpoint(store, run_id, final=False)
    model = model_from_checkpoint(checkpoint, device).train()
    optimizer = make_optimizer(model.parameters(), config)
    if "optimizer_state" in checkpoint:
        optimizer.load_state_dict(checkpoint["optimizer_state"])
    generator = torch.Generator(device=device)
    generator.manual_seed(config.seed)
    if "rng_state" in checkpoint:
        generator.set_state(checkpoint["rng_state"])
    store.truncate_metrics(run_id, checkpoint["epoch"])
    return TrainState(model, optimizer, generator, checkpoint["epoch"], checkpoint["step"])


def run_job(
    store: RunStore,
    run_ids: Sequence[str],
    control: JobControl,
    *,
    threads: int = 0,
    owner: dict | None = None,
    evaluate: Evaluate = evaluate_run,
    progress: Callable[[str, dict], None] | None = None,
) -> dict[str, RunState]:
    """Train the runs of one job to their end; returns each run's final state.

    Runs that agree on everything but β and stand at the same place (all fresh, or resumed from
    the same epoch of one stack) train as one stack; the others one after another. `owner` (the
    job's ref) is written into each run's status; `evaluate` is the last step of a finished run.
    """
    outcomes: dict[str, RunState] = {}
    members: list[Member] = []
    leases: dict[str, Lease] = {}
    try:
        for run_id in run_ids:
            lease = _take_lease(store, run_id)
            if lease is None:  # another live process owns this run: leave it alone
                outcomes[run_id] = _current_state(store, run_id)
                continue
            leases[run_id] = lease
            member = _prepare(store, run_id, control, threads, owner, outcomes)
            if member is not None:
                members.append(member)
        stacks: dict[tuple, list[Member]] = {}
        for member in members:
            key = (stack_key(member.config), member.state.progress())
            stacks.setdefault(key, []).append(member)
        for stack in stacks.values():
            outcomes.update(_train_stack(store, stack, control, leases, evaluate, progress))
    finally:
        for lease in leases.values():
            lease.release()
    return {r: outcomes[r] for r in run_ids}


def _take_lease(store: RunStore, run_id: str) -> Lease | None:
    lease = Lease(store.run_dir(run_id))
    try:
        return lease if lease.acquire() else None
    except OSError as exc:  # no run folder, a read-only store...: say so in the run if possible
        fail(store, run_id, f"could not take the run's lease: {exc.strerror or exc}")
        return None


def _prepare(store, run_id, control, threads, owner, outcomes) -> Member | None:
    """Mark one run running and load its config, data and state; None (outcome noted) if not."""
    if control.stop_requested or control.cancelled([run_id]):
        outcomes[run_id] = _stop_before_start(store, run_id)
        return None
    try:
        store.update_status(run_id, RunState.RUNNING, job=owner or local_ref())
    except IllegalTransition:  # e.g. cancelled while it waited: not this worker's to train
        outcomes[run_id] = _current_state(store, run_id)
        return None
    except StoreError as exc:
        outcomes[run_id] = fail(store, run_id, str(exc))
        return None
    try:
        config = store.read_config(run_id)
        if threads and not config.threads:
            config.threads = threads
        # download=True: MNIST files missing under the data root are fetched when a connection
        # exists; without one the run fails with a message naming the files to put there.
        dataset = load_dataset(config.dataset, config.data_root, download=True, seed=config.seed)
        state = load_state(store, run_id, config, dataset.info.image_shape)
        return Member(run_id, config, state)
    except Exception as exc:  # this run fails; the job's others go on
        outcomes[run_id] = fail(store, run_id, _describe(exc))
        return None


def _train_stack(store, members: list[Member], control, leases, evaluate, progress) -> dict:
    waiting = {m.run_id for m in members if control.stop_requested or control.cancelled([m.run_id])}
    outcomes = {r: _stop_before_start(store, r) for r in waiting}
    members = [m for m in members if m.run_id not in waiting]
    if not members:
        return outcomes
    first = members[0].config
    dataset = load_dataset(first.dataset, first.data_root, seed=first.seed)
    files = RunFiles(store, members, dataset, control, leases, progress)
    try:
        result = train_models(
            [m.config for m in members],
            dataset=dataset,
            states=[m.state for m in members],
            callbacks=files,
        )
    except Exception as exc:  # every run of the stack fails with the same reason
        files.close()
        return outcomes | {m.run_id: fail(store, m.run_id, _describe(exc)) for m in members}
    files.close()  # every epoch's files are written before a run's outcome
    for index, member in enumerate(members):
        run_id, state = member.run_id, result.states[index]
        if index in files.settled:
            outcomes[run_id] = files.settled[index]
        elif index in files.write_errors:
            outcomes[run_id] = fail(store, run_id, files.write_errors[index])
        elif result.stopped:
            take_note(store.folders, run_id)
            reason = f"cancelled after epoch {state.epoch}"
            outcomes[run_id] = _set(store, run_id, RunState.CANCELLED, reason)
        else:
            outcomes[run_id] = finish_run(store, member, dataset, evaluate)
        leases[run_id].release()
    return outcomes


def finish_run(store: RunStore, member: Member, dataset: Dataset, evaluate: Evaluate) -> RunState:
    """Save final.pt, evaluate, mark the run finished.

    The model is saved before it is evaluated, so an evaluation error is noted in the status
    reason but never turns a trained run into a failed one.
    """
    run_id, state = member.run_id, member.state
    try:
        last = store.folders.latest_metrics(run_id)  # without reading every line
        checkpoint = make_checkpoint(member.config, state, dataset.info.image_shape, last)
        save_run_checkpoint(store, run_id, checkpoint, final=True)
    except (CheckpointError, StoreError) as exc:
        return fail(store, run_id, str(exc))
    reason = ""
    try:
        evaluate(store, run_id)
    except Exception as exc:
        reason = f"evaluation failed: {exc}"[:500]
    return _set(store, run_id, RunState.FINISHED, reason, epoch=state.epoch)


def _current_state(store: RunStore, run_id: str) -> RunState:
    try:
        return RunState(store.read_status(run_id)["state"])
    except StoreError:
        return RunState.FAILED


def _stop_before_start(store: RunStore, run_id: str) -> RunState:
    take_note(store.folders, run_id)
    return _set(store, run_id, RunState.CANCELLED, "cancelled before it started")


def _set(store: RunStore, run_id: str, state: RunState, reason: str, **extra) -> RunState:
    try:
        store.update_status(run_id, state, reason, **extra)
    except StoreError:
        print(
            f"run {run_id} ended {state} but its status could not be saved: {reason}",
            file=sys.stderr,
        )
    return state


def fail(store: RunStore, run_id: str, reason: str) -> RunState:
    return _set(store, run_id, RunState.FAILED, reason[:2000])


def _describe(exc: Exception) -> str:
    if isinstance(exc, NonFiniteLossError | DataError | CheckpointError | StoreError):
        return str(exc)
    tail = traceback.format_exc(limit=3).strip().splitlines()[-1]
    return f"{type(exc).__name__}: {exc} ({tail})"


def warm_up() -> None:
    """Do once, before any job is asked for, what costs a cold worker its first seconds.

    The imports are done by now; the first optimizer imports torch's compiler stack (about a
    second), and the first steps at each precision build the CPU's matrix-product kernels. One
    epoch of the default model on 256 digits, in both precisions this machine may train in, on
    the device a run of the defaults would take (so a GPU's context exists too).
    """
    digits = load_dataset("digits")
    few = Dataset(
        digits.info, DataSplit(*_first(digits.train, 256)), DataSplit(*_first(digits.test, 64))
    )
    threads = torch.get_num_threads()
    device = resolve_device(RunConfig())
    for precision in sorted({"fp32", resolve_precision("auto", device)}):
        config = RunConfig(dataset="digits", epochs=1, threads=1, precision=precision)
        train_models([config], dataset=few)
    torch.set_num_threads(threads)  # the job sets its own; else what a cold worker would have


def _first(split: DataSplit, n: int) -> tuple[torch.Tensor, torch.Tensor]:
    return split.x[:n], split.y[:n]


def read_job(stream: TextIO) -> tuple[str, int, list[str]] | None:
    """The job a server hands a warm worker: one JSON line {"store", "threads", "run_ids"}.

    None at the end of input: the server that started this worker is gone, or closed it.
    """
    line = stream.readline(1 << 20)
    if not line.strip():
        return None
    job = json.loads(line)
    if not isinstance(job, dict) or not {"store", "threads", "run_ids"} <= job.keys():
        raise ValueError("a job is a JSON object with store, threads and run_ids")
    store, threads, run_ids = job["store"], job["threads"], job["run_ids"]
    if not (isinstance(store, str) and isinstance(threads, int) and threads >= 0):
        raise ValueError("a job needs a store path and a thread count")
    if not (isinstance(run_ids, list) and run_ids and all(isinstance(r, str) for r in run_ids)):
        raise ValueError("a job needs a list of run ids")
    return store, threads, run_ids


def log_to(store_root: Path) -> None:
    """Send this process's output to the store's worker log, as a cold worker's is."""
    sys.stdout.flush()
    sys.stderr.flush()
    try:
        log = open_root_file(store_root / ".worker.log", LOG_MAX_BYTES, append=True)
    except OSError:  # e.g. a read-only store: the job's own writes will say so in its runs
        return
    os.dup2(log, 1)
    os.dup2(log, 2)
    os.close(log)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--store", help="run store root folder (required without --wait)")
    parser.add_argument("--threads", type=int, default=0, help="torch threads (0: config's)")
    parser.add_argument(
        "--nice", type=int, default=0, help="lower this process's priority by this much (0–19)"
    )
    parser.add_argument(
        "--wait",
        action="store_true",
        help="start warm: warm up, then read the job from stdin (one JSON line: store, threads, "
        "run_ids); exit at the end of input",
    )
    parser.add_argument("run_ids", nargs="*")
    args = parser.parse_args(argv)
    if args.nice > 0:
        lower_priority(args.nice)
    keep_freed_memory()  # started by hand, without the manager's environment: the same tuning
    if args.wait:
        signal.signal(signal.SIGUSR1, signal.SIG_IGN)  # a cancel's wake-up before the job is
        warm_up()  # heard: its note is looked for at the first step
        job = read_job(sys.stdin)
        if job is None:
            return 0
        args.store, args.threads, args.run_ids = job
        log_to(Path(args.store))
    if not args.store or not args.run_ids:
        parser.error("give --store and at least one run id (or --wait)")
    store = RunStore(args.store)
    control = JobControl(store.folders)
    control.install()
    outcomes = run_job(store, args.run_ids, control, threads=args.threads)
    return 0 if all(o is not RunState.FAILED for o in outcomes.values()) else 1


if __name__ == "__main__":
    code = main()
    # Every file is written and synced by now; skip the interpreter's teardown, whose collection
    # of torch's objects costs about a second of a core that another job could use.
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(code)
