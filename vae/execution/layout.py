"""How many jobs at once, with how many threads each: measured on the machine, not assumed.

What trains fastest differs from CPU to CPU (and under load: two OpenMP threads that wait on each
other collapse when another process takes part of a core). So the app measures a few candidate
layouts of a 6-β sweep for a few seconds each, every candidate while a half-busy process shares
the cores (the server, a second job), keeps the fastest, and caches the choice per machine (CPU
model, core count, torch version) in a per-user cache folder ($VAE_LAYOUT_CACHE, else
$XDG_CACHE_HOME/vae-dashboard, else ~/.cache/vae-dashboard), shared by every store.

The measurement never gets in the way: until it exists a run uses the safe default (one
single-thread job per core); it runs in the background while nothing trains, at most one at a
time per machine (an flock on `layout.lock`), each probe bounded in time and killed with the
process that started it. The cache is read carefully and checked value by value; a damaged one
is reported and replaced. Explicit settings (VAE_MAX_JOBS, a JobManager argument) override it.
"""

from __future__ import annotations

import contextlib
import math
import os
import platform
import subprocess
import sys
import threading
from dataclasses import asdict, dataclass
from importlib import metadata
from pathlib import Path

from vae.execution import safe_read
from vae.execution.files import atomic_write_json
from vae.execution.procs import PROJECT_ROOT, project_env
from vae.execution.root_files import report, root_file_lock

CACHE_ENV = "VAE_LAYOUT_CACHE"  # the folder holding this machine's layout (tests: a tmp folder)
CACHE_FILE = "layout.json"
LOCK_FILE = "layout.lock"  # held while a probe measures: one measurement per machine at a time
CACHE_MAX_BYTES = 64 * 1024
MAX_PROCESSES, MAX_THREADS = 64, 256
PROBE_LIMIT_S = 180  # one candidate's probe is killed after this (it takes seconds when idle)
PROBE_PARENT_ENV = "VAE_PROBE_PARENT"  # the probe exits at once if this pid is not its parent


@dataclass(frozen=True)
class Layout:
    """Jobs at once and torch threads per job; a sweep is split into one stack per job."""

    processes: int
    threads: int
    images_per_s: float = 0.0  # model-images/s measured for the 6-β sweep (0: not measured)


def default_layout(cores: int | None = None) -> Layout:
    """The safe layout while none is measured: one single-thread job per core."""
    return Layout(max(1, min(MAX_PROCESSES, cores or os.cpu_count() or 1)), 1)


def cache_dir() -> Path:
    explicit = os.environ.get(CACHE_ENV, "").strip()
    if explicit:
        return Path(explicit)
    base = os.environ.get("XDG_CACHE_HOME", "").strip() or str(Path.home() / ".cache")
    return Path(base) / "vae-dashboard"


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


def check_entry(entry: object) -> Layout:
    """A cached layout's values, each checked: ValueError saying which one is wrong."""
    if not isinstance(entry, dict) or set(entry) - {"processes", "threads", "images_per_s"}:
        raise ValueError("its entry is not a layout")
    processes, threads = entry.get("processes"), entry.get("threads")
    rate = entry.get("images_per_s", 0.0)
    for name, value, high in (("processes", processes, MAX_PROCESSES), ("threads", threads,
                                                                       MAX_THREADS)):  # fmt: skip
        if type(value) is not int or not 1 <= value <= high:
            raise ValueError(f"{name} must be a whole number from 1 to {high}, not {value!r:.40}")
    if type(rate) not in (int, float) or not math.isfinite(rate) or not 0 <= rate < 1e12:
        raise ValueError(f"images_per_s must be a number from 0 to 10^12, not {rate!r:.40}")
    return Layout(processes, threads, float(rate))


def _read_cache(path: Path) -> dict:
    """The cache's entries; a damaged file (a pipe, a huge file, bad JSON) is reported and
    removed, so the next measurement replaces it."""
    try:
        data = safe_read.read_json(path, CACHE_MAX_BYTES)
        if not isinstance(data, dict):
            raise ValueError("it is not a JSON object")
        return data
    except FileNotFoundError:
        return {}
    except (OSError, ValueError) as exc:
        report(path, f"{exc}; not used, removed (the layout will be measured again)")
        with contextlib.suppress(OSError):
            if path.is_dir() and not path.is_symlink():
                os.replace(path, path.with_name(f"{path.name}.refused"))
            else:
                os.unlink(path)
        return {}


