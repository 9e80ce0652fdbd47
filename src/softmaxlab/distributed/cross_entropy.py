r"""Vocabulary-parallel cross-entropy of every mapping with a log form.

Each rank holds the logits of its slice ``[lo, hi)`` of the vocabulary. A mapping with a
log form is ``log p_c = l_c - log sum_j exp(l_j)`` for its element-wise log-score
``l = log g(z)`` (``z / T`` for the softmax; :attr:`softmaxlab.Mapping.log_score`), so one
row's loss needs, over the whole vocabulary,

* ``M = max_j l_j``: one ``all_reduce(MAX)``;
* ``s = sum_j exp(l_j - M)``, the shifted target score ``l_y - M`` (0 on the ranks that do
  not own the target) and, with label smoothing, ``u = sum_j w_j (l_j - M)``: one
  ``all_reduce(SUM)`` of the three stacked.

Then ``-log p_y = log s - (l_y - M)`` and the smoothing term
``-sum_j w_j log p_j = W log s - u`` with ``W = sum_j w_j`` over the *whole* vocabulary
(the vocabulary size without class weights). Megatron-LM's vocab-parallel cross-entropy
(``_VocabParallelCrossEntropy``) instead takes the mean log-probability of the local shard
and the local shard's size for the smoothing term, so each rank adds a different term and
the loss is not the single-process one; here it is.

The gradient is local, no communication in backward:
``dl_c = g [c_i p_c - (1 - e) w_y [c = y] - (e / V) w_c]`` with
``c_i = (1 - e) w_y + (e / V) W``, then through the log-score by autograd.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from .. import losses as L
from .._constants import NEG_INF
from .._registry import resolve_log_mapping
from ..losses._common import check_label_smoothing, check_reduction, reduce
from ._comm import Comm
from ._targets import Targets, compute_dtype, log_scores, loss_inputs, targets

__all__ = ["cross_entropy"]


@dataclass(frozen=True)
class Smoothing:
    eps: float
    vocab: int


def nll_forward(l: torch.Tensor, tg: Targets, eps: float, comm: Comm, inplace: bool = False,
                ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Per-row weighted losses (0 on ignored rows), this shard's probabilities ``p`` and
    the per-row ``log sum exp`` of the log-scores, from log-scores ``l`` ``(M, V_local)``
    (``inplace``: ``p`` is written over ``l``)."""
    rows, n = l.shape
    m = l.amax(-1) if n else l.new_full((rows,), NEG_INF)
    comm.all_reduce(m, "max")
    ms = m.masked_fill(m == NEG_INF, 0.0)
    shifted = l.sub_(ms[:, None]) if inplace else l - ms[:, None]
    picked = shifted.gather(-1, tg.local[:, None])[:, 0] if n else ms.new_zeros(rows)
    parts = [torch.where(tg.owned, picked, 0.0)]
    if eps:
        weighted = shifted if tg.w_local is None else shifted * tg.w_local
        parts.append(weighted.sum(-1))
    e = shifted.exp_() if inplace else shifted.exp()
    parts.insert(0, e.sum(-1))
    stats = comm.all_reduce(torch.stack(parts))
    s = stats[0]
    empty = s == 0  # every entry excluded: log p = -inf everywhere, as the single process
    log_s = s.log()
    loss = tg.w_rows * torch.where(empty, float("inf"), log_s - stats[1])
    if eps:
        smooth = torch.where(empty, float("inf"), tg.w_total * log_s - stats[2])
        loss = (1 - eps) * loss + (eps / tg.vocab) * smooth
    loss = torch.where(tg.keep, loss, 0.0)
    div = s.masked_fill(empty, 1.0)[:, None]
    p = e.div_(div) if inplace else e / div
    return loss, p, ms + log_s


