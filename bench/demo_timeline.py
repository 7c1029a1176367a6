"""The β demo through the app's job runner, without a browser: where its seconds go, per run.

    python bench/demo_timeline.py [--repeats 3] [--cold]

Runs what **Start the β demo** runs (`vae.present.demo.start_demo` on a `JobManager` with the
app's scheduler and, unless --cold, its warm spare workers, waited for as a new visitor's first
reading of the page would let them) on a fresh temporary store, and prints per run: when its
first epoch ended, the step loop's own seconds (the sum of each epoch's `seconds`), the span from
epoch 1 to epoch 30, its final evaluation, and when it ended, all from its files. With no browser
and no server it isolates the runner; `bench/screenshots.py --demo-only` times the same press in
Chromium. To compare two versions, run it in each checkout one after the other, alternating.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))
os.environ["PYTHONPATH"] = os.pathsep.join(filter(None, [str(ROOT), os.environ.get("PYTHONPATH")]))

from bench.machine import cpu_name, load_average  # noqa: E402
from vae.execution.jobs import JobManager  # noqa: E402
from vae.execution.states import ACTIVE  # noqa: E402
from vae.execution.store import RunStore  # noqa: E402
from vae.present.demo import start_demo  # noqa: E402

SETTLE_S = 10.0  # after the spares are ready: their warm-up's last work ends


def one_demo(root: Path, cold: bool) -> tuple[float, list[dict]]:
    store = RunStore(root)
    manager = JobManager(store)
    manager.start_scheduler()
    try:
        deadline = time.monotonic() + 120
        wanted = 0 if cold else manager.layout().processes
        while len(manager.backend.spares()) < wanted and time.monotonic() < deadline:
            time.sleep(0.2)
        time.sleep(0 if cold else SETTLE_S)
        pressed = time.time()
        run_ids = start_demo(manager)
        while any(store.read_status(r)["state"] in ACTIVE for r in run_ids):
            time.sleep(0.1)
        rows = []
        for run_id in run_ids:
            lines = [json.loads(line) for line in store.path(run_id, "metrics.jsonl").open()]
            status, evaluation = store.read_status(run_id), store.read_eval(run_id) or {}
            rows.append({
                "beta": store.read_config(run_id).beta,
                "state": status["state"],
                "epoch 1": lines[0]["time"] - pressed,
                "steps": sum(line["seconds"] for line in lines),
                "span": lines[-1]["time"] - lines[0]["time"],
                "evaluation": evaluation.get("eval_seconds", float("nan")),
                "ended": status["ended"] - pressed,
            })  # fmt: skip
        return max(r["ended"] for r in rows), rows
    finally:
        manager.shutdown()
        manager.backend.close()


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--cold", action="store_true", help="no warm spare workers")
    args = parser.parse_args(argv)
    if args.cold:
        os.environ["VAE_WARM_WORKERS"] = "0"
    print(f"CPU: {cpu_name()} · {os.cpu_count()} cores · load average {load_average()}")
    totals = []
    for repeat in range(args.repeats):
        with tempfile.TemporaryDirectory(prefix="vae-demo-") as tmp:
            total, rows = one_demo(Path(tmp) / "runs", args.cold)
        totals.append(total)
        print(f"\nrepeat {repeat + 1}: demo finished in {total:.1f} s (press to last run ended)")
        print(
            "| β | state | epoch 1 ends, s | step loop, s | epochs 1→last, s | evaluation, s | ended, s |"
        )
        print("|---:|---|---:|---:|---:|---:|---:|")
        for r in rows:
            print(
                f"| {r['beta']:g} | {r['state']} | {r['epoch 1']:.2f} | {r['steps']:.2f} | "
                f"{r['span']:.2f} | {r['evaluation']:.2f} | {r['ended']:.2f} |",
                flush=True,
            )
    print(f"\ndemo: median {statistics.median(totals):.1f} s of {len(totals)} "
          f"[{min(totals):.1f}–{max(totals):.1f}]; load average at the end {load_average()}")  # fmt: skip
    return 0


if __name__ == "__main__":
    sys.exit(main())
