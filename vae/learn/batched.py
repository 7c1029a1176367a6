"""Train K MLP VAEs that differ only in β as one computation, with their weights stacked.

A β sweep trains the same architecture on the same data with the same seed K times. Here the K
models live in one set of tensors with a leading model axis: the first encoder layer (whose input
is shared) is a single wide matrix product, every later layer a batched one (`torch.baddbmm`),
and one Adam updates all K at once (Adam is elementwise, so that is exactly K separate Adams).

Each model gets exactly what `vae.learn.train.train` would give it with the same config:
- the same initial weights: the seed is the same, so one model is built after
  `torch.manual_seed(seed)` (as `new_state` does) and copied K times;
- the same data and noise: one `torch.Generator` seeded with the seed draws, in `train`'s order,
  the epoch's binarisation, the permutation and each step's reparameterisation noise ε of shape
  [B, J], and all K models use those same draws. That is precisely what K separate runs with one
  seed would draw, so sharing them is not an approximation;
- the same objective, evaluated with a β vector that broadcasts over the model axis.
The per-run results therefore match one-at-a-time training up to float rounding (the batched
matrix products sum in a different order); `tests/test_batched.py` checks this to 1e-4.

Each run still gets its own files, written as `vae.execution.worker.run_one` writes them: status, metrics
lines, a normal single-model checkpoint every epoch (its optimizer and generator state included, so
`run_one` can resume it alone), final.pt and the evaluation. A model whose loss turns NaN fails on
its own; the others carry on (the models share no parameters, so NaN cannot spread between them).
"""

from __future__ import annotations

import math
import os
import time
import traceback
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

import torch
import torch.nn.functional as F

from vae.execution.checkpoint import CheckpointError, make_checkpoint
from vae.execution.store import RunStore, StoreError
from vae.learn.config import ConfigError, RunConfig
from vae.learn.data import DataError, Dataset, load_dataset
from vae.learn.model import MLPVAE, build_model
from vae.learn.objective import LOGVAR_MAX, LOGVAR_MIN, kl_per_dim, make_objective
from vae.learn.train import (
    NAN_CHECK_EVERY,
    NonFiniteLossError,
    TrainState,
    epoch_inputs,
    epoch_metrics,
    keep_freed_memory,
    make_optimizer,
    prepare_inputs,
    resolve_device,
)

# Fields that may differ between runs trained together. `threads` and `name` do not change what
# is computed; `beta` is the one thing a sweep varies.
_FREE_FIELDS = ("beta", "name", "threads")


def _shared_fields(config: RunConfig) -> dict:
    return {k: v for k, v in config.to_dict().items() if k not in _FREE_FIELDS}


def can_train_together(configs: Sequence[RunConfig]) -> bool:
    """True when there are at least two valid MLP configs that agree on everything but β.

    (The run name and the thread count may differ too: they do not change the numbers.)
    """
    if len(configs) < 2:
        return False
    try:
        for config in configs:
            config.validated()
    except ConfigError:
        return False
    if any(c.architecture != "mlp" for c in configs):
        return False
    first = _shared_fields(configs[0])
    return all(_shared_fields(c) == first for c in configs[1:])


# ---- the stacked model ---------------------------------------------------------------------


