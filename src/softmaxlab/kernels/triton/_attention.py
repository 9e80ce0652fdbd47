r"""Memory-efficient exact attention in Triton (flash style): softmax (with temperature),
softmax1 (with its sink), sparsemax, 1.5-entmax and sigmoid, in the canonical layout of
:mod:`softmaxlab.attention._front` (``q`` ``(B, Hk, G*L, E)``, ``k`` ``(B, Hk, S, E)``, ``v``
``(B, Hk, S, Ev)``, a 5-D ``mask`` ``(Bm, Hm, Gm, Lm, Sm)`` of sizes 1 or full), with the
row functions of the CPU attention kernels (``attention_forward``, ``attention_backward``).

One program takes a tile of ``BLOCK_M`` query rows of one key/value head (its ``G`` query
heads' rows are consecutive, so GQA costs nothing) and streams the keys in blocks of
``BLOCK_N``; the ``(L, S)`` scores are never stored. Scores of a block: ``s = scale q k^T``,
``-inf`` where the bool mask is False, plus a float mask, ``-inf`` above the causal diagonal
(top-left aligned); under ``is_causal`` the key blocks beyond a tile's last visible key are
never visited. The mappings, in their log-score ``l``:

* softmax, ``l = s / T``: one pass with the online normalizer (running max and sum, the
  accumulator rescaled), ``out = acc / sum``; statistics ``[m + log sum, #(p > 0)]`` (the
  support needs a second pass, only when statistics are asked for); softmax1 starts the
  online state at its sink's logit (max ``sink``, sum 1), and its sink's gradient is
  :math:`-p_{sink} \Delta` per row;
* sparsemax ``l = s``, 1.5-entmax ``l = s / 2``, ``p = [l - m - \tau]_+^q`` (``q`` 1, 2, ``m``
  the row max): a pass for the max, a few (``N_BISECT``) bisection steps on
  :math:`f(\tau) = \sum_j [a_j - \tau]_+^q` (:math:`a = l - m`, :math:`\tau \in [-1, 0]`),
  each streaming the key blocks, then the closed form of :math:`\tau` on the support
  :math:`\{a > \tau\}` (sparsemax :math:`(\sum a - 1)/k`; entmax15 the smaller root of
  :math:`\sum (a - \tau)^2 = 1`) iterated until the support no longer changes (Michelot's
  iteration from a lower bound: exact), then the pass ``out = p @ v`` that skips the key
  blocks with no support in the tile; statistics ``[m + \tau, #(p > 0)]`` (``+inf``, 0 for
  a query with no key);
* sigmoid ``p = \sigma(s + b)``: one pass; statistics ``[nan, #(p > 0)]``.

A query with no key left has ``p = 0``: zero output, zero gradient, never NaN.

Backward (the op saves only its inputs): a pre-pass per query tile recomputes each row's
shift (``m`` and ``log sum`` or ``\tau``) and ``\Delta``: for softmax
:math:`\Delta = \sum_j p_j dp_j = \mathrm{rowsum}(do \odot o)`, for the threshold maps
:math:`\Delta = \sum_j w_j dp_j / \sum_j w_j` with :math:`w = [p > 0]` (sparsemax) or
:math:`\sqrt p` (entmax15), where :math:`dp = do\, v^T`. Then ``ds = p (dp - \Delta) / T``
(softmax), ``w (dp - \Delta)`` (threshold), ``dp\, p (1 - p)`` (sigmoid), recomputed per
block by two kernels: one per key block accumulating ``dk = scale ds^T q`` and
``dv = p^T do`` over the query tiles, one per query tile accumulating ``dq = scale ds k``
(and writing ``ds``, the float mask's gradient, into a dense buffer when it is asked for:
that gradient is ``(L, S)`` by nature). Deterministic: no atomics.

Dropout (after normalization) multiplies ``p`` in ``p @ v`` and ``dp`` by ``keep / (1 -
p_drop)``, the keep mask of the CPU kernels' counter hash
(:func:`softmaxlab.kernels.cpu.attention.dropout_keep` of the seed and the flat score
index), recomputed wherever it is needed: the same mask as ``cpu.attention`` for the same
seed, never stored. The statistics are those of ``p`` before dropout.

Float32 (the front end computes float16/bfloat16 in float32) and float64, each in its own
dtype (``tl.dot`` in IEEE precision, no TF32). The other mappings (Taylor, spherical,
sigsoftmax, alpha-entmax, top-k, ...) are not here: the registry's ``applies`` keeps them on
the reference.
"""

from __future__ import annotations

import os

import torch
import triton
import triton.language as tl

from . import _launch as LA

#: mapping name -> the kernels' MAP constexpr
MAPS = {"softmax": 0, "sparsemax": 1, "entmax15": 2, "sigmoid": 3, "softmax1": 0}
#: Bisection steps before the exact support iteration. Each step, like each support
#: iteration, streams the tile's keys once; the iteration alone converges too (from the
#: lower bound -1), and a few halvings of the bracket bound its steps on unlucky rows:
#: simulated on N(0, 1) and N(0, 16) scores of 64 to 4096 keys, 0 halvings took 4-7 passes
#: in all, 4 took 6-8, 16 took 18.
N_BISECT = 4


