r"""Fused score mappings :math:`p = f(z) / \sum f(z)` and their log forms (numba).

Polynomial scores (Taylor :math:`f_n(z) = \sum_{k \le n} z^k/k!`, spherical
:math:`z^2 + \epsilon`) and sigsoftmax (:math:`e^z \sigma(z)`). One kernel call per direction;
the forward saves only the input and two numbers per row, the backward recomputes
:math:`f` and :math:`f'` from them (its memory traffic is that of ``torch.softmax``'s: read
``g`` and one saved tensor, write the gradient).

Polynomials: rows whose largest :math:`|z|` is at most ``safe`` (where :math:`f \le 10^{30}`,
so the row sum cannot overflow) are evaluated in float32 by Horner passes over the row;
other rows (logits near 1e30) take an exact float64 path per entry that works in log space,
:math:`\log f(z) = n \log|z| + \log \sum_k a_k z^{k-n}` for :math:`|z| > 1`.

Sigsoftmax, with :math:`M = \max z` and :math:`u = e^{z - M} \le 1`:
:math:`e^z\sigma(z) \propto u^2 / (\alpha + \beta u)`, :math:`(\alpha, \beta) = (1, e^M)` if
:math:`M \le 0` else :math:`(e^{-M}, 1)`: one exponential per entry, no overflow; and
:math:`\sigma(z) = \beta u / (\alpha + \beta u)`.
Gradients: :math:`\partial \log f / \partial z = f'/f` (sigsoftmax: :math:`2 - \sigma(z)`)
times the softmax Jacobian of the log-scores.
"""

from __future__ import annotations

import functools

import numpy as np
import torch

