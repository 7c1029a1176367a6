"""Measure one job layout: `python -m vae.execution.layout_probe PROCESSES THREADS` prints the
model-images/s of a 6-β sweep split into PROCESSES stacks of THREADS threads each, trained while a
half-busy process shares the cores (the server, a second job). `layout.measure` runs it.

It never outlives what started it: the probe and each of its children ask the kernel for SIGKILL
when their parent dies (PR_SET_PDEATHSIG), and the probe kills itself (SIGALRM) after its time
limit, taking its children with it."""

from __future__ import annotations

import contextlib
import ctypes
import multiprocessing as mp
import os
import signal
import sys
import time

import torch

from vae.execution.procs import lower_priority
from vae.learn.config import RunConfig
from vae.learn.data import Dataset, DataSplit
from vae.learn.datasets import DatasetInfo
from vae.learn.engine import TrainCallbacks, train_models

SWEEP = (0.25, 0.5, 1.0, 2.0, 4.0, 8.0)  # the β values of the measured sweep
STEPS = 40  # training steps per measurement, after a warm-up epoch of 10
# Below the server and the browser, as training workers are: a server measuring on its first start
# still answers (the probe leads a session of its own, so its nice holds against every other one).
PROBE_NICENESS = 10
PR_SET_PDEATHSIG = 1  # from <linux/prctl.h>


def die_with_parent(expected_parent: int | None = None) -> None:
    """SIGKILL this process when its parent dies; exit now if the parent is already gone (or is
    not `expected_parent`: this process was re-parented before it could ask)."""
    with contextlib.suppress(Exception):  # no prctl (not Linux): the time limit still holds
        libc = ctypes.CDLL(None, use_errno=True)
        libc.prctl(PR_SET_PDEATHSIG, signal.SIGKILL, 0, 0, 0)
    parent = os.getppid()
    if parent == 1 or (expected_parent is not None and parent != expected_parent):
        os._exit(3)


def images_per_s(processes: int, threads: int) -> float:
    """Every stack in a process of its own, all at once, beside the half-busy load."""
    ctx = mp.get_context("spawn")  # never fork a process that has run torch
    size = -(-len(SWEEP) // processes)
    stacks = [SWEEP[i : i + size] for i in range(0, len(SWEEP), size)]
    results = ctx.Queue()
    load = ctx.Process(target=_half_busy, args=(os.getpid(),), daemon=True)
    load.start()
    try:
        jobs = [
            ctx.Process(
                target=_timed_stack, args=(betas, threads, results, os.getpid()), daemon=True
            )
            for betas in stacks
        ]
        for job in jobs:
            job.start()
        rates = [results.get() for _ in jobs]  # the probe's time limit bounds the wait
        for job in jobs:
            job.join()
    finally:
        load.terminate()
    return sum(rates)


def _half_busy(parent: int) -> None:
    """Busy half of the time on one core: the server or another job sharing the machine."""
    die_with_parent(parent)
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


def _timed_stack(betas, threads: int, results, parent: int) -> None:
    die_with_parent(parent)
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


if __name__ == "__main__":
    expected = os.environ.get("VAE_PROBE_PARENT")
    die_with_parent(int(expected) if expected and expected.isdigit() else None)
    signal.alarm(int(sys.argv[3]) if len(sys.argv) > 3 else 180)  # default action: terminate
    lower_priority(PROBE_NICENESS)  # its children inherit it (and its session, their group)
    print(images_per_s(int(sys.argv[1]), int(sys.argv[2])))
