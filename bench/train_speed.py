"""Training speed: the canonical PyTorch VAE loop against this project's trainers, in one run.

    python bench/train_speed.py                      # full run, about 8-10 minutes on 2 cores
    python bench/train_speed.py --quick              # about 1-2 minutes: fewer epochs and repeats
    python bench/train_speed.py --write bench/RESULTS.md
    python bench/train_speed.py --ray-only           # only row 4: Ray against local processes

Same machine, data and model for every row: an MLP VAE 784-400-20-400-784 trained with Adam
(lr 1e-3) at batch 128 on 60,000 synthetic MNIST-shaped images. Every measurement runs in a fresh
child process (so one setup's allocator state cannot leak into the next), the setups alternate
within each repeat, and each figure is quoted as median [min-max] over the repeats. The parent
only generates the data, starts children and prints the table.

Rows
1. GEMM ceiling: fp32 torch.mm GFLOP/s at the model's shapes (the 11 matrix products of one
   training step, run back to back), with 2 threads and with 1.
2. Single run: the canonical DataLoader loop (bench/canonical_vae.py) vs `vae.learn.engine.train`
   with precision auto (the default: bf16 where the CPU has bf16 units) and fp32: training
   images/s over epochs >= 2, final training loss per image, peak RSS, page faults.
3. β sweep (6 values, 3 epochs each): the canonical loop run sequentially vs the sweep as the app
   runs it, through the job runner, in every layout the runner can choose (jobs at once x threads,
   a stack per job), the one it measured and chose on this machine marked, and that one again with
   warm workers (started and warmed before the press, as the app keeps its spares while idle);
   wall time from pressing Sweep to the last run finished, each run's final evaluation included.
4. The same β sweep through the job manager (built-in digits, final evaluation included) on local
   worker processes and on a local Ray instance (`vae.execution.ray_backend`): Ray's start-up,
   and its overhead in seconds and as a ratio.

The synthetic images are thin strokes and blobs rendered with a fixed seed and thresholded to
{0, 1}. Binary pixels make the two objectives the same number: the example's BCE(sum) + KLD(sum)
per image equals the project's D + βR (its Bernoulli binarisation of a 0/1 image is the image).
Every per-epoch metric, checkpoint, status write and the final evaluation of a real run is
included in the project's sweep rows; the canonical example has none of them.
"""

from __future__ import annotations

import argparse
import datetime
import functools
import json
import os
import platform
import resource
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

BETAS = (0.25, 0.5, 1.0, 2.0, 4.0, 8.0)
N_TRAIN, N_TEST = 60_000, 2_000
BATCH = 128
FORWARD_MACS = 784 * 400 + 400 * 40 + 20 * 400 + 400 * 784  # 651,200 multiply-adds per image
# FLOPs per training image. Conventional estimate: backward = 2 x forward, so 3 x fwd x 2.
FLOPS_CONVENTIONAL = 3 * FORWARD_MACS * 2  # 3.91 MFLOP
# Exact: forward + weight gradients + input gradients of every layer but the first.
FLOPS_EXACT = 2 * (2 * FORWARD_MACS + 400 * 784 + 20 * 400 + 40 * 400)  # 3.28 MFLOP
MALLOC_ENV = {"MALLOC_TRIM_THRESHOLD_": "268435456", "MALLOC_MMAP_THRESHOLD_": "268435456"}


# ---- data ----------------------------------------------------------------------------------


def make_images(n: int, seed: int):
    """n binary 28x28 images (uint8 0/1): 1-3 thick strokes, half of them with a round blob."""
    import torch

    g = torch.Generator().manual_seed(seed)
    coords = torch.arange(28, dtype=torch.float32) + 0.5
    py, px = coords.view(1, 28, 1), coords.view(1, 1, 28)
    out = torch.empty(n, 1, 28, 28, dtype=torch.uint8)
    chunk = 4096
    for start in range(0, n, chunk):
        m = min(chunk, n - start)
        ink = torch.zeros(m, 28, 28, dtype=torch.bool)
        strokes = torch.randint(1, 4, (m,), generator=g)
        for s in range(3):
            a = (4 + 20 * torch.rand(m, 2, generator=g))[:, :, None, None]
            ab = (4 + 20 * torch.rand(m, 2, generator=g))[:, :, None, None] - a
            width = (0.8 + 1.2 * torch.rand(m, generator=g))[:, None, None]
            ax, ay = px - a[:, 0], py - a[:, 1]
            t = ((ax * ab[:, 0] + ay * ab[:, 1]) / (ab.pow(2).sum(1) + 1e-6)).clamp_(0, 1)
            d2 = (ax - t * ab[:, 0]).square_() + (ay - t * ab[:, 1]).square_()
            ink |= (d2 < width.square()) & (s < strokes)[:, None, None]
        centre = (6 + 16 * torch.rand(m, 2, generator=g))[:, :, None, None]
        radius = (1.5 + 3.0 * torch.rand(m, generator=g))[:, None, None]
        has_blob = (torch.rand(m, generator=g) < 0.5)[:, None, None]
        d2 = (px - centre[:, 0]).square_() + (py - centre[:, 1]).square_()
        ink |= (d2 < 2 * 0.6931 * radius.square()) & has_blob  # exp(-d²/2r²) > 1/2
        out[start : start + m, 0] = ink
    return out


