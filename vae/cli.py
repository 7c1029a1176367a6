"""Command line: the same store and files as the app, without the UI.

python -m vae train --dataset digits --beta 4 --latent-dim 10 --epochs 20
python -m vae sweep --betas 0.25 0.5 1 2 4 8 --epochs 5 --jobs 2
python -m vae eval RUN_ID --iw-samples 5000
python -m vae list

The store is --store, else $VAE_STORE, else checkpoints/ (as in the app).
"""

from __future__ import annotations

import argparse
import contextlib
import sys
import time

from vae import settings
from vae.execution.backends import BACKENDS, make_backend, make_manager
from vae.execution.evaluation import evaluate_run
from vae.execution.jobs import JobManager
from vae.execution.layout import cached_layout
from vae.execution.states import ACTIVE, RunState
from vae.execution.store import RunStore, StoreError
from vae.execution.worker import JobControl, run_job
from vae.learn.config import (
    ARCHITECTURES,
    DEVICES,
    LIKELIHOODS,
    OBJECTIVES,
    ConfigError,
    RunConfig,
    sweep_betas,
)
from vae.learn.datasets import DATASETS
from vae.present.views import format_seconds, grouping_text

EVAL_REPORT_EVERY_S = 2.0

CONFIG_HELP = {
    "dataset": "data set (digits is built in and works offline)",
    "data_root": "folder holding MNIST/Fashion-MNIST files",
    "architecture": "mlp or conv",
    "hidden_dims": "hidden layer sizes (mlp: the encoder's, mirrored in the decoder; conv: FC size)",
    "latent_dim": "number of latent dimensions J",
    "likelihood": "bernoulli (binarised pixels) or gaussian (with its normaliser)",
    "dynamic_binarization": "draw fresh binary pixels each epoch (bernoulli only)",
    "gaussian_std": "decoder standard deviation (gaussian; the initial value if learned)",
    "learn_variance": "learn the gaussian decoder's variance",
    "objective": "beta (D + βR), capacity (D + γ|R − C|), warmup (β ramps up), free_bits",
    "beta": "weight β of the KL term",
    "capacity_max": "capacity objective: final C in nats",
    "capacity_gamma": "capacity objective: γ",
    "capacity_steps": "capacity objective: steps over which C rises to its maximum",
    "warmup_steps": "warm-up objective: steps over which the KL weight rises to β",
    "free_bits": "free-bits objective: per-dimension KL floor λ in nats",
    "epochs": "training epochs",
    "batch_size": "minibatch size",
    "lr": "Adam learning rate",
    "seed": "random seed (same seed and config: same numbers)",
    "threads": "torch threads (0: all cores for train, shared out for sweep)",
    "device": "auto (CUDA when available), cpu or cuda",
    "precision": "auto (bf16 where the hardware computes it natively), fp32 or bf16",
    "name": "a label for the run",
}
CHOICES = {
    "dataset": tuple(DATASETS),
    "architecture": ARCHITECTURES,
    "likelihood": LIKELIHOODS,
    "objective": OBJECTIVES,
    "device": DEVICES,
}
SHOWN_DEFAULTS = {"data_root": "./data", "name": "none"}  # defaults whose value says nothing


def shown_default(name: str, value) -> str:
    """How --help writes a default: on/off for switches, space-separated lists, words for None."""
    if name in SHOWN_DEFAULTS:
        return SHOWN_DEFAULTS[name]
    if isinstance(value, bool):
        return "on" if value else "off"
    if isinstance(value, list):
        return " ".join(str(v) for v in value)
    return f"{value:g}" if isinstance(value, float) else str(value)


def add_config_arguments(parser: argparse.ArgumentParser, skip: tuple[str, ...] = ()) -> None:
    defaults = RunConfig()
    for name, help_text in CONFIG_HELP.items():
        if name in skip:
            continue
        flag = "--" + name.replace("_", "-")
        default = getattr(defaults, name)
        help_text = f"{help_text} (default: {shown_default(name, default)})"
        if isinstance(default, bool):
            if default:
                help_text = help_text[:-1] + f"; --no-{flag[2:]} turns it off)"
            # A plain store_true/--no- pair: BooleanOptionalAction would add its own default.
            parser.add_argument(flag, dest=name, action="store_true", help=help_text)
            parser.add_argument(
                "--no-" + flag[2:], dest=name, action="store_false", help=argparse.SUPPRESS
            )
            parser.set_defaults(**{name: default})
        elif isinstance(default, list):
            parser.add_argument(flag, type=int, nargs="+", default=default, help=help_text)
        else:
            kind = type(default) if default is not None else str
            parser.add_argument(
                flag, type=kind, default=default, choices=CHOICES.get(name), help=help_text
            )


