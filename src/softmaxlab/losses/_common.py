"""What the classification losses share: torch's layout and conventions, done once.

Layout: ``logits`` ``(C,)``, ``(N, C)`` or ``(N, C, d1, ...)`` with the class dimension 1 (as
``torch.nn.functional.cross_entropy``); ``target`` of class indices ``()``, ``(N,)`` or
``(N, d1, ...)``. Internally everything is flattened to rows ``(M, C)``.

Conventions: ``weight`` (per class, ``(C,)``), ``ignore_index`` (rows with that target count
nowhere: not in the loss, not in the label-smoothing term, not in the mean's denominator),
``reduction`` in ``"none" | "mean" | "sum"``, ``label_smoothing`` in ``[0, 1]``. The mean is
``sum_i w_{y_i} l_i / sum_i w_{y_i}`` over kept rows, as in torch; a batch with every row
ignored gives 0 with zero gradient (torch gives NaN).
"""

from __future__ import annotations

import numbers
from dataclasses import dataclass

import torch

from ..functional._common import check_input

REDUCTIONS = ("none", "mean", "sum")


@dataclass(frozen=True)
class Rows:
    """Logits as rows ``(M, C)``, safe targets ``(M,)`` (ignored -> 0), ``keep`` mask and the
    batch shape for ``reduction="none"``."""

    logits: torch.Tensor
    target: torch.Tensor
    keep: torch.Tensor
    batch_shape: torch.Size

    @property
    def n_classes(self) -> int:
        return self.logits.shape[-1]

    def onehot(self, dtype: torch.dtype | None = None) -> torch.Tensor:
        out = torch.zeros_like(self.logits, dtype=dtype or self.logits.dtype)
        return out.scatter_(-1, self.target[:, None], 1.0)


def check_reduction(reduction: object) -> str:
    if reduction not in REDUCTIONS:
        raise ValueError(f"reduction must be one of {REDUCTIONS}, got {reduction!r}")
    return reduction  # type: ignore[return-value]


def check_label_smoothing(label_smoothing: object) -> float:
    if isinstance(label_smoothing, bool) or not isinstance(label_smoothing, numbers.Real):
        raise TypeError(f"label_smoothing must be a float in [0, 1], got {label_smoothing!r}")
    if not 0.0 <= label_smoothing <= 1.0:
        raise ValueError(f"label_smoothing must be in [0, 1], got {label_smoothing}")
    return float(label_smoothing)


def as_rows(logits: torch.Tensor, target: torch.Tensor, ignore_index: int = -100,
            name: str = "logits") -> Rows:
    """Validate ``logits``/``target`` in torch's layout and flatten to rows (float16 and
    bfloat16 logits are upcast to float32)."""
    check_input(logits, name)
    if logits.dim() == 0:
        raise ValueError(f"{name} must have a class dimension, got a 0-dim tensor")
    if logits.dtype in (torch.float16, torch.bfloat16):
        logits = logits.float()  # losses compute in float32; callers cast the result back
    if logits.dim() == 1:
        rows, batch_shape = logits[None], torch.Size()
    else:
        batch_shape = logits.shape[:1] + logits.shape[2:]
        rows = logits.movedim(1, -1).reshape(-1, logits.shape[1])
    t, keep = check_target(target, batch_shape, rows.shape[-1], ignore_index,
                           f"{name} shape {tuple(logits.shape)}, class dimension 1")
    return Rows(rows, t.to(rows.device), keep.to(rows.device), batch_shape)


def check_target(target: object, shape: torch.Size, n_classes: int, ignore_index: int,
                 where: str) -> tuple[torch.Tensor, torch.Tensor]:
    """Flattened class ids (ignored rows set to 0) and the mask of kept rows."""
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
    t = target.reshape(-1)
    keep = t != ignore_index
    bad = keep & ((t < 0) | (t >= n_classes))
    if bool(bad.any()):
        raise ValueError(
            f"target values must be in [0, {n_classes}) or ignore_index={ignore_index}, "
            f"got {t[bad][0].item()}"
        )
    return t.masked_fill(~keep, 0).long(), keep


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
    """
    picked = -logp.gather(-1, rows.target[:, None])[:, 0]
    w_rows = torch.ones_like(picked) if weight is None else weight[rows.target]
    loss = picked * w_rows
    if label_smoothing > 0:
        weighted = logp if weight is None else logp * weight
        smooth = -weighted.sum(-1)
        loss = (1 - label_smoothing) * loss + (label_smoothing / rows.n_classes) * smooth
    zero = torch.zeros((), dtype=loss.dtype, device=loss.device)
    return torch.where(rows.keep, loss, zero), torch.where(rows.keep, w_rows, zero)


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
    ignored rows count nowhere."""
    w_rows = torch.ones_like(loss) if weight is None else weight.to(loss.dtype)[rows.target]
    zero = torch.zeros((), dtype=loss.dtype, device=loss.device)
    return reduce(torch.where(rows.keep, loss * w_rows, zero),
                  torch.where(rows.keep, w_rows, zero), rows.batch_shape, reduction)
