"""Command line: the same store and files as the app, without the UI.

python -m vae train --dataset digits --beta 4 --latent-dim 10 --epochs 20
python -m vae sweep --betas 0.25 0.5 1 2 4 8 --epochs 5 --jobs 2
python -m vae eval RUN_ID --iw-samples 5000
python -m vae sweep --betas 0.5 2 8 --seeds 3 --lr 3e-3
python -m vae list --filter lr=0.003 --tag baseline
python -m vae tag RUN_ID --add baseline --remove old
python -m vae note RUN_ID "lr too high: D still falling"

--help and list import no torch (they start in a fraction of a second). The store is --store, else $VAE_STORE, else checkpoints/ (as in the app).
"""

from __future__ import annotations

import argparse
import contextlib
import json
import sys
import time

from vae import settings
from vae.execution.backends import BACKENDS, make_backend
from vae.execution.jobs import MAX_SEEDS, JobManager, make_manager
from vae.execution.labels import clean_tags
from vae.execution.layout import cached_layout
from vae.execution.preflight import (
    Finding,
    data_root_finding,
    fetch_data,
    refusal,
    run_findings,
    sweep_findings,
)
from vae.execution.procs import keep_freed_memory
from vae.execution.states import ACTIVE, RunState
from vae.execution.store import RunStore, StoreError
from vae.learn.config import ConfigError, RunConfig, sweep_betas
from vae.learn.fields import SETTINGS
from vae.present import runs_table

EVAL_REPORT_EVERY_S = 2.0
DOWNLOAD_FLAG = "--download"
DOWNLOAD_HELP = (
    "fetch MNIST/Fashion-MNIST files missing under the data root first (needs a connection)"
)


def shown_default(name: str, value) -> str:
    """How --help writes a default: on/off for switches, space-separated lists, words for None."""
    setting = SETTINGS[name]
    if setting.shown_default is not None:
        return setting.shown_default
    if isinstance(value, list):
        return " ".join(str(v) for v in value)
    return setting.text(value).replace(",", "")


def add_config_arguments(parser: argparse.ArgumentParser, skip: tuple[str, ...] = ()) -> None:
    """One flag per declared setting (vae/learn/fields.py), with its help, range and choices."""
    defaults = RunConfig()
    for setting in SETTINGS.values():
        name = setting.name
        if name in skip:
            continue
        flag = setting.flag
        default = getattr(defaults, name)
        help_text = setting.help
        if setting.low is not None and setting.kind is not list:
            help_text += f", {setting.text(setting.kind(setting.low))} to "
            help_text += setting.text(setting.kind(setting.high))
        if setting.unit and setting.unit not in help_text:
            help_text += f" ({setting.unit})"
        help_text = f"{help_text} (default: {shown_default(name, default)})"
        if setting.kind is bool:
            if default:
                help_text = help_text[:-1] + f"; --no-{flag[2:]} turns it off)"
            # A plain store_true/--no- pair: BooleanOptionalAction would add its own default.
            parser.add_argument(flag, dest=name, action="store_true", help=help_text)
            parser.add_argument(
                "--no-" + flag[2:], dest=name, action="store_false", help=argparse.SUPPRESS
            )
            parser.set_defaults(**{name: default})
        elif setting.kind is list:
            parser.add_argument(flag, type=int, nargs="+", default=default, help=help_text)
        else:
            parser.add_argument(
                flag, type=setting.kind, default=default, choices=setting.choices, help=help_text
            )


def config_from_args(args: argparse.Namespace) -> RunConfig:
    values = {k: getattr(args, k) for k in SETTINGS if hasattr(args, k)}
    return RunConfig.from_dict(values).validated()


def download_first(args, config: RunConfig) -> None:
    """--download: fetch a data set's missing files before anything is created."""
    if getattr(args, "download", False) and data_root_finding(config) is not None:
        print(f"downloading {config.dataset} into {config.data_root or 'data'}...", flush=True)
        fetch_data(config)


def say_findings(found: list[Finding]) -> None:
    """Warnings on stderr before anything is created; a refusal raises (nothing is written)."""
    refused = refusal(found)
    if refused:
        raise ValueError(refused)
    for finding in found:
        print(f"warning: {finding.message} {finding.detail}", file=sys.stderr, flush=True)


def print_epoch(run_id: str, m: dict) -> None:
    print(
        f"{run_id}  epoch {m['epoch']:>3}  R {m['rate']:7.2f}  D {m['distortion']:8.2f}  "
        f"-ELBO {-m['elbo']:8.2f}  active {m['active_units']:>3}  {m['images_per_s']:8.0f} img/s",
        flush=True,
    )


