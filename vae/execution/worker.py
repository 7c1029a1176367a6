"""The process that trains runs: `python -m vae.execution.worker --store ROOT RUN_ID [RUN_ID ...]`.

One worker per job, in its own OS process, so a crash or a kill touches only its own runs. It
reads each run's config from the store, resumes from model.pt if there is one, and writes
metrics, checkpoints and status back. SIGTERM asks it to stop after the current step (cancel).
"""

from __future__ import annotations

import argparse
import os
import signal
import sys
import traceback

from vae.execution.checkpoint import CheckpointError, make_checkpoint, model_from_checkpoint
from vae.execution.store import RunStore, StoreError
from vae.learn.config import RunConfig
from vae.learn.data import DataError, load_dataset
from vae.learn.train import NonFiniteLossError, TrainState, new_state, resolve_device, train


class StopFlag:
    """Set by SIGTERM/SIGINT; polled by the training loop between steps."""

    def __init__(self):
        self.stop = False

    def install(self) -> None:
        for sig in (signal.SIGTERM, signal.SIGINT):
            signal.signal(sig, self._handle)

    def _handle(self, signum, frame) -> None:
        self.stop = True

    def __call__(self) -> bool:
        return self.stop


def process_start_time(pid: int) -> str | None:
    """Kernel start time of a process (guards against a recycled pid); None where unknown."""
    try:
        with open(f"/proc/{pid}/stat") as handle:
            return handle.read().rsplit(")", 1)[1].split()[19]
    except (OSError, IndexError):
        return None


def restore_state(store: RunStore, run_id: str, config: RunConfig, image_shape) -> TrainState:
    """A fresh state, or the one saved in model.pt when the run was interrupted or cancelled."""
    device = resolve_device(config)
    state = new_state(config, image_shape, device)
    if not store.path(run_id, "model.pt").exists():
        store.truncate_metrics(run_id, 0)
        return state
    checkpoint = store.load_checkpoint(run_id, final=False)
    state.model = model_from_checkpoint(checkpoint, device).train()
    state.optimizer = type(state.optimizer)(state.model.parameters(), lr=config.lr)
    if "optimizer_state" in checkpoint:
        state.optimizer.load_state_dict(checkpoint["optimizer_state"])
    if "rng_state" in checkpoint:
        state.generator.set_state(checkpoint["rng_state"])
    state.epoch, state.step = checkpoint["epoch"], checkpoint["step"]
    store.truncate_metrics(run_id, state.epoch)
    return state


def run_one(store: RunStore, run_id: str, stop: StopFlag, threads: int = 0, progress=None) -> str:
    """Train one run to its end; returns the final state written to status.json."""
    config = store.read_config(run_id)
    if threads and not config.threads:
        config.threads = threads
    pid = os.getpid()
    store.update_status(run_id, "running", pid=pid, pid_start=process_start_time(pid))
    try:
        # download=True: MNIST files missing under the data root are fetched when a connection
        # exists; without one the run fails with a message naming the files to put there.
        dataset = load_dataset(config.dataset, config.data_root, download=True, seed=config.seed)
        shape = dataset.info.image_shape
        state = restore_state(store, run_id, config, shape)

        def on_epoch(metrics: dict, state: TrainState) -> None:
            store.append_metrics(run_id, metrics)
            store.save_checkpoint(run_id, make_checkpoint(config, state, shape, metrics))
            store.update_status(run_id, "running", pid=pid, epoch=state.epoch)
            if progress is not None:
                progress(metrics)

        state = train(config, dataset=dataset, state=state, on_epoch=on_epoch, should_stop=stop)
        if state.stopped:
            store.update_status(run_id, "cancelled", f"cancelled after epoch {state.epoch}")
            return "cancelled"
        return finish_run(store, run_id, config, state, shape)
    except (NonFiniteLossError, DataError, CheckpointError, StoreError) as exc:
        return _fail(store, run_id, str(exc))
    except Exception as exc:  # the run fails, the worker reports it; nothing else is touched
        tail = traceback.format_exc(limit=3).strip().splitlines()[-1]
        return _fail(store, run_id, f"{type(exc).__name__}: {exc} ({tail})")


def finish_run(store: RunStore, run_id: str, config: RunConfig, state: TrainState, shape) -> str:
    """Save final.pt, write eval.json, mark the run finished; shared by single and batched runs.

    The model is saved before it is evaluated, so an evaluation error is noted in the status
    reason but never turns a trained run into a failed one.
    """
    metrics = store.read_metrics(run_id)
    last = metrics[-1] if metrics else {}
    store.save_checkpoint(run_id, make_checkpoint(config, state, shape, last), final=True)
    from vae.learn.evaluate import evaluate_run  # late: keeps the worker's start-up short

    reason = ""
    try:
        evaluate_run(store, run_id)
    except Exception as exc:
        reason = f"evaluation failed: {exc}"[:500]
    store.update_status(run_id, "finished", reason, epoch=state.epoch)
    return "finished"


def _fail(store: RunStore, run_id: str, reason: str) -> str:
    try:
        store.update_status(run_id, "failed", reason[:2000])
    except StoreError:
        print(f"run {run_id} failed and its status could not be saved: {reason}", file=sys.stderr)
    return "failed"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--store", required=True, help="run store root folder")
    parser.add_argument("--threads", type=int, default=0, help="torch threads (0: config's)")
    parser.add_argument("run_ids", nargs="+")
    args = parser.parse_args(argv)
    store = RunStore(args.store)
    stop = StopFlag()
    stop.install()
    if len(args.run_ids) > 1:  # a sweep's runs that differ only in β train as one stacked model
        from vae.learn import batched

        try:
            configs = [store.read_config(run_id) for run_id in args.run_ids]
        except StoreError:
            configs = []  # run_one reports the unreadable run
        if batched.can_train_together(configs):
            outcomes = batched.run_group(store, args.run_ids, stop, args.threads)
            return 0 if all(o != "failed" for o in outcomes) else 1
    outcomes = []
    for run_id in args.run_ids:
        if stop():
            store.update_status(run_id, "cancelled", "cancelled before it started")
            continue
        outcomes.append(run_one(store, run_id, stop, args.threads))
    return 0 if all(o != "failed" for o in outcomes) else 1


if __name__ == "__main__":
    sys.exit(main())