def nll_grad(g: torch.Tensor, p: torch.Tensor, excluded: torch.Tensor | None, tg: Targets,
             eps: float, inplace: bool = False) -> torch.Tensor:
    """Gradient of ``sum(g * loss)`` with respect to the log-scores (shard-local;
    ``inplace``: written over ``p``)."""
    coef = (1 - eps) * tg.w_rows + (eps / tg.vocab) * tg.w_total if eps else tg.w_rows
    coef = (coef * g)[:, None]
    grad = p.mul_(coef) if inplace else p * coef
    if p.shape[-1]:
        hit = torch.where(tg.owned, (1 - eps) * tg.w_rows * g, 0.0)
        grad.scatter_add_(-1, tg.local[:, None], -hit[:, None])
    if eps and tg.w_local is None:
        grad.sub_((eps / tg.vocab) * g[:, None])
    elif eps and tg.w_local is not None:
        grad.addr_(g, tg.w_local, alpha=-eps / tg.vocab)
    grad.masked_fill_(~tg.keep[:, None], 0.0)
    return grad if excluded is None else grad.masked_fill_(excluded, 0.0)


class _VocabParallelNLL(torch.autograd.Function):
    """Per-row losses of shard-local log-scores; collectives in forward only."""

    @staticmethod
    def forward(ctx, l, tg: Targets, eps: float, comm: Comm):
        loss, p, _ = nll_forward(l.detach(), tg, eps, comm)
        excluded = torch.isneginf(l)
        ctx.tg, ctx.eps = tg, eps
        ctx.save_for_backward(p, excluded if bool(excluded.any()) else None)
        return loss

    @staticmethod
    def backward(ctx, g):
        p, excluded = ctx.saved_tensors
        return nll_grad(g, p, excluded, ctx.tg, ctx.eps), None, None, None


def cross_entropy(
    logits: torch.Tensor,
    target: torch.Tensor,
    *,
    mapping: str = "softmax",
    weight: torch.Tensor | None = None,
    ignore_index: int = -100,
    reduction: str = "mean",
    label_smoothing: float = 0.0,
    group=None,
    **mapping_params,
) -> torch.Tensor:
    r"""Cross-entropy of vocabulary-sharded logits, equal to the single-process
    :func:`softmaxlab.losses.cross_entropy` of the full logits (value and gradients).

    Each rank passes its slice of the logits, ``(*, V_local)`` with the vocabulary last (the
    ranks' slices in rank order make up the vocabulary; any split, empty slices too), or a
    ``DTensor`` sharded along its last dimension (``Shard(-1)``; the group is its mesh's).
    ``target`` (``*``, class ids of the whole vocabulary) and ``weight`` (``(V,)``) are the
    same on every rank, and so is the result. Collectives: one all-gather of the slice
    sizes (none for a DTensor), one ``all_reduce(MAX)`` and one ``all_reduce(SUM)`` of two
    values per row (three with label smoothing); backward is local.

    Args:
        logits: this rank's logits ``(*, V_local)``, or a vocabulary-sharded DTensor.
        target: class ids ``(*)`` in ``[0, V)`` or ``ignore_index``.
        mapping: any normalized mapping with a log form (``softmax``, ``taylor_softmax``,
            ``spherical_softmax``, ``sigsoftmax``, ``activation_normalize``);
            ``**mapping_params`` go to it (a ``mask`` is this rank's, of the local logits'
            shape).
        group: the process group over which the vocabulary is split (default: the world);
            without ``torch.distributed`` initialized, or with a group of one, this is
            :func:`softmaxlab.losses.cross_entropy` of the (whole) logits.

    Other arguments as :func:`softmaxlab.losses.cross_entropy` (a batch whose rows are all
    ignored gives 0 with zero gradient).

    Example:
        >>> z = torch.tensor([[2.0, 0.0, -1.0]]); t = torch.tensor([0])
        >>> cross_entropy(z, t)  # not distributed: the single-process loss
        tensor(0.1698)
    """
    reduction = check_reduction(reduction)
    eps = check_label_smoothing(label_smoothing)
    params = dict(mapping_params)
    m = resolve_log_mapping(mapping, params)
    a = loss_inputs(logits, target, weight, params.pop("mask", None), group)
    if a.shard is None:
        return a.single_process(L.cross_entropy, reduction, mapping=mapping,
                                ignore_index=ignore_index, label_smoothing=eps, **params)
    z = a.z.to(compute_dtype(a.z)).reshape(a.batch_shape.numel(), a.z.shape[-1])
    tg = targets(a.target, a.batch_shape, a.shard, a.weight, ignore_index, z.dtype, z.device)
    loss = _VocabParallelNLL.apply(log_scores(m, z, params), tg, eps, a.shard.comm)
    return reduce(loss, tg.w_rows, a.batch_shape, reduction).to(logits.dtype)
