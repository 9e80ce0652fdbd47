r"""Top-k softmax probabilities in one read of the input (numba).

Per row, one pass over spans of ``SPAN_BLOCKS`` blocks of ``TOPK_BLOCK`` entries keeps each
block's maximum and the online normalizer :math:`(m, s)`, :math:`s = \sum_j e^{x_j - m}`
(rescaled by :math:`e^{m - m'}` when a span raises the maximum to :math:`m'`; the span is
still in cache for its exp-sum). The top-k entries lie in
the k blocks with the largest maxima (an entry outside them has k larger block maxima above
it), so the top-k is chosen among those ``k * TOPK_BLOCK`` candidates; both choices are one
pass that keeps a sorted list of k (an insertion is rare); no full-size temporary.
Output :math:`p_t = e^{x_t - m}/s`, largest first.

Backward, for :math:`L = \sum_t g_t p_t`: :math:`\partial L/\partial x_j =
[j \in T]\, g_j p_j - \mathrm{softmax}(x)_j \sum_t g_t p_t` (one more pass over the row).
"""

from __future__ import annotations

import numpy as np
import torch

from . import TOPK_BLOCK
from ._jit import (
    F32,
    NEG_INF,
    claim,
    empty_rows,
    exp_neg32,
    inline,
    launch,
    maximum,
    new_rows,
    row_kernel,
    row_max,
    row_sum,
    rows,
    wide_vectors,
)

#: Blocks per span of the streamed normalizer (one rescale and one exp-sum per span).
SPAN_BLOCKS = 16


@inline
def _insert(vals, ids, cnt, v, j):
    """Put ``(v, j)`` into the descending list ``vals[:cnt]``/``ids[:cnt]`` of capacity
    ``vals.shape[0]`` if it belongs there (after its equals: the entry seen first stays
    first); the new count."""
    k = vals.shape[0]
    if cnt == k:
        if not v > vals[k - 1]:
            return cnt
        cnt -= 1
    t = cnt
    while t > 0 and v > vals[t - 1]:
        vals[t] = vals[t - 1]
        ids[t] = ids[t - 1]
        t -= 1
    vals[t] = v
    ids[t] = j
    return cnt + 1


@row_kernel
def _forward(x, p_out, idx_out, stats, k, block, scratch, top, sel, ci, claims):
    wide_vectors()
    rows_, n = x.shape
    nb = (n + block - 1) // block
    span = SPAN_BLOCKS * block
    while True:
        lo, hi = claim(claims, rows_)
        if lo >= hi:
            break
        for i in range(lo, hi):
            r = x[i]
            bmax = scratch[:nb]
            e = scratch[nb:]
            m = NEG_INF
            s = 0.0
            for first in range(0, n, span):  # one span: its block maxima, then its exp-sum
                part = r[first:first + span]  # (loops from 0 vectorize: no index checks)
                sm = NEG_INF
                for start in range(0, part.shape[0], block):
                    bm = row_max(part[start:start + block])
                    bmax[(first + start) // block] = bm
                    sm = maximum(sm, bm)
                if np.isnan(sm):  # a NaN: the row's output is NaN
                    m = sm
                    break
                if sm > m:
                    s *= np.exp(np.float64(m) - np.float64(sm))
                    m = sm
                if m != NEG_INF:
                    for j in range(part.shape[0]):
                        e[j] = exp_neg32(part[j] - m)
                    s += row_sum(e[:part.shape[0]])
            stats[i, 0] = m
            stats[i, 1] = s
            if np.isnan(m):  # the row's probabilities are NaN (which indices: unspecified)
                for t in range(k):
                    p_out[i, t] = F32(np.nan)
                    idx_out[i, t] = t
                continue
            # the k blocks with the largest maxima (in one pass), visited in index order:
            # the k largest of their entries, the first of equals first
            nsel = 0
            for b in range(nb):
                nsel = _insert(top, sel, nsel, bmax[b], b)
            blocks = np.sort(sel[:nsel])
            c = 0
            for b in blocks:
                for j in range(b * block, min(b * block + block, n)):
                    c = _insert(top, ci, c, r[j], j)
            inv = F32(1.0 / s) if s > 0.0 else F32(0.0)
            for t in range(k):
                p_out[i, t] = exp_neg32(top[t] - m) * inv if m != NEG_INF else F32(0.0)
                idx_out[i, t] = ci[t]


@row_kernel
def _backward(x, p, idx, g, grad, stats, claims):
    wide_vectors()
    rows_, n = x.shape
    k = p.shape[1]
    while True:
        lo, hi = claim(claims, rows_)
        if lo >= hi:
            break
        for i in range(lo, hi):
            r = x[i]
            d = grad[i]
            m = F32(stats[i, 0])
            s = stats[i, 1]
            c = 0.0
            for t in range(k):
                c += np.float64(g[i, t]) * np.float64(p[i, t])
            if m == NEG_INF:
                for j in range(n):
                    d[j] = F32(0.0)
                continue
            scale = F32(-c / s)
            for j in range(n):
                d[j] = exp_neg32(r[j] - m) * scale
            for t in range(k):
                d[idx[i, t]] += g[i, t] * p[i, t]


def topk_forward(x: torch.Tensor, k: int):
    """The k largest softmax probabilities of the float32 rows ``x`` ``(*, n)``, their
    indices, and each row's ``(max, sum)`` (float64) for the backward."""
    n = x.shape[-1]
    lead = x.shape[:-1]
    xr = rows(x)
    p, p_rows = new_rows((*lead, k), x.dtype)
    idx, idx_rows = new_rows((*lead, k), torch.int64)
    stats, stats_rows = new_rows((*lead, 2), torch.float64)
    b = TOPK_BLOCK
    launch(_forward, (xr, p_rows, idx_rows, stats_rows), k, b,
           scratch=((-(-n // b) + SPAN_BLOCKS * b, np.float32), (k, np.float32),
                    (k, np.int64), (k, np.int64)))
    return p, idx, stats


def topk_backward(g, x, p, idx, stats) -> torch.Tensor:
    """Input gradient of :func:`topk_forward` from the gradient ``g`` of the probabilities."""
    xr = rows(x)
    grad, grad_rows = empty_rows(x, xr)
    launch(_backward, (xr, rows(p), rows(idx), rows(g), grad_rows, rows(stats)))
    return grad
