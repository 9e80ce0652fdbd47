"""Margin losses on cosine logits: AM-softmax / CosFace, Real AM-softmax, ArcFace, and the
ensemble soft-margin (EM) softmax."""

from __future__ import annotations

import math

import torch

from .._validation import check_input, check_real, checks_values
from ._common import (
    as_rows,
    check_label_smoothing,
    check_reduction,
    class_weights,
    loss_dtype,
    weighted_reduce,
)
from .cross_entropy import rows_cross_entropy, soft_margin_rows


def _check_cosine(rows) -> None:
    """``ValueError`` for a cosine outside ``[-1, 1]`` (eager mode only: a value check)."""
    c = rows.logits.detach()
    if checks_values() and bool((c.abs() > 1 + 1e-3).any()):
        raise ValueError(
            f"cosine must lie in [-1, 1] (use softmaxlab.nn.CosineClassifier), got a value "
            f"{c[c.abs() > 1 + 1e-3][0].item()}"
        )


def am_softmax_loss(
    cosine: torch.Tensor,
    target: torch.Tensor,
    *,
    scale: float = 30.0,
    margin: float = 0.35,
    real: bool = False,
    weight: torch.Tensor | None = None,
    ignore_index: int = -100,
    reduction: str = "mean",
    label_smoothing: float = 0.0,
) -> torch.Tensor:
    r"""Additive-margin softmax (AM-softmax, CosFace; Wang et al. 2018) and Real AM-softmax.

    .. math:: \ell = \log\Big(1 + \sum_{j\ne y} e^{s(\cos\theta_j - \cos\theta_y + m)}\Big)

    i.e. the cross-entropy of :math:`s(\cos\theta - m\,e_y)`. With ``real=True`` (Li et al.
    2021) the exponent is :math:`s\,\mathrm{ReLU}(\cos\theta_j - \cos\theta_y + m)`: a true
    margin, whose gradient vanishes once every class is beaten by ``m`` (the loss then
    rests at its floor :math:`\log C`).

    Args:
        cosine: ``(N, C)`` (or torch's layout) cosines in ``[-1, 1]``, e.g. from
            :class:`softmaxlab.nn.CosineClassifier`.
        scale: ``s > 0``. margin: ``m >= 0``. ``label_smoothing`` only without ``real``.

    Example:
        >>> cos = torch.tensor([[0.9, 0.1, -0.3]])
        >>> am_softmax_loss(cos, torch.tensor([0]), real=True)
        tensor(1.0986)
    """
    s = check_real("scale", scale, low=0.0, low_open=True)
    m = check_real("margin", margin, low=0.0)
    reduction = check_reduction(reduction)
    if not isinstance(real, bool):
        raise TypeError(f"real must be a bool, got {real!r}")
    rows = as_rows(cosine, target, ignore_index, name="cosine")
    _check_cosine(rows)
    if not real:
        shifted = s * (rows.logits - m * rows.onehot())
        return rows_cross_entropy(rows, shifted, weight=weight, ignore_index=ignore_index,
                                  reduction=reduction, label_smoothing=label_smoothing,
                                  ).to(loss_dtype(cosine))
    if check_label_smoothing(label_smoothing) > 0:
        raise ValueError("label_smoothing is not defined for real=True")
    c = rows.logits
    cy = c.gather(-1, rows.target[:, None])
    gap = s * torch.relu(c - cy + m)
    others = gap.masked_fill(rows.onehot(torch.bool), float("-inf"))
    # log(1 + sum_{j != y} e^{gap_j}) = logsumexp over [0, gap_{j != y}]
    loss = torch.cat([torch.zeros_like(cy), others], -1).logsumexp(-1)
    w = class_weights(weight, rows.n_classes, rows.logits)
    return weighted_reduce(loss, w, rows, reduction).to(loss_dtype(cosine))


def arcface_loss(
    cosine: torch.Tensor,
    target: torch.Tensor,
    *,
    scale: float = 64.0,
    margin: float = 0.5,
    weight: torch.Tensor | None = None,
    ignore_index: int = -100,
    reduction: str = "mean",
    label_smoothing: float = 0.0,
) -> torch.Tensor:
    r"""ArcFace (additive angular margin; Deng et al. 2019).

    .. math:: \ell = -\log \frac{e^{s\cos(\theta_y + m)}}
              {e^{s\cos(\theta_y + m)} + \sum_{j\ne y} e^{s\cos\theta_j}}

    ``margin`` is in radians. Past :math:`\theta_y > \pi - m`, where
    :math:`\cos(\theta_y + m)` would stop decreasing, the standard fallback
    :math:`\cos\theta_y - m\sin m` is used. :math:`\sin\theta_y` is computed as
    :math:`\sqrt{\max(1 - \cos^2\theta_y, \epsilon)}` so the gradient is finite at
    :math:`\cos\theta_y = \pm 1` (the peers' ``acos`` has an infinite one there).

    Example:
        >>> cos = torch.tensor([[0.9, 0.1, -0.3]])
        >>> arcface_loss(cos, torch.tensor([0]), scale=10.0)
        tensor(0.0083)
    """
    s = check_real("scale", scale, low=0.0, low_open=True)
    m = check_real("margin", margin, low=0.0)
    if m >= math.pi:
        raise ValueError(f"margin must be < pi (radians), got {margin}")
    reduction = check_reduction(reduction)
    rows = as_rows(cosine, target, ignore_index, name="cosine")
    _check_cosine(rows)
    c = rows.logits.clamp(-1, 1)
    cy = c.gather(-1, rows.target[:, None])
    sin = (1 - cy.square()).clamp(min=torch.finfo(c.dtype).eps).sqrt()
    phi = cy * math.cos(m) - sin * math.sin(m)
    phi = torch.where(cy > math.cos(math.pi - m), phi, cy - m * math.sin(m))
    onehot = rows.onehot(torch.bool)
    logits = s * torch.where(onehot, phi, c)
    return rows_cross_entropy(rows, logits, weight=weight, ignore_index=ignore_index,
                              reduction=reduction, label_smoothing=label_smoothing,
                              ).to(loss_dtype(cosine))


