"""The training loop: K >= 1 models of one config (up to β) trained as one stack; read it top down.

A single run is a stack of one; a β sweep's runs train together, sharing everything a separate run
with the same seed would draw anyway: the data, the epoch's binarisation, the permutation and each
step's reparameterisation noise, all from one `torch.Generator` in a fixed order. So model i of a
stack computes what training it alone computes, up to float rounding (tests/test_engine.py).

Fast path: the whole training set sits on the device as one tensor; an epoch is a random
permutation of indices, with no DataLoader. The generator is saved with each checkpoint, so a run
resumed from epoch e continues exactly as if it had never stopped.

Callers observe and steer the loop through `TrainCallbacks`: after every epoch each model's
metrics and state; before every step whether to stop everything, or to drop some models (a run
cancelled on its own, or one whose files could not be written). A model whose loss turns NaN stops
alone with a `NonFiniteLossError`; the others carry on. Nothing here knows about files or processes.
"""

from __future__ import annotations

import copy
import ctypes
import functools
import os
import sys
import time
from collections.abc import Collection, Sequence
from dataclasses import dataclass, field

import torch

from vae.learn.config import RunConfig, can_train_together
from vae.learn.data import Dataset, binarize, load_dataset
from vae.learn.likelihood import pixel_nll
from vae.learn.metrics import posterior_summary
from vae.learn.model import VAE, build_model
from vae.learn.objective import kl_per_dim, make_objective
from vae.learn.precision import autocast, resolve_precision
from vae.learn.stack import stack_models

NAN_CHECK_EVERY = 200  # steps between host syncs that look for a non-finite loss
TEST_BINARIZATION_SEED = 12345  # one fixed binarised test set, so runs compare on equal terms
EVAL_NOISE_SEED = 0  # the posterior sample of the test summary; vae.learn.evaluate's default too
# Fields that may differ between models trained as one stack: `beta` is what a sweep varies;
# `name` and `threads` do not change what is computed.


class NonFiniteLossError(RuntimeError):
    """The loss became NaN or inf; training of that model stopped before anything was saved."""

    def __init__(self, step: int, epoch: int, config: RunConfig):
        self.step, self.epoch = step, epoch
        super().__init__(
            f"loss became NaN/inf at step {step} (epoch {epoch}) with lr={config.lr:g}, "
            f"beta={config.beta:g}, objective={config.objective}, batch_size={config.batch_size}, "
            f"likelihood={config.likelihood}; try a smaller learning rate"
        )


@dataclass
class TrainState:
    """Everything needed to continue training one model: saved in every checkpoint."""

    model: VAE
    optimizer: torch.optim.Optimizer
    generator: torch.Generator
    epoch: int = 0  # completed epochs
    step: int = 0  # optimizer steps taken
    stopped: bool = False  # True when the callbacks stopped training early

    def progress(self) -> tuple[int, int, bytes]:
        """Where this model is in its run; models train as one stack only from the same place."""
        return self.epoch, self.step, bytes(self.generator.get_state().cpu().numpy())


class TrainCallbacks:
    """How a caller observes and steers `train_models`; override what you need."""

    def on_epoch(self, index: int, metrics: dict, state: TrainState) -> None:
        """Model `index` completed an epoch: `metrics` is JSON-ready, `state` its own weights."""

    def stop_all(self) -> bool:
        """Checked before every step: True stops every model where it is."""
        return False

    def to_drop(self) -> Collection[int]:
        """Checked before every step (keep it cheap): models to stop at their last epoch."""
        return ()

    def on_dropped(self, index: int, error: Exception | None) -> None:
        """Model `index` left the stack: through `to_drop` (error None), or its loss turned NaN."""


@dataclass
class TrainResult:
    """What `train_models` leaves, per model: its state, and why it stopped early if it did."""

    states: list[TrainState]
    errors: list[Exception | None] = field(default_factory=list)  # NonFiniteLossError
    dropped: set[int] = field(default_factory=set)  # dropped through TrainCallbacks.to_drop
    stopped: bool = False  # TrainCallbacks.stop_all ended training


