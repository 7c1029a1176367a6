"""Where a training step's time goes: torch.profiler over one epoch of each trainer.

    python bench/profile_step.py [--threads 2] [--images 20000]

Profiles (after a warm-up epoch) the canonical DataLoader loop, `vae.learn.engine.train` and
`vae.learn.engine.train_models` with 6 models, on the bench's synthetic images, and prints each
one's time by kind of work: matrix products, Adam, the Bernoulli draw, the loss, data loading and
everything else (many small element-wise ops and their dispatch).
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

KINDS = {
    "matrix products": ("aten::mm", "aten::addmm", "aten::bmm", "aten::baddbmm"),
    "Adam": (
        "aten::_fused_adam_",
        "Optimizer.step#Adam.step",
        "Optimizer.zero_grad#Adam.zero_grad",
    ),
    "Bernoulli draw": ("aten::uniform_", "aten::bernoulli_", "aten::lt", "aten::aminmax"),
    "loss (BCE)": (
        "aten::log_sigmoid_forward",
        "aten::log_sigmoid_backward",
        "aten::softplus",
        "aten::softplus_backward",
        "aten::binary_cross_entropy",
        "aten::binary_cross_entropy_backward",
        "aten::sigmoid",
    ),  # fmt: skip
    "data loading (collate / gather)": (
        "aten::stack",
        "aten::cat",
        "aten::index",
        "aten::randperm",
    ),
}


def breakdown(prof, images: int) -> list[str]:
    events = prof.key_averages()
    total = sum(e.self_cpu_time_total for e in events)
    lines = [f"self CPU time {total / 1e3:,.0f} ms for {images:,} images"]
    seen = set()
    for kind, names in KINDS.items():
        t = sum(e.self_cpu_time_total for e in events if e.key in names)
        seen |= set(names)
        lines.append(f"  {kind:36s} {t / 1e3:8.0f} ms  {100 * t / total:5.1f}%")
    rest = sum(e.self_cpu_time_total for e in events if e.key not in seen)
    count = sum(e.count for e in events if e.key not in seen)
    lines.append(f"  {'everything else (' + str(count) + ' op calls)':36s} {rest / 1e3:8.0f} ms  {100 * rest / total:5.1f}%")  # fmt: skip
    top = sorted(events, key=lambda e: -e.self_cpu_time_total)[:8]
    lines.append("  top ops: " + ", ".join(f"{e.key} {100 * e.self_cpu_time_total / total:.1f}%" for e in top))  # fmt: skip
    return lines


def main(argv=None) -> int:
    import torch
    from torch.profiler import ProfilerActivity, profile

    from bench.canonical_vae import train_canonical
    from bench.train_speed import BETAS, bench_config, make_images
    from vae.learn.data import Dataset, DatasetInfo, DataSplit
    from vae.learn.engine import train, train_models

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--images", type=int, default=20_000)
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    n = args.images
    x = make_images(n + 1000, seed=0).float()
    zeros = torch.zeros(n, dtype=torch.int64)
    info = DatasetInfo("synthetic", "synthetic", "bench", (1, 28, 28), False)
    dataset = Dataset(info, DataSplit(x[:n], zeros), DataSplit(x[n:], zeros[:1000]))
    config = bench_config(epochs=1, threads=args.threads)
    configs = [config.__class__.from_dict({**config.to_dict(), "beta": b}) for b in BETAS]
    trainers = {
        "canonical loop": (lambda: train_canonical(x[:n], zeros, 1), n),
        "vae.learn.engine.train (a stack of one)": (lambda: train(config, dataset=dataset), n),
        f"vae.learn.engine.train_models, a stack of {len(BETAS)}": (
            lambda: train_models(configs, dataset=dataset),
            n * len(BETAS),
        ),
    }
    print(f"torch {torch.__version__}, {args.threads} threads, {n:,} synthetic images, batch 128")
    for name, (run, images) in trainers.items():
        run()  # warm-up: imports, allocator, MKL buffers
        with profile(activities=[ProfilerActivity.CPU]) as prof:
            run()
        print(f"\n{name}:")
        for line in breakdown(prof, images):
            print(line)
    return 0


if __name__ == "__main__":
    sys.exit(main())
