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
import time
from collections.abc import Callable, Collection, Sequence
from dataclasses import dataclass, field

import torch

from vae.learn.config import RunConfig, can_train_together
from vae.learn.data import Dataset, bernoulli_draw, epoch_inputs, load_dataset, test_inputs
from vae.learn.likelihood import pixel_nll
from vae.learn.metrics import posterior_summary
from vae.learn.model import VAE, build_model
from vae.learn.objective import kl_per_dim, make_objective
from vae.learn.precision import autocast, resolve_precision
from vae.learn.stack import ParameterStack, stack_models

NAN_CHECK_EVERY = 200  # steps between host syncs that look for a non-finite loss
EVAL_NOISE_SEED = 0  # the posterior sample of the test summary; vae.learn.evaluate's default too


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
    stopped: bool = False  # TrainCallbacks.stop_all ended training


# ---- set-up --------------------------------------------------------------------------------------
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


# ---- the stack's changing state -----------------------------------------------------------------
@dataclass
class LiveStack:
    """The models still training, as one stack: what changes when a model leaves it.

    `rows[r]` is the index (into the configs) of the model in row r of `models`; `losses` holds
    this epoch's per-step (loss, D, R) of each row.
    """

    models: ParameterStack
    optimizer: torch.optim.Optimizer
    objective: Callable[..., torch.Tensor]  # (distortion, kl, step) -> loss per row
    rows: list[int]
    config: RunConfig
    betas: torch.Tensor  # every model's β, by config index
    losses: torch.Tensor | None = None

    @classmethod
    def of(cls, configs: Sequence[RunConfig], states: Sequence[TrainState], device) -> LiveStack:
        config = configs[0]
        models = stack_models([s.model for s in states])
        optimizer = make_optimizer(models.parameters(), config)
        models.load_optimizer(optimizer, [(s.model, s.optimizer) for s in states])
        betas = torch.tensor([c.beta for c in configs], dtype=torch.float32, device=device)
        objective = make_objective(config, beta=betas)  # β broadcasts over the stack's models
        return cls(models, optimizer, objective, list(range(len(configs))), config, betas)

    def drop(self, gone: Collection[int]) -> None:
        """Take models out of the stack (they keep their last completed epoch's state)."""
        keep = [r for r, i in enumerate(self.rows) if i not in gone]
        if keep:
            self.models, self.optimizer = self.models.select(
                keep, self.optimizer, lambda p: make_optimizer(p, self.config)
            )
            self.losses = self.losses[:, keep].clone()
        self.rows = [self.rows[r] for r in keep]
        self.objective = make_objective(self.config, beta=self.betas[self.rows])

    def check_finite(self, upto: int, step: int, epoch: int, configs) -> dict[int, Exception]:
        """The models whose loss turned NaN/inf in this epoch's first `upto` steps, each with the
        step it happened at; they are dropped."""
        finite = torch.isfinite(self.losses[:upto]).all(dim=-1)  # [steps, rows]
        bad = {}
        for r, i in enumerate(self.rows):
            if not bool(finite[:, r].all()):
                first_bad = int((~finite[:, r]).nonzero()[0])
                bad[i] = NonFiniteLossError(step - (upto - 1 - first_bad), epoch + 1, configs[i])
        if bad:
            self.drop(set(bad))
        return bad

    def export(self, states: Sequence[TrainState], epoch: int, step: int) -> None:
        """Make each model's state what a lone run of it would hold now: weights, Adam, counters."""
        for r, index in enumerate(self.rows):
            state = states[index]
            self.models.export(r, state.model)
            self.models.export_optimizer(self.optimizer, r, state.model, state.optimizer)
            state.epoch, state.step = epoch, step


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

    live = LiveStack.of(configs, states, device)
    objectives = [make_objective(c) for c in configs]  # each model's own, for its metrics
    train_x = dataset.train.x.to(device)
    fixed = None
    if config.likelihood == "bernoulli" and not config.dynamic_binarization:
        fixed = bernoulli_draw(train_x, torch.Generator(device=device).manual_seed(config.seed))
    test_x = test_inputs(config, dataset, device)
    n, bs = len(train_x), config.batch_size
    steps_per_epoch = -(-n // bs)
    result = TrainResult(states, errors=[None] * len(configs))
    epoch, step = states[0].epoch, states[0].step

    def leave(errors: dict[int, Exception]) -> None:
        for index, error in errors.items():
            result.errors[index] = error
            callbacks.on_dropped(index, error)

    while epoch < config.epochs and live.rows:
        started = time.perf_counter()
        data = epoch_inputs(config, train_x, generator, fixed)
        perm = torch.randperm(n, generator=generator, device=device)
        live.losses = torch.zeros(steps_per_epoch, len(live.rows), 3, device=device)  # loss, D, R
        for i in range(steps_per_epoch):
            xb = data[perm[i * bs : (i + 1) * bs]]
            eps = torch.randn((len(xb), config.latent_dim), generator=generator, device=device)
            with autocast(precision, device):
                logits, mu, logvar = live.models.forward(xb, eps)
            logits, mu, logvar = logits.float(), mu.float(), logvar.float()  # loss terms in fp32
            nll = pixel_nll(
                live.models.likelihood, xb.flatten(1), logits, live.models.decoder_log_var()
            )
            distortion, kl = nll.sum(-1), kl_per_dim(mu, logvar)  # [K, B], [K, B, J]
            loss = live.objective(distortion, kl, step)  # [K]
            live.optimizer.zero_grad(set_to_none=True)
            loss.sum().backward()
            live.optimizer.step()
            with torch.no_grad():  # bookkeeping: no autograd graph for it
                out = live.losses[i]
                torch.stack([loss, distortion.mean(-1), kl.sum(-1).mean(-1)], -1, out=out)
            step += 1
            if (i + 1) % NAN_CHECK_EVERY == 0:
                leave(live.check_finite(i + 1, step, epoch, configs))
            if callbacks.stop_all():
                live.export(states, epoch, step)  # each model's weights at this very step
                for index in live.rows:
                    states[index].stopped = True
                result.stopped = True
                return result
            gone = set(callbacks.to_drop()) & set(live.rows)
            if gone:
                live.drop(gone)
                leave(dict.fromkeys(gone))
            if not live.rows:
                return result
        data = perm = None  # let go of this epoch's draw before the next one is made
        leave(live.check_finite(steps_per_epoch, step, epoch, configs))
        seconds = time.perf_counter() - started
        epoch += 1
        live.export(states, epoch, step)
        for r, index in enumerate(live.rows):
            state = states[index]
            metrics = epoch_metrics(
                configs[index], state, live.losses[:, r], seconds, n, objectives[index], test_x
            )
            metrics["precision"] = precision
            callbacks.on_epoch(index, metrics, state)
    return result


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