def blocks(f64: bool = False, head_dim: int = 0) -> tuple[int, int]:
    """(BLOCK_M query rows, BLOCK_N keys) per tile: 16 under the interpreter (tiny tests
    then cross tile boundaries); on a GPU 64, or for float64 (its products are broadcast in
    registers, ``BLOCK_M x head_dim x BLOCK_N``) 16, and 8 for head dims above 64."""
    if os.environ.get("TRITON_INTERPRET") == "1":
        return 16, 16
    if f64:
        side = 16 if head_dim <= 64 else 8
        return side, side
    return 64, 64


@triton.jit
def _srl(x, k: tl.constexpr):
    """Logical right shift of int64 by ``k``."""
    return (x >> k) & ((1 << (64 - k)) - 1)


@triton.jit
def _dropped(p, Seed, bh, rows, cols, R, S, thresh, inv_keep, DROPOUT: tl.constexpr):
    """``p`` with dropout applied (``keep / (1 - p_drop)``): the keep mask of
    :func:`softmaxlab.kernels.cpu.attention.dropout_keep` (splitmix64 of the flat score index
    ``(bh R + row) S + key`` plus ``seed * golden``, 24 bits against ``thresh``), so forward
    and backward, and the CPU kernel, draw the same mask without storing it."""
    if DROPOUT:
        z = ((bh * R + rows[:, None].to(tl.int64)) * S + cols[None, :].to(tl.int64)
             + tl.load(Seed).to(tl.int64) * -7046029254386353131)
        z = (z ^ _srl(z, 30)) * -4658895280553007687
        z = (z ^ _srl(z, 27)) * -7723592293110705685
        z = z ^ _srl(z, 31)
        return tl.where(_srl(z, 40) >= thresh, p * inv_keep, 0.0)
    else:
        return p


@triton.jit
def _mm(a, b, F64: tl.constexpr):
    """``a @ b``: ``tl.dot`` in IEEE float32; in float64 a broadcast product summed (plain
    float64 FMAs: Triton 3.6's float64 ``tl.dot`` does not compile for large K on sm_90 and
    was seen off by float32 rounding on an H200 below that)."""
    if F64:
        return tl.sum(a[:, :, None] * b[None, :, :], 1)
    else:
        return tl.dot(a, b, input_precision="ieee")


@triton.jit
def _params(Params, scale, coef, inv_keep, F64: tl.constexpr):
    """``(scale, coef, inv_keep)``: as passed (float32), or in float64 from ``Params``
    (Triton passes a Python float as float32, which would round them in float64)."""
    if F64:
        return tl.load(Params), tl.load(Params + 1), tl.load(Params + 2)
    else:
        return scale, coef, inv_keep


@triton.jit
def _masked(s, rows_l, rows_g, row_ok, cols, S, Mask_bh, msg, msl, mss,
            HAS_MASK: tl.constexpr, MASK_BOOL: tl.constexpr, CAUSAL: tl.constexpr):
    """The block's raw scores ``s`` with the mask, the causal triangle and the tile edges
    applied (``-inf`` = excluded)."""
    keep = row_ok[:, None] & (cols[None, :] < S)
    if HAS_MASK:
        moffs = (rows_g[:, None].to(tl.int64) * msg + rows_l[:, None].to(tl.int64) * msl
                 + cols[None, :].to(tl.int64) * mss)
        if MASK_BOOL:
            keep = keep & (tl.load(Mask_bh + moffs, mask=keep, other=0) != 0)
        else:
            s = s + tl.load(Mask_bh + moffs, mask=keep, other=0.0)
    if CAUSAL:
        keep = keep & (cols[None, :] <= rows_l[:, None])
    return tl.where(keep, s, -float("inf"))


@triton.jit
def _block_scores(q, K_bh, n0, rows_l, rows_g, row_ok, S, E, scale, Mask_bh, msg, msl, mss,
                  HAS_MASK: tl.constexpr, MASK_BOOL: tl.constexpr, CAUSAL: tl.constexpr,
                  BLOCK_N: tl.constexpr, BLOCK_E: tl.constexpr, F64: tl.constexpr):
    """``(s (BLOCK_M, BLOCK_N), cols)``: the masked scores of key block ``n0``."""
    cols = n0 + tl.arange(0, BLOCK_N)
    offs_e = tl.arange(0, BLOCK_E)
    k = tl.load(K_bh + cols[:, None].to(tl.int64) * E + offs_e[None, :],
                mask=(cols[:, None] < S) & (offs_e[None, :] < E), other=0.0)
    s = _mm(q, tl.trans(k), F64) * scale
    return _masked(s, rows_l, rows_g, row_ok, cols, S, Mask_bh, msg, msl, mss, HAS_MASK,
                   MASK_BOOL, CAUSAL), cols


