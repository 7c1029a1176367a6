"""Evaluate a stored run's model and save eval.json (the worker's last step, and `vae eval`)."""

from __future__ import annotations

from collections.abc import Callable

from vae.execution.checkpoint import load_run_checkpoint, model_from_checkpoint
from vae.execution.store import RunStore
from vae.learn.data import Dataset, load_dataset
from vae.learn.engine import resolve_device
from vae.learn.evaluate import evaluate_model


def evaluate_run(
    store: RunStore,
    run_id: str,
    iw_samples: int = 100,
    dataset: Dataset | None = None,
    progress: Callable[[int, int], None] | None = None,
) -> dict:
    """Evaluate a run's final (else latest) checkpoint on its data set and save eval.json.

    `progress(done, total)` follows the IWAE bound, the slow part (the CLI prints it).
    """
    checkpoint = load_run_checkpoint(store, run_id)
    config = store.read_config(run_id)
    device = resolve_device(config)
    dataset = dataset or load_dataset(config.dataset, config.data_root, seed=config.seed)
    model = model_from_checkpoint(checkpoint, device)
    result = evaluate_model(model, dataset, config, iw_samples=iw_samples, progress=progress)
    result["epoch"] = int(checkpoint["epoch"])
    store.save_eval(run_id, result)
    return result
