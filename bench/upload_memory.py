"""The server's memory while tabs inspect the largest legal checkpoint, and after they close.

    python bench/upload_memory.py [--tabs 4] [--settle 60]

A real `streamlit run app.py` (tests/live_app.py) and Chromium: one tab first uploads a small
checkpoint (so torch and the picture code are loaded, as on any server that has shown a model),
then the idle size is read; then TABS tabs upload a checkpoint of 63.96 million fp16 weights for
4 x 512 x 512 images (128 MB, the legal maximum) at once, each waiting for its verdict, while the
server's resident memory is sampled every 50 ms; then the tabs close and the memory is read
again after SETTLE seconds. Prints one line per figure and, last, a JSON line for tests.
Target (issue #22): peak < 600 MB above idle for 4 tabs, back within 100 MB of idle 60 s after.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import threading
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path[:0] = [str(REPO), str(REPO / "tests")]
os.environ["PYTHONPATH"] = os.pathsep.join(filter(None, [str(REPO), os.environ.get("PYTHONPATH")]))

from live_app import IDLE, LiveApp, launch_chromium  # noqa: E402

IMAGE_SHAPE = (4, 512, 512)
HIDDEN = 30  # the widest single layer within 64 million weights for these images


def rss_mb(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    raise RuntimeError("no VmRSS")


def write_checkpoint(path: Path, image_shape, hidden: int) -> None:
    """A valid checkpoint whose fp16 weights fill the config's every parameter."""
    import torch

    from vae.execution.checkpoint import FORMAT, checkpoint_bytes
    from vae.learn.config import RunConfig
    from vae.learn.model import build_model

    config = RunConfig(hidden_dims=[hidden], latent_dim=4)
    with torch.device("meta"):
        shapes = {k: v.shape for k, v in build_model(config, image_shape).state_dict().items()}
    generator = torch.Generator().manual_seed(0)
    state = {k: (torch.randn(s, generator=generator) * 0.01).half() for k, s in shapes.items()}
    checkpoint = {
        "format": FORMAT, "config": config.to_dict(), "image_shape": list(image_shape),
        "epoch": 1, "step": 10, "model_state": state, "metrics": {"rate": 1.0},
    }  # fmt: skip
    path.write_bytes(checkpoint_bytes(checkpoint))


class Sampler(threading.Thread):
    """The server's RSS every 50 ms; `peak` is the largest seen since the last reset."""

    def __init__(self, pid: int):
        super().__init__(daemon=True)
        self.pid, self.peak, self.stop = pid, 0.0, threading.Event()

    def run(self) -> None:
        while not self.stop.wait(0.05):
            try:
                self.peak = max(self.peak, rss_mb(self.pid))
            except (OSError, RuntimeError):
                return


def upload_in_tabs(browser, url: str, files: list[Path]) -> None:
    """Each file in a tab of its own, all sent before any verdict is awaited."""
    pages = []
    for _ in files:
        page = browser.new_context(viewport={"width": 1300, "height": 900}).new_page()
        page.set_default_timeout(600_000)
        page.goto(f"{url}/checkpoints")
        page.wait_for_selector(IDLE)
        pages.append(page)
    for page, path in zip(pages, files, strict=True):
        page.locator("[data-testid='stFileUploaderDropzoneInput']").set_input_files(str(path))
    for page in pages:
        page.get_by_text("Valid checkpoint").first.wait_for()
    for page in pages:
        page.context.close()


def measure(tabs: int, settle_s: float, work: Path) -> dict:
    from playwright.sync_api import sync_playwright

    small, large = work / "small.pt", work / "largest.pt"
    write_checkpoint(small, (1, 28, 28), 32)
    write_checkpoint(large, IMAGE_SHAPE, HIDDEN)
    server = LiveApp(work / "runs", work / "streamlit.log")
    try:
        pid = server.process.pid
        with sync_playwright() as playwright:
            browser = launch_chromium(playwright)
            try:
                upload_in_tabs(browser, server.url, [small])  # loads torch and the picture code
                time.sleep(5)
                idle = rss_mb(pid)
                sampler = Sampler(pid)
                sampler.start()
                started = time.monotonic()
                upload_in_tabs(browser, server.url, [large] * tabs)
                seconds = time.monotonic() - started
                sampler.stop.set()
                sampler.join()
                time.sleep(settle_s)
                after = rss_mb(pid)
            finally:
                browser.close()
    finally:
        server.stop()
    return {
        "tabs": tabs, "checkpoint_mb": round(large.stat().st_size / 1e6, 1),
        "idle_mb": round(idle), "peak_mb": round(sampler.peak), "after_mb": round(after),
        "peak_above_idle_mb": round(sampler.peak - idle),
        "after_above_idle_mb": round(after - idle), "settle_s": settle_s,
        "upload_seconds": round(seconds, 1),
    }  # fmt: skip


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--tabs", type=int, default=4)
    parser.add_argument("--settle", type=float, default=60.0, help="seconds after the tabs close")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="vae-upload-bench-") as work:
        figures = measure(args.tabs, args.settle, Path(work))
    print(f"checkpoint: {figures['checkpoint_mb']} MB, {args.tabs} tabs at once")
    print(f"server RSS idle:  {figures['idle_mb']} MB")
    print(f"server RSS peak:  {figures['peak_mb']} MB (+{figures['peak_above_idle_mb']} MB)")
    print(
        f"server RSS after: {figures['after_mb']} MB (+{figures['after_above_idle_mb']} MB, "
        f"{args.settle:g} s after the tabs closed)"
    )
    print(json.dumps(figures))


if __name__ == "__main__":
    main()
