r"""Safe softmax and log-softmax of float32 rows in one kernel (numba): per row the max
:math:`m`, :math:`e_j = e^{z_j - m}` and :math:`s = \sum_j e_j`, then :math:`e_j / s` or
:math:`(z_j - m) - \log s`, with the row in L1/L2 between passes. A row with nothing kept
(all ``-inf``) gives zeros (log: ``-inf``); a NaN stays in its row. The backward is torch's
(:func:`.softmax.expnorm_backward`), from the saved output.
"""

from __future__ import annotations

import torch

from ._jit import (
    F32,
    claim,
    empty_rows,
    exp_neg32,
    launch,
    log32,
    row_kernel,
    row_max,
    row_sum,
    rows,
    special_row,
    wide_vectors,
)
from .softmax import expnorm_backward

__all__ = ["expnorm_backward", "expnorm_forward"]


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


def expnorm_forward(l: torch.Tensor, log: bool) -> torch.Tensor:
    """(Log-)softmax of the C-contiguous float32 rows ``l`` (rows with nothing kept: zeros,
    log ``-inf``).

    >>> expnorm_forward(torch.tensor([[0.0, 0.0], [float("-inf")] * 2]), False)
    tensor([[0.5000, 0.5000],
            [0.0000, 0.0000]])
    """
    out, out_rows = empty_rows(l)
    x = rows(l)
    launch(_forward, (x, out_rows), log)
    return out