@triton.jit
def _threshold(q, K_bh, n_end, rows_l, rows_g, row_ok, S, E, scale, half, Mask_bh, msg, msl,
               mss, HAS_MASK: tl.constexpr, MASK_BOOL: tl.constexpr, CAUSAL: tl.constexpr,
               ENTMAX: tl.constexpr, N_BISECT: tl.constexpr, BLOCK_M: tl.constexpr,
               BLOCK_N: tl.constexpr, BLOCK_E: tl.constexpr,
               F64: tl.constexpr):
    """Per row ``(m, tau)``: the max of ``l = half * s`` (0 for a row with no key) and the
    threshold of ``a = l - m``."""
    m = tl.full((BLOCK_M,), -float("inf"), q.dtype)
    for n0 in range(0, n_end, BLOCK_N):
        s, _c = _block_scores(q, K_bh, n0, rows_l, rows_g, row_ok, S, E, scale, Mask_bh, msg,
                              msl, mss, HAS_MASK, MASK_BOOL, CAUSAL, BLOCK_N, BLOCK_E, F64)
        m = tl.maximum(m, tl.max(s * half, 1))
    m = tl.where(m == -float("inf"), 0.0, m)
    lo = tl.full((BLOCK_M,), -1.0, q.dtype)
    hi = tl.zeros((BLOCK_M,), q.dtype)
    for _ in range(N_BISECT):
        mid = (lo + hi) * 0.5
        f = tl.zeros((BLOCK_M,), q.dtype)
        for n0 in range(0, n_end, BLOCK_N):
            s, _c = _block_scores(q, K_bh, n0, rows_l, rows_g, row_ok, S, E, scale, Mask_bh,
                                  msg, msl, mss, HAS_MASK, MASK_BOOL, CAUSAL, BLOCK_N, BLOCK_E,
                                  F64)
            u = tl.where(s * half - m[:, None] > mid[:, None],
                         s * half - m[:, None] - mid[:, None], 0.0)
            if ENTMAX:
                u = u * u
            f += tl.sum(u, 1)
        lo = tl.where(f >= 1, mid, lo)
        hi = tl.where(f >= 1, hi, mid)
    tau = lo
    k_prev = tl.full((BLOCK_M,), -1, tl.int32)
    go = tl.sum(tl.full((BLOCK_M,), 1, tl.int32), 0)
    steps = go * 0
    while go > 0:  # the closed form on {a > tau} until the support is stable (exact)
        k = tl.zeros((BLOCK_M,), tl.int32)
        s1 = tl.zeros((BLOCK_M,), q.dtype)
        s2 = tl.zeros((BLOCK_M,), q.dtype)
        for n0 in range(0, n_end, BLOCK_N):
            s, _c = _block_scores(q, K_bh, n0, rows_l, rows_g, row_ok, S, E, scale, Mask_bh,
                                  msg, msl, mss, HAS_MASK, MASK_BOOL, CAUSAL, BLOCK_N, BLOCK_E,
                                  F64)
            a = s * half - m[:, None]
            sup = a > tau[:, None]
            k += tl.sum(sup.to(tl.int32), 1)
            s1 += tl.sum(tl.where(sup, a, 0.0), 1)
            s2 += tl.sum(tl.where(sup, a * a, 0.0), 1)
        kf = tl.maximum(k, 1).to(q.dtype)
        if ENTMAX:
            tau = (s1 - tl.sqrt(tl.maximum(s1 * s1 - kf * (s2 - 1), 0.0))) / kf
        else:
            tau = (s1 - 1) / kf
        steps += 1
        go = tl.sum((k != k_prev).to(tl.int32), 0) * (steps <= n_end).to(tl.int32)
        k_prev = k
    return m, tau


@triton.jit
def _softmax_shift(q, K_bh, n_end, rows_l, rows_g, row_ok, S, E, scale, coef, sk, Mask_bh,
                   msg, msl, mss, HAS_SINK: tl.constexpr, HAS_MASK: tl.constexpr,
                   MASK_BOOL: tl.constexpr, CAUSAL: tl.constexpr, BLOCK_M: tl.constexpr,
                   BLOCK_N: tl.constexpr, BLOCK_E: tl.constexpr, F64: tl.constexpr):
    """Per row ``(m, log sum exp(l - m))`` of ``l = coef * s`` (``(0, +inf)`` for a row with
    no key, so that ``exp(l - m - z)`` is 0 there)."""
    if HAS_SINK:  # softmax1: the sink's logit starts the online state (max sk, sum 1)
        m_i = sk
        l_i = tl.full((BLOCK_M,), 1.0, q.dtype)
    else:
        m_i = tl.full((BLOCK_M,), -float("inf"), q.dtype)
        l_i = tl.zeros((BLOCK_M,), q.dtype)
    for n0 in range(0, n_end, BLOCK_N):
        s, _c = _block_scores(q, K_bh, n0, rows_l, rows_g, row_ok, S, E, scale, Mask_bh, msg,
                              msl, mss, HAS_MASK, MASK_BOOL, CAUSAL, BLOCK_N, BLOCK_E, F64)
        l = s * coef
        m_new = tl.maximum(m_i, tl.max(l, 1))
        m_safe = tl.where(m_new == -float("inf"), 0.0, m_new)
        l_i = l_i * tl.exp(m_i - m_safe) + tl.sum(tl.exp(l - m_safe[:, None]), 1)
        m_i = m_new
    empty = l_i == 0
    return tl.where(empty, 0.0, m_i), tl.where(empty, float("inf"), tl.log(l_i))


@triton.jit
def _probs(s, m, z, coef, MAP: tl.constexpr):
    """``(p, w)`` of a block: the probabilities and the Jacobian weights of the threshold
    maps (``w = p^(2 - alpha)`` on the support)."""
    if MAP == 0:
        p = tl.exp(s * coef - m[:, None] - z[:, None])
        w = p
    elif MAP == 3:
        p = tl.sigmoid(s + coef)
        w = p
    else:
        a = s * coef - m[:, None]
        u = tl.where(a > z[:, None], a - z[:, None], 0.0)
        if MAP == 2:
            p = u * u
            w = u
        else:
            p = u
            w = (u > 0).to(s.dtype)
    return p, w


