"""A small image classifier trained with any loss, for the experiments whose heads the
lab's compare does not train (margins on held-out classes, ensembles, SM-Taylor)."""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import nn

from .. import datasets

__all__ = ["Body", "load", "train"]

BATCH = 64


class Body(nn.Module):
    """Flatten, two ReLU layers of ``hidden`` units: the features a head reads."""

    def __init__(self, in_features: int, hidden: int = 128):
        super().__init__()
        self.net = nn.Sequential(nn.Flatten(), nn.Linear(in_features, hidden), nn.ReLU(),
                                 nn.Linear(hidden, hidden), nn.ReLU())
        self.out_features = hidden

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x)


def load(name: str, limit: int | None):
    """The dataset (split seed 0) and its flattened input size."""
    data = datasets.load(name, limit=limit)
    return data, int(data.train.x[0].numel())


def train(model: nn.Module, loss_fn: Callable[[torch.Tensor, torch.Tensor], torch.Tensor],
          x: torch.Tensor, y: torch.Tensor, epochs: int, seed: int, lr: float = 3e-3) -> None:
    """Adam on mini-batches of ``(x, y)``, ``loss_fn(model(xb), yb)``, seeded order."""
    opt = torch.optim.Adam(model.parameters(), lr=lr)
    g = torch.Generator().manual_seed(seed)
    model.train()
    for _ in range(epochs):
        for idx in torch.randperm(len(y), generator=g).split(BATCH):
            loss = loss_fn(model(x[idx]), y[idx])
            opt.zero_grad()
            loss.backward()
            opt.step()
    model.eval()