def cmd_train(args, store: RunStore) -> int:
    from vae.execution.worker import JobControl, run_job  # torch: only when training here

    config = config_from_args(args)
    download_first(args, config)
    say_findings(run_findings(config))
    backend = make_backend(args.backend)
    if backend.cluster:  # train on the cluster, followed from here like a sweep
        manager = make_manager(store, backend, max_concurrent=1)
        run_id = manager.submit(config)
        print(f"run {run_id}: {config.describe()} on {backend.name}", flush=True)
        return follow(manager, store, [run_id])
    run_id = store.create_run(config)
    print(f"run {run_id}: {config.describe()} -> {store.run_dir(run_id)}", flush=True)
    control = JobControl(store.folders)
    control.install()
    keep_freed_memory()  # this process trains the run itself
    outcome = run_job(store, [run_id], control, progress=print_epoch)[run_id]
    status = store.read_status(run_id)
    print(f"run {run_id} {outcome}{': ' + status['reason'] if status.get('reason') else ''}")
    if outcome == RunState.FINISHED:
        print_eval(store.read_eval(run_id))
    return 0 if outcome == RunState.FINISHED else 1


def cmd_sweep(args, store: RunStore) -> int:
    from vae.present.views import grouping_text  # pandas: only when sweeping

    config = config_from_args(args)
    betas = sweep_betas(args.betas)  # the app's check: range, and no β twice
    download_first(args, config)
    say_findings(sweep_findings(config))
    manager = make_manager(store, make_backend(args.backend), max_concurrent=args.jobs)
    if not manager.backend.cluster and args.jobs is None and cached_layout() is None:
        print("no job layout measured on this machine yet: one job per core (the app measures it)")
    run_ids = manager.submit_sweep(config, betas, seeds=args.seeds)
    print(
        f"sweep: {grouping_text(manager.jobs, run_ids, manager.slots())} · "
        f"{manager.threads()} thread(s) per job",
        flush=True,
    )
    for run_id in run_ids:
        c = store.read_config(run_id)
        print(f"  {run_id}  β={c.beta:g}  seed {c.seed}", flush=True)
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
    from vae.execution.evaluation import evaluate_run  # torch: only when evaluating

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
        from vae.present.views import format_seconds  # pandas: only while evaluating

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


def store_rows(store: RunStore, run_ids: list[str] | None = None) -> list[dict]:
    """The runs table's rows (every setting, final metrics, tags, note) of the store's runs."""
    records = store.list_runs()
    if run_ids is not None:
        records = [r for r in records if r.run_id in run_ids]

    def labels(run_id: str) -> dict:
        try:
            return store.read_labels(run_id)
        except StoreError:
            return {}

    return runs_table.rows_of(records, labels)


def print_runs(store: RunStore, run_ids: list[str] | None = None, rows=None) -> None:
    """A table: run, state, β, epoch, R, D, −ELBO, then the settings that differ among them."""
    rows = store_rows(store, run_ids) if rows is None else rows
    varying = [n for n in runs_table.differing([r for r in rows if r["state"] != "broken"])]
    varying = [n for n in varying if n not in ("beta", "name")]
    head = f"{'run':22} {'state':11} {'β':>7} {'epoch':>5} {'R':>8} {'D':>9} {'-ELBO':>9}"
    print(head + "".join(f"  {SETTINGS[n].short or n}" for n in varying) + "  name · tags")
    for row in rows:
        if row["state"] == "broken":
            print(f"{row['run']:22} {'broken':11} {row['note']}")
            continue
        beta = runs_table.text("beta", row["beta"]) or "–"
        numbers = "".join(
            f" {runs_table.text(k, row[k]):>{w}}"
            for k, w in (("epoch", 5), ("rate", 8), ("distortion", 9), ("neg_elbo", 9))
        )
        settings_text = "".join(f"  {runs_table.text(n, row[n]) or '–'}" for n in varying)
        tags = f" [{', '.join(row['tags'])}]" if row["tags"] else ""
        print(f"{row['run']:22} {row['state']:11} {beta:>7}{numbers}{settings_text}  "
              f"{row['name'] or ''}{tags}")  # fmt: skip


def parse_filters(pairs: list[str]) -> list[tuple[str, str]]:
    """KEY=VALUE pairs of `list --filter`; a key must be a setting or a column of the table."""
    known = runs_table.headers()
    parsed = []
    for pair in pairs:
        key, sep, value = pair.partition("=")
        key = key.strip().replace("-", "_")
        if not sep or key not in known:
            raise ValueError(
                f"--filter wants KEY=VALUE with KEY one of {', '.join(known)}; got {pair[:40]!r}"
            )
        parsed.append((key, value.strip()))
    return parsed


def cmd_list(args, store: RunStore) -> int:
    rows = store_rows(store)
    where = parse_filters(args.filter or [])
    rows = [r for r in rows if runs_table.matches(r, tags=args.tag or (), where=where)]
    if args.json:
        records = {r.run_id: r for r in store.list_runs()}
        out = []
        for row in rows:
            record = records.get(row["run"])
            config = record.config.to_dict() if record is not None and record.config else None
            out.append(
                {
                    "run": row["run"],
                    "state": row["state"],
                    "settings": config,
                    "metrics": {k: row.get(k) for k in runs_table.METRICS},
                    "tags": row["tags"],
                    "note": row["note"],
                    "created": row["created"],
                }
            )
        print(json.dumps(out, indent=1, ensure_ascii=False))
        return 0
    print_runs(store, rows=rows)
    return 0