@triton.jit
def _tile(pid_m, pid_bh, Hk, R, L, S, msb, msh, Mask, BLOCK_M: tl.constexpr,
          CAUSAL: tl.constexpr):
    """A query tile: its rows, their query position and head-in-group, the mask's base
    for this batch entry and head, and the end of the keys the tile can see."""
    rows = pid_m * BLOCK_M + tl.arange(0, BLOCK_M)
    row_ok = rows < R
    rows_l = rows % L
    rows_g = rows // L
    b = pid_bh // Hk
    h = pid_bh % Hk
    Mask_bh = Mask + b.to(tl.int64) * msb + h.to(tl.int64) * msh
    if CAUSAL:
        n_end = tl.minimum(S, tl.max(tl.where(row_ok, rows_l, 0), 0) + 1)
    else:
        n_end = S
    return rows, row_ok, rows_l, rows_g, Mask_bh, n_end


@triton.jit
def _load_rows(P, rows, ok, n, offs, BLOCK: tl.constexpr):
    return tl.load(P + rows[:, None].to(tl.int64) * n + offs[None, :],
                   mask=ok[:, None] & (offs[None, :] < n), other=0.0)


@triton.jit
def _query_program(Q, K, V, Mask, Hk, R, L, S, E, EV, msb, msh, BLOCK_M: tl.constexpr,
                   BLOCK_E: tl.constexpr, BLOCK_EV: tl.constexpr, CAUSAL: tl.constexpr):
    """The start of a kernel over one query tile (grid: batch x heads on axis 0, up to
    2^31 - 1 programs; tiles on axis 1): :func:`_tile`'s values, this (batch, head)'s key
    and value bases, the column offsets and the tile's queries."""
    pid_bh = tl.program_id(0)
    rows, row_ok, rows_l, rows_g, Mask_bh, n_end = _tile(tl.program_id(1), pid_bh, Hk, R, L,
                                                         S, msb, msh, Mask, BLOCK_M, CAUSAL)
    bh = pid_bh.to(tl.int64)
    offs_e = tl.arange(0, BLOCK_E)
    offs_ev = tl.arange(0, BLOCK_EV)
    q = _load_rows(Q + bh * R * E, rows, row_ok, E, offs_e, BLOCK_E)
    return (rows, row_ok, rows_l, rows_g, Mask_bh, n_end, bh, K + bh * S * E, V + bh * S * EV,
            offs_e, offs_ev, q)


@triton.jit
def _fwd(Q, K, V, Mask, Out, Stats, Seed, SinkR, Hk, R, L, S, E, EV, Params, scale, coef, msb, msh,
         msg, msl, mss, thresh, inv_keep, DROPOUT: tl.constexpr, MAP: tl.constexpr,
         HAS_SINK: tl.constexpr,
         HAS_MASK: tl.constexpr, MASK_BOOL: tl.constexpr,
         CAUSAL: tl.constexpr, WANT_STATS: tl.constexpr, N_BISECT: tl.constexpr,
         BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr,
         BLOCK_E: tl.constexpr, BLOCK_EV: tl.constexpr, F64: tl.constexpr):
    scale, coef, inv_keep = _params(Params, scale, coef, inv_keep, F64)
    (rows, row_ok, rows_l, rows_g, Mask_bh, n_end, bh, K_bh, V_bh, _offs_e, offs_ev,
     q) = _query_program(Q, K, V, Mask, Hk, R, L, S, E, EV, msb, msh, BLOCK_M, BLOCK_E,
                         BLOCK_EV, CAUSAL)
    acc = tl.zeros((BLOCK_M, BLOCK_EV), q.dtype)
    cnt = tl.zeros((BLOCK_M,), tl.int32)
    if MAP == 0:
        if HAS_SINK:  # softmax1: the sink's logit starts the online state (max sk, sum 1)
            m_i = tl.load(SinkR + bh * R + rows, mask=row_ok, other=0.0).to(q.dtype)
            l_i = tl.full((BLOCK_M,), 1.0, q.dtype)
        else:
            m_i = tl.full((BLOCK_M,), -float("inf"), q.dtype)
            l_i = tl.zeros((BLOCK_M,), q.dtype)
        for n0 in range(0, n_end, BLOCK_N):
            s, cols = _block_scores(q, K_bh, n0, rows_l, rows_g, row_ok, S, E, scale, Mask_bh,
                                    msg, msl, mss, HAS_MASK, MASK_BOOL, CAUSAL, BLOCK_N,
                                    BLOCK_E, F64)
            l = s * coef
            m_new = tl.maximum(m_i, tl.max(l, 1))
            m_safe = tl.where(m_new == -float("inf"), 0.0, m_new)
            p = tl.exp(l - m_safe[:, None])
            alpha = tl.exp(m_i - m_safe)
            l_i = l_i * alpha + tl.sum(p, 1)
            v = _load_rows(V_bh, cols, cols < S, EV, offs_ev, BLOCK_EV)
            pd = _dropped(p, Seed, bh, rows, cols, R, S, thresh, inv_keep, DROPOUT)
            acc = acc * alpha[:, None] + _mm(pd.to(v.dtype), v, F64)
            m_i = m_new
        empty = l_i == 0
        m_row = tl.where(empty, 0.0, m_i)
        l_safe = tl.where(empty, 1.0, l_i)
        acc = acc / l_safe[:, None]
        first = tl.where(empty, -float("inf"), m_row + tl.log(l_safe))
        if WANT_STATS:  # #(p > 0) with the final max and sum (underflow: as the reference)
            for n0 in range(0, n_end, BLOCK_N):
                s, cols = _block_scores(q, K_bh, n0, rows_l, rows_g, row_ok, S, E, scale,
                                        Mask_bh, msg, msl, mss, HAS_MASK, MASK_BOOL, CAUSAL,
                                        BLOCK_N, BLOCK_E, F64)
                p = tl.exp(s * coef - m_row[:, None]) / l_safe[:, None]
                cnt += tl.sum((p > 0).to(tl.int32), 1)
    elif MAP == 3:
        for n0 in range(0, n_end, BLOCK_N):
            s, cols = _block_scores(q, K_bh, n0, rows_l, rows_g, row_ok, S, E, scale, Mask_bh,
                                    msg, msl, mss, HAS_MASK, MASK_BOOL, CAUSAL, BLOCK_N,
                                    BLOCK_E, F64)
            p = tl.sigmoid(s + coef)
            cnt += tl.sum((p > 0).to(tl.int32), 1)
            v = _load_rows(V_bh, cols, cols < S, EV, offs_ev, BLOCK_EV)
            pd = _dropped(p, Seed, bh, rows, cols, R, S, thresh, inv_keep, DROPOUT)
            acc += _mm(pd.to(v.dtype), v, F64)
        first = tl.full((BLOCK_M,), float("nan"), q.dtype)
    else:
        m, tau = _threshold(q, K_bh, n_end, rows_l, rows_g, row_ok, S, E, scale, coef, Mask_bh,
                            msg, msl, mss, HAS_MASK, MASK_BOOL, CAUSAL, MAP == 2, N_BISECT,
                            BLOCK_M, BLOCK_N, BLOCK_E, F64)
        for n0 in range(0, n_end, BLOCK_N):
            s, cols = _block_scores(q, K_bh, n0, rows_l, rows_g, row_ok, S, E, scale, Mask_bh,
                                    msg, msl, mss, HAS_MASK, MASK_BOOL, CAUSAL, BLOCK_N,
                                    BLOCK_E, F64)
            p, _w = _probs(s, m, tau, coef, MAP)
            nz = tl.sum((p > 0).to(tl.int32), 1)
            cnt += nz
            if tl.sum(nz, 0) > 0:  # a key block with no support in the tile: no product
                v = _load_rows(V_bh, cols, cols < S, EV, offs_ev, BLOCK_EV)
                pd = _dropped(p, Seed, bh, rows, cols, R, S, thresh, inv_keep, DROPOUT)
                acc += _mm(pd.to(v.dtype), v, F64)
        first = tl.where(cnt == 0, float("inf"), m + tau)
    out_rows = bh * R + rows
    tl.store(Out + out_rows[:, None] * EV + offs_ev[None, :], acc.to(Out.dtype.element_ty),
             mask=row_ok[:, None] & (offs_ev[None, :] < EV))
    if WANT_STATS:
        tl.store(Stats + out_rows * 2, first.to(Stats.dtype.element_ty), mask=row_ok)
        tl.store(Stats + out_rows * 2 + 1, cnt.to(Stats.dtype.element_ty), mask=row_ok)


