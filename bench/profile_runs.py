"""Where the time of a run goes: py-spy over whole commands, every process, native frames included.

    python bench/profile_runs.py                  # the demo, the 6-β sweep and one run
    python bench/profile_runs.py --only demo      # one of them
    python bench/profile_runs.py --precision fp32 # the same, in fp32

Each workload is a real command on a fresh temporary store, sampled by `py-spy record --native
--subprocesses` (pip install py-spy), so the worker processes' start-up, data loading, training
steps, per-epoch summaries and files, and final evaluation are all in it:

- demo: `python -m vae sweep` with the β demo's settings (digits, 6 β, 30 epochs, J = 16);
- sweep: the 6-β sweep at bench/train_speed.py's model (J = 20) and work per run (180,000
  images: 45 epochs of the 4,000 digits instead of 3 of 60,000 synthetic images);
- one run: `python -m vae train` with the defaults, the same 45 epochs, in the CLI's process.

Every sample (one stack of one thread, 100 per second) lands in one row of the table, by the
first rule that matches its stack (`CATEGORIES`); the table gives each row's CPU seconds and share.
py-spy samples only the threads Python knows: a process's extra OpenMP threads (`train` runs with
2) are not in the table, and their share of a parallel product shows as the main thread waiting
for them. The workers of the app and of `sweep` run one thread each, so nothing hides there.
Wall time is printed beside it. Samples of the parent CLI process that match no row (it starts
workers and waits) are a row of their own; `train` trains in that process, so its rows fill.
"""

from __future__ import annotations

import argparse
import os
import re
import shutil
import subprocess
import sys
import tempfile
import time
from collections import Counter
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from bench.machine import cpu_name, load_average  # noqa: E402

RATE = 100  # samples per second per process
DEMO_BETAS = ("0.5", "1", "2", "4", "8", "16")

WORKLOADS = {
    "demo": [
        "sweep",
        "--betas",
        *DEMO_BETAS,
        "--latent-dim",
        "16",
        "--epochs",
        "30",
        "--seed",
        "0",
    ],
    "sweep": ["sweep", "--betas", "0.25", "0.5", "1", "2", "4", "8", "--epochs", "45"],
    "one run": ["train", "--epochs", "45"],
}

# (row, test on the stack's frames) in order: the first that matches takes the sample.
GEMM = re.compile(r"gemm|brgemm|dnnl|mkl_blas|jit_|matmul", re.I)
ELEMENTWISE = re.compile(
    r"function_ref|Sleef|Vectorized|vectorized_|_kernel|cpu_kernel|reduced_float_copy|"
    r"copy_|binary_kernel|reduce|softplus|log_sigmoid|exp|threshold|mkl_vml",
)
CATEGORIES = [
    ("start-up: imports", lambda s: _any(s, "_find_and_load", "_compile_bytecode")),
    ("Python's garbage collector", lambda s: _any(s, "gc_collect_main")),
    ("final evaluation (IWAE k=100, rate split)", lambda s: _any(s, "evaluate_run", "finish_run")),
    ("per epoch: test summary", lambda s: _any(s, "epoch_metrics")),
    (
        "per epoch: checkpoint, film, metrics, status",
        lambda s: _any(s, "RunFiles.on_epoch", "WriteBehind._run"),  # the writer thread's work
    ),
    (
        "set-up: data, models, optimizer",
        lambda s: _any(s, "_prepare", "load_dataset", "LiveStack.of"),
    ),
    ("step: optimizer (Adam)", lambda s: _any(s, "Adam.step", "fused_adam", "zero_grad")),
    ("step: threads waiting for each other (OpenMP)", lambda s: _in_step(s) and "libgomp" in s[-1]),
    ("step: matrix products", lambda s: _in_step(s) and _leaf_gemm(s)),
    ("step: element-wise work", lambda s: _in_step(s) and bool(ELEMENTWISE.search(s[-1]))),
    ("step: Python, dispatch, autograd bookkeeping", lambda s: _in_step(s)),
    (PARENT := "the parent process (CLI: starts workers, waits)", lambda s: False),
    (OTHER := "other (worker set-up and end, status files)", lambda s: True),
]


def _any(stack: list[str], *names: str) -> bool:
    return any(name in frame for frame in stack for name in names)


def _waiting_writer(stack: list[str]) -> bool:
    """The worker's epoch writer (vae.execution.write_behind) blocked on its queue: py-spy's
    native sampling reports such a thread, but it waits in the kernel."""
    return _any(stack, "WriteBehind._work") and not _any(stack, "WriteBehind._run")


