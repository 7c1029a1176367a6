"""K models of one architecture as one computation: their parameters stacked on a leading axis.

The training loop always trains a stack; a single run is a stack of one. A stack takes the shared
inputs of one step (images [B, ...] and noise eps [B, J], the same for every model) and returns each
model's decoder logits [K, B, n] and posterior (mu, logvar) [K, B, J]. How the K models compute is
the architecture's business:

- `StackedMLP`: the first layer, whose input every model shares, is one wide matrix product; each
  later layer one batched product (`torch.baddbmm`). Weights after the first layer are stored
  transposed ([K, in, out]) so their gradients come out of the batched product contiguous.
- `FuncStack`: any other architecture, through `torch.func.functional_call` (and `vmap` for K > 1).

Both keep each model's parameters as slices of stacked leaf tensors, so one optimizer updates all
K at once (Adam is elementwise: exactly K separate Adams). `export` writes model i's slice back
into a normal single model (for checkpoints and evaluation), `load_optimizer` / `export_optimizer`
move Adam's state between the stacked and single layouts, and `select` drops models mid-training.
"""

from __future__ import annotations

import copy
from collections.abc import Sequence

import torch
from torch.func import functional_call, vmap

from vae.learn.model import MLPVAE, VAE, posterior_params

_MOMENTS = ("exp_avg", "exp_avg_sq", "max_exp_avg_sq")


class ParameterStack:
    """Stacked parameters of K models built like `models[0]`, and moving them in and out."""

    def __init__(self, models: Sequence[VAE]):
        self.template = models[0]
        self.k = len(models)
        self.likelihood = self.template.likelihood.kind
        self.params: dict[str, torch.Tensor] = {}
        for name, _ in self.template.named_parameters():
            slices = [
                self.to_layout(name, dict(m.named_parameters())[name].detach()) for m in models
            ]
            self.params[name] = torch.stack(slices).requires_grad_(True)
        self._bind()

    # ---- layout: how one model's tensor is stored inside the stack -------------------------
    def to_layout(self, name: str, tensor: torch.Tensor) -> torch.Tensor:
        return tensor

    def from_layout(self, name: str, tensor: torch.Tensor) -> torch.Tensor:
        return tensor

    def _bind(self) -> None:
        """Derive whatever forward() needs from self.params (after building or selecting)."""

    # ---- what the training loop uses -----------------------------------------------------------
    def parameters(self) -> list[torch.Tensor]:
        return list(self.params.values())

    def forward(self, x: torch.Tensor, eps: torch.Tensor):
        """x [B, ...] and eps [B, J], shared -> logits [K, B, n], mu and logvar [K, B, J]."""
        raise NotImplementedError

    def decoder_log_var(self) -> torch.Tensor | None:
        """The Gaussian decoder's log-variance, broadcastable against [K, B, n]; None otherwise."""
        if self.likelihood not in ("gaussian", "gaussian_identity"):
            return None
        learned = self.params.get("likelihood.log_var")
        if learned is None:  # fixed: a buffer, the same for every model
            return self.template.likelihood.log_var
        return learned.view(-1, 1, 1)

    # ---- moving state in and out ---------------------------------------------------------------
    @torch.no_grad()
    def export(self, index: int, model: VAE) -> VAE:
        """Write model `index`'s weights into `model` (a single model of the same build)."""
        for name, p in model.named_parameters():
            p.copy_(self.from_layout(name, self.params[name][index]))
        return model

    def load_optimizer(self, optimizer, singles: Sequence[tuple[VAE, torch.optim.Optimizer]]):
        """Fill the stacked optimizer's state from each model's own (resuming runs)."""
        for name, stacked in self.params.items():
            entries = [opt.state.get(dict(m.named_parameters())[name]) for m, opt in singles]
            if not all(entries):
                continue
            state = {}
            for key, value in entries[0].items():
                if key in _MOMENTS:
                    slices = [self.to_layout(name, e[key]) for e in entries]
                    state[key] = torch.stack(slices).contiguous()
                else:
                    state[key] = value.clone() if isinstance(value, torch.Tensor) else value
            optimizer.state[stacked] = state

    def export_optimizer(self, optimizer, index: int, model: VAE, single) -> None:
        """Fill `single` (the optimizer of `model`) with model `index`'s slice of the stack's."""
        single.state.clear()
        for name, p in model.named_parameters():
            source = optimizer.state.get(self.params[name])
            if not source:
                continue
            entry = {}
            for key, value in source.items():
                if key in _MOMENTS:
                    entry[key] = self.from_layout(name, value[index]).contiguous().clone()
                else:
                    entry[key] = value.clone() if isinstance(value, torch.Tensor) else value
            single.state[p] = entry

    def select(self, keep: Sequence[int], optimizer, make_optimizer):
        """A stack of only the models in `keep`, with a new optimizer carrying their state."""
        index = torch.tensor(list(keep), device=next(iter(self.params.values())).device)
        smaller = copy.copy(self)
        smaller.k = len(keep)
        smaller.params = {
            n: p.detach().index_select(0, index).requires_grad_(True)
            for n, p in self.params.items()
        }
        smaller._bind()
        new_optimizer = make_optimizer(smaller.parameters())
        for name, old in self.params.items():
            source = optimizer.state.get(old)
            if not source:
                continue
            new_optimizer.state[smaller.params[name]] = {
                key: value.index_select(0, index) if key in _MOMENTS else value.clone()
                for key, value in source.items()
            }
        return smaller, new_optimizer