def write_data(path: Path, n_train: int) -> dict:
    import torch

    x = make_images(n_train + N_TEST, seed=0)
    torch.save({"x": x[:n_train].clone(), "xt": x[n_train:].clone()}, path)
    return {"n_train": n_train, "n_test": N_TEST, "ink": float(x.float().mean())}


def load_data(path: str):
    """(train images float32 [N,1,28,28], the project's Dataset) from the file the parent wrote."""
    import torch

    from vae.learn.data import Dataset, DatasetInfo, DataSplit

    blob = torch.load(path, weights_only=True)
    x, xt = blob["x"].float(), blob["xt"].float()
    info = DatasetInfo("synthetic", "synthetic strokes", "bench data", (1, 28, 28), False)
    dataset = Dataset(
        info,
        DataSplit(x, torch.zeros(len(x), dtype=torch.int64)),
        DataSplit(xt, torch.zeros(len(xt), dtype=torch.int64)),
    )
    return x, dataset


def bench_config(**overrides):
    from vae.learn.config import RunConfig

    base = dict(dataset="digits", hidden_dims=[400], latent_dim=20, batch_size=BATCH, lr=1e-3)
    base.update(device="cpu", threads=2, seed=1, epochs=3)
    base.update(overrides)
    return RunConfig(**base)


# ---- children: each measurement in a fresh process -----------------------------------------


def _usage() -> dict:
    r = resource.getrusage(resource.RUSAGE_SELF)
    return {"maxrss_mb": r.ru_maxrss / 1024, "minflt": r.ru_minflt}


def child_gemm(args: dict) -> dict:
    """GFLOP/s of the matrix products of one training step, as each trainer issues them."""
    import torch

    torch.set_num_threads(args["threads"])
    torch.manual_seed(0)
    b, k, n, h, j = BATCH, len(BETAS), 784, 400, 20

    def r(*shape):
        return torch.rand(*shape) - 0.5

    single = [  # (m, k, n) of the 11 products of one model's step (nn.Linear: x @ W.t())
        (b, n, h), (b, h, 2 * j), (b, j, h), (b, h, n),  # forward
        (b, n, h), (b, h, j), (b, 2 * j, h),  # input gradients (none for the first layer)
        (n, b, h), (h, b, j), (2 * j, b, h), (h, b, n),  # weight gradients
    ]  # fmt: skip
    pairs = [(r(m, kk), r(kk, nn)) for m, kk, nn in single]
    outs = [torch.empty(m, nn) for m, _, nn in single]
    single_flops = sum(2 * m * kk * nn for m, kk, nn in single)

    def single_step():
        for (x, w), o in zip(pairs, outs, strict=True):
            torch.mm(x, w, out=o)

    # vae.learn.stack.StackedMLP with 6 models: one wide product for the shared first layer, bmm for the rest
    x, w1, dh1 = r(b, n), r(k * h, n), r(b, k * h)
    acts = {s: r(k, b, s) for s in (h, 2 * j, j, n)}
    weights = {(i, o): r(k, i, o) for i, o in ((h, 2 * j), (j, h), (h, n))}

    def stacked_step():
        torch.mm(x, w1.t())  # forward, layer 1
        torch.bmm(acts[h], weights[h, 2 * j])
        torch.bmm(acts[j], weights[j, h])
        torch.bmm(acts[h], weights[h, n])
        torch.bmm(acts[n], weights[h, n].transpose(1, 2))  # input gradients
        torch.bmm(acts[h], weights[j, h].transpose(1, 2))
        torch.bmm(acts[2 * j], weights[h, 2 * j].transpose(1, 2))
        torch.mm(dh1.t(), x)  # weight gradients
        torch.bmm(acts[h].transpose(1, 2), acts[n])
        torch.bmm(acts[j].transpose(1, 2), acts[h])
        torch.bmm(acts[h].transpose(1, 2), acts[2 * j])

    def rate(fn, work, seconds):
        for _ in range(10):
            fn()
        t0, calls = time.perf_counter(), 0
        while time.perf_counter() - t0 < 0.1:
            fn()
            calls += 1
        per_round = max(1, int(calls * seconds / 0.1 / 7))
        results = []
        for _ in range(7):
            t = time.perf_counter()
            for _ in range(per_round):
                fn()
            results.append(work * per_round / (time.perf_counter() - t) / 1e9)
        return statistics.median(results), min(results), max(results)

    fc1_x, fc1_w = pairs[0]
    big = r(1024, 1024)
    res = {
        "single": rate(single_step, single_flops, 1.0),
        "stacked": rate(stacked_step, k * single_flops, 1.0),
        "fc1": rate(lambda: torch.mm(fc1_x, fc1_w, out=outs[0]), 2 * b * n * h, 0.5),
        "big": rate(lambda: torch.mm(big, big), 2 * 1024**3, 0.5),
    }
    if args.get("bf16"):
        xb, wb = fc1_x.bfloat16(), fc1_w.bfloat16()
        res["fc1_bf16"] = rate(lambda: torch.mm(xb, wb), 2 * b * n * h, 0.3)
    return res