def _in_step(stack: list[str]) -> bool:
    return _any(stack, "train_models")


def _leaf_gemm(stack: list[str]) -> bool:
    """A matrix-product kernel: MKL or oneDNN by name, or code at a bare address (no library
    named): oneDNN's JIT-generated GEMMs, the only generated code in these processes, whose
    frames py-spy cannot unwind past."""
    leaf = stack[-1]
    return bool(GEMM.search(leaf) or re.fullmatch(r"0x[0-9a-f]+( \(\?\))?", leaf))


def categorise(raw: Path) -> tuple[Counter, int]:
    """Samples per row of `CATEGORIES` from py-spy's raw output (one `stack count` per line)."""
    rows: Counter = Counter()
    for line in raw.read_text(errors="replace").splitlines():
        stack, _, count = line.rpartition(" ")
        frames = stack.split(";")
        if not frames or not count.isdigit():
            continue
        in_parent = sum(f.startswith("process ") for f in frames) <= 1
        frames = [f for f in frames if not f.startswith("process ")]
        if _waiting_writer(frames):
            continue  # the epoch writer waiting for work uses no CPU
        name = next(name for name, test in CATEGORIES if test(frames))
        if in_parent and name == OTHER:
            name = PARENT
        rows[name] += int(count)
    return rows, sum(rows.values())


def profile(name: str, args: list[str], precision: str, out: Path) -> tuple[Counter, float]:
    store = Path(tempfile.mkdtemp(prefix="vae-profile-"))
    raw = out / f"{name.replace(' ', '-')}.raw"
    env = {**os.environ, "VAE_STORE": str(store), "PYTHONPATH": str(ROOT)}
    command = [sys.executable, "-m", "vae", *args, "--precision", precision]
    spy = ["py-spy", "record", "--native", "--subprocesses", "--rate", str(RATE)]
    spy += ["--format", "raw", "--output", str(raw), "--"]
    started = time.perf_counter()
    try:
        subprocess.run(spy + command, env=env, cwd=ROOT, check=True, capture_output=True)
    finally:
        wall = time.perf_counter() - started
        shutil.rmtree(store, ignore_errors=True)
    rows, _ = categorise(raw)
    return rows, wall


def table(results: dict[str, tuple[Counter, float]]) -> list[str]:
    names = list(results)
    head = "| where the CPU time goes | " + " | ".join(f"{n}: s (share)" for n in names) + " |"
    lines = [head, "|---|" + "---|" * len(names)]
    for row, _ in CATEGORIES:
        cells = []
        for name in names:
            rows, _ = results[name]
            total = sum(rows.values()) or 1
            cells.append(f"{rows[row] / RATE:.1f} ({100 * rows[row] / total:.0f}%)")
        lines.append(f"| {row} | " + " | ".join(cells) + " |")
    totals = [f"**{sum(results[n][0].values()) / RATE:.1f}**" for n in names]
    lines.append("| CPU seconds sampled, all processes | " + " | ".join(totals) + " |")
    walls = " | ".join(f"{results[n][1]:.1f}" for n in names)
    lines.append(f"| wall seconds (py-spy's sampling slows it) | {walls} |")
    return lines


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--only", choices=list(WORKLOADS), action="append")
    parser.add_argument("--precision", default="auto", choices=("auto", "fp32", "bf16"))
    parser.add_argument("--keep", metavar="DIR", help="keep py-spy's raw stacks here")
    args = parser.parse_args(argv)
    if shutil.which("py-spy") is None:
        print("py-spy is not installed: pip install py-spy", file=sys.stderr)
        return 2
    out = Path(args.keep) if args.keep else Path(tempfile.mkdtemp(prefix="vae-spy-"))
    out.mkdir(parents=True, exist_ok=True)
    print(f"CPU: {cpu_name()} · {len(os.sched_getaffinity(0))} cores · load average "
          f"{load_average()} · precision {args.precision}")  # fmt: skip
    results = {}
    for name in args.only or list(WORKLOADS):
        print(f"profiling {name}: python -m vae {' '.join(WORKLOADS[name])}", flush=True)
        results[name] = profile(name, WORKLOADS[name], args.precision, out)
    print()
    print("\n".join(table(results)))
    print(f"\nload average at the end: {load_average()}")
    if not args.keep:
        shutil.rmtree(out, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