def cached_layout() -> Layout | None:
    """This machine's measured layout, or None (not measured yet, or the cache was damaged)."""
    path = cache_dir() / CACHE_FILE
    cache = _read_cache(path)
    entry = cache.get(machine_key())
    if entry is None:
        return None
    try:
        return check_entry(entry)
    except ValueError as exc:
        report(path, f"the layout for this machine is refused: {exc}; measuring again")
        cache.pop(machine_key(), None)
        with contextlib.suppress(OSError):
            atomic_write_json(path, cache)
        return None


def _save(layout: Layout) -> None:
    path = cache_dir() / CACHE_FILE
    cache = _read_cache(path)
    cache[machine_key()] = asdict(layout)
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        atomic_write_json(path, cache)
    except OSError as exc:
        report(path, f"could not be written ({exc.strerror or exc}); measuring again next time")


def choose_layout(cores: int | None = None) -> Layout | None:
    """Measure the candidates now (unless cached) and cache the best; None when another process
    on this machine is measuring (its result is read once it lands). Blocks for the measurement:
    call it from a background thread (`start_background_measurement`)."""
    found = cached_layout()
    if found is not None:
        return found
    cores = cores or os.cpu_count() or 1
    cache_dir().mkdir(parents=True, exist_ok=True)
    with root_file_lock(cache_dir() / LOCK_FILE, blocking=False) as held:
        if not held:
            return None
        found = cached_layout()  # measured by another process while we waited for nothing
        if found is not None:
            return found
        measured = [measure(c) for c in candidates(cores)]
        best = max(measured, key=lambda layout: layout.images_per_s)
        _save(best)
        return best


_background: threading.Thread | None = None
_background_lock = threading.Lock()


def start_background_measurement(on_done=None, cores: int | None = None) -> threading.Thread | None:
    """Measure in a daemon thread, once per process; `on_done(layout or None)` when it ends.

    Failures (a probe that timed out, a busy machine) are printed, never raised: the default
    layout stays in use."""
    global _background
    with _background_lock:
        if _background is not None:
            return None

        def work() -> None:
            layout = None
            try:
                layout = choose_layout(cores)
            except Exception as exc:  # an optimisation only: keep the default layout
                print(f"job layout not measured: {exc}", file=sys.stderr, flush=True)
            if on_done is not None:
                on_done(layout)

        _background = threading.Thread(target=work, name="vae-layout-measure", daemon=True)
        _background.start()
        return _background


def measure(layout: Layout, limit_s: float = PROBE_LIMIT_S) -> Layout:
    """model-images/s of a 6-β sweep split into `layout.processes` stacks, under a half load.

    Measured by `vae.execution.layout_probe` in a process of its own (the job runner and the
    server never load the training code). The probe dies with this process (PR_SET_PDEATHSIG,
    set by the probe after checking that its parent is this process) and after `limit_s`."""
    command = [sys.executable, "-m", "vae.execution.layout_probe"]
    command += [str(layout.processes), str(layout.threads), str(int(limit_s))]
    env = {**project_env(os.environ), PROBE_PARENT_ENV: str(os.getpid())}
    with subprocess.Popen(
        command,
        env=env,
        cwd=PROJECT_ROOT,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        stdin=subprocess.DEVNULL,
        text=True,
        start_new_session=True,  # its nice then holds against the browser too (lower_priority)
    ) as probe:
        try:
            out, err = probe.communicate(timeout=limit_s + 10)
        except subprocess.TimeoutExpired:
            probe.kill()
            probe.communicate()
            raise RuntimeError(f"the layout probe took over {limit_s:.0f} s; stopped") from None
    if probe.returncode != 0:
        raise RuntimeError(f"the layout probe failed: {err.strip()[-300:]}")
    rate = float(out.strip().splitlines()[-1])
    return Layout(layout.processes, layout.threads, round(rate))