def child_canonical(args: dict) -> dict:
    import torch

    from bench.canonical_vae import train_canonical

    torch.set_num_threads(args["threads"])
    x, _ = load_data(args["data"])
    labels = torch.zeros(len(x), dtype=torch.int64)
    before = _usage()
    rows = train_canonical(x, labels, args["epochs"], seed=args["seed"])
    after = _usage()
    steps = args["epochs"] * -(-len(x) // BATCH)
    return {"rows": rows, **after, "faults_per_step": (after["minflt"] - before["minflt"]) / steps}


def child_project(args: dict) -> dict:
    from vae.execution.procs import keep_freed_memory
    from vae.learn.engine import train

    keep_freed_memory()  # as every process that trains does (the worker, the CLI)

    _, dataset = load_data(args["data"])
    config = bench_config(
        epochs=args["epochs"], seed=args["seed"], threads=args["threads"],
        precision=args.get("precision", "auto"),
    )  # fmt: skip
    rows = []
    before = _usage()
    state = train(config, dataset=dataset, on_epoch=lambda m, s: rows.append(m))
    after = _usage()
    keep = ("epoch", "seconds", "images_per_s", "train_loss", "elbo")
    rows = [{k: r[k] for k in keep} for r in rows]
    for r in rows:
        r["loss"] = r["train_loss"]
    return {
        "rows": rows,
        **after,
        "faults_per_step": (after["minflt"] - before["minflt"]) / state.step,
    }


def child_canonical_sweep(args: dict) -> dict:
    import torch

    from bench.canonical_vae import train_canonical

    torch.set_num_threads(args["threads"])
    x, _ = load_data(args["data"])
    labels = torch.zeros(len(x), dtype=torch.int64)
    losses = {}
    for beta in args["betas"]:
        rows = train_canonical(x, labels, args["epochs"], seed=args["seed"], beta=beta)
        losses[beta] = rows[-1]["loss"]
    return {"losses": losses, **_usage()}


def child_worker(args: dict) -> dict:
    """The worker's job (`vae.execution.worker.run_job`), on the bench data.

    The bench's synthetic images stand in for the named data set (the one substitution made
    here); the final evaluation runs only when args["evaluate"] says so: the canonical example has
    none, so the sweep rows that compare with it leave it out.
    """
    from vae.execution import worker
    from vae.execution.evaluation import evaluate_run
    from vae.execution.store import RunStore

    _, dataset = load_data(args["data"])
    worker.load_dataset = lambda *a, **k: dataset
    store = RunStore(args["store"])
    control = worker.JobControl(store)
    control.install()
    if args.get("evaluate"):  # the real evaluation step, on the bench's test images
        evaluate = functools.partial(evaluate_run, dataset=dataset)
    else:
        evaluate = lambda store, run_id: None  # noqa: E731
    outcomes = worker.run_job(
        store, args["run_ids"], control, threads=args["threads"], evaluate=evaluate
    )
    return {"outcomes": list(outcomes.values()), **_usage()}


def child_warm_worker(args: dict) -> dict:
    """A bench worker started ahead of its job, as the app's spare workers are: imports, the
    bench data and `vae.execution.worker.warm_up`, then a file in the store saying it is ready;
    its job's arguments come as one JSON line on stdin."""
    from vae.execution import worker

    load_data(args["data"])
    worker.warm_up()
    Path(args["ready"]).touch()
    job = json.loads(sys.stdin.readline())
    return child_worker(job)


def child_backend_sweep(args: dict) -> dict:
    """The 6-β sweep through the job manager on a real backend (`local` or `ray`), with the
    worker's final evaluation, on the built-in digits: Ray's overhead over local processes."""
    from vae.execution.backends import make_backend
    from vae.execution.jobs import make_manager
    from vae.execution.store import RunStore

    cores = args["cores"]
    started = time.perf_counter()
    backend = make_backend(args["backend"])
    if args["backend"] == "ray":
        backend.num_cpus = cores  # a local Ray instance with this machine's cores
        backend.connect()
    startup = time.perf_counter() - started
    store = RunStore(args["store"])
    manager = make_manager(store, backend, max_concurrent=cores)
    began = time.perf_counter()
    run_ids = manager.submit_sweep(bench_config(epochs=args["epochs"], threads=0), BETAS)
    manager.wait(run_ids, timeout_s=1800, poll_s=0.05)
    wall = time.perf_counter() - began
    states = [store.read_status(r)["state"] for r in run_ids]
    if any(s != "finished" for s in states):
        raise RuntimeError(f"sweep runs ended {states}")
    losses = {store.read_config(r).beta: store.read_metrics(r)[-1]["train_loss"] for r in run_ids}
    how = f"{manager.slots()} jobs at a time, {manager.threads()} thread(s) each"
    return {"startup": startup, "wall": wall, "losses": losses, "how": how}


CHILDREN = {
    "backend-sweep": child_backend_sweep,
    "gemm": child_gemm,
    "canonical": child_canonical,
    "project": child_project,
    "canonical-sweep": child_canonical_sweep,
    "worker": child_worker,
    "warm-worker": child_warm_worker,
}


# ---- the parent ----------------------------------------------------------------------------


def child_env(threads: int, malloc: bool) -> dict:
    env = dict(os.environ)
    env.update(OMP_NUM_THREADS=str(threads), MKL_NUM_THREADS=str(threads))
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(ROOT), env.get("PYTHONPATH")]))
    for key in MALLOC_ENV:
        env.pop(key, None)
    if malloc:
        env.update(MALLOC_ENV)
    return env


