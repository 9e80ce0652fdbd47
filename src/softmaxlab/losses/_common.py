"""What the classification losses share: torch's layout and conventions, done once.

Layout: ``logits`` ``(C,)``, ``(N, C)`` or ``(N, C, d1, ...)`` with the class dimension 1 (as
``torch.nn.functional.cross_entropy``); ``target`` of class indices ``()``, ``(N,)`` or
``(N, d1, ...)``, or class probabilities of ``logits``' shape where a loss accepts them
(``probs=True`` in :func:`as_rows`). Internally everything is flattened to rows ``(M, C)``.

Conventions: ``weight`` (per class, ``(C,)``), ``ignore_index`` (rows with that target count
nowhere: not in the loss, not in the label-smoothing term, not in the mean's denominator),
``reduction`` in ``"none" | "mean" | "sum"``, ``label_smoothing`` in ``[0, 1]``. The mean is
``sum_i w_{y_i} l_i / sum_i w_{y_i}`` over kept rows, as in torch; a batch with every row
ignored gives 0 with zero gradient (torch gives NaN). With probability targets nothing is
ignored (a class id as ``ignore_index`` raises, as in torch) and the mean divides by the
number of rows ``M`` (torch's rule).

Result dtype (:func:`loss_dtype`): the input's, or float32 under ``torch.autocast`` (torch's
policy for its losses: ``F.cross_entropy`` and ``F.nll_loss`` autocast to float32); half
and bfloat16 inputs are computed in float32 inside either way.

Value checks (a target id out of range, say) run in eager mode only: under
``torch.compile`` they are skipped (:func:`checks_values`), as torch's own kernels skip
them, so that no data-dependent branch breaks the graph.
"""

from __future__ import annotations

import math
import numbers
from dataclasses import dataclass

import torch
import torch.nn.functional as F

from .._validation import check_input, checks_values

REDUCTIONS = ("none", "mean", "sum")


@dataclass(frozen=True)
class Rows:
    """Logits as rows ``(M, C)``, safe targets ``(M,)`` (ignored -> 0), ``keep`` mask, the
    batch shape for ``reduction="none"`` and, for probability targets, their rows."""

    logits: torch.Tensor
    target: torch.Tensor
    keep: torch.Tensor
    batch_shape: torch.Size
    #: class-probability targets ``(M, C)`` (then ``target`` is all 0 and ``keep`` all True),
    #: or ``None`` for class indices
    probs: torch.Tensor | None = None

    @property
    def n_classes(self) -> int:
        return self.logits.shape[-1]

    def onehot(self, dtype: torch.dtype | None = None) -> torch.Tensor:
        out = torch.zeros_like(self.logits, dtype=dtype or self.logits.dtype)
        return out.scatter_(-1, self.target[:, None], 1.0)


def loss_dtype(x: torch.Tensor) -> torch.dtype:
    """The dtype of a loss of input ``x``: ``x``'s own, except under ``torch.autocast`` for
    ``x``'s device type, where it is float32 (float64 stays float64), as
    ``torch.nn.functional.cross_entropy`` gives (torch's autocast policy for losses)."""
    if x.dtype != torch.float64 and torch.is_autocast_enabled(x.device.type):
        return torch.float32
    return x.dtype


def check_reduction(reduction: object) -> str:
    if reduction not in REDUCTIONS:
        raise ValueError(f"reduction must be one of {REDUCTIONS}, got {reduction!r}")
    return reduction


def check_label_smoothing(label_smoothing: object) -> float:
    if label_smoothing == 0.0 and type(label_smoothing) is float:
        return 0.0
    if isinstance(label_smoothing, bool) or not isinstance(label_smoothing, numbers.Real):
        raise TypeError(f"label_smoothing must be a float in [0, 1], got {label_smoothing!r}")
    value = float(label_smoothing)
    if not 0.0 <= value <= 1.0:
        raise ValueError(f"label_smoothing must be in [0, 1], got {label_smoothing}")
    return value


def _to_rows(x: torch.Tensor) -> torch.Tensor:
    """torch's layout (class dimension 1, or the only one) -> rows ``(M, C)``."""
    if x.dim() == 2:
        return x
    return x[None] if x.dim() == 1 else x.movedim(1, -1).reshape(-1, x.shape[1])


def logit_rows(logits: torch.Tensor, name: str = "logits") -> tuple[torch.Tensor, torch.Size]:
    """Validated ``logits`` in torch's layout as rows ``(M, C)`` (float16 and bfloat16
    upcast to float32; callers cast the result back) and the batch shape."""
    check_input(logits, name)
    ndim = logits.dim()
    if ndim == 0:
        raise ValueError(f"{name} must have a class dimension, got a 0-dim tensor")
    if logits.dtype in (torch.float16, torch.bfloat16):
        logits = logits.float()
    if ndim == 2:
        return logits, logits.shape[:1]
    batch_shape = torch.Size() if ndim == 1 else logits.shape[:1] + logits.shape[2:]
    return _to_rows(logits), batch_shape


