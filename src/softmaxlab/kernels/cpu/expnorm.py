r"""Safe softmax and log-softmax of float32 rows in one kernel (numba): per row the max
:math:`m`, :math:`e_j = e^{z_j - m}` and :math:`s = \sum_j e_j`, then :math:`e_j / s` or
:math:`(z_j - m) - \log s`, with the row in L1/L2 between passes. A row with nothing kept
(all ``-inf``) gives zeros (log: ``-inf``) and is flagged for the backward; a NaN stays in
its row. The backward is torch's (``_softmax_backward_data``), from the saved output.
"""

from __future__ import annotations

import numpy as np

from ._jit import (
    F32,
    NEG_INF,
    claim,
    exp_neg32,
    launch,
    log32,
    row_kernel,
    row_max,
    row_sum,
    special_row,
    wide_vectors,
)


@row_kernel
def _forward(x, out, empty, log, claims):
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
            empty[i] = m == NEG_INF
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


def forward(x: np.ndarray, out: np.ndarray, log: bool) -> np.ndarray:
    """(log-)softmax of the C-contiguous float32 rows ``x`` ``(R, n)`` into ``out``; returns
    the flags ``(R,)`` of the rows with nothing kept.

    >>> import numpy as np
    >>> out = np.empty((2, 3), np.float32)
    >>> forward(np.array([[0, 0, np.log(2)], [-np.inf] * 3], np.float32), out, False)
    array([False,  True])
    >>> out
    array([[0.25, 0.25, 0.5 ],
           [0.  , 0.  , 0.  ]], dtype=float32)
    """
    empty = np.empty(x.shape[0], np.bool_)
    launch(_forward, (x, out, empty), log)
    return empty
