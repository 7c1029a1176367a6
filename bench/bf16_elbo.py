"""Does bf16 move the ELBO? Train the same runs with precision fp32 and bf16, on this machine.

    python bench/bf16_elbo.py [--epochs 10] [--seeds 0 1] [--threads 1]

Trains the default run (real digits, MLP 784-400-20-400-784, batch 128, 10 epochs, β = 1) with
`vae.learn.engine.train`, once with `precision="fp32"` and once with `precision="bf16"` (the
forward pass under bf16 autocast; loss terms, Adam and master weights in fp32), for each seed. The
test-set ELBO of each trained model is then computed in fp32 with the same noise, so only
training differs. The rule for `precision="auto"` choosing bf16: its ELBO within 0.5% of fp32's.
The fp32 seed-to-seed spread is printed alongside, as the scale of ordinary run-to-run noise.

On a CPU without AVX-512 BF16 (or AMX) bf16 matrix products are emulated and far slower than
fp32, so there it can never be a speed lever; the numerics are the same everywhere.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from bench.machine import cpu_name  # noqa: E402


def test_elbo(config, state) -> float:
    import torch

    from vae.learn.data import TEST_BINARIZATION_SEED, load_dataset, test_inputs
    from vae.learn.metrics import posterior_summary

    dataset = load_dataset(config.dataset, seed=config.seed)
    x = test_inputs(config, dataset, torch.device("cpu"))
    noise = torch.Generator().manual_seed(TEST_BINARIZATION_SEED)
    return posterior_summary(state.model.float(), x, generator=noise).elbo


def main(argv=None) -> int:
    import torch

    from vae.learn.config import RunConfig
    from vae.learn.engine import train
    from vae.learn.precision import resolve_precision

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--epochs", type=int, default=10)
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1])
    parser.add_argument("--threads", type=int, default=1)
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    print(f"CPU: {cpu_name()}; torch {torch.__version__}, CPU capability "
          f"{torch.backends.cpu.get_cpu_capability()}; auto picks "
          f"{resolve_precision('auto', torch.device('cpu'))} here")  # fmt: skip
    results = {}
    for seed in args.seeds:
        for mode in ("fp32", "bf16"):
            config = RunConfig(
                epochs=args.epochs, seed=seed, device="cpu", threads=args.threads, precision=mode
            )
            started = time.perf_counter()
            state = train(config)
            seconds = time.perf_counter() - started
            results[seed, mode] = elbo = test_elbo(config, state)
            print(f"seed {seed} {mode}: test ELBO {elbo:.3f} nats ({seconds:.0f} s)", flush=True)
    print()
    print("| seed | fp32 test ELBO | bf16 test ELBO | bf16 − fp32 | relative |")
    print("|---|---|---|---|---|")
    worst = 0.0
    for seed in args.seeds:
        a, b = results[seed, "fp32"], results[seed, "bf16"]
        worst = max(worst, abs(b - a) / abs(a))
        print(f"| {seed} | {a:.3f} | {b:.3f} | {b - a:+.3f} | {100 * (b - a) / abs(a):+.3f}% |")
    verdict = "within" if worst <= 0.005 else "NOT within"
    print(f"\nbf16 is {verdict} 0.5% of fp32 on every seed (worst {100 * worst:.3f}%).")
    fp32 = [results[s, "fp32"] for s in args.seeds]
    if len(fp32) > 1:
        spread = max(fp32) - min(fp32)
        print(
            f"\nfp32 seed-to-seed spread: {spread:.3f} nats ({100 * spread / abs(min(fp32)):.3f}%)"
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
