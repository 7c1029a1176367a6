"""The final evaluation's speed: each part of `evaluate_model` on a β-demo model, one thread.

    python bench/eval_speed.py [--repeats 3]

A run's last step is `vae.learn.evaluate.evaluate_model`; the demo's six runs evaluate three
after another on each of two workers, so its cost is the end of every sweep. This times its parts
on the β demo's model (digits, MLP 400, J = 16; untrained weights: the cost does not depend on
them) with one torch thread, as a worker runs it, and times the IWAE bound and the rate split
again the way they were computed before issue 21's third round (the whole decoder call at once;
the rate split's [I, M] log-densities from three products, element-wise), so the ratio is within
this run. Best of --repeats, in ms; the numbers the two ways compute are compared too.
"""

from __future__ import annotations

import argparse
import math
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

import torch  # noqa: E402

from bench.machine import cpu_name, load_average  # noqa: E402
from vae.execution.procs import keep_freed_memory  # noqa: E402
from vae.learn import evaluate, theory  # noqa: E402
from vae.learn.data import load_dataset, test_inputs  # noqa: E402
from vae.learn.metrics import posterior_summary  # noqa: E402
from vae.learn.model import build_model  # noqa: E402
from vae.present.demo import demo_config  # noqa: E402


def best_ms(fn, repeats: int):
    best, result = math.inf, None
    for _ in range(repeats):
        started = time.perf_counter()
        result = fn()
        best = min(best, time.perf_counter() - started)
    return 1000 * best, result


def rate_split_before(mu, logvar, samples=16, generator=None, budget=2**22) -> float:
    """I_q as the rate split computed it before: [S·c, N] log-densities as three products and
    element-wise sums, then one log-sum-exp over the whole chunk."""
    mu, logvar = mu.double(), logvar.double()
    n, j = mu.shape
    chunk = max(1, budget // max(1, samples * n))
    std, total = torch.exp(0.5 * logvar), 0.0
    inv_var = (-logvar).exp()
    for start in range(0, n, chunk):
        m, s, lv = (
            mu[start : start + chunk],
            std[start : start + chunk],
            logvar[start : start + chunk],
        )
        eps = torch.randn((samples, *m.shape), generator=generator, dtype=torch.float64)
        z = m + s * eps
        own = theory._log_normal(z, m, lv)
        flat = z.reshape(-1, j)
        quad = (flat * flat) @ inv_var.T - 2.0 * flat @ (mu * inv_var).T
        quad = quad + (mu * mu * inv_var).sum(-1)
        every = -0.5 * (quad + logvar.sum(-1) + j * theory.LOG_2PI)
        log_qz = (torch.logsumexp(every, dim=-1) - math.log(n)).reshape(own.shape)
        total += float((own - log_qz).sum())
    return total / (n * samples)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args(argv)
    keep_freed_memory()  # as a worker runs
    torch.set_num_threads(1)
    config = demo_config()
    dataset = load_dataset(config.dataset)
    torch.manual_seed(0)
    model = build_model(config, dataset.info.image_shape).eval()
    x = test_inputs(config, dataset, torch.device("cpu"))
    mu, logvar = evaluate.posterior_means(model, x)
    print(f"CPU: {cpu_name()} · 1 torch thread · load average {load_average()}")
    print(
        f"model: the β demo's (MLP 400, J = {config.latent_dim}); {len(x)} test digits, k = 100\n"
    )

    def iwae(block):
        def run():
            saved, evaluate.DECODE_BLOCK = evaluate.DECODE_BLOCK, block
            try:
                g = torch.Generator().manual_seed(1)
                return float(evaluate.iwae_bound(model, x, k=100, generator=g).mean())
            finally:
                evaluate.DECODE_BLOCK = saved

        return run

    def split():
        g = torch.Generator().manual_seed(2)
        return theory.rate_split(mu, logvar, generator=g)["mutual_info"]

    def split_before():
        return rate_split_before(mu, logvar, generator=torch.Generator().manual_seed(2))

    rows = [
        ("IWAE bound, decoded in blocks (now)", iwae(evaluate.DECODE_BLOCK)),
        ("IWAE bound, whole decoder calls (before)", iwae(evaluate.DECODE_BUDGET)),
        ("rate split, one product in blocks (now)", split),
        ("rate split, three products, whole chunk (before)", split_before),
        ("posterior summary", lambda: posterior_summary(model, x).rate),
        ("evaluate_model, all of it (now)", lambda: evaluate.evaluate_model(model, dataset, config)["iwae"]),
    ]  # fmt: skip
    times, values = {}, {}
    print("| part | best ms | value |")
    print("|---|---|---|")
    for name, fn in rows:
        times[name], values[name] = best_ms(fn, args.repeats)
        print(f"| {name} | {times[name]:,.0f} | {values[name]:.6f} |", flush=True)
    now, before = rows[0][0], rows[1][0]
    for label, (now, before) in (("IWAE", (0, 1)), ("rate split", (2, 3))):
        now, before = rows[now][0], rows[before][0]
        change = abs(values[now] - values[before])
        print(f"{label}: {times[before] / times[now]:.2f}× faster; values differ by {change:.2g}")
    print(f"load average at the end: {load_average()}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