def child_command(kind: str, args: dict) -> list[str]:
    return [
        sys.executable,
        str(Path(__file__).resolve()),
        "--child",
        kind,
        "--args",
        json.dumps(args),
    ]


def run_child(kind: str, args: dict, *, threads: int, malloc: bool, timeout: float = 900) -> dict:
    started = time.perf_counter()
    proc = subprocess.run(
        child_command(kind, args), env=child_env(threads, malloc), cwd=ROOT,
        capture_output=True, text=True, timeout=timeout,
    )  # fmt: skip
    wall = time.perf_counter() - started
    for line in reversed(proc.stdout.splitlines()):
        if line.startswith("RESULT "):
            result = json.loads(line[7:])
            result["process_wall"] = wall
            result.setdefault("wall", wall)  # a child that times its own part says so
            return result
    raise RuntimeError(f"child {kind} failed (code {proc.returncode}):\n{proc.stderr[-3000:]}")


def run_children_together(specs, *, threads: int, malloc: bool) -> list[dict]:
    """Start several children at once and wait for all (e.g. one per core)."""
    procs = [
        subprocess.Popen(
            child_command(kind, args),
            env=child_env(threads, malloc),
            cwd=ROOT,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )  # fmt: skip
        for kind, args in specs
    ]
    results = []
    for proc in procs:
        stdout, stderr = proc.communicate(timeout=900)
        lines = [line for line in stdout.splitlines() if line.startswith("RESULT ")]
        if not lines:
            raise RuntimeError(f"child failed (code {proc.returncode}):\n{stderr[-3000:]}")
        results.append(json.loads(lines[-1][7:]))
    return results


class BenchBackend:
    """The job runner's local-process backend, starting the bench's worker child instead."""

    name = "bench"

    def __init__(self, data: str, evaluate: bool = False):
        self.data, self.evaluate = data, evaluate
        self.started: list = []  # every job, so the bench can wait for its process to exit
        self.spares: list[subprocess.Popen] = []

    def keep_ready(self, store, count: int, threads: int, timeout_s: float = 300) -> None:
        """Start `count` warm bench workers and wait until each says it is ready (the app keeps
        its spares ready while nothing trains, so a sweep's press finds them warm)."""
        store.root.mkdir(parents=True, exist_ok=True)
        marks = [store.root / f".ready-{i}" for i in range(count)]
        for mark in marks:
            log = open(store.root / ".worker.log", "ab")  # noqa: SIM115 - the child owns it
            try:
                self.spares.append(subprocess.Popen(
                    child_command("warm-worker", {"data": self.data, "ready": str(mark)}),
                    env=child_env(threads, malloc=True), cwd=ROOT, stdin=subprocess.PIPE,
                    stdout=log, stderr=log, start_new_session=True, text=True,
                ))  # fmt: skip
            finally:
                log.close()
        deadline = time.monotonic() + timeout_s
        while not all(m.exists() for m in marks):
            if time.monotonic() > deadline or any(p.poll() is not None for p in self.spares):
                raise RuntimeError(f"warm bench workers not ready:\n{_log_tail(store.root)}")
            time.sleep(0.05)

    def start(self, store, run_ids, threads):
        from vae.execution.local import LocalJob
        from vae.execution.procs import process_start_time

        args = {"data": self.data, "store": str(store.root), "threads": threads,
                "run_ids": run_ids, "evaluate": self.evaluate}  # fmt: skip
        store.root.mkdir(parents=True, exist_ok=True)
        if self.spares:
            process = self.spares.pop(0)
            process.stdin.write(json.dumps(args) + "\n")
            process.stdin.close()
        else:
            log = open(store.root / ".worker.log", "ab")  # noqa: SIM115 - the child owns it
            try:
                process = subprocess.Popen(
                    child_command("worker", args), env=child_env(threads, malloc=True),
                    cwd=ROOT, stdin=subprocess.DEVNULL, stdout=log, stderr=log,
                    start_new_session=True,
                )  # fmt: skip
            finally:
                log.close()
        job = LocalJob(store, run_ids, process.pid, process_start_time(process.pid), process)
        self.started.append(job)
        return job

    def owns(self, ref):
        return False

    def capacity(self, threads):
        return None  # the manager's max_concurrent

    def attach(self, store, ref, run_ids):
        return None


def _log_tail(store_root: Path) -> str:
    log = store_root / ".worker.log"
    return log.read_text()[-3000:] if log.exists() else ""


def _worker_results(store_root: Path) -> list[dict]:
    log = store_root / ".worker.log"
    text = log.read_text() if log.exists() else ""
    return [json.loads(line[7:]) for line in text.splitlines() if line.startswith("RESULT ")]


