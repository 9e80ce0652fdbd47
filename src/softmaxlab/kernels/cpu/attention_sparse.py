r"""Sparsemax and 1.5-entmax attention on CPU that touch only the support (numba).

The blocks are those of :mod:`.attention` (its scores ``s = scale q k^T``, masked, causal
prefix only), but the probabilities are never written: per query row the kernel finds the
exact threshold as :mod:`.sparse` does (:math:`a = s - \max s` for sparsemax,
:math:`(s - \max s)/2` for 1.5-entmax; only the candidates :math:`a > -1` can be in the
support) and then visits only the keys of the support, :math:`p_j = [a_j - \tau]_+^q`
(:math:`q = 1`, 2):

* forward: :math:`o = \sum_{j \in S} p_j v_j` (a gather of the support's value rows, no
  dense ``p @ v``);
* backward (the threshold found again from the recomputed scores): with the weights
  :math:`w_j = \sqrt{p_j}` (entmax15) or 1 (sparsemax) on the support,
  :math:`dp_j = \langle do, v_j \rangle`, :math:`ds_j = w_j (dp_j - \sum w\,dp / \sum w)`,
  and :math:`dq = \mathrm{scale} \sum ds_j k_j`, :math:`dk_j \mathrel{+}= \mathrm{scale}\,
  ds_j q`, :math:`dv_j \mathrel{+}= p_j\, do`, all over the support only.

So beyond the score GEMM and one scan of each score row the work is O(support * D) per
query instead of O(S * D) (the support of sparse attention is usually a small fraction of
the keys). The forward kernel runs its rows in parallel; the backward kernel its key/value
heads (each thread owns the ``dk``, ``dv`` rows of the heads it takes), so a block with a
single head runs on one thread.

Dropout and the gradient of a float mask (which needs the dense score gradient) run the
generic blocked kernel of :mod:`.attention`. Float32 and float64 (each computed in its own
dtype; the threshold search in float64, as :mod:`.sparse`). The threshold helpers are
:mod:`.sparse`'s: numba's disk cache of this module does not see edits there (run
``make clean-cache`` after one).
"""

from __future__ import annotations

import numpy as np
import torch

from . import attention as blocked
from ._jit import claim, inline, launch, maximum, row_kernel, wide_vectors
from .sparse import MAX_NEWTON, _entmax15_tau, _sparsemax_tau

#: A block's scores are all this kernel holds per block (the generic one also holds the
#: probabilities and the mapping's temporaries of that size), so its blocks take this many
#: times :data:`.attention.BLOCK_ELEMS` scores: as much memory in fewer parallel regions
#: (each region's end waits for every thread; on a loaded machine one descheduled thread
#: costs a time slice per region: 2.3x slower at 4x more regions, B=4 H=8 L=S=1024).
BLOCK_FACTOR = 4


@inline
def _max(r, cst):
    """The row's max (NaN if it has one, ``-inf`` if it is empty or all ``-inf``)."""
    m = cst[4]
    for j in range(r.shape[0]):
        m = maximum(m, r[j])
    return m


@inline
def _threshold(r, m, cst, entmax, newton_steps, vals, idx, tmp):
    """``(tau, c)`` of a score row ``r`` with finite max ``m``: the threshold of
    ``a = (r - m) * half`` in ``r``'s dtype, and the candidates' keys in ``idx[:c]``
    (``vals``, ``tmp``: scratch)."""
    half, neg1 = cst[0], cst[1]
    c = 0
    for j in range(r.shape[0]):  # branch-free: every index written, c advances on candidates
        idx[c] = j
        c += (r[j] - m) * half > neg1
    for t in range(c):
        vals[t] = (r[idx[t]] - m) * half
    tmp[0] = _entmax15_tau(vals, c, newton_steps) if entmax else _sparsemax_tau(vals, c)
    return tmp[0], c


