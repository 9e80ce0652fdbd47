"""Liu et al. 2021 (arXiv 2101.00153; Graphmax, JAIR 2023): a graph total-variation term
over a word co-occurrence graph, added to softmax's training loss, gives more fluent text
(better BLEU and perplexity with GPT-2; numbers not in our sources). Here: its effect on a
small language model's validation perplexity."""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from ... import losses as L
from .. import datasets
from . import Check, Experiment, register
from ._runs import arms

_SETUP = {
    "smoke": dict(dataset="ptb", limit=20_000, weight=0.1, edges=4, epochs=1, seeds=2),
    "small": dict(dataset="ptb", limit=100_000, weight=0.1, edges=8, epochs=2, seeds=3),
    "full": dict(dataset="ptb", limit=None, weight=0.1, edges=8, epochs=15, seeds=5),
}
BPTT, BATCH, DIM = 35, 32, 128


def cooccurrence(tokens: torch.Tensor, vocab: int, edges: int) -> torch.Tensor:
    """The edge list ``(edge_index (2, E), weight (E,))`` linking each word to the
    ``edges`` words that most often follow it, weights the conditional frequencies."""
    pair = tokens[:-1] * vocab + tokens[1:]
    ids, counts = pair.unique(return_counts=True)
    src, dst = ids // vocab, ids % vocab
    total = torch.zeros(vocab).index_add_(0, src, counts.float())
    w = counts.float() / total[src]
    order = torch.argsort(src * 2.0 - w / (w.max() + 1))  # by source, heaviest first
    src, dst, w = src[order], dst[order], w[order]
    first = torch.zeros(vocab, dtype=torch.long).index_add_(0, src, torch.ones_like(src))
    start = first.cumsum(0) - first
    keep = (torch.arange(len(src)) - start[src]) < edges
    return torch.stack([src[keep], dst[keep]]), w[keep]


class _LM(nn.Module):
    def __init__(self, vocab: int):
        super().__init__()
        self.embed = nn.Embedding(vocab, DIM)
        self.rnn = nn.LSTM(DIM, DIM, batch_first=True)
        self.out = nn.Linear(DIM, vocab)

    def forward(self, x):
        return self.out(self.rnn(self.embed(x))[0])


def _windows(tokens: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    n = (len(tokens) - 1) // BPTT
    return (tokens[:n * BPTT].view(n, BPTT), tokens[1:n * BPTT + 1].view(n, BPTT))


def _fit(arm: str, seed: int, dataset: str, limit, weight: float, edges: int,
         epochs: int) -> dict:
    data = datasets.load(dataset, limit=limit)
    graph = cooccurrence(data.train.x, data.n_classes, edges)
    torch.manual_seed(seed)
    model = _LM(data.n_classes)
    opt = torch.optim.Adam(model.parameters(), lr=3e-3)
    g = torch.Generator().manual_seed(seed)
    x, y = _windows(data.train.x)
    for _ in range(epochs):
        model.train()
        for idx in torch.randperm(len(y), generator=g).split(BATCH):
            z = model(x[idx]).flatten(0, 1)
            loss = F.cross_entropy(z, y[idx].flatten())
            if arm == "softmax + graph TV":
                loss = loss + L.graph_tv_penalty(z.softmax(-1), graph, weight=weight)
            opt.zero_grad()
            loss.backward()
            opt.step()
    model.eval()
    xv, yv = _windows(data.val.x)
    with torch.no_grad():
        nll = sum(float(F.cross_entropy(model(a).flatten(0, 1), b.flatten(), reduction="sum"))
                  for a, b in zip(xv.split(64), yv.split(64), strict=True))
    return {"perplexity": math.exp(nll / yv.numel())}


register(Experiment(
    name="graph-tv",
    paper="Liu et al. 2021 (arXiv 2101.00153)",
    claim="a graph total-variation term over word co-occurrences, added to the softmax "
          "loss, improves language generation (perplexity, BLEU)",
    checks=(Check("softmax + graph TV", "softmax", "perplexity", higher=False,
                  paper="lower perplexity with GPT-2 (numbers not in our sources)"),),
    setup=lambda scale: dict(_SETUP[scale]),
    differences=lambda scale: (
        "a 1-layer LSTM on {dataset} ({limit} training tokens, {epochs} epochs, {seeds} "
        "seeds), the graph from training bigrams ({edges} strongest successors per word), "
        "weight {weight}, validation perplexity; the paper fine-tuned GPT-2 and also "
        "measured BLEU".format(**{**_SETUP[scale], "limit": _SETUP[scale]["limit"] or "all"})),
    kind="custom",
    run=arms("graph-tv", ["softmax", "softmax + graph TV"], _fit),
    tags=("accuracy", "language model"),
))