@triton.jit
def _bwd_pre(Q, K, V, Mask, DO, Shift, Seed, SinkR, Hk, R, L, S, E, EV, Params, scale, coef,
             msb, msh, msg, msl, mss, thresh, inv_keep, DROPOUT: tl.constexpr, MAP: tl.constexpr,
             HAS_SINK: tl.constexpr, HAS_MASK: tl.constexpr, MASK_BOOL: tl.constexpr,
             CAUSAL: tl.constexpr, N_BISECT: tl.constexpr,
             BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_E: tl.constexpr,
             BLOCK_EV: tl.constexpr, F64: tl.constexpr):
    """Per row ``Shift[row] = (m, z, Delta)``: ``z`` the log-sum (softmax) or ``tau``."""
    scale, coef, inv_keep = _params(Params, scale, coef, inv_keep, F64)
    (rows, row_ok, rows_l, rows_g, Mask_bh, n_end, bh, K_bh, V_bh, _offs_e, offs_ev,
     q) = _query_program(Q, K, V, Mask, Hk, R, L, S, E, EV, msb, msh, BLOCK_M, BLOCK_E,
                         BLOCK_EV, CAUSAL)
    do = _load_rows(DO + bh * R * EV, rows, row_ok, EV, offs_ev, BLOCK_EV)
    if HAS_SINK:
        sk = tl.load(SinkR + bh * R + rows, mask=row_ok, other=0.0).to(q.dtype)
    else:
        sk = tl.zeros((BLOCK_M,), q.dtype)
    if MAP == 0:
        m, z = _softmax_shift(q, K_bh, n_end, rows_l, rows_g, row_ok, S, E, scale, coef, sk,
                              Mask_bh, msg, msl, mss, HAS_SINK, HAS_MASK, MASK_BOOL, CAUSAL,
                              BLOCK_M, BLOCK_N, BLOCK_E, F64)
    else:
        m, z = _threshold(q, K_bh, n_end, rows_l, rows_g, row_ok, S, E, scale, coef, Mask_bh,
                          msg, msl, mss, HAS_MASK, MASK_BOOL, CAUSAL, MAP == 2, N_BISECT,
                          BLOCK_M, BLOCK_N, BLOCK_E, F64)
    swdp = tl.zeros((BLOCK_M,), q.dtype)
    sw = tl.zeros((BLOCK_M,), q.dtype)
    for n0 in range(0, n_end, BLOCK_N):
        s, cols = _block_scores(q, K_bh, n0, rows_l, rows_g, row_ok, S, E, scale, Mask_bh,
                                msg, msl, mss, HAS_MASK, MASK_BOOL, CAUSAL, BLOCK_N, BLOCK_E,
                                F64)
        _p, w = _probs(s, m, z, coef, MAP)
        if tl.max(tl.max(w, 1), 0) > 0:
            v = _load_rows(V_bh, cols, cols < S, EV, offs_ev, BLOCK_EV)
            dp = _dropped(_mm(do, tl.trans(v), F64), Seed, bh, rows, cols, R, S, thresh,
                          inv_keep, DROPOUT)
            swdp += tl.sum(w * dp, 1)
            sw += tl.sum(w, 1)
    if MAP == 0:
        delta = swdp
    else:
        delta = swdp / tl.where(sw == 0, 1.0, sw)
    out_rows = (bh * R + rows) * 4
    tl.store(Shift + out_rows, m, mask=row_ok)
    tl.store(Shift + out_rows + 1, z, mask=row_ok)
    tl.store(Shift + out_rows + 2, delta, mask=row_ok)
    if HAS_SINK:  # the sink logit's gradient: -p_sink * Delta
        tl.store(Shift + out_rows + 3, -tl.exp(sk - m - z) * delta, mask=row_ok)


