"""A run's model for use outside this project: encoder and decoder as torch.export `.pt2` files.

`torch.export.load(path).module()` runs them with torch alone (no `vae` package, no guessing of
activations or of the encoder's output layout):

- `RUN_ID-encoder.pt2`: images [B, C, H, W] in [0, 1] -> (μ [B, J], log σ² [B, J]);
- `RUN_ID-decoder.pt2`: latents [B, J] -> mean images [B, C, H, W] in [0, 1];
- `RUN_ID-model.json`: latent size, image shape, likelihood, β and how inputs were prepared.

The batch size B is dynamic. Files are written atomically.
"""

from __future__ import annotations

import io
import json
import os
import zipfile
from pathlib import Path

import torch
from torch import nn

from vae.execution.checkpoint import load_run_checkpoint, model_from_checkpoint
from vae.execution.store import RunStore, atomic_write_bytes


class Encoder(nn.Module):
    """x -> (μ, log σ²) of q(z|x)."""

    def __init__(self, model: nn.Module):
        super().__init__()
        self.model = model

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        return self.model.encode(x)


class Decoder(nn.Module):
    """z -> the decoder's mean image (Bernoulli: pixel probabilities; Gaussian: its mean)."""

    def __init__(self, model: nn.Module):
        super().__init__()
        self.model = model

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        return self.model.likelihood.mean(self.model.decode(z))


def _exported_bytes(module: nn.Module, example: torch.Tensor) -> bytes:
    batch = torch.export.Dim.DYNAMIC
    program = torch.export.export(module, (example,), dynamic_shapes=({0: batch},))
    buffer = io.BytesIO()
    torch.export.save(program, buffer)
    return buffer.getvalue()


def export_model(model: nn.Module) -> tuple[bytes, bytes]:
    """(encoder, decoder) of a model as .pt2 bytes, exported on the CPU in float32."""
    model = model.float().cpu().eval()
    x = torch.rand(2, *model.image_shape)
    z = torch.randn(2, model.latent_dim)
    with torch.no_grad():
        return _exported_bytes(Encoder(model), x), _exported_bytes(Decoder(model), z)


def export_files(checkpoint: dict, run_id: str) -> dict[str, bytes]:
    """File name -> bytes: the run's encoder, decoder and a small JSON description."""
    model = model_from_checkpoint(checkpoint)
    encoder, decoder = export_model(model)
    config = checkpoint["config"]
    meta = {
        "run_id": run_id,
        "epoch": checkpoint["epoch"],
        "latent_dim": model.latent_dim,
        "image_shape": list(model.image_shape),
        "likelihood": config.get("likelihood"),
        "beta": config.get("beta"),
        "dataset": config.get("dataset"),
        "inputs": "float32 images [B, C, H, W] with pixel values in [0, 1] (the data set's "
        "grey levels; Bernoulli runs were trained on binarised pixels)",
        "encoder": "x -> (mu [B, J], logvar [B, J]) of q(z|x) = N(mu, exp(logvar))",
        "decoder": "z [B, J] -> mean image [B, C, H, W] in [0, 1]; the prior is N(0, I)",
        "load": "torch.export.load(path).module()",
    }
    return {
        f"{run_id}-encoder.pt2": encoder,
        f"{run_id}-decoder.pt2": decoder,
        f"{run_id}-model.json": json.dumps(meta, indent=1).encode(),
    }


def export_zip(checkpoint: dict, run_id: str) -> bytes:
    """The three files of `export_files` in one zip archive (the Checkpoints page's download)."""
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w", zipfile.ZIP_STORED) as archive:
        for name, data in export_files(checkpoint, run_id).items():
            archive.writestr(name, data)
    return buffer.getvalue()


def export_run(store: RunStore, run_id: str, out: str | os.PathLike) -> list[Path]:
    """Write the run's encoder, decoder and a small JSON description into `out`."""
    files = export_files(load_run_checkpoint(store, run_id), run_id)
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    for name, data in files.items():
        atomic_write_bytes(out / name, data)
    return [out / name for name in files]
