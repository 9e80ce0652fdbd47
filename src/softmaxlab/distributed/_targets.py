"""What the vocabulary-parallel losses share: the targets as seen by one shard, the
element-wise log-scores, the argument checks done once."""

from __future__ import annotations

from dataclasses import dataclass

import torch

from .._constants import LOW_PRECISION, NEG_INF
from .._registry import Mapping
from .._validation import check_input, check_mask, checks_values
from ..losses._common import check_target_ids, class_weights, raise_bad_target
from ._comm import Shard, local, vocab_shard


@dataclass(frozen=True)
class Targets:
    """Replicated class-id targets of ``M`` rows seen from one shard.

    ``target`` ``(M,)`` global ids (ignored rows 0), ``keep`` the kept rows, ``owned`` the
    kept rows whose target lies in this shard and ``local`` its index there (0 elsewhere),
    ``w_rows`` each row's target weight (1 without class weights, 0 on ignored rows),
    ``w_local`` this shard's slice of the class weights (``None`` without), ``w_total`` the
    sum of all class weights (the vocabulary size without).
    """

    target: torch.Tensor
    keep: torch.Tensor
    owned: torch.Tensor
    local: torch.Tensor
    w_rows: torch.Tensor
    w_local: torch.Tensor | None
    w_total: float
    vocab: int

    def rows(self, sl: slice) -> Targets:
        """The targets of rows ``sl`` (a chunk)."""
        return Targets(self.target[sl], self.keep[sl], self.owned[sl], self.local[sl],
                       self.w_rows[sl], self.w_local, self.w_total, self.vocab)

    def onehot(self, like: torch.Tensor) -> torch.Tensor:
        """``(M, V_local)`` with 1 at the owned targets."""
        out = torch.zeros_like(like)
        if like.shape[-1]:
            out.scatter_(-1, self.local[:, None], self.owned[:, None].to(like.dtype))
        return out


def compute_dtype(x: torch.Tensor) -> torch.dtype:
    return torch.float32 if x.dtype in LOW_PRECISION else x.dtype


def targets(target: object, batch_shape: torch.Size, shard: Shard, weight: object,
            ignore_index: int, dtype: torch.dtype, device: torch.device) -> Targets:
    """Validated targets (class ids of the whole vocabulary, ``batch_shape``, the same on
    every rank) and class weights (``(V,)`` for the whole vocabulary, replicated)."""
    t = check_target_ids(target, batch_shape, ignore_index,
                         "the logits' shape without the vocabulary dimension").reshape(-1)
    t = t.to(device)
    keep = t != ignore_index
    if checks_values() and bool((keep & ((t < 0) | (t >= shard.vocab))).any()):
        raise_bad_target(t, shard.vocab, ignore_index)
    t = t.masked_fill(~keep, 0).long()
    owned = keep & (t >= shard.lo) & (t < shard.hi)
    local = torch.where(owned, t - shard.lo, 0)
    like = torch.empty((), dtype=dtype, device=device)
    w = class_weights(weight, shard.vocab, like)  # type: ignore[arg-type]
    if w is None:
        w_rows = keep.to(dtype)
        return Targets(t, keep, owned, local, w_rows, None, float(shard.vocab), shard.vocab)
    w_rows = torch.where(keep, w[t], 0.0)
    return Targets(t, keep, owned, local, w_rows, w[shard.lo:shard.hi], float(w.sum()),
                   shard.vocab)


def apply_mask(z: torch.Tensor, mask: object) -> torch.Tensor:
    """``z`` with the entries a shard-local ``mask`` excludes (False) set to ``-inf``."""
    if mask is None:
        return z
    return z.masked_fill(~check_mask(mask, z), NEG_INF)


def batch_shape_of(x: torch.Tensor, name: str) -> torch.Size:
    """The batch shape ``*`` of ``(*, V)`` (a ``ValueError`` for a 0-dim tensor)."""
    if x.dim() == 0:
        raise ValueError(f"{name} must have a vocabulary dimension, got a 0-dim tensor")
    return x.shape[:-1]


@dataclass
class LossInputs:
    """The checked inputs of a vocabulary-parallel loss (:func:`loss_inputs`)."""

    z: torch.Tensor  # this rank's logits (*, V_local), masked
    shard: Shard | None  # None: not distributed
    target: object
    weight: torch.Tensor | None
    batch_shape: torch.Size

    def single_process(self, loss, reduction: str, **kwargs) -> torch.Tensor:
        """``loss`` (a :mod:`softmaxlab.losses` function) of the whole rows, shaped as the
        batch for ``reduction="none"``."""
        t = self.target
        out = loss(self.z.reshape(-1, self.z.shape[-1]),
                   t.reshape(-1) if isinstance(t, torch.Tensor) else t,
                   weight=self.weight, reduction=reduction, **kwargs)
        return out.reshape(self.batch_shape) if reduction == "none" else out


def loss_inputs(logits: object, target: object, weight: object, mask: object,
                group: object) -> LossInputs:
    """What every vocabulary-parallel loss starts with: ``logits`` checked, the local parts
    of DTensor arguments, the rank's vocabulary shard, the mask applied."""
    x = check_input(logits, "logits")
    batch_shape = batch_shape_of(x, "logits")
    z, shard = vocab_shard(x, "logits", group, -1, batch_shape.numel())
    return LossInputs(apply_mask(z, mask), shard, local(target, "target"),
                      local(weight, "weight"), batch_shape)


def log_scores(m: Mapping, z: torch.Tensor, params: dict) -> torch.Tensor:
    """The element-wise log-scores of mapping ``m`` (``-inf`` at excluded entries, which
    get zero gradient); differentiable."""
    assert m.log_score is not None, f"{m.name} has no element-wise log-score"
    kw = {**m.defaults, **params}
    if m.name == "softmax" and not isinstance(kw["temperature"], torch.Tensor):
        t = kw["temperature"]
        return z if t == 1.0 else z / t  # -inf / T = -inf; no other singular point
    excluded = torch.isneginf(z)
    return m.log_score(z.masked_fill(excluded, 0.0), **kw).masked_fill(excluded, NEG_INF)