@triton.jit
def _grad_scores(s, m, z, delta, dp, coef, MAP: tl.constexpr):
    """``(p, ds)`` of a block: the probabilities and the scores' gradient."""
    p, w = _probs(s, m, z, coef, MAP)
    if MAP == 0:
        ds = p * (dp - delta[:, None]) * coef
    elif MAP == 3:
        ds = dp * p * (1 - p)
    else:
        ds = w * (dp - delta[:, None])
    return p, ds


@triton.jit
def _bwd_dkdv(Q, K, V, Mask, DO, Shift, DK, DV, Seed, SinkR, Hk, R, L, S, E, EV, Params, scale,
              coef, msb, msh, msg, msl, mss, thresh, inv_keep, DROPOUT: tl.constexpr,
              MAP: tl.constexpr, HAS_SINK: tl.constexpr, HAS_MASK: tl.constexpr,
              MASK_BOOL: tl.constexpr, CAUSAL: tl.constexpr, BLOCK_M: tl.constexpr,
              BLOCK_N: tl.constexpr, BLOCK_E: tl.constexpr, BLOCK_EV: tl.constexpr,
              F64: tl.constexpr):
    """One key block: ``dk``, ``dv`` accumulated over the query tiles that see it."""
    scale, coef, inv_keep = _params(Params, scale, coef, inv_keep, F64)
    pid_bh = tl.program_id(0)  # axis 0: up to 2^31 - 1 programs
    pid_n = tl.program_id(1)
    bh = pid_bh.to(tl.int64)
    n0 = pid_n * BLOCK_N
    cols = n0 + tl.arange(0, BLOCK_N)
    col_ok = cols < S
    offs_e = tl.arange(0, BLOCK_E)
    offs_ev = tl.arange(0, BLOCK_EV)
    k = _load_rows(K + bh * S * E, cols, col_ok, E, offs_e, BLOCK_E)
    v = _load_rows(V + bh * S * EV, cols, col_ok, EV, offs_ev, BLOCK_EV)
    dk = tl.zeros((BLOCK_N, BLOCK_E), k.dtype)
    dv = tl.zeros((BLOCK_N, BLOCK_EV), k.dtype)
    for r0 in range(0, R, BLOCK_M):
        rows, row_ok, rows_l, rows_g, Mask_bh, n_end = _tile(r0 // BLOCK_M, pid_bh, Hk, R, L,
                                                             S, msb, msh, Mask, BLOCK_M,
                                                             CAUSAL)
        if n0 < n_end:  # under is_causal, a tile whose last query precedes the block: skip
            q = _load_rows(Q + bh * R * E, rows, row_ok, E, offs_e, BLOCK_E)
            do = _load_rows(DO + bh * R * EV, rows, row_ok, EV, offs_ev, BLOCK_EV)
            sh = (bh * R + rows) * 4
            m = tl.load(Shift + sh, mask=row_ok, other=0.0)
            z = tl.load(Shift + sh + 1, mask=row_ok, other=float("inf"))
            delta = tl.load(Shift + sh + 2, mask=row_ok, other=0.0)
            s = _masked(_mm(q, tl.trans(k), F64) * scale, rows_l, rows_g, row_ok, cols, S,
                        Mask_bh, msg, msl, mss, HAS_MASK, MASK_BOOL, CAUSAL)
            dp = _dropped(_mm(do, tl.trans(v), F64), Seed, bh, rows, cols, R, S, thresh,
                          inv_keep, DROPOUT)
            p, ds = _grad_scores(s, m, z, delta, dp, coef, MAP)
            pd = _dropped(p, Seed, bh, rows, cols, R, S, thresh, inv_keep, DROPOUT)
            dv += _mm(tl.trans(pd), do, F64)
            dk += _mm(tl.trans(ds), q, F64)
    tl.store(DK + (bh * S + cols[:, None]) * E + offs_e[None, :],
             (dk * scale).to(DK.dtype.element_ty), mask=col_ok[:, None] & (offs_e[None, :] < E))
    tl.store(DV + (bh * S + cols[:, None]) * EV + offs_ev[None, :], dv.to(DV.dtype.element_ty),
             mask=col_ok[:, None] & (offs_ev[None, :] < EV))


