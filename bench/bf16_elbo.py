"""Does bf16 autocast move the ELBO? Train the same runs in fp32 and under bf16 autocast.

    python bench/bf16_elbo.py [--epochs 10] [--seeds 0 1] [--threads 1]

Trains the default run (real digits, MLP 784-400-20-400-784, batch 128, 10 epochs, β = 1) with
`vae.learn.engine.train`, once in fp32 and once inside `torch.autocast("cpu", dtype=torch.bfloat16)`
(matrix products in bf16, accumulation, loss and Adam in fp32), for each seed. The test-set ELBO
of each trained model is then computed in fp32 with the same noise, so only training differs.
The rule for making bf16 a default: its ELBO within 0.5% of fp32's. The fp32 seed-to-seed spread
is printed alongside, as the scale of ordinary run-to-run noise.

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


def test_elbo(config, state) -> float:
    import torch

    from vae.learn.data import load_dataset
    from vae.learn.engine import TEST_BINARIZATION_SEED, test_inputs
    from vae.learn.metrics import posterior_summary

    dataset = load_dataset(config.dataset, seed=config.seed)
    x = test_inputs(config, dataset, torch.device("cpu"))
    noise = torch.Generator().manual_seed(TEST_BINARIZATION_SEED)
    return posterior_summary(state.model.float(), x, generator=noise).elbo


def main(argv=None) -> int:
    import torch

    from vae.learn.config import RunConfig
    from vae.learn.engine import train

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--epochs", type=int, default=10)
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1])
    parser.add_argument("--threads", type=int, default=1)
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    print(f"torch {torch.__version__}, CPU capability {torch.backends.cpu.get_cpu_capability()}")
    results = {}
    for seed in args.seeds:
        config = RunConfig(epochs=args.epochs, seed=seed, device="cpu", threads=args.threads)
        for mode in ("fp32", "bf16"):
            started = time.perf_counter()
            if mode == "bf16":
                # cache_enabled=False: autocast caches the bf16 copy of each weight until the
                # context exits, and one context spans the whole run here, so a cached copy
                # would freeze the weights the forward pass sees at their first-step values.
                with torch.autocast("cpu", dtype=torch.bfloat16, cache_enabled=False):
                    state = train(config)
            else:
                state = train(config)
            seconds = time.perf_counter() - started
            results[seed, mode] = elbo = test_elbo(config, state)
            print(f"seed {seed} {mode}: test ELBO {elbo:.3f} nats ({seconds:.0f} s)", flush=True)
    print()
    print("| seed | fp32 test ELBO | bf16 test ELBO | bf16 − fp32 | relative |")
    print("|---|---|---|---|---|")
    for seed in args.seeds:
        a, b = results[seed, "fp32"], results[seed, "bf16"]
        print(f"| {seed} | {a:.3f} | {b:.3f} | {b - a:+.3f} | {100 * (b - a) / abs(a):+.3f}% |")
    fp32 = [results[s, "fp32"] for s in args.seeds]
    if len(fp32) > 1:
        spread = max(fp32) - min(fp32)
        print(
            f"\nfp32 seed-to-seed spread: {spread:.3f} nats ({100 * spread / abs(min(fp32)):.3f}%)"
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
