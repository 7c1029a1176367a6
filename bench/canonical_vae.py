"""The baseline: the canonical PyTorch VAE example (pytorch/examples, vae/main.py), on the CPU.

Written from its well-known description: an MLP VAE 784-400-20-400-784 (fc1, fc21/fc22, fc3, fc4,
ReLU, sigmoid output), a DataLoader over a TensorDataset with shuffle=True and batch 128, Adam with
lr 1e-3, loss = BCE(sum) + KLD(sum), `train_loss += loss.item()` every step. The only changes: no
log printing (the example prints every 10 batches), no CUDA branch, and an optional β on the KLD
for the sweep comparison (β = 1 is the example).
"""

from __future__ import annotations

import time

import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.data import DataLoader, TensorDataset


class VAE(nn.Module):
    def __init__(self):
        super().__init__()
        self.fc1 = nn.Linear(784, 400)
        self.fc21 = nn.Linear(400, 20)
        self.fc22 = nn.Linear(400, 20)
        self.fc3 = nn.Linear(20, 400)
        self.fc4 = nn.Linear(400, 784)

    def encode(self, x):
        h1 = F.relu(self.fc1(x))
        return self.fc21(h1), self.fc22(h1)

    def reparameterize(self, mu, logvar):
        std = torch.exp(0.5 * logvar)
        eps = torch.randn_like(std)
        return mu + eps * std

    def decode(self, z):
        h3 = F.relu(self.fc3(z))
        return torch.sigmoid(self.fc4(h3))

    def forward(self, x):
        mu, logvar = self.encode(x.view(-1, 784))
        z = self.reparameterize(mu, logvar)
        return self.decode(z), mu, logvar


def loss_function(recon_x, x, mu, logvar, beta: float = 1.0):
    bce = F.binary_cross_entropy(recon_x, x.view(-1, 784), reduction="sum")
    kld = -0.5 * torch.sum(1 + logvar - mu.pow(2) - logvar.exp())
    return bce + beta * kld


def train_canonical(
    images: torch.Tensor,
    labels: torch.Tensor,
    epochs: int,
    seed: int = 1,
    beta: float = 1.0,
    batch_size: int = 128,
    on_epoch=None,
) -> list[dict]:
    """Train as the example does; returns per epoch {seconds, images_per_s, loss (per image)}."""
    torch.manual_seed(seed)
    loader = DataLoader(TensorDataset(images, labels), batch_size=batch_size, shuffle=True)
    model = VAE()
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-3)
    rows = []
    for epoch in range(1, epochs + 1):
        model.train()
        train_loss = 0.0
        started = time.perf_counter()
        for data, _ in loader:
            optimizer.zero_grad()
            recon_batch, mu, logvar = model(data)
            loss = loss_function(recon_batch, data, mu, logvar, beta)
            loss.backward()
            train_loss += loss.item()
            optimizer.step()
        seconds = time.perf_counter() - started
        row = {
            "epoch": epoch,
            "seconds": seconds,
            "images_per_s": len(images) / seconds,
            "loss": train_loss / len(loader.dataset),
        }
        rows.append(row)
        if on_epoch is not None:
            on_epoch(row)
    return rows
