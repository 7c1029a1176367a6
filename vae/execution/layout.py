"""How many jobs at once, with how many threads each: measured on the machine, not assumed.

What trains fastest differs from CPU to CPU (and under load: two OpenMP threads that wait on each
other collapse when another process takes part of a core). So on first use on a machine the job
runner measures a few candidate layouts of a 6-β sweep for a few seconds each, every candidate
while a half-busy process shares the cores (the server, a second job), keeps the fastest, and
caches the choice per machine (CPU model, core count, torch version) in the run store. Explicit
settings (VAE_MAX_JOBS, a JobManager argument) override it.
"""

from __future__ import annotations

import json
import multiprocessing as mp
import os
import platform
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import torch

from vae.execution.store import atomic_write_json
from vae.learn.config import RunConfig
from vae.learn.data import Dataset, DatasetInfo, DataSplit
from vae.learn.engine import TrainCallbacks, train_models

CACHE_NAME = ".layout.json"
SWEEP = (0.25, 0.5, 1.0, 2.0, 4.0, 8.0)  # the β values of the measured sweep
STEPS = 40  # training steps per measurement, after a warm-up epoch of 10


@dataclass(frozen=True)
class Layout:
    """Jobs at once and torch threads per job; a sweep is split into one stack per job."""

    processes: int
    threads: int
    images_per_s: float = 0.0  # model-images/s measured for the 6-β sweep (0: not measured)


def machine_key() -> str:
    model = next((f for f in _cpu_model_lines()), platform.processor() or "unknown CPU")
    return f"{model} | {os.cpu_count()} cores | torch {torch.__version__}"


def _cpu_model_lines():
    try:
        with open("/proc/cpuinfo") as handle:
            for line in handle:
                if line.startswith("model name"):
                    yield line.split(":", 1)[1].strip()
    except OSError:
        return


def candidates(cores: int) -> list[Layout]:
    """One job using every core, one job per core, and (on 4+ cores) jobs of two threads."""
    shapes = {(1, cores), (cores, 1)}
    if cores >= 4:
        shapes.add((cores // 2, 2))
    return [Layout(p, t) for p, t in sorted(shapes)]


def cached_layout(store_root: Path) -> Layout | None:
    try:
        entry = json.loads((Path(store_root) / CACHE_NAME).read_text()).get(machine_key())
        return Layout(**entry) if isinstance(entry, dict) else None
    except (OSError, ValueError, TypeError):
        return None


def choose_layout(store_root: Path, cores: int | None = None) -> Layout:
    """The cached layout for this machine, or measure the candidates now and cache the best."""
    found = cached_layout(store_root)
    if found is not None:
        return found
    cores = cores or os.cpu_count() or 1
    measured = [measure(c) for c in candidates(cores)]
    best = max(measured, key=lambda layout: layout.images_per_s)
    path = Path(store_root) / CACHE_NAME
    try:
        cache = json.loads(path.read_text()) if path.exists() else {}
    except (OSError, ValueError):
        cache = {}
    cache[machine_key()] = asdict(best)
    try:
        Path(store_root).mkdir(parents=True, exist_ok=True)
        atomic_write_json(path, cache)
    except OSError:
        pass  # a read-only store: measure again next time
    return best


def measure(layout: Layout) -> Layout:
    """model-images/s of a 6-β sweep split into `layout.processes` stacks, under a half load."""
    ctx = mp.get_context("spawn")  # never fork a process that has run torch
    size = -(-len(SWEEP) // layout.processes)
    stacks = [SWEEP[i : i + size] for i in range(0, len(SWEEP), size)]
    results = ctx.Queue()
    load = ctx.Process(target=_half_busy, daemon=True)
    load.start()
    try:
        jobs = [
            ctx.Process(target=_timed_stack, args=(betas, layout.threads, results), daemon=True)
            for betas in stacks
        ]
        for job in jobs:
            job.start()
        rates = [results.get(timeout=300) for _ in jobs]
        for job in jobs:
            job.join()
    finally:
        load.terminate()
    return Layout(layout.processes, layout.threads, round(sum(rates)))


def _half_busy() -> None:
    """Busy half of the time on one core: the server or another job sharing the machine."""
    while True:
        end = time.perf_counter() + 0.005
        while time.perf_counter() < end:
            pass
        time.sleep(0.005)


class _Timer(TrainCallbacks):
    def __init__(self):
        self.steps, self.started = 0, None

    def stop_all(self) -> bool:
        self.steps += 1
        if self.steps == 10:
            self.started = time.perf_counter()
        return self.steps > 10 + STEPS


def _timed_stack(betas, threads: int, results) -> None:
    torch.set_num_threads(threads)
    n = 128 * (10 + STEPS + 1)
    x = (torch.rand(n + 256, 1, 28, 28, generator=torch.Generator().manual_seed(0)) < 0.15).float()
    y = torch.zeros(len(x), dtype=torch.int64)
    info = DatasetInfo("layout", "layout", "measurement", (1, 28, 28), False)
    dataset = Dataset(info, DataSplit(x[:n], y[:n]), DataSplit(x[n:], y[n:]))
    configs = [RunConfig(beta=b, threads=threads, epochs=1, device="cpu") for b in betas]
    timer = _Timer()
    train_models(configs, dataset=dataset, callbacks=timer)
    seconds = time.perf_counter() - timer.started
    results.put(len(betas) * 128 * STEPS / seconds)