def as_rows(logits: torch.Tensor, target: torch.Tensor, ignore_index: int = -100,
            name: str = "logits", probs: bool = False) -> Rows:
    """Validate ``logits``/``target`` in torch's layout and flatten to rows (float16 and
    bfloat16 logits are upcast to float32). With ``probs=True`` a floating ``target`` of
    ``logits``' shape holds class probabilities (an integer one still holds class ids)."""
    rows, batch_shape = logit_rows(logits, name)
    if probs and isinstance(target, torch.Tensor) and target.is_floating_point():
        q = check_probs(target, logits.shape, batch_shape, ignore_index, name)
        m = rows.shape[0]
        return Rows(rows, torch.zeros(m, dtype=torch.long, device=rows.device),
                    torch.ones(m, dtype=torch.bool, device=rows.device), batch_shape,
                    _to_rows(q).to(device=rows.device, dtype=rows.dtype))
    t, keep = check_target(target, batch_shape, rows.shape[-1], ignore_index,
                           f"{name} shape {tuple(logits.shape)}, class dimension 1")
    return Rows(rows, t.to(rows.device), keep.to(rows.device), batch_shape)


def check_probs(target: torch.Tensor, shape: torch.Size, batch_shape: torch.Size,
                ignore_index: int, name: str) -> torch.Tensor:
    """A floating ``target`` of class probabilities: same shape as ``name`` (``shape``).
    Its values are not checked (torch does not either). ``ignore_index`` does not apply: a
    negative one (the default -100) is ignored, a class id raises (as in torch)."""
    if isinstance(ignore_index, bool) or not isinstance(ignore_index, int):
        raise TypeError(f"ignore_index must be an int, got {ignore_index!r}")
    if ignore_index >= 0:
        raise ValueError(
            f"ignore_index={ignore_index} is not supported for class-probability targets "
            f"(no row is ignored; torch rejects it too): leave it negative, e.g. -100"
        )
    if target.shape == shape:
        return target
    if target.shape == batch_shape:
        raise TypeError(
            f"target must hold integer class indices of shape {tuple(batch_shape)} or class "
            f"probabilities of {name}'s shape {tuple(shape)}; got dtype {target.dtype} of "
            f"shape {tuple(target.shape)}"
        )
    raise ValueError(
        f"target of class probabilities must have {name}'s shape {tuple(shape)}, got shape "
        f"{tuple(target.shape)}"
    )


def check_target_ids(target: object, shape: torch.Size, ignore_index: int,
                     where: str) -> torch.Tensor:
    """``target`` checked to be integer class ids of ``shape`` (their values unchecked)."""
    if not isinstance(target, torch.Tensor):
        raise TypeError(f"target must be a tensor of class indices, got {type(target).__name__}")
    if target.is_floating_point() or target.is_complex() or target.dtype == torch.bool:
        raise TypeError(f"target must hold integer class indices, got dtype {target.dtype}")
    if isinstance(ignore_index, bool) or not isinstance(ignore_index, int):
        raise TypeError(f"ignore_index must be an int, got {ignore_index!r}")
    if target.shape != shape:
        raise ValueError(
            f"target shape {tuple(target.shape)} does not match: expected {tuple(shape)} ({where})"
        )
    return target


def check_target(target: object, shape: torch.Size, n_classes: int, ignore_index: int,
                 where: str) -> tuple[torch.Tensor, torch.Tensor]:
    """Flattened class ids (ignored rows set to 0) and the mask of kept rows (ids out of
    range raise ``ValueError`` in eager mode; see :func:`checks_values`)."""
    t = check_target_ids(target, shape, ignore_index, where).reshape(-1)
    keep = t != ignore_index
    bad = keep & ((t < 0) | (t >= n_classes))
    if checks_values() and bool(bad.any()):
        raise_bad_target(t, n_classes, ignore_index)
    return t.masked_fill(~keep, 0).long(), keep


def raise_bad_target(t: torch.Tensor, n_classes: int, ignore_index: int) -> None:
    """Raise the ``ValueError`` naming the first target id outside ``[0, n_classes)``."""
    bad = (t != ignore_index) & ((t < 0) | (t >= n_classes))
    raise ValueError(
        f"target values must be in [0, {n_classes}) or ignore_index={ignore_index}, "
        f"got {t[bad][0].item()}"
    )


def class_weights(weight: torch.Tensor | None, n_classes: int, like: torch.Tensor,
                  name: str = "weight") -> torch.Tensor | None:
    """Validated per-class weights ``(C,)`` in ``like``'s dtype and device."""
    if weight is None:
        return None
    check_input(weight, name)
    if weight.shape != (n_classes,):
        raise ValueError(f"{name} must have shape ({n_classes},), got {tuple(weight.shape)}")
    return weight.to(device=like.device, dtype=like.dtype)


