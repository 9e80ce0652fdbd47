"""Liao et al. 2019 (arXiv 1901.10668), "Doubly sparse: sparse mixture of sparse experts for
efficient softmax inference": a top-1 gated mixture of experts, each keeping only the
classes its group lasso leaves, scores a fraction of the classes per row, a speed-up at the
same accuracy. Their synthetic task (papers.md): d = 100, superclass centres N(0, 100 I),
subclasses N(centre, 10 I), items N(subclass, I), 100 items per class.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from ...nn import DoublySparseSoftmax
from . import Check, Experiment, register
from ._runs import arms

_SETUP = {
    "smoke": dict(supers=4, subs=8, items=50, epochs=30, seeds=2),
    "small": dict(supers=4, subs=25, items=100, epochs=10, seeds=5),
    "full": dict(supers=10, subs=100, items=100, epochs=20, seeds=10),
}
ARMS = ["softmax", "ds_softmax"]
DIM, BATCH, PRUNE = 100, 256, 0.03


def hierarchy(supers: int, subs: int, items: int, seed: int):
    """``(x_train, y_train, x_test, y_test)``: ``items`` training and ``items // 5`` test
    points per class of the paper's generator (class = subclass)."""
    g = torch.Generator().manual_seed(20_000 + seed)
    centres = 10.0 * torch.randn(supers, 1, DIM, generator=g)
    sub = (centres + 10.0 ** 0.5 * torch.randn(supers, subs, DIM, generator=g)).reshape(-1, DIM)
    n_test = max(1, items // 5)

    def draw(n):
        x = sub[:, None] + torch.randn(sub.shape[0], n, DIM, generator=g)
        y = torch.arange(sub.shape[0])[:, None].expand(-1, n)
        return x.reshape(-1, DIM), y.reshape(-1)

    return (*draw(items), *draw(n_test))


def _train(head, x, y, epochs: int, seed: int, regularize: bool) -> None:
    opt = torch.optim.Adam(head.parameters(), lr=1e-2)
    g = torch.Generator().manual_seed(seed)
    for _ in range(epochs):
        for idx in torch.randperm(len(y), generator=g).split(BATCH):
            logp = head(x[idx]) if regularize else F.log_softmax(head(x[idx]), -1)
            loss = F.nll_loss(logp, y[idx]) + (head.regularization() if regularize else 0.0)
            opt.zero_grad()
            loss.backward()
            opt.step()


def _fit(arm: str, seed: int, supers: int, subs: int, items: int, epochs: int) -> dict:
    x, y, xt, yt = hierarchy(supers, subs, items, seed)
    scale = x.std()
    x, xt = x / scale, xt / scale
    torch.manual_seed(seed)
    n_classes = supers * subs
    if arm == "softmax":
        head = torch.nn.Linear(DIM, n_classes)
        _train(head, x, y, epochs, seed, regularize=False)
        with torch.no_grad():
            pred = head(xt).argmax(-1)
        speedup = 1.0
    else:
        head = DoublySparseSoftmax(DIM, n_classes, n_experts=supers)
        _train(head, x, y, epochs, seed, regularize=True)
        head.prune(PRUNE)
        _train(head, x, y, max(1, epochs // 2), seed + 1, regularize=True)  # fine-tune
        with torch.no_grad():
            pred = head.predict_topk(xt, 1)[1][:, 0]
            speedup = head.speedup(xt)
    return {"accuracy_pct": 100.0 * float((pred == yt).float().mean()), "speedup": speedup}



register(Experiment(
    name="ds-softmax",
    paper="Liao et al. 2019 (arXiv 1901.10668)",
    claim="a doubly-sparse softmax scores only the classes its chosen expert keeps: an "
          "inference speed-up at the same accuracy",
    checks=(Check("ds_softmax", "softmax", "speedup", higher=True,
                  paper="speed-ups of several times on the synthetic task"),
            Check("ds_softmax", "softmax", "accuracy_pct", higher=True, margin=1.0,
                  paper="the same accuracy")),
    setup=lambda scale: dict(_SETUP[scale]),
    differences=lambda scale: (
        "the paper's synthetic generator with {supers} superclasses x {subs} subclasses, "
        "{items} training items per class, a linear head on the 100-d input, {epochs} "
        "epochs of Adam, one prune (threshold 0.03) and a fine-tune, {seeds} seeds, speed-up "
        "as the expected fraction of classes scored (not wall time); no mitosis training, "
        "deterministic gate (the authors' adds noise)".format(**_SETUP[scale])),
    kind="custom",
    run=arms("ds-softmax", ARMS, _fit),
    tags=("speed", "accuracy"),
))
