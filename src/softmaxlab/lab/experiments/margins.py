"""Margin losses.

* Li et al. 2021 (arXiv 2110.09116), "Real additive margin softmax for speaker
  verification": AM-softmax's loss keeps pushing after every class is beaten by the margin;
  Real AM-softmax (a ReLU on the margin terms) is a true margin and verifies better (EER on
  VoxCeleb/SITW/CNCeleb). Proxy here: verification on classes held out of training.
* Wang et al. 2018 (arXiv 1805.03922), "Ensemble soft-margin softmax loss": K weak
  classifiers trained with SM-softmax and an HSIC diversity term beat one SM-softmax.
* Banerjee et al. 2020 (arXiv 2011.11538), "Exploring alternatives to softmax": the soft
  margin with the Taylor polynomial (SM-Taylor softmax) is the best of the family on MNIST
  and CIFAR (numbers not recorded in our sources).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from ... import losses as L
from ...nn import CosineClassifier
from . import Check, Experiment, register
from ._classify import Body, load, train
from ._runs import arms

# ------------------------------------------------------------------ verification (EER)
_VERIFY = {
    "smoke": dict(dataset="digits", limit=None, held_out=3, epochs=4, seeds=2),
    "small": dict(dataset="mnist", limit=10_000, held_out=3, epochs=8, seeds=5),
    "full": dict(dataset="mnist", limit=None, held_out=3, epochs=20, seeds=10),
}


def eer(scores: torch.Tensor, same: torch.Tensor) -> float:
    """Equal error rate (%) of similarity ``scores`` for pairs that are ``same`` (bool): the
    rate where false acceptances equal false rejections (interpolated between thresholds).

    Example:
        >>> eer(torch.tensor([0.9, 0.8, 0.3, 0.1]), torch.tensor([True, True, False, False]))
        0.0
    """
    order = scores.argsort(descending=True)
    s = same[order].double()
    pos, neg = s.sum(), (1 - s).sum()
    far = (1 - s).cumsum(0) / neg  # accepted impostors at each threshold
    frr = 1 - s.cumsum(0) / pos    # rejected genuine pairs
    i = int(torch.argmin((far - frr).abs()))
    return float(100 * (far[i] + frr[i]) / 2)


def _verify(arm: str, seed: int, dataset: str, limit, held_out: int, epochs: int) -> dict:
    data, d = load(dataset, limit)
    known = data.n_classes - held_out
    tr = data.train.y < known
    x, y = data.train.x[tr], data.train.y[tr]
    torch.manual_seed(seed)
    body = Body(d)
    model = nn.Sequential(body, CosineClassifier(body.out_features, known))
    loss = lambda c, t: L.am_softmax_loss(c, t, real=(arm == "real_am"))  # noqa: E731
    train(model, loss, x, y, epochs, seed)
    te = data.test.y >= known  # classes never seen in training
    with torch.no_grad():
        e = F.normalize(body(data.test.x[te]), dim=-1)
    yt = data.test.y[te]
    i, j = torch.triu_indices(len(yt), len(yt), 1)
    return {"eer_pct": eer((e[i] * e[j]).sum(-1), yt[i] == yt[j])}


register(Experiment(
    name="real-am-verification",
    paper="Li et al. 2021 (arXiv 2110.09116)",
    claim="Real AM-softmax (a true margin) gives a lower verification equal error rate "
          "than AM-softmax",
    checks=(Check("real_am", "am_softmax", "eer_pct", higher=False,
                  paper="lower EER on VoxCeleb1, SITW and CNCeleb"),),
    setup=lambda scale: dict(_VERIFY[scale]),
    differences=lambda scale: (
        "a proxy for speaker verification: an MLP with a cosine classifier (s=30, m=0.35) "
        "trained on {dataset} without its last {held_out} classes ({epochs} epochs, "
        "{seeds} seeds), then verification of all test pairs of the held-out classes by "
        "cosine of the features; the paper: speaker embeddings (ResNet) on VoxCeleb, "
        "m=0.2".format(**_VERIFY[scale])),
    kind="custom",
    run=arms("real-am-verification", ["am_softmax", "real_am"], _verify),
    tags=("accuracy", "margins"),
))

# --------------------------------------------------------------------- ensembles (EM)
_ENSEMBLE = {
    "smoke": dict(dataset="digits", limit=None, members=3, margin=0.5, diversity=0.1,
                  epochs=4, seeds=2),
    "small": dict(dataset="mnist", limit=10_000, members=4, margin=0.5, diversity=0.1,
                  epochs=8, seeds=5),
    "full": dict(dataset="mnist", limit=None, members=4, margin=0.5, diversity=0.1,
                 epochs=20, seeds=10),
}


class _Members(nn.Module):
    """One body, ``k`` linear heads: the logits of each member."""

    def __init__(self, d: int, n_classes: int, k: int):
        super().__init__()
        self.body = Body(d)
        self.heads = nn.ModuleList(nn.Linear(self.body.out_features, n_classes)
                                   for _ in range(k))

    def forward(self, x):
        h = self.body(x)
        return [head(h) for head in self.heads]


def _ensemble(arm: str, seed: int, dataset: str, limit, members: int, margin: float,
              diversity: float, epochs: int) -> dict:
    data, d = load(dataset, limit)
    torch.manual_seed(seed)
    k = members if arm == "em_softmax" else 1
    model = _Members(d, data.n_classes, k)
    loss = lambda zs, t: L.ensemble_soft_margin_loss(  # noqa: E731
        zs, t, margin=margin, diversity=diversity if k > 1 else 0.0)
    train(model, loss, data.train.x, data.train.y, epochs, seed)
    with torch.no_grad():
        p = torch.stack([z.softmax(-1) for z in model(data.val.x)]).mean(0)
    return {"accuracy_pct": 100 * float((p.argmax(-1) == data.val.y).float().mean())}


register(Experiment(
    name="em-softmax",
    paper="Wang et al. 2018 (arXiv 1805.03922)",
    claim="an ensemble of soft-margin softmax classifiers with an HSIC diversity term is "
          "more accurate than one soft-margin softmax classifier",
    checks=(Check("em_softmax", "sm_softmax", "accuracy_pct", higher=True,
                  paper="higher accuracy (numbers not in our sources)"),),
    setup=lambda scale: dict(_ENSEMBLE[scale]),
    differences=lambda scale: (
        "{members} linear heads on one shared MLP body (the paper: separate weak "
        "classifiers on CNN features), margin {margin}, HSIC weight {diversity}, "
        "{dataset}, {epochs} epochs, {seeds} seeds, validation accuracy".format(
            **_ENSEMBLE[scale])),
    kind="custom",
    run=arms("em-softmax", ["sm_softmax", "em_softmax"], _ensemble),
    tags=("accuracy", "margins"),
))

# -------------------------------------------------------------------------- SM-Taylor
_SM = {
    "smoke": dict(dataset="digits", limit=None, margin=0.5, order=4, epochs=4, seeds=2),
    "small": dict(dataset="mnist", limit=10_000, margin=0.5, order=4, epochs=8, seeds=5),
    "full": dict(dataset="mnist", limit=None, margin=0.5, order=4, epochs=20, seeds=10),
}


def _sm_taylor(arm: str, seed: int, dataset: str, limit, margin: float, order: int,
               epochs: int) -> dict:
    data, d = load(dataset, limit)
    torch.manual_seed(seed)
    body = Body(d)
    model = nn.Sequential(body, nn.Linear(body.out_features, data.n_classes))
    if arm == "softmax":
        loss = lambda z, t: L.cross_entropy(z, t)  # noqa: E731
    else:
        loss = lambda z, t: L.soft_margin_loss(z, t, margin=margin,  # noqa: E731
                                               mapping="taylor_softmax", order=order)
    train(model, loss, data.train.x, data.train.y, epochs, seed)
    with torch.no_grad():
        pred = model(data.val.x).argmax(-1)
    return {"accuracy_pct": 100 * float((pred == data.val.y).float().mean())}


register(Experiment(
    name="sm-taylor",
    paper="Banerjee et al. 2020 (arXiv 2011.11538)",
    claim="the soft-margin Taylor softmax (SM-Taylor) is more accurate than softmax",
    checks=(Check("sm_taylor", "softmax", "accuracy_pct", higher=True,
                  paper="an SM-Taylor configuration is best on MNIST, CIFAR-10 and "
                        "CIFAR-100 (numbers not in our sources)"),),
    setup=lambda scale: dict(_SM[scale]),
    differences=lambda scale: (
        "an MLP on {dataset}, SM-Taylor of order {order} with margin {margin} (the paper "
        "searched orders up to 10 and several margins, with CNNs), {epochs} epochs, "
        "{seeds} seeds, validation accuracy".format(**_SM[scale])),
    kind="custom",
    run=arms("sm-taylor", ["softmax", "sm_taylor"], _sm_taylor),
    tags=("accuracy", "margins"),
))