def nll_rows(logp: torch.Tensor, rows: Rows, weight: torch.Tensor | None,
             label_smoothing: float) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-row loss and per-row weight of the negative log-likelihood.

    ``loss_i = (1 - e) w_{y_i} (-log p_{i,y_i}) + (e / C) sum_c w_c (-log p_{i,c})`` for kept
    rows, 0 for ignored ones (torch's definition of label smoothing with class weights).
    Probability targets go to :func:`soft_nll_rows`.
    """
    if rows.probs is not None:
        return soft_nll_rows(logp, rows.probs, weight, label_smoothing)
    picked = -logp.gather(-1, rows.target[:, None])[:, 0]
    w_rows = torch.ones_like(picked) if weight is None else weight[rows.target]
    loss = picked * w_rows
    if label_smoothing > 0:
        weighted = logp if weight is None else logp * weight
        smooth = -weighted.sum(-1)
        loss = (1 - label_smoothing) * loss + (label_smoothing / rows.n_classes) * smooth
    zero = torch.zeros((), dtype=loss.dtype, device=loss.device)
    return torch.where(rows.keep, loss, zero), torch.where(rows.keep, w_rows, zero)


def soft_nll_rows(logp: torch.Tensor, probs: torch.Tensor, weight: torch.Tensor | None,
                  label_smoothing: float) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-row loss and per-row weight (all 1: the mean divides by the number of rows) of
    the cross-entropy against class probabilities ``q = (1 - e) y + e / C``:
    ``loss_i = -sum_c w_c q_ic log p_ic``, with ``0 * log 0 = 0`` (an excluded class with
    ``q = 0`` adds nothing, also not NaN, and passes no gradient; NaN stays NaN)."""
    q = probs
    if label_smoothing > 0:
        q = (1 - label_smoothing) * q + label_smoothing / q.shape[-1]
    logp = torch.where((q == 0) & (logp == float("-inf")), 0.0, logp)
    terms = q * logp if weight is None else q * logp * weight
    loss = -terms.sum(-1)
    return loss, torch.ones_like(loss)


def eager_cpu_ids(logits: torch.Tensor, target: object) -> bool:
    """Whether :func:`nll_loss` serves a loss of ``logits`` and class ids ``target``: CPU
    tensors in eager code (where its checks of values cost no device sync)."""
    return (isinstance(target, torch.Tensor) and not target.is_floating_point()
            and isinstance(logits, torch.Tensor) and logits.is_cpu and target.is_cpu
            and checks_values())


def nll_loss(logp: torch.Tensor, target: torch.Tensor, batch_shape: torch.Size,
             weight: torch.Tensor | None, ignore_index: int, reduction: str) -> torch.Tensor:
    """torch's ``nll_loss`` of log-probability rows ``logp`` ``(M, C)`` and class ids
    ``(M,)`` (int64), eager CPU only (:func:`eager_cpu_ids`): an id out of range raises
    ``ValueError``, and a mean over rows of total weight 0 (every row ignored) is 0 with
    zero gradient, not torch's NaN."""
    try:
        loss = F.nll_loss(logp, target, weight, ignore_index=ignore_index, reduction=reduction)
    except IndexError:  # torch's "Target 9 is out of bounds."
        raise_bad_target(target, logp.shape[-1], ignore_index)
        raise
    if reduction == "none":
        return loss.reshape(batch_shape)
    if reduction == "mean" and math.isnan(loss.item()):
        keep = target != ignore_index
        total = keep.sum() if weight is None else weight[target[keep]].sum()
        if total == 0:
            return loss.nan_to_num(0.0)  # its gradient is 0 where the value was NaN
    return loss


def reduce(loss: torch.Tensor, w_rows: torch.Tensor, batch_shape: torch.Size,
           reduction: str) -> torch.Tensor:
    """Apply ``reduction`` to per-row losses (ignored rows already 0); ``mean`` divides by
    the sum of the rows' weights ``w_rows`` (0 for ignored rows; a loss of 0 when all are)."""
    if reduction == "none":
        return loss.reshape(batch_shape)
    total = loss.sum()
    if reduction == "sum":
        return total
    denom = w_rows.sum()
    return total / torch.where(denom != 0, denom, torch.ones_like(denom))


def weighted_reduce(loss: torch.Tensor, weight: torch.Tensor | None, rows: Rows,
                    reduction: str) -> torch.Tensor:
    """Reduce per-row losses ``(M,)``, each multiplied by its target's class weight;
    ignored rows count nowhere. For probability targets ``y_i`` a row's weight is
    ``<w, y_i>`` and the mean divides by the number of rows."""
    if rows.probs is not None:
        w_rows = torch.ones_like(loss) if weight is None else rows.probs @ weight.to(loss.dtype)
        return reduce(loss * w_rows, torch.ones_like(loss), rows.batch_shape, reduction)
    w_rows = torch.ones_like(loss) if weight is None else weight.to(loss.dtype)[rows.target]
    zero = torch.zeros((), dtype=loss.dtype, device=loss.device)
    return reduce(torch.where(rows.keep, loss * w_rows, zero),
                  torch.where(rows.keep, w_rows, zero), rows.batch_shape, reduction)