class StackedMLP(ParameterStack):
    """K MLPVAEs: a shared wide first layer, then batched products per layer."""

    def __init__(self, models: Sequence[MLPVAE]):
        self.transposed = {f"{n}.weight" for n in self._linear_names(models[0])[1:]}
        super().__init__(models)

    def _bind(self) -> None:
        names = self._linear_names(self.template)
        pairs = [(self.params[f"{n}.weight"], self.params[f"{n}.bias"]) for n in names]
        n_encoder = sum(1 for n in names if n.startswith("encoder."))
        self.encoder, self.decoder = pairs[:n_encoder], pairs[n_encoder:]

    def to_layout(self, name: str, tensor: torch.Tensor) -> torch.Tensor:
        return tensor.t() if name in self.transposed else tensor

    def from_layout(self, name: str, tensor: torch.Tensor) -> torch.Tensor:
        return tensor.t() if name in self.transposed else tensor

    @staticmethod
    def _linear_names(template: MLPVAE) -> list[str]:
        names = []
        for prefix, seq in (("encoder", template.encoder), ("decoder", template.decoder)):
            linear = [i for i, m in seq.named_children() if isinstance(m, torch.nn.Linear)]
            names += [f"{prefix}.{i}" for i in linear]
        return names

    def forward(self, x: torch.Tensor, eps: torch.Tensor):
        k, b = self.k, x.shape[0]
        x = x.reshape(b, -1)
        w, bias = self.encoder[0]  # shared input: all K first layers are one [B, n] @ [n, K*h]
        h = torch.addmm(bias.reshape(-1), x, w.reshape(-1, w.shape[-1]).t())
        h = h.view(b, k, -1).transpose(0, 1)  # [K, B, h]
        for w, bias in self.encoder[1:]:
            h = torch.baddbmm(bias.unsqueeze(1), torch.relu(h), w)
        mu, logvar = posterior_params(h)
        h = mu + eps * torch.exp(0.5 * logvar)
        for i, (w, bias) in enumerate(self.decoder):
            if i:
                h = torch.relu(h)
            h = torch.baddbmm(bias.unsqueeze(1), h, w)
        return h, mu, logvar


class FuncStack(ParameterStack):
    """Any VAE architecture, its K copies run through torch.func over the stacked parameters."""

    def forward(self, x: torch.Tensor, eps: torch.Tensor):
        def one(params, x, eps):
            logits, mu, logvar = functional_call(self.template, params, (x,), {"eps": eps})
            return logits.flatten(start_dim=-3), mu, logvar

        if self.k == 1:  # no vmap needed: model 0's parameters are views of the stacked leaves
            outputs = one({n: p[0] for n, p in self.params.items()}, x, eps)
            return tuple(o.unsqueeze(0) for o in outputs)
        return vmap(one, in_dims=(0, None, None))(self.params, x, eps)


def stack_models(models: Sequence[VAE]) -> ParameterStack:
    """The stack for these models (all built from one config, so of one architecture)."""
    if isinstance(models[0], MLPVAE):
        return StackedMLP(models)
    return FuncStack(models)
