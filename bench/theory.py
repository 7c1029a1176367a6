"""Predicted against learned: linear VAEs with a fixed-σ Gaussian likelihood at three β.

On the 8-dimensional Gaussian set (λ = 1, ½, ¼, …; σ² = 0.1) and on the digits (784 pixels,
J = 16, σ² = 0.1), trains one stack of three linear runs per data set through the app's own
training loop and evaluation, then prints the closed-form prediction (vae.learn.theory) from the
training split's covariance beside the learned R, D and KLⱼ on the test split, and where the rate
goes (I_q and KL(q(z) ‖ p(z)) with ln N). Prints the CPU model and load average first: the
learned numbers are training results, which move a little with the CPU's kernels.

    python bench/theory.py            # minutes on 2 busy CPU cores
    python bench/theory.py --quick    # fewer epochs on the digits
"""

from __future__ import annotations

import argparse
import math
import os
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import torch  # noqa: E402

from bench.machine import cpu_name, load_average  # noqa: E402
from vae.learn.config import RunConfig  # noqa: E402
from vae.learn.data import load_dataset  # noqa: E402
from vae.learn.engine import train_models  # noqa: E402
from vae.learn.evaluate import evaluate_model  # noqa: E402
from vae.learn.metrics import posterior_summary  # noqa: E402
from vae.learn.theory import covariance_spectrum, predict  # noqa: E402
from vae.learn.thresholds import INFORMATIVE_KL_THRESHOLD  # noqa: E402

NOISE_VAR = 0.1


def section(dataset: str, latent_dim: int, betas, epochs: int, batch_size: int, lr: float) -> None:
    data = load_dataset(dataset)
    spectrum = covariance_spectrum(data.train.x)
    configs = [
        RunConfig(dataset=dataset, architecture="linear", latent_dim=latent_dim,
                  likelihood="gaussian", gaussian_std=math.sqrt(NOISE_VAR), beta=b,
                  epochs=epochs, batch_size=batch_size, lr=lr, precision="fp32")
        for b in betas
    ]  # fmt: skip
    started = time.perf_counter()
    states = train_models(configs, dataset=data).states
    seconds = time.perf_counter() - started
    d = spectrum.size
    print(f"\n## {dataset}: d = {d}, J = {latent_dim}, σ² = {NOISE_VAR:g}, {epochs} epochs of "
          f"batch {batch_size}, lr {lr:g} ({seconds:.1f} s for the stack of {len(betas)})")  # fmt: skip
    top = ", ".join(f"{v:.3g}" for v in spectrum[: min(d, latent_dim + 2)])
    print(f"top eigenvalues λⱼ of the training covariance: {top}")
    for config, state in zip(configs, states, strict=True):
        p = predict(spectrum, config.beta, NOISE_VAR, latent_dim)
        e = evaluate_model(state.model, data, config, iw_samples=8)
        train = posterior_summary(state.model, data.train.x)  # the split the optimum is for
        learned = sorted(e["kl_per_dim"], reverse=True)
        worst = max(abs(a - b) for a, b in zip(learned, p.kl_per_dim, strict=True))
        informative = sum(k > INFORMATIVE_KL_THRESHOLD for k in learned)
        predicted = sum(k > INFORMATIVE_KL_THRESHOLD for k in p.kl_per_dim)
        print(f"β = {config.beta:g} (βσ² = {config.beta * NOISE_VAR:.3g}): theory R {p.rate:.3f} "
              f"D {p.distortion:.3f} · training split R {train.rate:.3f} D {train.distortion:.3f}"
              f" · test split R {e['rate']:.3f} D {e['distortion']:.3f}")  # fmt: skip
        print(f"   informative (KLⱼ > {INFORMATIVE_KL_THRESHOLD:g}): learned {informative}, theory "
              f"{predicted} ({sum(p.active)} with λⱼ > βσ²) · largest |ΔKLⱼ| {worst:.3f} nats "
              "(test split, matched by rank)")  # fmt: skip
        print("   KLⱼ learned: " + " ".join(f"{k:.3f}" for k in learned))
        print("   KLⱼ theory:  " + " ".join(f"{k:.3f}" for k in p.kl_per_dim))
        print(f"   rate split (test, N = {e['n_test']}): I_q {e['mutual_info']:.3f} + "
              f"KL(q(z)‖p(z)) {e['marginal_kl']:.3f} = {e['mutual_info'] + e['marginal_kl']:.3f}"
              f" (R {e['rate']:.3f}); ln N = {e['log_n']:.3f}")  # fmt: skip


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="fewer epochs on the digits")
    args = parser.parse_args()
    torch.set_num_threads(min(2, os.cpu_count() or 1))
    load = load_average()
    print(f"CPU: {cpu_name()} · {os.cpu_count()} logical cores visible · load average {load}")
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads, fp32")
    section("gaussian", 8, (0.5, 1.0, 2.0), epochs=200, batch_size=500, lr=1e-2)
    # Adam's jitter costs the digits' 784×16 decoder nats of D: several at lr 1e-2, about 2 at
    # 2e-3 after 150 epochs, under 1 at 1e-3 after 500 (10,000 steps of 200 images)
    section("digits", 16, (1.0, 4.0, 16.0), epochs=15 if args.quick else 500, batch_size=200,
            lr=1e-3)  # fmt: skip


if __name__ == "__main__":
    main()
