r"""Sparsemax and 1.5-entmax without sorting the row (numba).

Both are :math:`p = [a - \tau]_+^q` with :math:`a = z - \max z` (sparsemax, :math:`q = 1`)
or :math:`a = (z - \max z)/2` (1.5-entmax, :math:`q = 2`) and :math:`\tau` the unique root of
:math:`\sum_j [a_j - \tau]_+^q = 1`. Since the largest :math:`a` is 0 and alone gives
:math:`(0 - \tau)^q \le 1`, :math:`\tau \ge -1`: only the entries with :math:`a > -1` (the
candidates, usually a few) can be in the support. Per row:

1. one pass: the max; one branch-free pass: gather the candidates into a buffer;
2. iterate from below to the exact threshold, each step one vectorized pass over the
   candidates above the current lower bound :math:`\tau_{lo}` (the set :math:`C`):
   sparsemax: Michelot's fixed point :math:`\tau = (\sum_C a - 1)/|C|`, increasing, exact
   once :math:`C` stops shrinking; 1.5-entmax: the closed form on :math:`C`,
   :math:`\tau_C = \bar a - \sqrt{(1 - |C|\,\mathrm{var}_C a)/|C|}` (the reference's
   formula), accepted when :math:`\tau_{lo} \le \tau_C \le \min_C a` (then it is the
   root), else a Newton step on the convex :math:`\sum [a - \tau]_+^2 - 1` raises
   :math:`\tau_{lo}`; after ``MAX_NEWTON`` steps (an entry on the support boundary) the
   exact fallback sorts :math:`C` and runs the reference's prefix formula on it;
3. one pass writes :math:`p`.

Backward needs only the support: sparsemax :math:`s \odot (g - \bar g_S)`, 1.5-entmax
:math:`\sqrt p \odot (g - \langle \sqrt p, g\rangle / \sum \sqrt p)`.
"""

from __future__ import annotations

import numpy as np
import torch

from ._jit import (
    F32,
    claim,
    empty_rows,
    inline,
    launch,
    minimum,
    one_claim,
    reduction,
    row_dot,
    row_kernel,
    row_max,
    row_sum,
    rows,
    rows_at,
    small_call,
    special_row,
    wide_vectors,
)

#: Newton steps for 1.5-entmax before the sorted fallback (read at each call).
MAX_NEWTON = 50


@inline
def _gather_candidates(r, m, scale, buf):
    """Write ``(r - m) * scale`` for the entries above -1 into ``buf``; return how many
    (branch-free: every entry is written, the count advances only for candidates)."""
    c = 0
    for j in range(r.shape[0]):
        a = (r[j] - m) * scale
        buf[c] = a
        c += a > F32(-1.0)
    return c


@reduction
def _above(buf, c, lo):
    """Over the candidates ``a > lo``: count, sum a, sum a^2, min a, sum (a - lo),
    sum (a - lo)^2 (float64)."""
    cnt = 0.0
    s1 = 0.0
    s2 = 0.0
    mn = np.inf
    d = 0.0
    f = 0.0
    for j in range(c):
        a = np.float64(buf[j])
        keep = a > lo
        ak = a if keep else 0.0
        t = a - lo if keep else 0.0
        cnt += 1.0 if keep else 0.0
        s1 += ak
        s2 += ak * ak
        mn = minimum(mn, a if keep else np.inf)
        d += t
        f += t * t
    return cnt, s1, s2, mn, d, f


@inline
def _keep_above(buf, c, lo):
    """Compact ``buf[:c]`` to its entries above ``lo`` (order kept); how many. The
    threshold searches drop what their rising lower bound excludes, so that each step scans
    only the entries still in play."""
    k = 0
    for j in range(c):
        buf[k] = buf[j]
        k += buf[j] > lo
    return k


@inline
def _sparsemax_tau(buf, c):
    """Michelot's fixed point: tau = (sum_{a > tau} a - 1) / #{a > tau}, from all candidates,
    until the set stops shrinking (``buf`` is shrunk on the way)."""
    lo = -1.0
    tau = 0.0
    prev = -1.0
    while True:
        cnt, s1, _, _, _, _ = _above(buf, c, lo)
        if cnt == prev:
            return tau
        prev = cnt
        tau = (s1 - 1.0) / cnt
        lo = tau
        c = _keep_above(buf, c, lo)