def config_from_args(args: argparse.Namespace) -> RunConfig:
    values = {k: getattr(args, k) for k in CONFIG_HELP if hasattr(args, k)}
    return RunConfig.from_dict(values).validated()


def print_epoch(run_id: str, m: dict) -> None:
    print(
        f"{run_id}  epoch {m['epoch']:>3}  R {m['rate']:7.2f}  D {m['distortion']:8.2f}  "
        f"-ELBO {-m['elbo']:8.2f}  active {m['active_units']:>3}  {m['images_per_s']:8.0f} img/s",
        flush=True,
    )


def cmd_train(args, store: RunStore) -> int:
    config = config_from_args(args)
    backend = make_backend(args.backend)
    if backend.name != "local":  # train on the cluster, followed from here like a sweep
        manager = make_manager(store, backend, max_concurrent=1)
        run_id = manager.submit(config)
        print(f"run {run_id}: {config.describe()} on {backend.name}", flush=True)
        return follow(manager, store, [run_id])
    run_id = store.create_run(config)
    print(f"run {run_id}: {config.describe()} -> {store.run_dir(run_id)}", flush=True)
    control = JobControl(store)
    control.install()
    outcome = run_job(store, [run_id], control, progress=print_epoch)[run_id]
    status = store.read_status(run_id)
    print(f"run {run_id} {outcome}{': ' + status['reason'] if status.get('reason') else ''}")
    if outcome == RunState.FINISHED:
        print_eval(store.read_eval(run_id))
    return 0 if outcome == RunState.FINISHED else 1


def cmd_sweep(args, store: RunStore) -> int:
    config = config_from_args(args)
    betas = sweep_betas(args.betas)  # the app's check: range, and no β twice
    manager = make_manager(store, make_backend(args.backend), max_concurrent=args.jobs)
    if manager.backend.name == "local" and args.jobs is None and cached_layout(store.root) is None:
        print("measuring how to lay out jobs on this machine (once; cached in the store)...")
        manager.measure_layout()
    run_ids = manager.submit_sweep(config, betas)
    print(
        f"sweep: {grouping_text(manager.jobs, run_ids, manager.slots())} · "
        f"{manager.threads()} thread(s) per job",
        flush=True,
    )
    for run_id, beta in zip(run_ids, betas, strict=True):
        print(f"  {run_id}  β={beta:g}", flush=True)
    return follow(manager, store, run_ids)


def follow(manager: JobManager, store: RunStore, run_ids: list[str]) -> int:
    """Print each epoch as it lands until the runs end; Ctrl-C cancels them."""
    printed = {r: 0 for r in run_ids}
    try:
        while True:
            manager.reconcile()
            for run_id in run_ids:
                rows = store.read_metrics(run_id)
                for m in rows[printed[run_id] :]:
                    print_epoch(run_id, m)
                printed[run_id] = len(rows)
            states = [store.read_status(r)["state"] for r in run_ids]
            if all(s not in ACTIVE for s in states):
                break
            time.sleep(0.5)
    except KeyboardInterrupt:
        for run_id in run_ids:
            with contextlib.suppress(StoreError):
                manager.cancel(run_id)
        manager.wait(run_ids, timeout_s=30)
        print("sweep cancelled: each run keeps its last completed epoch (resume continues it)")
        return 130
    print_runs(store, run_ids)
    return 0 if all(s == RunState.FINISHED for s in states) else 1


def cmd_eval(args, store: RunStore) -> int:
    print(
        f"evaluating {args.run_id} on its test split: ELBO, active units, and the IWAE bound "
        f"with k = {args.iw_samples} importance samples per image",
        flush=True,
    )
    evaluation = evaluate_run(
        store, args.run_id, iw_samples=args.iw_samples, progress=EvalProgress()
    )
    print_eval(evaluation)
    return 0


