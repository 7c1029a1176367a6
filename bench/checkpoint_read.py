"""What checking a checkpoint's CRC-32 checksums costs when it is read.

    python bench/checkpoint_read.py [--repeats 7]

`read_checkpoint` verifies every archive entry against the CRC-32 that torch.save recorded (torch
itself never does). This reads three files from disk with and without that check, alternating the
two within the run, best of --repeats in ms: a default run's model.pt (MLP 400, z = 20, with Adam's
moments), the β demo's final.pt, and the largest checkpoint an upload may hold (63.96 M
fp16 weights for 4 x 512 x 512 images), the last both copied and memory-mapped (an upload).
The file is in the page cache each time: this is the check's arithmetic, not the disk.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

import torch  # noqa: E402

from bench.machine import cpu_name, load_average  # noqa: E402
from vae.execution import checkpoint  # noqa: E402
from vae.learn.config import RunConfig  # noqa: E402
from vae.learn.engine import new_state  # noqa: E402
from vae.present.demo import demo_config  # noqa: E402

DIGITS = (1, 28, 28)


def run_file(config: RunConfig, image_shape, slim: bool, half: bool = False) -> bytes:
    state = new_state(config, image_shape, torch.device("cpu"))
    for weight in state.model.parameters():  # one step: Adam's moments exist, as after training
        weight.grad = torch.zeros_like(weight)
    state.optimizer.step()
    made = checkpoint.make_checkpoint(config, state, image_shape, {})
    if slim:
        made.pop("optimizer_state")
    if half:
        made["model_state"] = {k: v.half() for k, v in made["model_state"].items()}
    return checkpoint.checkpoint_bytes(made)


def best_ms(read, repeats: int) -> float:
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        read()
        times.append((time.perf_counter() - start) * 1000)
    return min(times)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=7)
    args = parser.parse_args()
    torch.set_num_threads(1)
    print(f"CPU: {cpu_name()} · load average {load_average()}")
    largest = RunConfig(hidden_dims=[30], latent_dim=2, epochs=1)
    files = {
        "default run, model.pt": (run_file(RunConfig(), DIGITS, slim=False), False),
        "β demo, final.pt": (run_file(demo_config(), DIGITS, slim=True), False),
        "largest upload, copied": (run_file(largest, (4, 512, 512), True, half=True), False),
    }
    files["largest upload, mapped"] = (files["largest upload, copied"][0], True)
    checked = checkpoint._check_checksums
    print("| file | MB | without the check, ms | with it, ms | ratio |\n|---|---|---|---|---|")
    with tempfile.TemporaryDirectory() as folder:
        for name, (data, mapped) in files.items():
            path = Path(folder) / "model.pt"
            path.write_bytes(data)
            limit = len(data) + 1

            def read(mapped=mapped, path=path, limit=limit):
                checkpoint.read_checkpoint(path, max_bytes=limit, mapped=mapped)

            without, with_check = [], []
            for _ in range(args.repeats):  # alternate, so the machine's drift hits both
                checkpoint._check_checksums = lambda archive, entries: None
                without.append(best_ms(read, 1))
                checkpoint._check_checksums = checked
                with_check.append(best_ms(read, 1))
            off, on = min(without), min(with_check)
            print(f"| {name} | {len(data) / 1e6:.1f} | {off:.1f} | {on:.1f} | {on / off:.2f}× |")
    print(f"load average at the end: {load_average()}")


if __name__ == "__main__":
    main()
