r"""Softmax cross-entropy of one chunk of logits, its gradient written over the logits.

For a row with logits :math:`z`, target :math:`y`, class weights :math:`w` (1 when not
given), label smoothing :math:`\epsilon` over :math:`C` classes and
:math:`\mathrm{lse} = \log\sum_c e^{z_c}`:

.. math::
    \ell = (1-\epsilon)\, w_y (\mathrm{lse} - z_y)
           + \frac{\epsilon}{C} \Big(\mathrm{lse} \sum_c w_c - \sum_c w_c z_c\Big), \qquad
    \frac{\partial \ell}{\partial z} = \alpha\, p - (1-\epsilon) w_y e_y - \frac{\epsilon}{C} w

with :math:`p = \mathrm{softmax}(z)` and :math:`\alpha = (1-\epsilon) w_y +
\frac{\epsilon}{C}\sum_c w_c`. The buffer is turned into :math:`e^{z - \max z}`, then into
the scaled gradient, in place: no temporary of the chunk's size. Ignored rows get loss and
gradient 0.
"""

from __future__ import annotations

import torch


def softmax_chunk(logits: torch.Tensor, target: torch.Tensor, keep: torch.Tensor,
                  class_weight: torch.Tensor | None, label_smoothing: float,
                  scale: torch.Tensor | None) -> torch.Tensor:
    """Per-row losses of ``logits`` ``(R, C)``; when ``scale`` (per row, or one number) is
    given, ``logits`` is overwritten with the gradient of ``sum(scale * loss)``."""
    eps, n_classes = label_smoothing, logits.shape[1]
    w_y = 1.0 if class_weight is None else class_weight[target]
    z_y = logits.gather(1, target[:, None])[:, 0]
    if eps > 0:
        w_sum = n_classes if class_weight is None else class_weight.sum()
        wz_sum = logits.sum(1) if class_weight is None else logits @ class_weight
    m = logits.amax(1)
    total = logits.sub_(m[:, None]).exp_().sum(1)
    lse = m + total.log()
    loss = (1 - eps) * w_y * (lse - z_y)
    if eps > 0:
        loss = loss + eps / n_classes * (lse * w_sum - wz_sum)
    loss = torch.where(keep, loss, 0.0)
    if scale is None:
        return loss
    s = torch.where(keep, scale, 0.0)
    alpha = (1 - eps) * w_y + (eps / n_classes * w_sum if eps > 0 else 0.0)
    logits.mul_((alpha * s / total)[:, None])
    logits.scatter_add_(1, target[:, None], (-(1 - eps) * w_y * s)[:, None])
    if eps > 0 and class_weight is None:
        logits.sub_((eps / n_classes * s)[:, None])
    elif eps > 0:
        logits.addr_(s, class_weight, alpha=-eps / n_classes)
    return loss