def hsic(a: torch.Tensor, b: torch.Tensor, keep: torch.Tensor | None = None) -> torch.Tensor:
    r"""Hilbert-Schmidt independence criterion with linear kernels over the rows:
    :math:`\mathrm{tr}(K_a H K_b H)/(n-1)^2 = \|\bar a^\top \bar b\|_F^2/(n-1)^2`, with
    :math:`\bar a, \bar b` the column-centred ``(n, *)`` matrices; with ``keep`` (bool
    ``(n,)``) over the kept rows only (no boolean indexing, so no data-dependent shape)."""
    if keep is None:
        keep = torch.ones(a.shape[0], dtype=torch.bool, device=a.device)
    k = keep.to(a.dtype)[:, None]
    n = k.sum()
    safe_n = n.clamp(min=1)
    ac = (a - (a * k).sum(0) / safe_n) * k
    bc = (b - (b * k).sum(0) / safe_n) * k
    return (ac.T @ bc).square().sum() / (n - 1).clamp(min=1) ** 2


def ensemble_soft_margin_loss(
    logits_list: list[torch.Tensor] | tuple[torch.Tensor, ...],
    target: torch.Tensor,
    *,
    margin: float,
    diversity: float = 0.0,
    weight: torch.Tensor | None = None,
    ignore_index: int = -100,
    reduction: str = "mean",
) -> torch.Tensor:
    r"""Ensemble soft-margin softmax (EM-softmax; Wang et al. 2018).

    .. math:: \ell = \frac1K \sum_{k=1}^K \ell_{SM}(z^{(k)}, y; m)
              + \lambda \frac{2}{K(K-1)} \sum_{k<l} \mathrm{HSIC}(z^{(k)}, z^{(l)})

    ``K`` weak classifiers' logits ``(N, C)`` each trained with the soft-margin softmax,
    plus ``diversity`` ``\lambda >= 0`` times their mean pairwise HSIC (linear kernel over the
    batch's kept rows), which pushes the classifiers apart. Predict with the mean of the
    members' probabilities. ``reduction="none"`` returns the per-row mean SM loss (the
    diversity term is a batch quantity and is added only to ``"mean"`` and ``"sum"``).

    Example:
        >>> zs = [torch.tensor([[2.0, 0.0]]), torch.tensor([[1.0, 0.5]])]
        >>> ensemble_soft_margin_loss(zs, torch.tensor([0]), margin=0.5)
        tensor(0.4473)
    """
    if not isinstance(logits_list, (list, tuple)) or not logits_list:
        raise TypeError("logits_list must be a non-empty list of (N, C) logits tensors")
    for i, z in enumerate(logits_list):
        check_input(z, f"logits_list[{i}]")
        if z.shape != logits_list[0].shape:
            raise ValueError(
                f"logits_list[{i}] has shape {tuple(z.shape)}, "
                f"expected {tuple(logits_list[0].shape)}"
            )
    lam = check_real("diversity", diversity, low=0.0)
    reduction = check_reduction(reduction)
    members = [
        soft_margin_rows(z, target, margin=margin, mapping="softmax", weight=weight,
                         ignore_index=ignore_index, reduction=reduction)
        for z in logits_list
    ]
    loss = torch.stack(members).mean(0)
    k = len(logits_list)
    dtype = loss_dtype(logits_list[0])
    if reduction == "none" or k < 2 or lam == 0:
        return loss.to(dtype)
    rows = [as_rows(z, target, ignore_index) for z in logits_list]
    keep = rows[0].keep
    # a loss is a float32 op under torch.autocast (as F.cross_entropy): its matmuls too
    with torch.autocast(keep.device.type, enabled=False):
        pairs = [hsic(rows[i].logits, rows[j].logits, keep)
                 for i in range(k) for j in range(i + 1, k)]
    return (loss + lam * torch.stack(pairs).mean().to(loss.dtype)).to(dtype)
