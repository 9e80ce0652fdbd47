"""Lin et al. 2021 (arXiv 2110.05409), "Dropout and decouple: simple and effective output
layers for sequential recommendation": dropout on the input of the output layer and an
output embedding untied from the input item embedding (D&D) beat the plain softmax head
with tied embeddings, at the same cost."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from ...nn import DecoupledOutput
from .. import datasets
from . import Check, Experiment, register
from ._runs import arms

_SETUP = {
    "smoke": dict(limit=3000, dim=32, epochs=2, seeds=2),
    "small": dict(limit=30_000, dim=64, epochs=4, seeds=5),
    "full": dict(limit=None, dim=64, epochs=15, seeds=10),
}
BATCH, TOP = 128, 10


class _Rec(nn.Module):
    """Item embedding, one GRU layer; the head is the tied embedding or a D&D layer."""

    def __init__(self, n_items: int, dim: int, decoupled: bool):
        super().__init__()
        self.embed = nn.Embedding(n_items, dim, padding_idx=0)
        self.rnn = nn.GRU(dim, dim, batch_first=True)
        self.head = DecoupledOutput(dim, n_items) if decoupled else None
        self.bias = None if decoupled else nn.Parameter(torch.zeros(n_items))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.rnn(self.embed(x))[0][:, -1]
        if self.head is not None:
            return self.head(h)
        return F.log_softmax(h @ self.embed.weight.T + self.bias, -1)


def _fit(arm: str, seed: int, limit, dim: int, epochs: int) -> dict:
    data = datasets.load("movielens-100k", limit=limit)
    torch.manual_seed(seed)
    model = _Rec(data.n_classes, dim, decoupled=arm == "d&d")
    opt = torch.optim.Adam(model.parameters(), lr=3e-3)
    g = torch.Generator().manual_seed(seed)
    x, y = data.train.x, data.train.y
    for _ in range(epochs):
        model.train()
        for idx in torch.randperm(len(y), generator=g).split(BATCH):
            loss = F.nll_loss(model(x[idx]), y[idx])
            opt.zero_grad()
            loss.backward()
            opt.step()
    model.eval()
    with torch.no_grad():
        logp = model(data.val.x)
        logp[:, 0] = float("-inf")  # padding is never recommended
        rank = (logp > logp.gather(1, data.val.y[:, None])).sum(-1)
    hit = rank < TOP
    ndcg = torch.where(hit, 1 / torch.log2(rank.double() + 2), 0.0)
    return {"hr@10": float(hit.double().mean()), "ndcg@10": float(ndcg.mean())}


register(Experiment(
    name="dropout-decouple",
    paper="Lin et al. 2021 (arXiv 2110.05409)",
    claim="dropout before the output layer and an output embedding untied from the item "
          "embedding (D&D) recommend better than the tied softmax head",
    checks=(Check("d&d", "tied softmax", "hr@10", higher=True,
                  paper="higher HR/NDCG on several datasets (numbers not in our sources)"),),
    setup=lambda scale: dict(_SETUP[scale]),
    differences=lambda scale: (
        "MovieLens-100k next item (leave-one-out, histories of 50), a 1-layer GRU of size "
        "{dim}, {limit} training sequences, {epochs} epochs, {seeds} seeds, validation "
        "HR@10 over all items; the paper: several datasets and backbones".format(
            **{**_SETUP[scale], "limit": _SETUP[scale]["limit"] or "all"})),
    kind="custom",
    run=arms("dropout-decouple", ["tied softmax", "d&d"], _fit),
    tags=("accuracy", "recommendation"),
))