@row_kernel
def _forward(s, v, out, stats, cst, R, entmax, want_stats, newton_steps, vals, idx, tmp,
             claims):
    wide_vectors()
    rows_ = s.shape[0]
    half, zero, one = cst[0], cst[2], cst[3]
    while True:
        lo, hi = claim(claims, rows_)
        if lo >= hi:
            break
        for i in range(lo, hi):
            r = s[i]
            o = out[i]
            vh = v[i // R]
            o[:] = zero
            m = _max(r, cst)
            if np.isnan(m) or m == -np.inf:  # NaN stays NaN; nothing kept: zeros
                if np.isnan(m):
                    o[:] = m
                if want_stats:
                    stats[i, 0] = np.inf
                    stats[i, 1] = zero
                continue
            tau, c = _threshold(r, m, cst, entmax, newton_steps, vals, idx, tmp)
            support = 0
            pmax = zero
            for t in range(c):
                j = idx[t]
                a = max((r[j] - m) * half - tau, zero)
                if a > zero:
                    p = min(a * a, one) if entmax else a
                    pmax = max(pmax, p)
                    support += 1
                    vj = vh[j]
                    for e in range(o.shape[0]):
                        o[e] += p * vj[e]
            if want_stats:  # as the normalizer's stats: tau = (alpha-1) m - pmax^(alpha-1)
                stats[i, 0] = half * m - (np.sqrt(pmax) if entmax else pmax)
                stats[i, 1] = support


@row_kernel
def _backward(s2, s, q, k, v, dout, dq, dk, dv, cst, scale, entmax, newton_steps, vals,
              idx, dps, tmp, claims):
    """Over the key/value heads of a block (``s2``: ``s`` as ``(heads, rows * keys)``, so
    that the launcher hands out one head per claim)."""
    wide_vectors()
    heads, R = s.shape[0], s.shape[1]
    half, zero, one = cst[0], cst[2], cst[3]
    nan = cst[0] * np.nan
    while True:
        lo, hi = claim(claims, heads)
        if lo >= hi:
            break
        for h in range(lo, hi):
            for i in range(R):
                r = s[h, i]
                g = dout[h, i]
                dqi = dq[h, i]
                qi = q[h, i]
                dqi[:] = zero
                m = _max(r, cst)
                if m == -np.inf:
                    continue
                if np.isnan(m):  # as the dense formulas: NaN reaches dq and the head's dk, dv
                    dqi[:] = nan
                    dk[h] += nan
                    dv[h] += nan
                    continue
                tau, c = _threshold(r, m, cst, entmax, newton_steps, vals, idx, tmp)
                ns = 0
                wsum = zero
                wdp = zero
                for t in range(c):  # the support, compacted in place into idx, vals, dps
                    j = idx[t]
                    a = max((r[j] - m) * half - tau, zero)
                    if a > zero:
                        p = min(a * a, one) if entmax else a
                        w = np.sqrt(p) if entmax else one
                        vj = v[h, j]
                        dvj = dv[h, j]
                        d = zero
                        for e in range(g.shape[0]):
                            d += g[e] * vj[e]
                            dvj[e] += p * g[e]
                        idx[ns] = j
                        vals[ns] = w
                        dps[ns] = d
                        wsum += w
                        wdp += w * d
                        ns += 1
                mean = wdp / wsum if wsum > zero else zero
                for t in range(ns):
                    j = idx[t]
                    ds = vals[t] * (dps[t] - mean) * scale
                    kj = k[h, j]
                    dkj = dk[h, j]
                    for e in range(qi.shape[0]):
                        dqi[e] += ds * kj[e]
                        dkj[e] += ds * qi[e]


_NUMPY = {torch.float32: np.float32, torch.float64: np.float64}


def _np(t: torch.Tensor) -> np.ndarray:
    return (t if t.is_contiguous() else t.contiguous()).detach().numpy()


def _consts(norm, dtype: torch.dtype) -> tuple[bool, np.ndarray]:
    entmax = norm.name == "entmax15"
    return entmax, np.array([0.5 if entmax else 1.0, -1.0, 0.0, 1.0, -np.inf], _NUMPY[dtype])


def _scratch(n: int, dtype: torch.dtype, dense: int) -> tuple:
    dt = _NUMPY[dtype]
    return ((n, dt), (n, np.int32), *([(n, dt)] * dense), (1, dt))


def attention_forward(q, k, v, mask, sink, seed, causal: bool, L: int, scale: float,
                      dropout_p: float, norm, want_stats: bool):
    """As :func:`.attention.attention_forward`."""
    if dropout_p > 0:
        return blocked.attention_forward(q, k, v, mask, sink, seed, causal, L, scale,
                                         dropout_p, norm, want_stats)
    B, Hk, R, _ = q.shape
    G, Ev = R // L, v.shape[-1]
    out = q.new_empty(B, Hk, R, Ev)
    stats = q.new_empty(B, Hk, R, 2) if want_stats else q.new_empty(0)
    o5 = blocked._rows5(out, G, L)
    st5 = blocked._rows5(stats, G, L) if want_stats else None
    entmax, cst = _consts(norm, q.dtype)
    for blk, _ in blocked._blocks(q, k, mask, None, causal, L, scale, None,
                                  BLOCK_FACTOR):
        nb, nh, Rb, n = blk.s.shape
        bq = blk.l.stop - blk.l.start
        s = _np(blk.s).reshape(nb * nh * Rb, n)
        vb = _np(v[blk.b, blk.h, :n]).reshape(nb * nh, n, Ev)
        ob = np.empty((nb * nh * Rb, Ev), s.dtype)
        sb = np.empty((nb * nh * Rb, 2) if want_stats else (1, 2), s.dtype)
        launch(_forward, (s, vb, ob, sb, cst), Rb, entmax, want_stats, MAX_NEWTON,
               scratch=_scratch(n, q.dtype, 0))
        o5[blk.b, blk.h, :, blk.l] = torch.from_numpy(ob).view(nb, nh, G, bq, Ev)
        if st5 is not None:
            st5[blk.b, blk.h, :, blk.l] = torch.from_numpy(sb).view(nb, nh, G, bq, 2)
    return out, stats


def attention_backward(dout, q, k, v, mask, sink, seed, causal: bool, L: int, scale: float,
                       dropout_p: float, norm, mask_grad: bool, sink_grad: bool):
    """As :func:`.attention.attention_backward`."""
    if dropout_p > 0 or mask_grad:
        return blocked.attention_backward(dout, q, k, v, mask, sink, seed, causal, L, scale,
                                          dropout_p, norm, mask_grad, sink_grad)
    R, E = q.shape[-2:]
    G, Ev = R // L, v.shape[-1]
    dq = torch.empty_like(q)
    dk = torch.zeros_like(k)
    dv = torch.zeros_like(v)
    dq5, do5 = blocked._rows5(dq, G, L), blocked._rows5(dout, G, L)
    entmax, cst = _consts(norm, q.dtype)
    for blk, _ in blocked._blocks(q, k, mask, None, causal, L, scale, None,
                                  BLOCK_FACTOR):
        nb, nh, Rb, n = blk.s.shape
        bq = blk.l.stop - blk.l.start
        heads = nb * nh
        s = _np(blk.s).reshape(heads, Rb, n)
        qb = _np(blk.qb).reshape(heads, Rb, E)
        dob = _np(do5[blk.b, blk.h, :, blk.l]).reshape(heads, Rb, Ev)
        kb = _np(blk.kb).reshape(heads, n, E)
        vb = _np(v[blk.b, blk.h, :n]).reshape(heads, n, Ev)
        dqb = np.empty_like(qb)
        dkb = np.zeros_like(kb)
        dvb = np.zeros_like(vb)
        launch(_backward, (s.reshape(heads, Rb * n), s, qb, kb, vb, dob, dqb, dkb, dvb, cst),
               scale, entmax, MAX_NEWTON, scratch=_scratch(n, q.dtype, 1))
        dq5[blk.b, blk.h, :, blk.l] = torch.from_numpy(dqb).view(nb, nh, G, bq, E)
        dk[blk.b, blk.h, :n] += torch.from_numpy(dkb).view(nb, nh, n, E)
        dv[blk.b, blk.h, :n] += torch.from_numpy(dvb).view(nb, nh, n, Ev)
    return dq, dk, dv, q.new_empty(0), q.new_empty(0)
