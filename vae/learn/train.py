"""The training loop: one model, any architecture, any objective; read it top to bottom.

Fast path: the whole training set sits on the device as one tensor; an epoch is a random
permutation of indices, with no DataLoader. A torch.Generator drives shuffling, binarisation and
the reparameterisation noise, and is saved with each checkpoint, so a run resumed from epoch k
continues exactly as if it had never stopped. Callers observe and steer the loop through
`on_epoch` and `should_stop`; nothing here knows about Streamlit.
"""

from __future__ import annotations

import ctypes
import functools
import os
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass

import torch

from vae.learn.config import RunConfig
from vae.learn.data import Dataset, binarize, load_dataset
from vae.learn.metrics import posterior_summary
from vae.learn.model import VAE, build_model
from vae.learn.objective import kl_per_dim, make_objective

NAN_CHECK_EVERY = 200  # steps between host syncs that look for a non-finite loss
TEST_BINARIZATION_SEED = 12345  # one fixed binarised test set, so runs compare on equal terms
EVAL_NOISE_SEED = (
    0  # the posterior sample of the test summary; vae.learn.evaluate's default seed too
)


class NonFiniteLossError(RuntimeError):
    """The loss became NaN or inf; training stopped before anything was saved from that state."""

    def __init__(self, step: int, epoch: int, config: RunConfig):
        self.step, self.epoch = step, epoch
        super().__init__(
            f"loss became NaN/inf at step {step} (epoch {epoch}) with lr={config.lr:g}, "
            f"beta={config.beta:g}, objective={config.objective}, batch_size={config.batch_size}, "
            f"likelihood={config.likelihood}; try a smaller learning rate"
        )


@dataclass
class TrainState:
    """Everything needed to continue training: saved in every checkpoint."""

    model: VAE
    optimizer: torch.optim.Optimizer
    generator: torch.Generator
    epoch: int = 0  # completed epochs
    step: int = 0  # optimizer steps taken
    stopped: bool = False  # True when should_stop() ended training early


@functools.cache
def keep_freed_memory() -> bool:
    """Stop glibc from handing each step's freed temporaries back to the OS (once per process).

    With glibc's default thresholds the large per-step buffers are unmapped or trimmed when freed
    and page-faulted back in on the next step, which costs up to a quarter of a CPU step. Raising
    the trim and mmap thresholds to 256 MB, as the job runner's MALLOC_*_ environment does for its
    worker processes, keeps them; this does the same for training started any other way (CLI,
    notebooks). Skipped when the environment already sets them, and off glibc. Returns True when
    the thresholds were changed.
    """
    if not sys.platform.startswith("linux") or "MALLOC_TRIM_THRESHOLD_" in os.environ:
        return False
    try:
        mallopt = ctypes.CDLL("libc.so.6").mallopt
    except (OSError, AttributeError):
        return False
    m_trim_threshold, m_mmap_threshold = -1, -3  # from glibc's malloc.h
    return bool(mallopt(m_trim_threshold, 256 << 20)) & bool(mallopt(m_mmap_threshold, 256 << 20))


def resolve_device(config: RunConfig) -> torch.device:
    if config.device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(config.device)


def make_optimizer(params, config: RunConfig) -> torch.optim.Optimizer:
    """The optimizer every run uses (vae.learn.batched builds its stacked one here too)."""
    return torch.optim.Adam(params, lr=config.lr, fused=True)


def new_state(config: RunConfig, image_shape, device: torch.device) -> TrainState:
    torch.manual_seed(config.seed)  # parameter initialisation
    model = build_model(config, image_shape).to(device)
    optimizer = make_optimizer(model.parameters(), config)
    generator = torch.Generator(device=device)
    generator.manual_seed(config.seed)
    return TrainState(model, optimizer, generator)