# ---- set-up --------------------------------------------------------------------------------------
@functools.cache
def keep_freed_memory() -> bool:
    """Stop glibc from handing each step's freed temporaries back to the OS (once per process).

    With glibc's default thresholds the large per-step buffers are unmapped or trimmed when freed
    and page-faulted back in on the next step, which costs up to a quarter of a CPU step. Raising
    the trim and mmap thresholds to 256 MB, as the job runner's MALLOC_*_ environment does for its
    worker processes, keeps them; this does the same for training started any other way (CLI,
    notebooks). Skipped when the environment already sets them, and off glibc.
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
    if config.device == "auto" or (config.device == "cuda" and not torch.cuda.is_available()):
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(config.device)


def make_optimizer(params, config: RunConfig) -> torch.optim.Optimizer:
    """The optimizer of every model, single or stacked."""
    return torch.optim.Adam(params, lr=config.lr, fused=True)


def new_state(config: RunConfig, image_shape, device: torch.device) -> TrainState:
    torch.manual_seed(config.seed)  # parameter initialisation
    model = build_model(config, image_shape).to(device)
    optimizer = make_optimizer(model.parameters(), config)
    generator = torch.Generator(device=device)
    generator.manual_seed(config.seed)
    return TrainState(model, optimizer, generator)


def fresh_states(configs: Sequence[RunConfig], image_shape, device) -> list[TrainState]:
    """Untrained states for a stack: every model starts from the same seeded weights and noise."""
    first = new_state(configs[0], image_shape, device)
    states = [first]
    for config in configs[1:]:
        model = copy.deepcopy(first.model)
        states.append(
            TrainState(model, make_optimizer(model.parameters(), config), first.generator)
        )
    return states


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


def _epoch_inputs(config: RunConfig, train_x: torch.Tensor, generator, fixed):
    """Training images for one epoch: a fresh Bernoulli draw under dynamic binarisation."""
    if config.likelihood != "bernoulli":
        return train_x
    if config.dynamic_binarization:
        return bernoulli_draw(train_x, generator)
    return fixed


# ---- the loop ------------------------------------------------------------------------------------
def train_models(
    configs: Sequence[RunConfig],
    *,
    dataset: Dataset | None = None,
    states: Sequence[TrainState] | None = None,
    callbacks: TrainCallbacks | None = None,
) -> TrainResult:
    """Train the models of `configs` (continuing `states` if given) to config.epochs, as one stack.

    The configs must agree on everything but β (`can_train_together`); resumed states must be at
    the same place (`TrainState.progress`). Returns each model's final state.
    """
    configs = [c.validated() for c in configs]
    if len(configs) > 1 and not can_train_together(configs):
        raise ValueError("these runs differ in more than β; train them one by one")
    config, callbacks = configs[0], callbacks or TrainCallbacks()
    keep_freed_memory()
    if config.threads > 0:
        torch.set_num_threads(config.threads)
    device = resolve_device(config)
    precision = resolve_precision(config.precision, device)
    dataset = dataset or load_dataset(config.dataset, config.data_root, seed=config.seed)
    states = list(states or fresh_states(configs, dataset.info.image_shape, device))
    if len({s.progress() for s in states}) != 1:
        raise ValueError("these models are at different places in training; train them one by one")
    generator = states[0].generator
    for state in states:
        state.generator = generator  # one stream of data order and noise for the whole stack

    stack = stack_models([s.model for s in states])
    optimizer = make_optimizer(stack.parameters(), config)
    stack.load_optimizer(optimizer, [(s.model, s.optimizer) for s in states])
    betas = torch.tensor([c.beta for c in configs], dtype=torch.float32, device=device)
    objective = make_objective(config, beta=betas)  # β broadcasts over the stack's models
    objectives = [make_objective(c) for c in configs]  # each model's own, for its metrics

    train_x = dataset.train.x.to(device)
    fixed = None
    if config.likelihood == "bernoulli" and not config.dynamic_binarization:
        fixed = bernoulli_draw(train_x, torch.Generator(device=device).manual_seed(config.seed))
    test_x = test_inputs(config, dataset, device)
    n, bs = len(train_x), config.batch_size
    steps_per_epoch = -(-n // bs)
    result = TrainResult(states, errors=[None] * len(configs))
    rows = list(range(len(configs)))  # rows[r]: the model trained in row r of the stack
    epoch, step = states[0].epoch, states[0].step

    def drop(gone: set[int]) -> None:
        """Take models out of the stack (they keep their last completed epoch's state)."""
        nonlocal stack, optimizer, objective, losses, rows
        keep = [r for r, i in enumerate(rows) if i not in gone]
        if keep:
            stack, optimizer = stack.select(keep, optimizer, lambda p: make_optimizer(p, config))
            losses = losses[:, keep].clone()
        rows = [rows[r] for r in keep]
        objective = make_objective(config, beta=betas[rows])

    def check_finite(upto: int) -> None:
        finite = torch.isfinite(losses[:upto]).all(dim=-1)  # [steps, rows]
        bad = {}
        for r, i in enumerate(rows):
            if not bool(finite[:, r].all()):
                first_bad = int((~finite[:, r]).nonzero()[0])
                bad[i] = NonFiniteLossError(step - (upto - 1 - first_bad), epoch + 1, configs[i])
        for i, error in bad.items():
            result.errors[i] = error
        if bad:
            drop(set(bad))
        for i, error in bad.items():
            callbacks.on_dropped(i, error)

    while epoch < config.epochs and rows:
        started = time.perf_counter()
        data = _epoch_inputs(config, train_x, generator, fixed)
        perm = torch.randperm(n, generator=generator, device=device)
        losses = torch.zeros(steps_per_epoch, len(rows), 3, device=device)  # loss, D, R
        for i in range(steps_per_epoch):
            xb = data[perm[i * bs : (i + 1) * bs]]
            eps = torch.randn((len(xb), config.latent_dim), generator=generator, device=device)
            with autocast(precision, device):
                logits, mu, logvar = stack.forward(xb, eps)
            logits, mu, logvar = logits.float(), mu.float(), logvar.float()  # loss terms in fp32
            nll = pixel_nll(stack.likelihood, xb.flatten(1), logits, stack.decoder_log_var())
            distortion, kl = nll.sum(-1), kl_per_dim(mu, logvar)  # [K, B], [K, B, J]
            loss = objective(distortion, kl, step)  # [K]
            optimizer.zero_grad(set_to_none=True)
            loss.sum().backward()
            optimizer.step()
            with torch.no_grad():  # bookkeeping: no autograd graph for it
                torch.stack([loss, distortion.mean(-1), kl.sum(-1).mean(-1)], -1, out=losses[i])
            step += 1
            if (i + 1) % NAN_CHECK_EVERY == 0:
                check_finite(i + 1)
            if callbacks.stop_all():
                for r, index in enumerate(rows):  # each model's weights at this very step
                    _export(stack, optimizer, r, states[index], epoch, step)
                    states[index].stopped = True
                result.stopped = True
                return result
            gone = set(callbacks.to_drop()) & set(rows)
            if gone:
                result.dropped |= gone
                drop(gone)
                for index in gone:
                    callbacks.on_dropped(index, None)
            if not rows:
                return result
        data = perm = None  # let go of this epoch's draw before the next one is made
        check_finite(steps_per_epoch)
        seconds = time.perf_counter() - started
        epoch += 1
        for r, index in enumerate(rows):
            state = states[index]
            _export(stack, optimizer, r, state, epoch, step)
            metrics = epoch_metrics(
                configs[index], state, losses[:, r], seconds, n, objectives[index], test_x
            )
            metrics["precision"] = precision
            callbacks.on_epoch(index, metrics, state)
    return result


def _export(stack, optimizer, row: int, state: TrainState, epoch: int, step: int) -> None:
    """Make `state` what a lone run of that model would hold now: weights, Adam, counters."""
    stack.export(row, state.model)
    stack.export_optimizer(optimizer, row, state.model, state.optimizer)
    state.epoch, state.step = epoch, step


def train(config: RunConfig, *, dataset=None, state=None, on_epoch=None, should_stop=None):
    """One model: `train_models` with a stack of one. Raises NonFiniteLossError on NaN/inf.

    on_epoch(metrics, state) after each epoch; should_stop() before each step. Returns the state.
    """

    class Single(TrainCallbacks):
        def on_epoch(self, index, metrics, state):
            if on_epoch is not None:
                on_epoch(metrics, state)

        def stop_all(self):
            return should_stop is not None and should_stop()

    states = None if state is None else [state]
    result = train_models([config], dataset=dataset, states=states, callbacks=Single())
    if result.errors[0] is not None:
        raise result.errors[0]
    return result.states[0]


def epoch_metrics(config, state, losses, seconds, n, objective, test_x) -> dict:
    """The JSON line written to metrics.jsonl after each epoch (train means + test summary)."""
    loss, distortion, rate = losses.double().mean(0).tolist()
    noise = torch.Generator(device=test_x.device).manual_seed(EVAL_NOISE_SEED)
    summary = posterior_summary(state.model, test_x, generator=noise)
    metrics = {
        "epoch": state.epoch,
        "step": state.step,
        "train_loss": loss,
        "train_distortion": distortion,
        "train_rate": rate,
        "kl_weight": float(objective.kl_weight(state.step, rate)),  # capacity: γ·sign(R − C)
        "images_per_s": n / seconds,
        "seconds": seconds,
        "time": time.time(),
        **summary.to_dict(),
    }
    if config.objective == "capacity":
        metrics["capacity"] = objective.capacity(state.step)
    if config.likelihood == "gaussian":
        log_var = state.model.likelihood.clamped_log_var().detach()
        metrics["decoder_std"] = float(torch.exp(0.5 * log_var))
    return metrics
