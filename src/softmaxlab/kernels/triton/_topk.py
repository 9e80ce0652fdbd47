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


def topk_forward(x: torch.Tensor, k: int):
    """Row function of op family ``topk``: top-k probabilities of rows ``(*, n)`` (``x``'s
    dtype), their int64 indices and each row's ``(m, d)`` (float64)."""
    lead, n = x.shape[:-1], x.shape[-1]
    xr = x.view(-1, n)
    m, d = row_stats(xr)
    top, idx = xr.topk(k, dim=-1)
    p = (top.to(m.dtype) - m[:, None]).exp() / d.masked_fill(d == 0, 1.0)[:, None]
    stats = torch.stack((m, d), 1).double()
    return p.to(x.dtype).view(*lead, k), idx.view(*lead, k), stats.view(*lead, 2)


def topk_backward(gp, x, p, idx, stats) -> torch.Tensor:
    """Input gradient of :func:`topk_forward` from the gradient ``gp`` of the probabilities."""
    n, k = x.shape[-1], p.shape[-1]
    xr, pr, ir = x.view(-1, n), p.view(-1, k), idx.view(-1, k)
    acc = L.acc_dtype(x)
    m = stats.view(-1, 2)[:, 0].to(acc).contiguous()
    d = stats.view(-1, 2)[:, 1].to(acc).contiguous()
    gpp = gp.view(-1, k).to(acc) * pr.to(acc)
    c = gpp.sum(1)
    dx = torch.empty(xr.shape, dtype=acc, device=x.device)
    rows, _ = xr.shape
    if rows and n:
        plan = L.multi_block(rows, n, x.device)
        _dense_grad[(rows, plan.n_chunks)](xr, dx, m, d, c, n, plan.span, TILE=plan.tile,
                                           F64=L.is_f64(x), num_warps=plan.num_warps)
    dx.scatter_add_(1, ir, gpp)
    return dx.to(x.dtype).view(x.shape)
