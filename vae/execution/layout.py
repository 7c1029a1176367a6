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
import os
import platform
import subprocess
import sys
from dataclasses import asdict, dataclass
from importlib import metadata
from pathlib import Path

from vae.execution.files import atomic_write_json
from vae.execution.procs import PROJECT_ROOT, project_env

CACHE_NAME = ".layout.json"


@dataclass(frozen=True)
class Layout:
    """Jobs at once and torch threads per job; a sweep is split into one stack per job."""

    processes: int
    threads: int
    images_per_s: float = 0.0  # model-images/s measured for the 6-β sweep (0: not measured)


def machine_key() -> str:
    model = next((f for f in _cpu_model_lines()), platform.processor() or "unknown CPU")
    return f"{model} | {os.cpu_count()} cores | torch {_torch_version()}"


def _torch_version() -> str:
    """torch's version as pip installed it, read without importing torch (seconds)."""
    try:
        return metadata.version("torch")
    except metadata.PackageNotFoundError:
        return "unknown"


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
    """model-images/s of a 6-β sweep split into `layout.processes` stacks, under a half load.

    Measured by `vae.execution.layout_probe` in a process of its own: the job runner (and the
    server it lives in) never loads the training code."""
    command = [sys.executable, "-m", "vae.execution.layout_probe"]
    command += [str(layout.processes), str(layout.threads)]
    done = subprocess.run(
        command,
        env=project_env(os.environ),
        cwd=PROJECT_ROOT,
        capture_output=True,
        text=True,
        timeout=600,
    )
    if done.returncode != 0:
        raise RuntimeError(f"the layout probe failed: {done.stderr.strip()[-300:]}")
    rate = float(done.stdout.strip().splitlines()[-1])
    return Layout(layout.processes, layout.threads, round(rate))