@triton.jit
def _bwd_dq(Q, K, V, Mask, DO, Shift, DQ, DM, Seed, SinkR, Hk, R, L, S, E, EV, Params, scale, coef,
            msb, msh, msg, msl, mss, thresh, inv_keep, DROPOUT: tl.constexpr,
            MAP: tl.constexpr, HAS_SINK: tl.constexpr,
            HAS_MASK: tl.constexpr, MASK_BOOL: tl.constexpr,
            CAUSAL: tl.constexpr, MASK_GRAD: tl.constexpr, BLOCK_M: tl.constexpr,
            BLOCK_N: tl.constexpr, BLOCK_E: tl.constexpr, BLOCK_EV: tl.constexpr,
            F64: tl.constexpr):
    """One query tile: ``dq`` over the key blocks it sees (and ``ds`` into ``DM``)."""
    scale, coef, inv_keep = _params(Params, scale, coef, inv_keep, F64)
    (rows, row_ok, rows_l, rows_g, Mask_bh, n_end, bh, K_bh, V_bh, offs_e, offs_ev,
     q) = _query_program(Q, K, V, Mask, Hk, R, L, S, E, EV, msb, msh, BLOCK_M, BLOCK_E,
                         BLOCK_EV, CAUSAL)
    do = _load_rows(DO + bh * R * EV, rows, row_ok, EV, offs_ev, BLOCK_EV)
    sh = (bh * R + rows) * 4
    m = tl.load(Shift + sh, mask=row_ok, other=0.0)
    z = tl.load(Shift + sh + 1, mask=row_ok, other=float("inf"))
    delta = tl.load(Shift + sh + 2, mask=row_ok, other=0.0)
    dq = tl.zeros((BLOCK_M, BLOCK_E), q.dtype)
    for n0 in range(0, n_end, BLOCK_N):
        cols = n0 + tl.arange(0, BLOCK_N)
        k = _load_rows(K_bh, cols, cols < S, E, offs_e, BLOCK_E)
        v = _load_rows(V_bh, cols, cols < S, EV, offs_ev, BLOCK_EV)
        s = _masked(_mm(q, tl.trans(k), F64) * scale, rows_l, rows_g, row_ok, cols, S, Mask_bh,
                    msg, msl, mss, HAS_MASK, MASK_BOOL, CAUSAL)
        dp = _dropped(_mm(do, tl.trans(v), F64), Seed, bh, rows, cols, R, S, thresh, inv_keep,
                      DROPOUT)
        _p, ds = _grad_scores(s, m, z, delta, dp, coef, MAP)
        dq += _mm(ds, k, F64)
        if MASK_GRAD:
            tl.store(DM + (bh * R + rows[:, None]) * S + cols[None, :],
                     ds.to(DM.dtype.element_ty), mask=row_ok[:, None] & (cols[None, :] < S))
    tl.store(DQ + (bh * R + rows[:, None]) * E + offs_e[None, :],
             (dq * scale).to(DQ.dtype.element_ty), mask=row_ok[:, None] & (offs_e[None, :] < E))


# ---------------------------------------------------------------------- row functions
def supports(mapping: str) -> bool:
    return mapping in MAPS


def _coef(norm) -> float:
    """The MAP's constant: 1/T (softmax), the l-scale alpha - 1 (threshold), the bias."""
    if norm.name == "softmax1":
        return 1.0
    if norm.name == "softmax":
        return 1.0 / float(norm.params.get("temperature", 1.0))
    if norm.name == "sigmoid":
        return float(norm.params["bias"])
    return 1.0 if norm.name == "sparsemax" else 0.5


def _scalars(q, scale: float, norm, inv_keep: float) -> tuple:
    """``(Params, scale, coef)`` of the kernels; ``Params`` holds (scale, :func:`_coef`,
    inv_keep) in float64 for float64 inputs (else unused: ``q`` stands in)."""
    coef = _coef(norm)
    params = (torch.tensor([float(scale), coef, inv_keep], dtype=q.dtype, device=q.device)
              if LA.is_f64(q) else q)
    return params, float(scale), coef


def _mask_args(mask: torch.Tensor | None, q: torch.Tensor):
    """``(pointer tensor, (msb, msh, msg, msl, mss), has, is_bool)``: strides 0 where the
    mask broadcasts."""
    if mask is None:
        return q, (0, 0, 0, 0, 0), False, False
    strides = tuple(st if n != 1 else 0 for n, st in zip(mask.shape, mask.stride(), strict=True))
    if mask.dtype == torch.bool:
        return mask.view(torch.uint8), strides, True, True
    return mask, strides, True, False


def _check(norm) -> None:
    if norm.name not in MAPS:
        raise NotImplementedError(
            f"triton.attention runs {', '.join(MAPS)}; got mapping {norm.name!r} (the "
            "registry's applies() keeps the others on the reference)")


