r"""``softmax_topk``: the k largest softmax probabilities without materializing the softmax.

.. math:: p_i = e^{x_i - m} / d, \quad i \in \mathrm{topk}(x), \quad (m, d) = \text{online
          normalizer of the row}

The normalizer ``(m, d)`` comes from one Triton pass over the row (split over programs for
long rows, see :func:`._softmax.row_stats`); the indices from ``torch.topk`` on the input
(float16/bfloat16 compared exactly, no upcast copy). Backward, with ``c = sum_i g_i p_i``:

.. math:: \partial x_j = [j \in \mathrm{topk}]\, g_j p_j - c\, e^{x_j - m} / d

written by one Triton pass (the dense term) and a scatter-add (the top-k term).
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl

from ...online import check_topk
from . import _launch as L
from ._softmax import _acc, row_stats


@triton.jit
def _dense_grad(X, DX, Mr, Sr, Cr, n_cols, span, TILE: tl.constexpr, F64: tl.constexpr):
    """Program (row, c): ``dx = -c * exp(x - m) / d`` over span ``c`` of ``row``."""
    row = tl.program_id(0).to(tl.int64)
    start = tl.program_id(1) * span
    end = tl.minimum(start + span, n_cols)
    m = tl.load(Mr + row)
    s = tl.load(Sr + row)
    coef = -tl.load(Cr + row) / tl.where(s == 0, 1.0, s)
    cols = tl.arange(0, TILE)
    for off in range(start, end, TILE):
        idx = off + cols
        x = _acc(tl.load(X + row * n_cols + idx, mask=idx < end, other=-float("inf")), F64)
        tl.store(DX + row * n_cols + idx, (coef * tl.exp(x - m)).to(DX.dtype.element_ty),
                 mask=idx < end)


class SoftmaxTopkFunction(torch.autograd.Function):
    """Rows ``(M, N)`` -> top-k probabilities ``(M, k)`` (input dtype) and indices."""

    @staticmethod
    def forward(ctx, x: torch.Tensor, k: int):
        m, d = row_stats(x)
        top, idx = x.topk(k, dim=-1)
        s = d.masked_fill(d == 0, 1.0)
        p = ((top.to(m.dtype) - m[:, None]).exp() / s[:, None])
        ctx.save_for_backward(x, idx, p, m, d)
        ctx.mark_non_differentiable(idx)
        return p.to(x.dtype), idx

    @staticmethod
    def backward(ctx, gp: torch.Tensor, _gidx):
        x, idx, p, m, d = ctx.saved_tensors
        gpp = gp.to(p.dtype) * p
        c = gpp.sum(1)
        dx = torch.empty(x.shape, dtype=p.dtype, device=x.device)
        rows, n = x.shape
        if rows and n:
            plan = L.multi_block(rows, n, x.device)
            _dense_grad[(rows, plan.n_chunks)](x, dx, m, d, c, n, plan.span, TILE=plan.tile,
                                               F64=L.is_f64(x), num_warps=plan.num_warps)
        dx.scatter_add_(1, idx, gpp)
        return dx.to(x.dtype), None


def softmax_topk(x: torch.Tensor, k: int, *, dim: int = -1) -> tuple[torch.Tensor, torch.Tensor]:
    r"""Triton ``softmax_topk``: same contract and signature as
    :func:`softmaxlab.online.softmax_topk` (``softmax(x, dim).topk(k, dim)``, differentiable).

    Shape: ``x`` ``(*)``; returns values (``x``'s dtype) and int64 indices with ``dim`` of
    size ``k``.
    """
    d, _ = check_topk(x, k, dim)
    rows, (shape, _, ndim) = L.as_rows(x, d)
    p, idx = SoftmaxTopkFunction.apply(rows, k)
    out_shape = shape[:-1] + (k,)
    undo = (out_shape, d, ndim)
    return L.from_rows(p, undo), L.from_rows(idx, undo)
