r"""The top-k softmax probabilities of a vocabulary split across ranks.

Each rank sends its ``k`` largest logits, their (global) indices and its online normalizer
``(max, sum exp(z - max))`` (:class:`softmaxlab.online.OnlineState`) in one all-gather of
``2k + 2`` float64 values per row; every rank then merges the normalizers and takes the top
``k`` of the ``W k`` candidates: the same probabilities and indices as the single-process
:func:`softmaxlab.softmax_topk` of the whole row, on every rank.

Backward is local: ``dz_c = [c selected] g_c p_c - p_c sum_j g_j p_j``, with ``p_c`` the
full softmax of this shard's entries (the outputs are replicated, so every rank must
propagate the same gradient, as for any replicated output of a tensor-parallel layer).
"""

from __future__ import annotations

import torch

from .._constants import NEG_INF
from .._validation import check_input
from ..online import OnlineState
from ..online import softmax_topk as _single_topk
from ._comm import Comm, Shard, vocab_shard
from ._targets import batch_shape_of, compute_dtype

__all__ = ["softmax_topk"]


class _ShardedTopK(torch.autograd.Function):
    @staticmethod
    def forward(ctx, z, k: int, shard: Shard):
        comm: Comm = shard.comm
        rows, n = z.shape
        kk = min(k, n)
        vals, ids = z.topk(kk, dim=-1) if kk else (z.new_empty(rows, 0),
                                                   torch.empty(rows, 0, dtype=torch.long))
        pad = k - kk
        state = OnlineState.from_chunk(z) if n else OnlineState.empty((rows,), dtype=z.dtype)
        packed = torch.cat([
            vals.double(), torch.full((rows, pad), NEG_INF, dtype=torch.float64),
            (ids + shard.lo).double(), torch.full((rows, pad), -1.0, dtype=torch.float64),
            state.max.double()[:, None], state.sum.double()[:, None],
        ], dim=-1)
        everyone = comm.all_gather(packed)  # (W, M, 2k + 2)
        merged = OnlineState(everyone[0, :, -2], everyone[0, :, -1])
        for w in range(1, comm.world):
            merged = merged.merge(OnlineState(everyone[w, :, -2], everyone[w, :, -1]))
        cand_v = everyone[:, :, :k].permute(1, 0, 2).reshape(rows, -1)
        cand_i = everyone[:, :, k:2 * k].permute(1, 0, 2).reshape(rows, -1)
        top_v, pos = cand_v.topk(k, dim=-1)
        idx = cand_i.gather(-1, pos).long()
        m = merged.max.masked_fill(merged.max == NEG_INF, 0.0)
        s = merged.sum.masked_fill(merged.sum == 0, 1.0)
        p = ((top_v - m[:, None]).exp() / s[:, None]).to(z.dtype)
        ctx.save_for_backward(z, p, idx, m.to(z.dtype), s.to(z.dtype))
        ctx.lo = shard.lo
        ctx.mark_non_differentiable(idx)
        return p, idx

    @staticmethod
    def backward(ctx, g, _gidx):
        z, p, idx, m, s = ctx.saved_tensors
        full = (z - m[:, None]).exp() / s[:, None]
        grad = -full * (g * p).sum(-1, keepdim=True)
        if z.shape[-1]:
            mine = (idx >= ctx.lo) & (idx < ctx.lo + z.shape[-1])
            grad.scatter_add_(-1, torch.where(mine, idx - ctx.lo, 0),
                              torch.where(mine, g * p, 0.0))
        return grad, None, None


def softmax_topk(logits: torch.Tensor, k: int, *, group=None) -> tuple[torch.Tensor, torch.Tensor]:
    r"""The ``k`` largest softmax probabilities over a vocabulary split across ranks, and
    their indices in the whole vocabulary; the same on every rank.

    Equal to :func:`softmaxlab.softmax_topk` of the whole logits along the last dimension
    (largest first). ``logits``: this rank's slice ``(*, V_local)`` (ranks in order, any
    split) or a DTensor sharded along its last dimension. Differentiable. One all-gather of
    ``2k + 2`` float64 values per row (plus the slice sizes for a plain tensor).

    Example:
        >>> p, i = softmax_topk(torch.tensor([1.0, 3.0, 2.0]), 2)  # not distributed
        >>> i
        tensor([1, 2])
    """
    check_input(logits, "logits")
    batch_shape = batch_shape_of(logits, "logits")
    z, shard = vocab_shard(logits, "logits", group, -1, batch_shape.numel())
    if shard is None:
        return _single_topk(z, k, dim=-1)
    if isinstance(k, bool) or not isinstance(k, int):
        raise TypeError(f"k must be an int, got {k!r} ({type(k).__name__})")
    if not 1 <= k <= shard.vocab:
        raise ValueError(f"k must be in [1, {shard.vocab}] (the vocabulary size), got k={k}")
    rows = z.to(compute_dtype(z)).reshape(batch_shape.numel(), z.shape[-1])
    p, idx = _ShardedTopK.apply(rows, k, shard)
    shape = (*batch_shape, k)
    return p.to(logits.dtype).reshape(shape), idx.reshape(shape)