class EvalProgress:
    """Prints 'IWAE 120/1,000 images · 14 s · about 1 min 42 s left' every couple of seconds."""

    def __init__(self, every_s: float | None = None):
        self.started = time.monotonic()
        self.every_s = EVAL_REPORT_EVERY_S if every_s is None else every_s
        self.last = self.started

    def __call__(self, done: int, total: int) -> None:
        now = time.monotonic()
        if now - self.last < self.every_s and done < total:
            return
        self.last = now
        elapsed = now - self.started
        left = elapsed / done * (total - done) if done else 0.0
        estimate = f" · about {format_seconds(left)} left" if done < total else " · done"
        print(f"  IWAE {done:,}/{total:,} images · {format_seconds(elapsed)}{estimate}", flush=True)


def print_eval(evaluation: dict | None) -> None:
    if not evaluation:
        return
    keys = ("elbo", "rate", "distortion", "iwae", "iw_samples", "active_units", "mig")
    keys += ("mutual_info", "marginal_kl", "log_n")  # R = I_q + KL(q(z) ‖ p(z)), I_q ≤ ln N
    print("  ".join(f"{k} {evaluation[k]:.4g}" for k in keys if evaluation.get(k) is not None))


def print_runs(store: RunStore, run_ids: list[str] | None = None) -> None:
    records = store.list_runs()
    if run_ids is not None:
        records = [r for r in records if r.run_id in run_ids]
    print(f"{'run':22} {'state':11} {'β':>7} {'epoch':>5} {'R':>8} {'D':>9} {'-ELBO':>9}  settings")
    for r in records:
        if r.broken:
            print(f"{r.run_id:22} {'broken':11} {r.broken}")
            continue
        m = r.last_metrics
        nums = (
            "".join(
                f" {m[k] if k != 'elbo' else -m[k]:>{w}.2f}"
                for k, w in (("rate", 8), ("distortion", 9), ("elbo", 9))
            )
            if m
            else ""
        )
        print(
            f"{r.run_id:22} {r.state:11} {r.config.beta:>7g} {m.get('epoch', 0):>5}{nums}  {r.config.describe()}"
        )


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m vae", description="Train and inspect β-VAEs.")
    parser.add_argument(
        "--store", default=None, help="run store folder (default: $VAE_STORE, else checkpoints/)"
    )
    parser.add_argument(
        "--backend",
        choices=BACKENDS,
        default=None,
        help="where runs train: local processes or a Ray cluster (default: $VAE_BACKEND or local)",
    )
    sub = parser.add_subparsers(dest="command", required=True)
    train = sub.add_parser("train", help="train one run in this process")
    add_config_arguments(train)
    sweep = sub.add_parser("sweep", help="train one run per β, in parallel worker processes")
    add_config_arguments(sweep, skip=("beta",))
    sweep.add_argument(
        "--betas", type=float, nargs="+", required=True, help="the β values, each at most once"
    )
    sweep.add_argument(
        "--jobs", type=settings.argument(settings.SWEEP_JOBS), default=None,
        help="worker processes at once, 1 to 64; runs that differ only in β train as one stack "
        "per process (default: $VAE_MAX_JOBS, else the layout measured on this machine)",
    )  # fmt: skip
    ev = sub.add_parser("eval", help="evaluate a run on the test split (writes eval.json)")
    ev.add_argument("run_id")
    ev.add_argument(
        "--iw-samples", type=settings.argument(settings.IW_SAMPLES), default=100,
        help="importance samples k per test image, 1 to 10,000; time grows with k (default: 100)",
    )  # fmt: skip
    sub.add_parser("list", help="list every run in the store")
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    commands = {
        "train": cmd_train,
        "sweep": cmd_sweep,
        "eval": cmd_eval,
        "list": lambda a, s: print_runs(s) or 0,
    }
    try:
        if args.command == "sweep" and args.jobs is None:
            args.jobs = settings.read(settings.MAX_JOBS)  # None: the layout measured here
        store = RunStore(args.store or settings.read(settings.STORE))
        return commands[args.command](args, store)
    except (ConfigError, StoreError, ValueError, ConnectionError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