def _sink_rows(sink, q, L: int):
    """``(pointer, HAS_SINK)``: softmax1's sink per score row ``(B, Hk, G*L)`` (O(L), as the
    statistics), from its canonical ``(Bs, Hs, Gs)``."""
    if sink is None:
        return q, False
    B, Hk, R, _ = q.shape
    rows = sink[..., None].expand(B, Hk, R // L, L).reshape(B, Hk, R)
    return rows.to(q.dtype).contiguous(), True


def _dropout_args(q, seed, dropout_p: float):
    """``(Seed pointer, thresh, inv_keep, DROPOUT)`` of the kernels (as ``dropout_keep``)."""
    if dropout_p > 0:
        return seed, int(dropout_p * (1 << 24)), 1.0 / (1.0 - dropout_p), True
    return q, 0, 1.0, False


def _common(q, k, v, mask, L: int, norm):
    B, Hk, R, E = q.shape
    S, EV = k.shape[-2], v.shape[-1]
    bm, bn = blocks(LA.is_f64(q), max(E, EV))
    ptr, strides, has, is_bool = _mask_args(mask, q)
    consts = dict(MAP=MAPS[norm.name], HAS_MASK=has, MASK_BOOL=is_bool, BLOCK_M=bm,
                  BLOCK_N=bn, BLOCK_E=max(16, LA.next_pow2(E)),
                  BLOCK_EV=max(16, LA.next_pow2(EV)), F64=LA.is_f64(q))
    return (B, Hk, R, E, S, EV, bm, bn), ptr, strides, consts


def attention_forward(q, k, v, mask, sink, seed, causal: bool, L: int, scale: float,
                      dropout_p: float, norm, want_stats: bool):
    """``(out (B, Hk, G*L, Ev), stats (B, Hk, G*L, 2) or (0,))`` of the canonical call."""
    _check(norm)
    (B, Hk, R, E, S, EV, bm, _bn), ptr, st, consts = _common(q, k, v, mask, L, norm)
    out = q.new_empty(B, Hk, R, EV)
    stats = q.new_empty(B, Hk, R, 2) if want_stats else q.new_empty(0)
    if B * Hk * R == 0:
        return out, stats
    LA.PATHS[f"attention.forward.{norm.name}"] += 1
    seed_ptr, thresh, inv_keep, dropout = _dropout_args(q, seed, dropout_p)
    sink_ptr, has_sink = _sink_rows(sink, q, L)
    _fwd[(B * Hk, LA.cdiv(R, bm))](
        q, k, v, ptr, out, stats if want_stats else out, seed_ptr, sink_ptr, Hk, R, L, S, E, EV,
        *_scalars(q, scale, norm, inv_keep), *st, thresh, inv_keep, DROPOUT=dropout,
        HAS_SINK=has_sink, CAUSAL=bool(causal), WANT_STATS=bool(want_stats),
        N_BISECT=N_BISECT, **consts)
    return out, stats


def _reduce_to(t: torch.Tensor, shape: tuple[int, ...]) -> torch.Tensor:
    dims = [i for i, (a, s) in enumerate(zip(t.shape, shape, strict=True)) if s == 1 and a != 1]
    return t.sum(dims, keepdim=True) if dims else t


def attention_backward(dout, q, k, v, mask, sink, seed, causal: bool, L: int, scale: float,
                       dropout_p: float, norm, mask_grad: bool, sink_grad: bool):
    """``(dq, dk, dv, dmask, dsink)``; ``dmask`` (a float mask's gradient) and ``dsink``
    (softmax1's sink) are empty unless asked for."""
    _check(norm)
    (B, Hk, R, E, S, EV, bm, bn), ptr, st, consts = _common(q, k, v, mask, L, norm)
    dq = torch.empty_like(q)
    dk = torch.zeros_like(k)
    dv = torch.zeros_like(v)
    want_dm = bool(mask_grad and mask is not None)
    dm_full = q.new_zeros(B, Hk, R, S) if want_dm else q.new_empty(0)
    shift = q.new_zeros(B, Hk, R, 4)
    if q.numel() and k.shape[-2]:
        LA.PATHS[f"attention.backward.{norm.name}"] += 1
        seed_ptr, thresh, inv_keep, dropout = _dropout_args(q, seed, dropout_p)
        sink_ptr, has_sink = _sink_rows(sink, q, L)
        scalars = (seed_ptr, sink_ptr, Hk, R, L, S, E, EV, *_scalars(q, scale, norm, inv_keep),
                   *st, thresh, inv_keep)
        consts.update(DROPOUT=dropout, HAS_SINK=has_sink)
        if consts["MAP"] != MAPS["sigmoid"]:
            _bwd_pre[(B * Hk, LA.cdiv(R, bm))](
                q, k, v, ptr, dout, shift, *scalars, CAUSAL=bool(causal),
                N_BISECT=N_BISECT, **consts)
        _bwd_dkdv[(B * Hk, LA.cdiv(S, bn))](q, k, v, ptr, dout, shift, dk, dv, *scalars,
                                           CAUSAL=bool(causal), **consts)
        _bwd_dq[(B * Hk, LA.cdiv(R, bm))](q, k, v, ptr, dout, shift, dq,
                                         dm_full if want_dm else dq, *scalars,
                                         CAUSAL=bool(causal), MASK_GRAD=want_dm, **consts)
    else:
        dq.zero_()
    dmask = q.new_empty(0)
    if want_dm:
        G = R // L
        dmask = _reduce_to(dm_full.view(B, Hk, G, L, S), tuple(mask.shape)).contiguous()
    dsink = q.new_empty(0)
    if sink_grad and sink is not None:
        rows = shift[..., 3].reshape(B, Hk, R // L, L).sum(-1)
        dsink = _reduce_to(rows, tuple(sink.shape)).contiguous()
    return dq, dk, dv, dmask, dsink