def cmd_tag(args, store: RunStore) -> int:
    labels = store.read_labels(args.run_id)
    remove = set(clean_tags(args.remove or []))
    tags = [t for t in labels["tags"] if t not in remove] + clean_tags(args.add or [])
    saved = store.write_labels(args.run_id, tags, labels["note"])
    print(f"{args.run_id}: tags {', '.join(saved['tags']) or '(none)'}")
    return 0


def cmd_note(args, store: RunStore) -> int:
    labels = store.read_labels(args.run_id)
    saved = store.write_labels(args.run_id, labels["tags"], args.text)
    print(f"{args.run_id}: note {'saved' if saved['note'] else 'cleared'}")
    return 0


def settings_int(low: int, high: int):
    """An argparse type: a whole number from low to high."""

    def parse(text: str) -> int:
        try:
            value = int(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"{text[:20]!r} is not a whole number") from None
        if not low <= value <= high:
            raise argparse.ArgumentTypeError(f"must be from {low} to {high}")
        return value

    return parse


def cmd_figures(args, store: RunStore) -> int:
    from vae.present.figure_files import write_figures  # torch and vl-convert: only for figures

    written = write_figures(store, args.target, args.out, seed=args.seed)
    for path in written:
        print(path)
    print(f"{len(written)} files in {args.out}")
    return 0


def cmd_export(args, store: RunStore) -> int:
    from vae.execution.export import export_run  # torch: only when exporting

    for path in export_run(store, args.run_id, args.out):
        print(path)
    return 0


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
    train.add_argument(DOWNLOAD_FLAG, action="store_true", help=DOWNLOAD_HELP)
    sweep = sub.add_parser("sweep", help="train one run per β, in parallel worker processes")
    add_config_arguments(sweep, skip=("beta",))
    sweep.add_argument(DOWNLOAD_FLAG, action="store_true", help=DOWNLOAD_HELP)
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
    sweep.add_argument(
        "--seeds", type=settings_int(1, MAX_SEEDS), default=1,
        help=f"runs per β, with seeds --seed, --seed + 1, ... (replicates), 1 to {MAX_SEEDS} "
        "(default: 1)",
    )  # fmt: skip
    listing = sub.add_parser(
        "list", help="list every run: state, β, R, D and the settings that differ among them"
    )
    listing.add_argument("--json", action="store_true", help="every setting and final metric")
    listing.add_argument(
        "--filter", action="append", metavar="KEY=VALUE",
        help="only runs whose KEY is VALUE, as the table writes it (lr=0.003, objective=capacity, "
        "learn_variance=on); repeat for several",
    )  # fmt: skip
    listing.add_argument("--tag", action="append", help="only runs with this tag; repeatable")
    tag = sub.add_parser("tag", help="add or remove a run's tags (stored in its folder)")
    tag.add_argument("run_id")
    tag.add_argument("--add", nargs="+", metavar="TAG", help="tags to add")
    tag.add_argument("--remove", nargs="+", metavar="TAG", help="tags to remove")
    note = sub.add_parser("note", help="set a run's note (an empty text clears it)")
    note.add_argument("run_id")
    note.add_argument("text")
    figures = sub.add_parser(
        "figures", help="write a run's or a sweep's figures as SVG, PNG and PDF (for slides)"
    )
    figures.add_argument("target", metavar="RUN_OR_SWEEP", help="a run id or a sweep's group id")
    figures.add_argument("--out", required=True, help="folder to write the files into")
    figures.add_argument("--seed", type=int, default=0, help="prior-sample seed (default: 0)")
    export = sub.add_parser(
        "export", help="write a run's encoder and decoder as torch.export .pt2 files (torch only)"
    )
    export.add_argument("run_id")
    export.add_argument("--out", required=True, help="folder to write the files into")
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    commands = {
        "train": cmd_train,
        "sweep": cmd_sweep,
        "eval": cmd_eval,
        "list": cmd_list,
        "tag": cmd_tag,
        "note": cmd_note,
        "figures": cmd_figures,
        "export": cmd_export,
    }
    try:
        if args.command == "sweep" and args.jobs is None:
            args.jobs = settings.read(settings.MAX_JOBS)  # None: the layout measured here
        root = settings.STORE.parse(args.store) if args.store else settings.read(settings.STORE)
        store = RunStore(root)
        return commands[args.command](args, store)
    except (ConfigError, StoreError, ValueError, ConnectionError) as exc:  # DataError: a ValueError
        print(f"error: {exc}", file=sys.stderr)
        return 2
