"""Yang et al. 2018 (arXiv 1711.03953), "Breaking the softmax bottleneck": a softmax head
gives log-probabilities of rank at most d + 1 over all contexts, so it cannot fit a
high-rank language distribution; a mixture of K softmaxes (MoS) can (PTB test perplexity
55.97 with AWD-LSTM-MoS). Kanai et al. 2018 (arXiv 1805.10829): the mixture of sigsoftmaxes
(MoSS) does better than MoS.

Setup: the bottleneck itself, on a synthetic distribution: N contexts, each with a learned
d-dimensional context vector, V classes, true log-probabilities of full rank (Gaussian
logits); each head is fitted to the exact distributions (full batch, Adam), and the metric
is the mean KL divergence from the truth (nats).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from ...nn import MixtureOfSoftmaxes
from . import Check, Experiment, register
from ._runs import arms

_SETUP = {
    "smoke": dict(contexts=32, classes=24, dim=2, components=4, steps=80, seeds=2),
    "small": dict(contexts=256, classes=200, dim=8, components=8, steps=600, seeds=5),
    "full": dict(contexts=1024, classes=1000, dim=16, components=15, steps=3000, seeds=10),
}
ARMS = ["softmax", "mos", "moss"]


def _fit(arm: str, seed: int, contexts: int, classes: int, dim: int, components: int,
         steps: int) -> dict[str, float]:
    g = torch.Generator().manual_seed(10_000 + seed)
    target = F.log_softmax(2.0 * torch.randn(contexts, classes, generator=g), -1)
    torch.manual_seed(seed)
    ctx = torch.nn.Parameter(torch.randn(contexts, dim) * 0.5)
    if arm == "softmax":
        head: torch.nn.Module = torch.nn.Linear(dim, classes)
        log_q = lambda: F.log_softmax(head(ctx), -1)  # noqa: E731
    else:
        head = MixtureOfSoftmaxes(dim, classes, n_components=components,
                                  mapping="softmax" if arm == "mos" else "sigsoftmax")
        log_q = lambda: head(ctx)  # noqa: E731
    opt = torch.optim.Adam([ctx, *head.parameters()], lr=0.03)
    p = target.exp()
    for _ in range(steps):
        opt.zero_grad()
        kl = (p * (target - log_q())).sum(-1).mean()
        kl.backward()
        opt.step()
    with torch.no_grad():
        kl = float((p * (target - log_q())).sum(-1).mean())
    return {"kl": kl, "parameters": float(sum(t.numel() for t in head.parameters()))}



register(Experiment(
    name="mos-bottleneck",
    paper="Yang et al. 2018 (arXiv 1711.03953); Kanai et al. 2018 (arXiv 1805.10829)",
    claim="a softmax head cannot fit a high-rank distribution (the softmax bottleneck); a "
          "mixture of softmaxes can (PTB 55.97 with AWD-LSTM-MoS), and a mixture of "
          "sigsoftmaxes does better still",
    checks=(Check("mos", "softmax", "kl", higher=False,
                  paper="PTB 55.97 (MoS) beats the softmax AWD-LSTM"),
            Check("moss", "mos", "kl", higher=False, paper="MoSS below MoS on PTB and WT2")),
    setup=lambda scale: dict(_SETUP[scale]),
    differences=lambda scale: (
        "the bottleneck measured directly: {contexts} contexts, {classes} classes, context "
        "vectors of size {dim}, {components} components, exact distributions fitted in "
        "{steps} full-batch Adam steps, {seeds} seeds, KL from the truth; the papers trained "
        "AWD-LSTM language models on PTB/WT2 and report perplexity".format(**_SETUP[scale])),
    kind="custom",
    run=arms("mos-bottleneck", ARMS, _fit),
    tags=("accuracy", "bottleneck"),
))