class StackedMLP:
    """K copies of one MLPVAE architecture, each parameter stacked on a leading model axis.

    `params` maps each parameter name of the single model (``encoder.0.weight``...) to a leaf
    tensor [K, ...]. Weights of the batched layers are kept as [K, in, out] (the transpose of
    nn.Linear's [out, in]), so that their gradients come out of the batched product contiguous;
    the first encoder layer keeps [K, out, in], which is one [K*out, in] matrix.
    `forward_loss` computes all K models' losses at once.
    """

    def __init__(self, template: MLPVAE, k: int):
        self.k = k
        self.transposed: set[str] = set()
        linears = self._linear_names(template)
        for name in linears[1:]:
            self.transposed.add(f"{name}.weight")
        self.params: dict[str, torch.Tensor] = {}
        for name, p in template.named_parameters():
            value = p.detach().t() if name in self.transposed else p.detach()
            self.params[name] = value.unsqueeze(0).repeat(k, *([1] * p.dim())).requires_grad_(True)
        pairs = [(self.params[f"{n}.weight"], self.params[f"{n}.bias"]) for n in linears]
        n_encoder = sum(1 for n in linears if n.startswith("encoder."))
        self.encoder, self.decoder = pairs[:n_encoder], pairs[n_encoder:]
        self.likelihood = template.likelihood.kind
        if self.likelihood == "gaussian":
            lv = self.params.get("likelihood.log_var")
            self.log_var = lv if lv is not None else template.likelihood.log_var.detach()

    @staticmethod
    def _linear_names(template: MLPVAE) -> list[str]:
        names = []
        for prefix, seq in (("encoder", template.encoder), ("decoder", template.decoder)):
            linear = [i for i, m in seq.named_children() if isinstance(m, torch.nn.Linear)]
            names += [f"{prefix}.{i}" for i in linear]
        return names

    def parameters(self) -> list[torch.Tensor]:
        return list(self.params.values())

    def single(self, name: str, stacked: torch.Tensor, index: int) -> torch.Tensor:
        """Model `index`'s slice of a stacked tensor laid out like parameter `name`, as nn.Linear has it."""
        value = stacked[index]
        return value.t() if name in self.transposed else value

    def forward_loss(self, x: torch.Tensor, eps: torch.Tensor, objective, step: int):
        """x [B, n] (shared by all models), eps [B, J] (shared) -> loss [K], D [K, B], KL [K, B, J]."""
        k, b = self.k, x.shape[0]
        # First layer: the input is the same for every model, so all K are one [B, n] @ [n, K*h].
        w, bias = self.encoder[0]
        h = torch.addmm(bias.reshape(-1), x, w.reshape(-1, w.shape[-1]).t())
        h = h.view(b, k, -1).transpose(0, 1)  # [K, B, h]
        for w, bias in self.encoder[1:]:
            h = torch.baddbmm(bias.unsqueeze(1), torch.relu(h), w)
        mu, logvar = h.chunk(2, dim=-1)
        logvar = logvar.clamp(LOGVAR_MIN, LOGVAR_MAX)
        z = mu + eps * torch.exp(0.5 * logvar)
        h = z
        for i, (w, bias) in enumerate(self.decoder):
            if i:
                h = torch.relu(h)
            h = torch.baddbmm(bias.unsqueeze(1), h, w)
        distortion = self._nll(x, h)
        kl = kl_per_dim(mu, logvar)
        return objective(distortion, kl, step), distortion, kl

    def _nll(self, x: torch.Tensor, logits: torch.Tensor) -> torch.Tensor:
        """The likelihood's D per data point, [K, B] (same formulas as vae.learn.likelihood)."""
        if self.likelihood == "bernoulli":
            # BCE with logits for targets that are exactly 0 or 1 (binarised pixels):
            # -log p(x|l) = softplus(l) - x l = softplus((1 - 2x) l), one transcendental pass.
            return F.softplus(logits * (1.0 - 2.0 * x)).sum(-1)
        target = x.expand_as(logits)
        mean = torch.sigmoid(logits)
        log_var = self.log_var.clamp(-14.0, 6.0)
        if log_var.dim():  # one learned variance per model
            log_var = log_var.view(-1, 1, 1)
        per_pixel = 0.5 * ((target - mean) ** 2 * torch.exp(-log_var) + log_var + _LOG_2PI)
        return per_pixel.sum(-1)

    @torch.no_grad()
    def copy_into(self, model: MLPVAE, index: int) -> MLPVAE:
        """Write model `index`'s weights into a single MLPVAE (same architecture)."""
        for name, p in model.named_parameters():
            p.copy_(self.single(name, self.params[name], index))
        return model


_LOG_2PI = math.log(2.0 * math.pi)


def _sync_single(stacked: StackedMLP, stacked_opt, state: TrainState, index: int) -> None:
    """Make `state` (one model's weights and Adam) what a lone run would hold at this step."""
    stacked.copy_into(state.model, index)
    _single_optimizer_state(stacked_opt, stacked, state.model, state.optimizer, index)


def _single_optimizer_state(stacked_opt, stacked: StackedMLP, model, optimizer, index: int):
    """Fill a single model's Adam with model `index`'s slice of the stacked Adam's state."""
    optimizer.state.clear()
    for name, p in model.named_parameters():
        source = stacked_opt.state.get(stacked.params[name])
        if not source:
            continue
        entry = {}
        for key, value in source.items():
            if key in ("exp_avg", "exp_avg_sq", "max_exp_avg_sq"):
                entry[key] = stacked.single(name, value, index).contiguous().clone()
            else:
                entry[key] = value.clone() if isinstance(value, torch.Tensor) else value
        optimizer.state[p] = entry


# ---- training ------------------------------------------------------------------------------


@dataclass
class GroupResult:
    """What `train_together` leaves: one TrainState per model, and why a model stopped early."""

    states: list[TrainState]
    errors: list[Exception | None] = field(default_factory=list)  # NonFiniteLossError per model
    stopped: bool = False  # should_stop() ended training early