def sweep_with_job_runner(
    data: str, root: Path, epochs: int, layout, warm: bool = False, evaluate: bool = True
) -> dict:
    """The sweep as the app runs it: pressing Sweep (submit_sweep) to the last run finished,
    through the job runner with `layout`, each run's final evaluation included unless
    `evaluate` is False (the like-for-like row: the canonical loop has none). `warm`: the
    workers are started and warmed before the press, as the app's spare workers are."""
    from vae.execution.jobs import JobManager
    from vae.execution.store import RunStore

    store = RunStore(root)
    backend = BenchBackend(data, evaluate=evaluate)
    manager = JobManager(
        store, max_concurrent=layout.processes, threads_per_job=layout.threads, backend=backend
    )
    if warm:
        backend.keep_ready(store, layout.processes, layout.threads)
    started = time.perf_counter()
    run_ids = manager.submit_sweep(bench_config(epochs=epochs, threads=0), BETAS)
    manager.wait(run_ids, timeout_s=1800, poll_s=0.05)
    wall = time.perf_counter() - started
    for job in backend.started:  # its peak memory is reported when the process ends
        job.process.wait(timeout=120)
    size = -(-len(BETAS) // layout.processes)
    how = f"{layout.processes} job(s) × stack of {size}, {layout.threads} thread(s) each"
    how += ", warm workers" if warm else ""
    how += "" if evaluate else ", no final evaluation"
    return _sweep_outcome(store, run_ids, wall, how)


def _sweep_outcome(store, run_ids, wall, how) -> dict:
    states = [store.read_status(r)["state"] for r in run_ids]
    if any(s != "finished" for s in states):
        log = (store.root / ".worker.log").read_text()[-3000:]
        raise RuntimeError(f"sweep runs ended {states}:\n{log}")
    losses = {store.read_config(r).beta: store.read_metrics(r)[-1]["train_loss"] for r in run_ids}
    rss = [r["maxrss_mb"] for r in _worker_results(store.root)]
    return {"wall": wall, "how": how, "losses": losses, "maxrss_mb": max(rss) if rss else None}


def ray_overhead_rows(tmp: Path, epochs: int, reps: int, say) -> None:
    """Section 4: the same 6-β sweep through the job manager on local processes and on a local
    Ray instance (each in a fresh child process, alternating), and Ray's overhead."""
    cores = len(os.sched_getaffinity(0))
    runs = {"local": [], "ray": []}
    for rep in range(reps):
        for name in runs:
            args = {"backend": name, "cores": cores, "epochs": epochs,
                    "store": str(tmp / f"{name}-sweep{rep}")}  # fmt: skip
            runs[name].append(run_child("backend-sweep", args, threads=cores, malloc=True))
    say(f"## 4. The same β sweep on a local Ray instance: built-in digits, β ∈ "
        f"{{{', '.join(f'{b:g}' for b in BETAS)}}}, {epochs} epoch(s), final evaluation "
        f"included, {reps} repeat(s)")  # fmt: skip
    say()
    say("| backend | how | start-up s | sweep wall s | overhead s | × local | final loss β=1 |")
    say("|---|---|---|---|---|---|---|")
    for name, label in (("local", "local processes"), ("ray", "Ray (local instance)")):
        rows = runs[name]
        startup, wall = med(r["startup"] for r in rows), med(r["wall"] for r in rows)
        over = med(r["wall"] - c["wall"] for c, r in zip(runs["local"], rows, strict=True))
        ratio = med(r["wall"] / c["wall"] for c, r in zip(runs["local"], rows, strict=True))
        loss = med(float(r["losses"].get(1.0, r["losses"].get("1.0"))) for r in rows)
        say(f"| {label} | {rows[0]['how']} | {fmt(startup, 1)} | {fmt(wall, 1)} | "
            f"{fmt(over, 1)} | {fmt(ratio, 2)} | {fmt(loss, 2)} |")  # fmt: skip
    say()
    say("Start-up: choosing the backend (for Ray: `ray.init`, starting a local instance). Sweep "
        "wall: from submitting the sweep to its last run finished; overhead and × local compare "
        "it with the local-process sweep of the same repeat (the child's own timing: Python's and "
        "Ray's start-up and shutdown are not in it). A local Ray instance runs its workers at "
        "the local workers' niceness (10) and starts one warm actor per slot during start-up; "
        "the load average is printed before and after.")  # fmt: skip
    say()
    say(f"Load average after section 4: {', '.join(f'{v:.2f}' for v in os.getloadavg())}")
    say()


def med(values) -> tuple[float, float, float]:
    values = list(values)
    return statistics.median(values), min(values), max(values)


def fmt(triple, digits=0, scale=1.0) -> str:
    m, lo, hi = (v * scale for v in triple)
    if lo == hi:
        return f"{m:,.{digits}f}"
    return f"{m:,.{digits}f} [{lo:,.{digits}f}–{hi:,.{digits}f}]"


def machine_lines() -> list[str]:
    import torch

    flags: set[str] = set()
    model = platform.processor() or "?"
    try:
        with open("/proc/cpuinfo") as handle:
            for line in handle:
                if line.startswith("flags") and not flags:
                    flags = set(line.split(":", 1)[1].split())
                elif line.startswith("model name") and model in ("?", ""):
                    model = line.split(":", 1)[1].strip()
                elif line.startswith("cpu family"):
                    family = line.split(":", 1)[1].strip()
                elif line.startswith("model\t"):
                    number = line.split(":", 1)[1].strip()
    except OSError:
        family = number = "?"
    wanted = ["avx2", "fma", "avx512f", "avx512_bf16", "avx512_vnni", "amx_bf16", "amx_tile"]
    flag_text = ", ".join(f"{f} {'yes' if f in flags else 'no'}" for f in wanted)
    config = torch.__config__.show()
    mkl = "MKL" if "Math Kernel Library" in config else "no MKL"
    dnnl = next((line.split("v", 1)[1].split()[0] for line in config.splitlines() if "MKL-DNN v" in line), "?")  # fmt: skip
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    return [
        f"CPU: {model} (family {family}, model {number}), {cores} cores usable; "
        f"torch threads default {torch.get_num_threads()}",
        f"CPU flags relevant to torch: {flag_text}",
        f"torch {torch.__version__}, CPU capability {torch.backends.cpu.get_cpu_capability()}, "
        f"{mkl}, oneDNN {dnnl}; Python {platform.python_version()}",
        f"load average at start: {', '.join(f'{v:.2f}' for v in os.getloadavg())}",
    ]


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="fewer epochs and repeats (~1-2 min)")
    parser.add_argument("--write", metavar="PATH", help="also write the report (markdown) here")
    parser.add_argument("--ray-only", action="store_true", help="only section 4 (Ray overhead)")
    parser.add_argument("--child", help=argparse.SUPPRESS)
    parser.add_argument("--args", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.child:
        result = CHILDREN[args.child](json.loads(args.args))
        print("RESULT " + json.dumps(result), flush=True)
        return 0

    quick = args.quick
    single_epochs, single_reps = (2, 1) if quick else (3, 3)
    sweep_epochs, sweep_reps = (1, 1) if quick else (3, 2)
    cores = len(os.sched_getaffinity(0))
    command = "python bench/train_speed.py" + (" --quick" if quick else "")
    command += " --ray-only" if args.ray_only else ""
    out: list[str] = []

    def say(line: str = "") -> None:
        print(line, flush=True)
        out.append(line)

    began = time.perf_counter()
    say(
        f"# Training speed: canonical PyTorch VAE loop vs this project ({'quick' if quick else 'full'} run)"
    )
    say()
    say(f"Date: {datetime.datetime.now().astimezone():%Y-%m-%d %H:%M %Z}; command: `{command}`")
    say()
    for line in machine_lines():
        say(f"- {line}")
    tmp = Path(tempfile.mkdtemp(prefix="vae-bench-"))
    if args.ray_only:
        try:
            ray_overhead_rows(tmp, sweep_epochs, sweep_reps, say)
        finally:
            shutil.rmtree(tmp, ignore_errors=True)
        return 0
    try:
        data = str(tmp / "data.pt")
        info = write_data(Path(data), N_TRAIN)
        say(f"- data: {info['n_train']:,} synthetic binary 28×28 images (+{info['n_test']:,} test), "
            f"{100 * info['ink']:.1f}% ink, fixed seed; batch {BATCH}, Adam lr 1e-3, model "
            f"784-400-20-400-784")  # fmt: skip
        say(f"- model FLOPs per training image: {FLOPS_EXACT / 1e6:.2f} M exact (forward, weight "
            f"gradients, input gradients but the first layer's); the 3 × forward × 2 estimate is "
            f"{FLOPS_CONVENTIONAL / 1e6:.2f} M. Efficiencies below use the exact count.")  # fmt: skip
        say()

        # 1. ceilings
        gemm = run_child("gemm", {"threads": cores, "bf16": True}, threads=cores, malloc=True)
        pair = run_children_together([("gemm", {"threads": 1})] * cores, threads=1, malloc=True)
        per_core = {
            key: sum(p[key][0] for p in pair) for key in ("single", "stacked", "fc1", "big")
        }
        ceiling = max(
            gemm["single"][0], gemm["stacked"][0], per_core["single"], per_core["stacked"]
        )
        say(
            "## 1. Ceiling: fp32 matrix products (torch.mm/bmm → MKL), GFLOP/s, median [min–max] of 7"
        )
        say()
        say(
            f"| products | 1 process, {cores} threads | {cores} processes × 1 thread, at once (sum) |"
        )
        say("|---|---|---|")
        rows = [
            ("single", f"one model's training step: its 11 GEMMs at batch {BATCH}"),
            (
                "stacked",
                f"{len(BETAS)} stacked models' step, as `vae.learn.stack.StackedMLP` issues them",
            ),
            ("fc1", f"{BATCH}×784 @ 784×400 alone"),
            ("big", "1024×1024 @ 1024×1024 alone"),
        ]
        for key, label in rows:
            say(f"| {label} | {fmt(gemm[key], 1)} | {per_core[key]:.1f} |")
        say(f"| bf16 {BATCH}×784 @ 784×400 alone | {fmt(gemm['fc1_bf16'], 1)} | |")
        say()
        say(f"**Ceiling used below: {ceiling:.1f} GFLOP/s**, the best of the four training-step rows "
            f"(= {ceiling * 1e9 / FLOPS_EXACT:,.0f} training images/s if a trainer did nothing "
            f"but these products).")  # fmt: skip
        say()
        # 2. single run
        single = {"canonical": [], "project": [], "project-fp32": []}
        for rep in range(single_reps):
            seed = rep + 1
            common = {"data": data, "epochs": single_epochs, "seed": seed, "threads": cores}
            single["canonical"].append(run_child("canonical", common, threads=cores, malloc=False))
            single["project"].append(run_child("project", common, threads=cores, malloc=False))
            fp32 = {**common, "precision": "fp32"}
            single["project-fp32"].append(run_child("project", fp32, threads=cores, malloc=False))
        say(f"## 2. One run, batch {BATCH}, β = 1, {cores} threads: images/s over epochs 2–{single_epochs} "
            f"of {single_reps} run(s) (seeds 1–{single_reps})")  # fmt: skip
        say()
        say("| trainer | train images/s | × canonical | GFLOP/s | % of ceiling | final loss / image | peak RSS MB | page faults / step |")  # fmt: skip
        say("|---|---|---|---|---|---|---|---|")
        labels = {
            "canonical": "canonical loop (DataLoader, default malloc)",
            "project": "`vae.learn.engine.train` (a stack of one), precision auto (the default)",
            "project-fp32": "`vae.learn.engine.train` (a stack of one), precision fp32",
        }

        def epochs_ips(run):  # median images/s over epochs >= 2 of one run
            return statistics.median(r["images_per_s"] for r in run["rows"][1:])

        ratios = {
            key: med(
                epochs_ips(p) / epochs_ips(c)
                for p, c in zip(single[key], single["canonical"], strict=True)
            )
            for key in single
        }
        summary = {"single_ratio": ratios["project"]}
        for key, runs in single.items():
            ips = med(r["images_per_s"] for run in runs for r in run["rows"][1:])
            ratio = ratios[key]
            gflops = tuple(v * FLOPS_EXACT / 1e9 for v in ips)
            eff = tuple(100 * g / ceiling for g in gflops)
            loss = med(run["rows"][-1]["loss"] for run in runs)
            rss = med(run["maxrss_mb"] for run in runs)
            faults = med(run["faults_per_step"] for run in runs)
            summary[key] = {"eff": eff, "loss": loss}
            say(f"| {labels[key]} | {fmt(ips)} | {fmt(ratio, 2)} | {fmt(gflops, 1)} | {fmt(eff)} | "
                f"{fmt(loss, 2)} | {fmt(rss)} | {fmt(faults)} |")  # fmt: skip
        say()
        say("Images/s: median [min–max] over every epoch ≥ 2 of every repeat; × canonical: median "
            "[min–max] over repeats of the two trainers' ratio within the repeat. Final loss: "
            "training loss per image in the last epoch (both sides minimise BCE + KL per image "
            "on the same binary images), spread over seeds.")  # fmt: skip
        say()

        # 3. the sweep, as the app runs it, in every layout the runner can choose
        from vae.execution.layout import candidates, choose_layout
        from vae.learn.precision import resolve_precision

        measuring = time.perf_counter()
        os.environ["VAE_LAYOUT_CACHE"] = str(tmp / "layout-cache")  # measure afresh, not cached
        chosen = choose_layout(cores)
        measuring = time.perf_counter() - measuring
        precision = resolve_precision("auto", __import__("torch").device("cpu"))
        say(f"**The runner's choice on this machine** (measured by `vae.execution.layout` in "
            f"{measuring:.0f} s, under a half-busy extra process): {chosen.processes} "
            f"job(s) at once, {chosen.threads} thread(s) each; precision `auto` = {precision}.")  # fmt: skip
        say()
        layouts = candidates(cores)
        ways = {
            "canonical": f"canonical loop, 6 runs one after another (1 process, {cores} threads)"
        }
        for layout in layouts:
            mark = " **(the runner's choice)**" if (layout.processes, layout.threads) == (chosen.processes, chosen.threads) else ""  # fmt: skip
            ways[layout] = f"job runner, {layout.processes} job(s) × {layout.threads} thread(s), {precision}, evaluation included{mark}"  # fmt: skip
        warm_key = ("warm", chosen.processes, chosen.threads)
        ways[warm_key] = (f"job runner, the layout it chose, warm workers (started before the "
                          f"press, as the app keeps them), {precision}, evaluation included")  # fmt: skip
        bare_key = ("bare", chosen.processes, chosen.threads)
        ways[bare_key] = (f"job runner, the layout it chose, warm workers, {precision}, final "
                          f"evaluation left out (like for like: the canonical loop has none)")  # fmt: skip
        sweeps = {k: [] for k in ways}
        for rep in range(sweep_reps):
            sweeps["canonical"].append(run_child(
                "canonical-sweep",
                {"data": data, "epochs": sweep_epochs, "seed": 1, "threads": cores, "betas": BETAS},
                threads=cores, malloc=False,
            ))  # fmt: skip
            for i, layout in enumerate(layouts):
                root = tmp / f"sweep{rep}-{i}"
                sweeps[layout].append(sweep_with_job_runner(data, root, sweep_epochs, layout))
            sweeps[warm_key].append(
                sweep_with_job_runner(data, tmp / f"sweep{rep}-warm", sweep_epochs, chosen, True)
            )
            sweeps[bare_key].append(sweep_with_job_runner(
                data, tmp / f"sweep{rep}-bare", sweep_epochs, chosen, warm=True, evaluate=False
            ))  # fmt: skip
        say(f"## 3. β sweep: β ∈ {{{', '.join(f'{b:g}' for b in BETAS)}}}, {sweep_epochs} epoch(s) each "
            f"on {N_TRAIN:,} images; wall time from process start to the last run finished, "
            f"{sweep_reps} repeat(s)")  # fmt: skip
        say()
        say("| way | how | wall s | × faster than canonical | model-images/s | % of ceiling | peak RSS MB / process | final loss β=1 |")  # fmt: skip
        say("|---|---|---|---|---|---|---|---|")
        work = len(BETAS) * sweep_epochs * N_TRAIN
        best = chosen_row = warm_row = bare_row = None
        slowest = float("inf")
        for key, label in ways.items():
            runs = sweeps[key]
            if not runs:
                continue
            wall = med(r["wall"] for r in runs)
            speedup = med(c["wall"] / r["wall"] for c, r in zip(sweeps["canonical"], runs, strict=True))  # fmt: skip
            ips = tuple(work / w for w in (wall[0], wall[2], wall[1]))  # fastest = shortest wall
            eff = tuple(100 * v * FLOPS_EXACT / 1e9 / ceiling for v in ips)
            rss = med(r["maxrss_mb"] for r in runs)
            loss = med(float(r["losses"].get(1.0, r["losses"].get("1.0"))) for r in runs)
            how = runs[0].get("how", f"1 process, {cores} threads")
            if key == warm_key:
                warm_row = speedup
            elif key == bare_key:
                bare_row = speedup
            elif key != "canonical":  # the layouts the runner chooses from, cold as before
                slowest = min(slowest, speedup[0])
                if best is None or speedup[0] > best[1][0]:
                    best = (label, speedup, eff)
                if "runner's choice" in label:
                    chosen_row = (label, speedup, eff)
            say(f"| {label} | {how} | {fmt(wall, 1)} | {fmt(speedup, 2)} | {fmt(ips)} | {fmt(eff)} | "
                f"{fmt(rss)} | {fmt(loss, 2)} |")  # fmt: skip
        say()
        say("Wall: median [min–max] over repeats; × faster: median [min–max] of the canonical "
            "sweep's wall over the other's within the same repeat. The job runner's rows run from "
            "pressing Sweep (`submit_sweep`) to the last run finished: worker start-up, data "
            "loading, per-epoch metrics, checkpoints and each run's final evaluation (IWAE, "
            "k = 100) included; the canonical loop has no evaluation. Model-images/s = 6 runs × "
            "epochs × images ÷ wall.")  # fmt: skip
        say()

        ray_overhead_rows(tmp, sweep_epochs, sweep_reps, say)

        say("## Targets")
        say()
        r1 = summary["single_ratio"][0]
        say(f"- One run ≥ 2× the canonical loop: **{r1:.2f}×** "
            + ("(met)." if r1 >= 2 else f"(missed: {2 / r1:.2f}× short)."))  # fmt: skip
        lc, lp = summary["canonical"]["loss"], summary["project"]["loss"]
        say(f"- Same final loss: canonical {fmt(lc, 2)}, project {fmt(lp, 2)} nats/image "
            f"(difference of medians {100 * (lp[0] - lc[0]) / lc[0]:+.2f}%).")  # fmt: skip
        if chosen_row is not None:
            label, speedup, eff = chosen_row
            say(f"- β sweep ≥ 3× the canonical loop run sequentially, as the app runs it (the "
                f"runner's choice): **{speedup[0]:.2f}×** " + ("(met)." if speedup[0] >= 3 else f"(missed: {3 / speedup[0]:.2f}× short)."))  # fmt: skip
            if warm_row is not None:
                say(f"- The same with warm workers, as the app runs it once it has been idle: "
                    f"**{warm_row[0]:.2f}×** " + ("(met)." if warm_row[0] >= 3 else f"(missed: {3 / warm_row[0]:.2f}× short)."))  # fmt: skip
            if bare_row is not None:
                say(f"- Training alone, like for like (warm workers, the final evaluation left out "
                    f"as the canonical loop has none): **{bare_row[0]:.2f}×** "
                    + ("(at 3×)." if bare_row[0] >= 3 else f"({3 / bare_row[0]:.2f}× short)."))  # fmt: skip
            say(f"- The runner's choice is the fastest layout measured here: "
                f"{'yes' if chosen_row[1][0] >= best[1][0] else 'no (fastest: ' + best[0] + ')'}; "
                f"no layout it can choose is slower than the canonical loop: "
                f"{'yes' if slowest >= 1 else 'no'} (slowest {slowest:.2f}×).")  # fmt: skip
        say(f"- Efficiency > 50% of the GEMM ceiling: canonical {summary['canonical']['eff'][0]:.0f}%, "
            f"`vae.learn.engine.train` {summary['project']['eff'][0]:.0f}%"
            + (f", best sweep {best[2][0]:.0f}%." if best else "."))  # fmt: skip
        say()
        say(f"Bench wall time {time.perf_counter() - began:.0f} s; load average at the end: "
            f"{', '.join(f'{v:.2f}' for v in os.getloadavg())}.")  # fmt: skip
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    if args.write:
        Path(args.write).write_text("\n".join(out) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
