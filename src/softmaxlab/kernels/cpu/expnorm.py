r"""Safe softmax and log-softmax of float32 rows in one kernel (numba): per row the max
:math:`m`, :math:`e_j = e^{z_j - m}` and :math:`s = \sum_j e_j`, then :math:`e_j / s` or
:math:`(z_j - m) - \log s`, with the row in L1/L2 between passes. A row with nothing kept
(all ``-inf``) gives zeros (log: ``-inf``); a NaN stays in its row. The backward is torch's
(``_softmax_backward_data``) for softmax, one numba pass for log-softmax, from the saved
output.
"""

from __future__ import annotations

import torch

from ._jit import (
    F32,
    NEG_INF,
    claim,
    empty_rows,
    exp_neg32,
    kept_sum,
    launch,
    log32,
    one_claim,
    row_kernel,
    row_max,
    row_sum,
    rows,
    rows_at,
    small_call,
    special_row,
    wide_vectors,
)
from .softmax import softmax_backward


@row_kernel
def _forward(x, out, log, claims):
    wide_vectors()
    rows_, n = x.shape
    while True:
        lo, hi = claim(claims, rows_)
        if lo >= hi:
            break
        for i in range(lo, hi):
            r = x[i]
            o = out[i]
            m = row_max(r)
            if special_row(o, m, log):
                continue
            for j in range(n):
                o[j] = exp_neg32(r[j] - m)
            s = row_sum(o)
            if log:  # (z - m) first: exact at logits of 1e30
                ls = log32(s)
                for j in range(n):
                    o[j] = (r[j] - m) - ls
            else:
                inv = F32(1.0) / s
                for j in range(n):
                    o[j] *= inv


@row_kernel
def _forward_at(px, po, size, n, log):
    """:func:`_forward` of the float32 rows at address ``px`` into ``po``, on this thread
    (the small-call entry, :func:`._jit.small_call`)."""
    _forward(rows_at(px, size, n), rows_at(po, size, n), log, one_claim())


@row_kernel
def _log_backward(out, g, grad, claims):
    wide_vectors()
    rows_, n = out.shape
    while True:
        lo, hi = claim(claims, rows_)
        if lo >= hi:
            break
        for i in range(lo, hi):
            o = out[i]
            gr = g[i]
            d = grad[i]
            s = kept_sum(gr, o)
            for j in range(n):
                v = o[j]
                d[j] = gr[j] - exp_neg32(v) * s if v != NEG_INF else F32(0.0)


def expnorm_forward(l: torch.Tensor, log: bool) -> torch.Tensor:
    """(Log-)softmax of the C-contiguous float32 rows ``l`` (rows with nothing kept: zeros,
    log ``-inf``).

    >>> expnorm_forward(torch.tensor([[0.0, 0.0], [float("-inf")] * 2]), False)
    tensor([[0.5000, 0.5000],
            [0.0000, 0.0000]])
    """
    out = small_call(_forward_at, l, log)
    if out is not None:
        return out
    x = rows(l)
    out, out_rows = empty_rows(l, x)
    launch(_forward, (x, out_rows), log)
    return out


def expnorm_backward(g: torch.Tensor, out: torch.Tensor, log: bool) -> torch.Tensor:
    """Input gradient from the saved output; the log form in one pass that ignores the
    upstream gradient at excluded entries and gives them 0 (the sliced-out row's gradient)."""
    if not log:
        return softmax_backward(g, out)
    o = rows(out)
    grad, grad_rows = empty_rows(out, o)
    launch(_log_backward, (o, rows(g), grad_rows))
    return grad

