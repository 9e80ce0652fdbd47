r"""Forward-only kernels (numba) of the mappings that are compositions of torch ops in the
reference: sparse (top-k) softmax, standard normalization and activation normalization.
They serve the small call that needs no autograd graph (inference on a few rows), where the
reference's five to ten torch ops cost ~10x one ``torch.softmax``; a call with a graph, or
a larger one, takes the reference (torch's vectorized ops are as fast there).

Each row function returns ``None`` where it declines the call: the caller then takes the
general path, which gives the contract's answer or raises:

* ``sparse_output(z, k)``: ``p_i = e^{z_i} / \sum_{j \in top_k} e^{z_j}`` on the k largest
  logits, 0 elsewhere (a row with a NaN: NaN). Declines ``k > 16``, a tie at the k-th
  value (the reference breaks it as ``torch.topk`` does) and ``+inf`` logits.
* ``normalize_output(z)``: ``p_i = z_i / \sum_j z_j`` (``-inf``: 0; a row summing to 0:
  zeros), computed as the reference, scaled by the row's max. Declines a negative, NaN or
  ``+inf`` entry (the reference raises for a negative one).
* ``activation_output(z, activation, log)``: ``a(z_i) / \sum_j a(z_j)`` or its log, the
  log-scores :math:`\log a(z)` of the reference's (softplus, arctan, Gaussian shifted by
  the row's smallest :math:`|z|`, relu) exp-normalized by :mod:`.expnorm`'s row kernel.

>>> normalize_output(torch.tensor([[1.0, 3.0]]))
tensor([[0.2500, 0.7500]])
"""

from __future__ import annotations

import math

import numpy as np
import torch

from ._jit import F32, NEG_INF, exp_neg32, inline, log32, one_claim, row_kernel, rows_at, small_call
from .expnorm import _forward as _expnorm_rows

#: Largest k the selection by repeated maxima serves (O(n k) per row).
MAX_K = 16
#: Activation codes of :func:`activation_output`.
ACTIVATIONS = {"softplus": 0, "arctan": 1, "gaussian": 2, "relu": 3}
POS_INF = F32(np.inf)
HALF_PI = math.pi / 2


@inline
def _top_k(r, l, k):
    """Write into ``l`` the row ``r`` at its ``k`` largest entries and ``-inf`` elsewhere;
    False for a tie at the k-th value or a ``+inf`` entry. A row with a NaN is copied (its
    softmax is NaN)."""
    n = r.shape[0]
    for j in range(n):
        if np.isnan(r[j]):
            for i in range(n):
                l[i] = r[i]
            return True
        if r[j] == POS_INF:
            return False
        l[j] = NEG_INF
    last = POS_INF
    for _ in range(k):
        best = -1
        for j in range(n):
            if l[j] == NEG_INF and (best < 0 or r[j] > r[best]):
                best = j
        last = r[best]
        if last == NEG_INF:  # the rest is excluded too: zeros either way
            return True
        l[best] = last
    for j in range(n):  # an unchosen entry equal to the k-th value: a tie
        if l[j] == NEG_INF and r[j] == last:
            return False
    return True


@row_kernel
def _sparse_at(px, po, size, n, k):
    x, out = rows_at(px, size, n), rows_at(po, size, n)
    l = np.empty((size // n, n), F32)
    for i in range(size // n):
        if not _top_k(x[i], l[i], k):
            return False
    _expnorm_rows(l, out, False, one_claim())
    return True


@row_kernel
def _normalize_at(px, po, size, n):
    x, out = rows_at(px, size, n), rows_at(po, size, n)
    for i in range(size // n):
        r, o = x[i], out[i]
        m = F32(0.0)
        for j in range(n):
            v = r[j]
            if v == NEG_INF:
                continue
            if not (F32(0.0) <= v < POS_INF):
                return False
            m = max(m, v)
        m = m if m > F32(0.0) else F32(1.0)
        s = F32(0.0)
        for j in range(n):
            v = r[j] / m if r[j] != NEG_INF else F32(0.0)
            o[j] = v
            s += v
        inv = F32(1.0) / s if s != F32(0.0) else F32(0.0)
        for j in range(n):
            o[j] *= inv
    return True


@inline
def _log_activation(z, code):
    """``log a(z)`` of a finite ``z`` (the Gaussian's unshifted: ``-z^2``)."""
    if code == 1:  # arctan z + pi/2, as arctan(-1/z) below 0
        return np.log(np.arctan(F32(-1.0) / z) if z < F32(0.0) else np.arctan(z) + HALF_PI)
    if code == 2:
        return -z * z
    return np.log(max(z, F32(0.0)) + F32(1e-6))


@inline
def _log_softplus(z):
    """``log softplus(z)`` of any float32 ``z`` without branches (vectorizes):
    ``log(max(z, 0) + log1p(e^-|z|))``, ``log1p(u) = log(w) u / (w - 1)`` with ``w = 1 + u``
    (exact where ``w`` rounds to 1), and ``z - e^z / 2`` below -20; ``-inf`` gives ``-inf``."""
    u = exp_neg32(-abs(z))
    w = F32(1.0) + u
    l1p = u if w == F32(1.0) else log32(w) * (u / (w - F32(1.0)))
    low = z - exp_neg32(min(z, F32(0.0))) * F32(0.5)
    return low if z < F32(-20.0) else log32(max(z, F32(0.0)) + l1p)


@row_kernel
def _activation_at(px, po, size, n, code, log):
    x, out = rows_at(px, size, n), rows_at(po, size, n)
    l = np.empty((size // n, n), F32)
    for i in range(size // n):
        r, li = x[i], l[i]
        amin = POS_INF  # Gaussian: -(|z| - a)(|z| + a), a the smallest kept |z|
        if code == 2:
            for j in range(n):
                if r[j] != NEG_INF:
                    amin = min(amin, abs(r[j]))
            amin = amin if amin < POS_INF else F32(0.0)
        if code == 0:
            for j in range(n):
                li[j] = _log_softplus(r[j])
            continue
        for j in range(n):
            v = r[j]
            if v == NEG_INF or np.isnan(v):
                li[j] = v
            elif code == 2:
                a = abs(v)
                li[j] = -(a - amin) * (a + amin)
            else:
                li[j] = _log_activation(v, code)
    _expnorm_rows(l, out, log, one_claim())
    return True


def sparse_output(z: torch.Tensor, k: object) -> torch.Tensor | None:
    """Sparse softmax of float32 rows ``z`` over their ``k`` largest entries, or ``None``."""
    if type(k) is not int or not 1 <= k <= min(MAX_K, z.shape[-1]):
        return None
    return small_call(_sparse_at, z, k)


def normalize_output(z: torch.Tensor) -> torch.Tensor | None:
    """``z / sum z`` of float32 rows of non-negative entries, or ``None``."""
    return small_call(_normalize_at, z)


def activation_output(z: torch.Tensor, activation: object, log: bool) -> torch.Tensor | None:
    """``a(z) / sum a(z)`` (or its log) of float32 rows ``z``, or ``None``."""
    code = ACTIVATIONS.get(activation) if type(activation) is str else None
    return None if code is None else small_call(_activation_at, z, code, log)