def bernoulli_draw(x: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
    """`vae.learn.data.binarize(x, generator)`, bit for bit, at about a third of the cost on the CPU.

    On the CPU torch.bernoulli(p) draws one float32 uniform u per element from the generator, in
    order, and returns u < p; torch.rand draws exactly the same uniforms. So `rand < x` gives the
    same pixels and leaves the generator in the same state, but compares them in one vectorised
    pass instead of a serial loop. Other devices and dtypes use torch.bernoulli itself.
    """
    cpu = x.device.type == generator.device.type == "cpu"
    if not (cpu and x.dtype == torch.float32 and x.is_contiguous() and x.numel()):
        return binarize(x, generator)
    low, high = torch.aminmax(x)
    if not (low >= 0 and high <= 1):  # NaN or out of [0, 1]: let torch.bernoulli raise its error
        return binarize(x, generator)
    u = torch.rand(x.shape, generator=generator, dtype=x.dtype)
    return torch.lt(u, x, out=u)  # 1.0 where u < p, else 0.0, written over u


def test_inputs(config: RunConfig, dataset: Dataset, device: torch.device) -> torch.Tensor:
    """The held-out images as the likelihood sees them (binarised once, with a fixed seed)."""
    x = dataset.test.x
    if config.likelihood == "bernoulli":  # drawn on the CPU: the same pixels on every device
        x = bernoulli_draw(x.contiguous(), torch.Generator().manual_seed(TEST_BINARIZATION_SEED))
    return x.to(device)


def prepare_inputs(config: RunConfig, dataset: Dataset, device: torch.device):
    """(train images on the device, their one fixed binarisation if asked for, test inputs)."""
    train_x = dataset.train.x.to(device)
    fixed = None
    if config.likelihood == "bernoulli" and not config.dynamic_binarization:
        fixed = bernoulli_draw(train_x, torch.Generator(device=device).manual_seed(config.seed))
    return train_x, fixed, test_inputs(config, dataset, device)


def epoch_inputs(config: RunConfig, train_x: torch.Tensor, generator, fixed: torch.Tensor | None):
    """Training images for one epoch: a fresh Bernoulli draw under dynamic binarisation."""
    if config.likelihood != "bernoulli":
        return train_x
    if config.dynamic_binarization:
        return bernoulli_draw(train_x, generator)
    return fixed


def train(
    config: RunConfig,
    *,
    dataset: Dataset | None = None,
    state: TrainState | None = None,
    on_epoch: Callable[[dict, TrainState], None] | None = None,
    should_stop: Callable[[], bool] | None = None,
) -> TrainState:
    """Train until config.epochs are done (continuing `state` if given) or should_stop() is true.

    on_epoch(metrics, state) runs after each completed epoch with a JSON-ready metrics dict.
    Raises NonFiniteLossError when the loss stops being finite.
    """
    config.validated()
    keep_freed_memory()
    if config.threads > 0:
        torch.set_num_threads(config.threads)
    device = resolve_device(config)
    dataset = dataset or load_dataset(config.dataset, config.data_root, seed=config.seed)
    if state is None:
        state = new_state(config, dataset.info.image_shape, device)
    model, optimizer, generator = state.model, state.optimizer, state.generator
    objective = make_objective(config)
    train_x, fixed, test_x = prepare_inputs(config, dataset, device)
    n, bs = len(train_x), config.batch_size
    steps_per_epoch = -(-n // bs)

    while state.epoch < config.epochs:
        model.train()
        started = time.perf_counter()
        data = epoch_inputs(config, train_x, generator, fixed)
        perm = torch.randperm(n, generator=generator, device=device)
        losses = torch.zeros(steps_per_epoch, 3, device=device)  # loss, D, R per step
        for i in range(steps_per_epoch):
            xb = data[perm[i * bs : (i + 1) * bs]]
            logits, mu, logvar = model(xb, generator=generator)
            distortion = model.likelihood.nll(xb, logits)
            kl = kl_per_dim(mu, logvar)
            loss = objective(distortion, kl, state.step)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            with torch.no_grad():  # bookkeeping: no autograd graph for it
                losses[i] = torch.stack([loss, distortion.mean(), kl.sum(-1).mean()])
            state.step += 1
            if (i + 1) % NAN_CHECK_EVERY == 0:
                _raise_if_non_finite(losses[: i + 1], state, config, i)
            if should_stop is not None and should_stop():
                state.stopped = True
                return state
        data = perm = None  # let go of this epoch's draw before the next one is made
        _raise_if_non_finite(losses, state, config, steps_per_epoch - 1)
        seconds = time.perf_counter() - started
        state.epoch += 1
        if on_epoch is not None:
            on_epoch(epoch_metrics(config, state, losses, seconds, n, objective, test_x), state)
    return state


def _raise_if_non_finite(losses: torch.Tensor, state: TrainState, config: RunConfig, last: int):
    finite = torch.isfinite(losses).all(dim=1)
    if not bool(finite.all()):
        first_bad = int((~finite).nonzero()[0])
        step = state.step - (last - first_bad)
        raise NonFiniteLossError(step, state.epoch + 1, config)


def epoch_metrics(config, state, losses, seconds, n, objective, test_x) -> dict:
    """The JSON line written to metrics.jsonl after each epoch (train means + test summary)."""
    loss, distortion, rate = losses.double().mean(0).tolist()
    device = test_x.device
    noise = torch.Generator(device=device).manual_seed(EVAL_NOISE_SEED)
    summary = posterior_summary(state.model, test_x, generator=noise)
    weight = objective.kl_weight(state.step)
    metrics = {
        "epoch": state.epoch,
        "step": state.step,
        "train_loss": loss,
        "train_distortion": distortion,
        "train_rate": rate,
        "kl_weight": float(weight),
        "images_per_s": n / seconds,
        "seconds": seconds,
        "time": time.time(),
        **summary.to_dict(),
    }
    if config.objective == "capacity":
        metrics["capacity"] = objective.capacity(state.step)
    if config.likelihood == "gaussian":
        metrics["decoder_std"] = float(
            torch.exp(0.5 * state.model.likelihood.clamped_log_var().detach())
        )
    return metrics