def train_together(
    configs: Sequence[RunConfig],
    *,
    dataset: Dataset | None = None,
    on_epoch: Callable[[int, dict, TrainState], None] | None = None,
    should_stop: Callable[[], bool] | None = None,
    threads: int = 0,
    alive: Callable[[int], bool] | None = None,
) -> GroupResult:
    """Train len(configs) MLP VAEs from scratch together; each as `vae.learn.train.train` would.

    on_epoch(index, metrics, state) runs after each completed epoch for every model still
    training, with that model's metrics dict (the keys of `vae.learn.train.epoch_metrics`) and a
    single-model TrainState (weights, Adam state and generator as a lone run would have them).
    `alive(index)` lets the caller drop a model (e.g. its files could not be written).
    """
    configs = [c.validated() for c in configs]
    together = can_train_together(configs) if len(configs) > 1 else configs[0].architecture == "mlp"
    if not together:
        raise ValueError(
            "these runs differ in more than β (or are not MLPs); train them one by one"
        )
    config = configs[0]
    k = len(configs)
    keep_freed_memory()
    threads = threads or config.threads
    if threads > 0:
        torch.set_num_threads(threads)
    device = resolve_device(config)
    dataset = dataset or load_dataset(config.dataset, config.data_root, seed=config.seed)
    shape = dataset.info.image_shape

    torch.manual_seed(config.seed)  # as new_state: the same initial weights for every model
    template = build_model(config, shape).to(device)
    stacked = StackedMLP(template, k)
    optimizer = make_optimizer(stacked.parameters(), config)
    generator = torch.Generator(device=device)
    generator.manual_seed(config.seed)

    singles = [build_model(c, shape).to(device) for c in configs]
    states = [
        TrainState(m, make_optimizer(m.parameters(), c), generator)
        for m, c in zip(singles, configs, strict=True)
    ]
    objectives = [make_objective(c) for c in configs]
    betas = torch.tensor([c.beta for c in configs], dtype=torch.float32, device=device)
    objective = make_objective(config, beta=betas)

    train_x, fixed, test_x = prepare_inputs(config, dataset, device)
    n, bs = len(train_x), config.batch_size
    steps_per_epoch = -(-n // bs)
    latent = config.latent_dim
    errors: list[Exception | None] = [None] * k
    live = [True] * k
    epoch, step = 0, 0

    def check(losses: torch.Tensor, last: int) -> None:
        finite = torch.isfinite(losses).all(dim=-1)  # [steps, K]
        for i in range(k):
            if live[i] and not bool(finite[:, i].all()):
                first_bad = int((~finite[:, i]).nonzero()[0])
                errors[i] = NonFiniteLossError(step - (last - first_bad), epoch + 1, configs[i])
                live[i] = False

    while epoch < config.epochs and any(live):
        started = time.perf_counter()
        data = epoch_inputs(config, train_x, generator, fixed).reshape(n, -1)
        perm = torch.randperm(n, generator=generator, device=device)
        losses = torch.zeros(steps_per_epoch, k, 3, device=device)  # loss, D, R per step, model
        for i in range(steps_per_epoch):
            xb = data[perm[i * bs : (i + 1) * bs]]
            eps = torch.randn((len(xb), latent), generator=generator, device=device)
            loss, distortion, kl = stacked.forward_loss(xb, eps, objective, step)
            optimizer.zero_grad(set_to_none=True)
            loss.sum().backward()
            optimizer.step()
            with torch.no_grad():
                torch.stack([loss, distortion.mean(-1), kl.sum(-1).mean(-1)], -1, out=losses[i])
            step += 1
            if (i + 1) % NAN_CHECK_EVERY == 0:
                check(losses[: i + 1], i)
            if should_stop is not None and should_stop():
                for index, state in enumerate(states):  # as train(): the weights of this step
                    state.step, state.stopped = step, True
                    _sync_single(stacked, optimizer, state, index)
                return GroupResult(states, errors, stopped=True)
        data = perm = None  # let go of this epoch's draw before the next one is made
        check(losses, steps_per_epoch - 1)
        seconds = time.perf_counter() - started
        epoch += 1
        for i, state in enumerate(states):
            if alive is not None and live[i] and not alive(i):
                live[i] = False
            if not live[i]:
                continue
            state.epoch, state.step = epoch, step
            _sync_single(stacked, optimizer, state, i)
            if on_epoch is not None:
                metrics = epoch_metrics(
                    configs[i], state, losses[:, i], seconds, n, objectives[i], test_x
                )
                on_epoch(i, metrics, state)
    return GroupResult(states, errors)


# ---- the worker's side: files per run ------------------------------------------------------


def run_group(
    store: RunStore, run_ids: list[str], stop: Callable[[], bool], threads: int = 0
) -> list[str]:
    """Train the runs of one sweep together, writing for each what `run_one` writes.

    Returns each run's outcome ("finished", "failed" or "cancelled"), in the order of run_ids.
    Runs that cannot go into the group are trained one by one with `vae.execution.worker.run_one` after it:
    runs being resumed (they already have a model.pt: their weights, Adam state and generator
    have moved apart, so they continue alone from their checkpoint) and, if the configs do not
    satisfy `can_train_together`, all of them. So resuming an interrupted or cancelled member
    works, one run at a time.

    `stop()` (SIGTERM to the worker) stops the whole group: every run still training becomes
    "cancelled after epoch E" with its last epoch's model.pt, resumable on its own. A run whose
    loss turns NaN, or whose files cannot be written, fails alone; the others carry on.
    """
    from vae.execution.worker import _fail, run_one

    pid = os.getpid()
    outcomes: dict[str, str] = {}
    configs: dict[str, RunConfig] = {}
    for run_id in run_ids:
        try:
            configs[run_id] = store.read_config(run_id)
        except StoreError as exc:
            outcomes[run_id] = _fail(store, run_id, str(exc))
    fresh = [r for r in configs if not store.path(r, "model.pt").exists()]
    if len(fresh) < 2 or not can_train_together([configs[r] for r in fresh]):
        fresh = []
    group = [r for r in fresh if not stop()]
    for run_id in fresh:
        if run_id not in group:
            store.update_status(run_id, "cancelled", "cancelled before it started")
            outcomes[run_id] = "cancelled"

    if group:
        outcomes.update(_train_group(store, group, [configs[r] for r in group], stop, threads, pid))
    for run_id in run_ids:  # the rest, one at a time, as vae.execution.worker.main does
        if run_id in outcomes:
            continue
        if stop():
            store.update_status(run_id, "cancelled", "cancelled before it started")
            outcomes[run_id] = "cancelled"
            continue
        outcomes[run_id] = run_one(store, run_id, stop, threads)
    return [outcomes[r] for r in run_ids]


def _train_group(store, run_ids, configs, stop, threads, pid) -> dict[str, str]:
    from vae.execution.worker import _fail, finish_run, process_start_time

    outcomes: dict[str, str] = {}
    for run_id in run_ids:
        store.update_status(run_id, "running", pid=pid, pid_start=process_start_time(pid))
        store.truncate_metrics(run_id, 0)
    if threads:
        for c in configs:
            c.threads = c.threads or threads
    try:
        first = configs[0]  # download as vae.execution.worker.run_one does
        dataset = load_dataset(first.dataset, first.data_root, download=True, seed=first.seed)
    except DataError as exc:
        return {r: _fail(store, r, str(exc)) for r in run_ids}
    shape = dataset.info.image_shape

    def on_epoch(i: int, metrics: dict, state: TrainState) -> None:
        run_id = run_ids[i]
        try:
            store.append_metrics(run_id, metrics)
            store.save_checkpoint(run_id, make_checkpoint(configs[i], state, shape, metrics))
            store.update_status(run_id, "running", pid=pid, epoch=state.epoch)
        except StoreError as exc:
            outcomes[run_id] = _fail(store, run_id, str(exc))

    try:
        result = train_together(
            configs,
            dataset=dataset,
            on_epoch=on_epoch,
            should_stop=stop,
            threads=configs[0].threads,
            alive=lambda i: run_ids[i] not in outcomes,
        )
    except Exception as exc:  # every run of the group fails with the same reason
        tail = traceback.format_exc(limit=3).strip().splitlines()[-1]
        reason = f"{type(exc).__name__}: {exc} ({tail})"
        return {r: outcomes.get(r) or _fail(store, r, reason) for r in run_ids}

    for i, run_id in enumerate(run_ids):
        if run_id in outcomes:
            continue
        state, error = result.states[i], result.errors[i]
        if error is not None:
            outcomes[run_id] = _fail(store, run_id, str(error))
            continue
        if result.stopped:
            store.update_status(run_id, "cancelled", f"cancelled after epoch {state.epoch}")
            outcomes[run_id] = "cancelled"
            continue
        try:
            outcomes[run_id] = finish_run(store, run_id, configs[i], state, shape)
        except (CheckpointError, StoreError) as exc:
            outcomes[run_id] = _fail(store, run_id, str(exc))
        except Exception as exc:
            tail = traceback.format_exc(limit=3).strip().splitlines()[-1]
            outcomes[run_id] = _fail(store, run_id, f"{type(exc).__name__}: {exc} ({tail})")
    return outcomes