from ._jit import (
    F32,
    NEG_INF,
    claim,
    empty_rows,
    exp32,
    exp_neg32,
    inline,
    kept_sum,
    launch,
    log32,
    maximum,
    new_rows,
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

#: A polynomial row is evaluated directly when its largest score is at most this.
SAFE_SCORE = 1e30


# ---------------------------------------------------------------- polynomial scores
@inline
def _abs_max(r):
    """Largest |z| over the row's entries that are not -inf (NaN if one is NaN)."""
    a = F32(0.0)
    for j in range(r.shape[0]):
        v = r[j]
        a = maximum(a, abs(v) if v != NEG_INF else F32(0.0))
    return a


@inline
def _log_poly(coef, z):
    """``(log f(z), f'(z)/f(z))`` in float64 for any finite z, ``f = sum_k coef[k] z^k``."""
    n = coef.shape[0] - 1
    if abs(z) <= 1.0:
        p = coef[n]
        d = 0.0
        for k in range(n - 1, -1, -1):
            d = d * z + p
            p = p * z + coef[k]
        return np.log(p), d / p
    u = 1.0 / z
    p = coef[0]  # sum_k coef[k] u^(n-k), Horner from k = 0
    d = 0.0
    for k in range(1, n + 1):
        p = p * u + coef[k]
        d = d * u + k * coef[k]
    return n * np.log(abs(z)) + np.log(p), u * d / p


@inline
def _exact_log_norm(r, coef):
    """log of the row sum of f, in float64 (max, then sum of exp)."""
    top = -np.inf
    for j in range(r.shape[0]):
        if r[j] != NEG_INF:
            top = max(top, _log_poly(coef, np.float64(r[j]))[0])
    s = 0.0
    for j in range(r.shape[0]):
        if r[j] != NEG_INF:
            s += np.exp(_log_poly(coef, np.float64(r[j]))[0] - top)
    return top + np.log(s)


@inline
def _nan_gradient(r, d):
    """The gradient of a row with a NaN: NaN, except 0 at its excluded (-inf) entries."""
    for j in range(r.shape[0]):
        d[j] = F32(np.nan) if r[j] != NEG_INF else F32(0.0)


@inline
def _poly_values(r, coef, f):
    """``f = sum_k coef[k] r^k`` in float32 (0 where r is -inf): Horner passes over the row,
    one fused pass for degree 2."""
    deg = coef.shape[0] - 1
    if deg == 2:
        c0, c1, c2 = F32(coef[0]), F32(coef[1]), F32(coef[2])
        for j in range(r.shape[0]):
            v = r[j]
            f[j] = c0 + v * (c1 + c2 * v) if v != NEG_INF else F32(0.0)
        return
    for j in range(r.shape[0]):
        f[j] = F32(coef[deg])
    for k in range(deg - 1, -1, -1):
        c = F32(coef[k])
        for j in range(r.shape[0]):
            f[j] = f[j] * r[j] + c
    for j in range(r.shape[0]):
        f[j] = f[j] if r[j] != NEG_INF else F32(0.0)


@reduction
def _quadratic_dot(r, g, c0, c1, c2):
    """Sum of ``g (c0 + c1 z + c2 z^2)`` over the entries that are not -inf."""
    s = F32(0.0)
    for j in range(r.shape[0]):
        v = r[j]
        s += g[j] * (c0 + v * (c1 + c2 * v)) if v != NEG_INF else F32(0.0)
    return s


@inline
def _poly_values_slopes(r, coef, f, d):
    """:func:`_poly_values` into ``f`` and the derivative into ``d`` (garbage where r is
    -inf), by Horner passes."""
    deg = coef.shape[0] - 1
    for j in range(r.shape[0]):
        f[j] = F32(coef[deg])
        d[j] = F32(0.0)
    for k in range(deg - 1, -1, -1):
        c = F32(coef[k])
        for j in range(r.shape[0]):
            d[j] = d[j] * r[j] + f[j]
            f[j] = f[j] * r[j] + c
    for j in range(r.shape[0]):
        f[j] = f[j] if r[j] != NEG_INF else F32(0.0)


@row_kernel
def _poly_forward(x, out, stats, coef, safe, log, claims):
    wide_vectors()
    rows_, n = x.shape
    while True:
        lo, hi = claim(claims, rows_)
        if lo >= hi:
            break
        for i in range(lo, hi):
            r = x[i]
            o = out[i]
            a = _abs_max(r)
            stats[i, 0] = a
            if np.isnan(a):
                for j in range(n):
                    o[j] = F32(np.nan)
            elif a > safe:  # exact path, log space
                lz = _exact_log_norm(r, coef)
                stats[i, 1] = lz
                for j in range(n):
                    if r[j] == NEG_INF:
                        o[j] = NEG_INF if log else F32(0.0)
                    else:
                        lp = _log_poly(coef, np.float64(r[j]))[0] - lz
                        o[j] = lp if log else np.exp(lp)
            else:
                _poly_values(r, coef, o)
                s = row_sum(o)
                stats[i, 1] = s
                if log:
                    ls = log32(s) if s > F32(0.0) else F32(0.0)
                    for j in range(n):
                        o[j] = log32(o[j]) - ls
                else:
                    inv = F32(1.0) / s if s > F32(0.0) else F32(0.0)
                    for j in range(n):
                        o[j] *= inv


@row_kernel
def _poly_backward(x, g, grad, stats, coef, safe, log, f, claims):
    wide_vectors()
    rows_, n = x.shape
    while True:
        lo, hi = claim(claims, rows_)
        if lo >= hi:
            break
        for i in range(lo, hi):
            r = x[i]
            gr = g[i]
            d = grad[i]
            a = stats[i, 0]
            if np.isnan(a):
                _nan_gradient(r, d)
            elif a > safe:
                lz = stats[i, 1]
                dot = 0.0  # sum g p (softmax form) or sum g (log form)
                for j in range(n):
                    if r[j] != NEG_INF:
                        dot += gr[j] if log else (
                            gr[j] * np.exp(_log_poly(coef, np.float64(r[j]))[0] - lz))
                for j in range(n):
                    if r[j] == NEG_INF:
                        d[j] = F32(0.0)
                    else:
                        lf, dl = _log_poly(coef, np.float64(r[j]))
                        p = np.exp(lf - lz)
                        d[j] = (gr[j] - p * dot) * dl if log else p * (gr[j] - dot) * dl
            elif coef.shape[0] == 3:  # quadratic: f and f' inline, no scratch passes
                s = F32(stats[i, 1])
                inv = F32(1.0) / s if s > F32(0.0) else F32(0.0)
                c0, c1, c2 = F32(coef[0]), F32(coef[1]), F32(coef[2])
                if log:  # (two loops: a select would compute both branches per entry)
                    sg = kept_sum(gr, r) * inv
                    for j in range(n):
                        v = r[j]
                        dv = (gr[j] / (c0 + v * (c1 + c2 * v)) - sg) * (c1 + F32(2.0) * c2 * v)
                        d[j] = dv if v != NEG_INF else F32(0.0)
                else:
                    dot = _quadratic_dot(r, gr, c0, c1, c2) * inv
                    for j in range(n):
                        v = r[j]
                        dv = (c1 + F32(2.0) * c2 * v) * inv * (gr[j] - dot)
                        d[j] = dv if v != NEG_INF else F32(0.0)
            else:
                s = F32(stats[i, 1])
                _poly_values_slopes(r, coef, f, d)
                inv = F32(1.0) / s if s > F32(0.0) else F32(0.0)
                if log:
                    sg = kept_sum(gr, r)
                    for j in range(n):
                        v = (gr[j] / f[j] - sg * inv) * d[j]
                        d[j] = v if r[j] != NEG_INF else F32(0.0)
                else:
                    dot = row_dot(gr, f) * inv
                    for j in range(n):
                        v = d[j] * inv * (gr[j] - dot)
                        d[j] = v if r[j] != NEG_INF else F32(0.0)


# ---------------------------------------------------------------- sigsoftmax
#: Rows whose max is at most this take sigma(z) = beta t (below: where u = e^(z - M)
#: underflows, sigma(z) < 3e-8 and 2 - sigma(z) rounds to 2); above, sigma from z itself.
SIG_U_SAFE = 70.0


@inline
def _sig_consts(m):
    """(alpha, beta) with e^z sigma(z) proportional to u^2 / (alpha + beta u), u = e^(z - m)."""
    return exp32(-max(m, F32(0.0))), exp32(min(m, F32(0.0)))


@inline
def _sig_t(u, alpha, beta):
    """``t = u / (alpha + beta u)`` (0 where u is): the score is ``u t``, sigma(z) ``beta t``."""
    return u / (alpha + beta * u) if u > F32(0.0) else F32(0.0)


@reduction
def _sig_sum(u, alpha, beta):
    """Sum of the scores of ``u``."""
    s = F32(0.0)
    for j in range(u.shape[0]):
        s += u[j] * _sig_t(u[j], alpha, beta)
    return s


@row_kernel
def _sig_forward(x, out, stats, log, claims):
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
            stats[i, 0] = m
            if special_row(o, m, log):
                continue
            alpha, beta = _sig_consts(m)
            if not log:
                for j in range(n):
                    u = exp_neg32(r[j] - m)
                    o[j] = u * _sig_t(u, alpha, beta)
                s = row_sum(o)
                stats[i, 1] = s
                inv = F32(1.0) / s
                for j in range(n):
                    o[j] *= inv
                continue
            for j in range(n):
                o[j] = exp_neg32(r[j] - m)
            s = _sig_sum(o, alpha, beta)
            stats[i, 1] = s
            if m <= F32(80.0):  # log(alpha + beta u) is accurate
                ls = log32(s)
                for j in range(n):
                    o[j] = F32(2.0) * (r[j] - m) - log32(alpha + beta * o[j]) - ls
            else:  # log(alpha + beta u) = softplus(z) - m
                ls = log32(s)
                for j in range(n):
                    v = r[j]
                    sp = (max(v, F32(0.0)) - m) + log32(F32(1.0) + exp_neg32(-abs(v)))
                    o[j] = F32(2.0) * (v - m) - sp - ls


@row_kernel
def _sig_backward(x, g, grad, stats, log, t_row, claims):
    wide_vectors()
    rows_, n = x.shape
    while True:
        lo, hi = claim(claims, rows_)
        if lo >= hi:
            break
        for i in range(lo, hi):
            r = x[i]
            gr = g[i]
            d = grad[i]
            m = F32(stats[i, 0])
            if np.isnan(m) or m == NEG_INF:
                _nan_gradient(r, d)  # all 0 when the row has nothing kept
                continue
            alpha, beta = _sig_consts(m)
            inv = F32(1.0) / F32(stats[i, 1])
            if log:  # p = u t / S, dz = (g - p sum g) (2 - sigma(z))
                sg = kept_sum(gr, r)
                if m <= F32(SIG_U_SAFE):
                    for j in range(n):
                        v = r[j]
                        u = exp_neg32(v - m)
                        t = _sig_t(u, alpha, beta)
                        dv = (gr[j] - u * t * inv * sg) * (F32(2.0) - beta * t)
                        d[j] = dv if v != NEG_INF else F32(0.0)
                else:  # sigma from z itself: u may underflow where sigma(z) does not
                    for j in range(n):
                        v = r[j]
                        u = exp_neg32(v - m)
                        p = u * _sig_t(u, alpha, beta) * inv
                        dv = (gr[j] - p * sg) * (F32(2.0) - F32(1.0) / (F32(1.0) + exp32(-v)))
                        d[j] = dv if v != NEG_INF else F32(0.0)
            else:  # q = u t (the score), dz = q / S (g - <g, p>) (2 - beta t)
                for j in range(n):
                    u = exp_neg32(r[j] - m)
                    t = _sig_t(u, alpha, beta)
                    d[j] = u * t
                    t_row[j] = t
                dot = row_dot(gr, d) * inv
                for j in range(n):
                    d[j] = d[j] * inv * (gr[j] - dot) * (F32(2.0) - beta * t_row[j])


# ---------------------------------------------------------------- row functions
@functools.lru_cache(maxsize=64)
def _poly(coef: tuple[float, ...]) -> tuple[np.ndarray, float]:
    """The polynomial's coefficients as an array, and the largest |z| at which it is at most
    ``SAFE_SCORE``."""
    return np.asarray(coef), max(1.0, (SAFE_SCORE / sum(coef)) ** (1.0 / (len(coef) - 1)))


@row_kernel
def _poly_forward_at(px, po, size, n, coef, safe, log):
    """:func:`_poly_forward` of the float32 rows at address ``px`` into ``po``, on this
    thread, the statistics discarded (the small-call entry, :func:`._jit.small_call`)."""
    _poly_forward(rows_at(px, size, n), rows_at(po, size, n), np.empty((size // n, 2)), coef,
                  safe, log, one_claim())


@row_kernel
def _sig_forward_at(px, po, size, n, log):
    """:func:`_sig_forward` of the float32 rows at address ``px`` into ``po``, on this
    thread, the statistics discarded (the small-call entry, :func:`._jit.small_call`)."""
    _sig_forward(rows_at(px, size, n), rows_at(po, size, n), np.empty((size // n, 2)), log,
                 one_claim())


def score_output(z: torch.Tensor, coef: tuple[float, ...] | None, log: bool) -> torch.Tensor:
    """The output of :func:`score_forward` alone, for a call that needs no backward."""
    if coef is None:
        out = small_call(_sig_forward_at, z, log)
    else:
        out = small_call(_poly_forward_at, z, *_poly(coef), log)
    return score_forward(z, coef, log)[0] if out is None else out


def score_forward(z: torch.Tensor, coef: tuple[float, ...] | None, log: bool):
    """``f(z) / sum f(z)`` (or its log) of float32 rows ``z`` (excluded entries ``-inf``;
    ``coef``: the polynomial's coefficients, lowest degree first; ``None``: sigsoftmax), and
    the two float64 numbers per row the backward needs."""
    x = rows(z)
    out, out_rows = empty_rows(z, x)
    stats, stats_rows = new_rows((*z.shape[:-1], 2), torch.float64)
    if coef is None:
        launch(_sig_forward, (x, out_rows, stats_rows), log)
    else:
        launch(_poly_forward, (x, out_rows, stats_rows), *_poly(coef), log)
    return out, stats


def score_backward(g: torch.Tensor, z: torch.Tensor, stats: torch.Tensor,
                   coef: tuple[float, ...] | None, log: bool) -> torch.Tensor:
    """Input gradient of :func:`score_forward` from the output gradient ``g``."""
    x = rows(z)
    grad, grad_rows = empty_rows(z, x)
    st = rows(stats)
    scratch = ((x.shape[1], np.float32),)
    if coef is None:
        launch(_sig_backward, (x, rows(g), grad_rows, st), log, scratch=scratch)
    else:
        launch(_poly_backward, (x, rows(g), grad_rows, st), *_poly(coef), log, scratch=scratch)
    return grad