@inline
def _entmax15_sorted_tau(buf, c, lo):
    """The reference's formula on the sorted candidates above ``lo`` (exact fallback)."""
    k = 0
    for j in range(c):
        if buf[j] > lo:
            buf[k] = buf[j]
            k += 1
    srt = np.sort(buf[:k])[::-1]
    s1 = 0.0
    s2 = 0.0
    tau = 0.0
    for i in range(1, k + 1):
        v = np.float64(srt[i - 1])
        s1 += v
        s2 += v * v
        mean = s1 / i
        t = mean - np.sqrt(max((1.0 - i * (s2 / i - mean * mean)) / i, 0.0))
        if t > v:
            break
        tau = t
    return tau


@inline
def _entmax15_tau(buf, c, newton_steps):
    """Closed form on the candidates above the lower bound ``lo`` when it is consistent,
    else a Newton step on ``sum (a - tau)_+^2 - 1`` from ``lo`` (which stays below the root;
    ``buf`` is shrunk to the entries above it); the sorted fallback after ``newton_steps``."""
    lo = -1.0
    for _ in range(newton_steps):
        cnt, s1, s2, mn, d, f = _above(buf, c, lo)
        mean = s1 / cnt
        tau = mean - np.sqrt(max((1.0 - cnt * (s2 / cnt - mean * mean)) / cnt, 0.0))
        if lo <= tau <= mn:
            return tau
        lo = lo + (f - 1.0) / (2.0 * d)
        c = _keep_above(buf, c, lo)
    return _entmax15_sorted_tau(buf, c, lo)


@row_kernel
def _forward(x, out, entmax, newton_steps, buf, claims):
    wide_vectors()
    rows_, n = x.shape
    scale = F32(0.5) if entmax else F32(1.0)
    while True:
        lo, hi = claim(claims, rows_)
        if lo >= hi:
            break
        for i in range(lo, hi):
            r = x[i]
            o = out[i]
            m = row_max(r)
            if special_row(o, m, False):  # a NaN row stays NaN; a row with nothing kept is 0
                continue
            c = _gather_candidates(r, m, scale, buf)
            tau = F32(_entmax15_tau(buf, c, newton_steps) if entmax else _sparsemax_tau(buf, c))
            for j in range(n):
                a = max((r[j] - m) * scale - tau, F32(0.0))
                o[j] = min(a * a, F32(1.0)) if entmax else a  # ties round tau low


@row_kernel
def _forward_at(px, po, size, n, entmax, newton_steps):
    """:func:`_forward` of the float32 rows at address ``px`` into ``po``, on this thread
    (the small-call entry, :func:`._jit.small_call`)."""
    _forward(rows_at(px, size, n), rows_at(po, size, n), entmax, newton_steps,
             np.empty(n, np.float32), one_claim())


@row_kernel
def _backward(p, g, grad, entmax, claims):
    wide_vectors()
    rows_, n = p.shape
    while True:
        lo, hi = claim(claims, rows_)
        if lo >= hi:
            break
        for i in range(lo, hi):
            pr = p[i]
            gr = g[i]
            w = grad[i]  # the weights: sqrt(p), or the support indicator
            for j in range(n):
                w[j] = np.sqrt(pr[j]) if entmax else (F32(1.0) if pr[j] > F32(0.0) else F32(0.0))
            total = row_sum(w)
            q = row_dot(w, gr) / total if total > F32(0.0) else F32(0.0)
            for j in range(n):
                w[j] = w[j] * (gr[j] - q)


def sparse_forward(z: torch.Tensor, alpha: float) -> torch.Tensor:
    """Sparsemax (``alpha=2``) or 1.5-entmax (``alpha=1.5``) of float32 rows ``z``
    (excluded entries ``-inf``)."""
    p = small_call(_forward_at, z, alpha == 1.5, MAX_NEWTON)
    if p is not None:
        return p
    x = rows(z)
    p, p_rows = empty_rows(z, x)
    launch(_forward, (x, p_rows), alpha == 1.5, MAX_NEWTON, scratch=((x.shape[1], np.float32),))
    return p


def sparse_backward(g: torch.Tensor, p: torch.Tensor, alpha: float) -> torch.Tensor:
    """Input gradient of :func:`sparse_forward` from its output ``p``."""
    pr = rows(p)
    grad, grad_rows = empty_rows(p, pr)
    launch(_backward, (pr, rows(g), grad_rows), alpha == 1.5)
    return grad
