r"""Softmax and log-softmax along the last dim in Triton, forward and backward, any row length.

.. math:: p_i = \frac{e^{s z_i - m}}{\sum_j e^{s z_j - m}}, \quad m = \max_j s z_j,
          \quad s = 1/T

Rows of up to :data:`~._launch.MAX_SINGLE_BLOCK` entries are handled in registers (one read,
one write); longer rows by the online normalizer (Milakov & Gimelshein 2018): programs reduce
chunks or spans of the row to partial states ``(m_c, d_c)``, merged as
:math:`(m, d) \oplus (m', d') = (M, d e^{m-M} + d' e^{m'-M})`, then each program writes its
part: on the cooperative path from the chunk it kept in registers (the programs of a row
meet at a per-row counter), on the multi-block paths by reading its span again. The
backward passes are ``dz = s * p * (g - <g, p>)`` (softmax) and
``dz = s * (g - e^{y} \sum g)`` (log-softmax, 0 on excluded entries).

The library's contract holds: ``-inf`` entries are excluded, a row with no kept entry gives
zeros (log: ``-inf``) and zero gradient, NaN stays in its row; float16/bfloat16 are computed
in float32 and float64 in float64.
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl

from ..._constants import NEG_INF
from . import _launch as L


@triton.jit
def _acc(x, F64: tl.constexpr):
    if F64:
        return x.to(tl.float64)
    else:
        return x.to(tl.float32)


# ------------------------------------------------------------------ forward kernels
@triton.jit
def _fwd_single(X, Y, n_rows, n_cols, scale, LOG: tl.constexpr, ROWS: tl.constexpr,
                BLOCK: tl.constexpr, F64: tl.constexpr):
    """``ROWS`` whole rows per program, in registers."""
    rows = tl.program_id(0) * ROWS + tl.arange(0, ROWS)
    cols = tl.arange(0, BLOCK)
    mask = (rows[:, None] < n_rows) & (cols[None, :] < n_cols)
    offs = rows[:, None].to(tl.int64) * n_cols + cols[None, :]
    x = _acc(tl.load(X + offs, mask=mask, other=-float("inf")), F64) * scale
    m = tl.max(x, 1)
    m = tl.where(m == -float("inf"), 0.0, m)
    e = tl.exp(x - m[:, None])
    s = tl.sum(e, 1)
    if LOG:
        y = tl.where(s[:, None] == 0, -float("inf"), x - m[:, None] - tl.log(s)[:, None])
    else:
        y = e / tl.where(s == 0, 1.0, s)[:, None]
    tl.store(Y + offs, y.to(Y.dtype.element_ty), mask=mask)


@triton.jit
def _span_stats(x_row, start, end, scale, TILE: tl.constexpr, F64: tl.constexpr,
                EVICT: tl.constexpr):
    """Online ``(max, sum exp(x - max))`` of ``x_row[start:end]`` (lane-wise, then merged)."""
    cols = tl.arange(0, TILE)
    if F64:
        m = tl.full((TILE,), -float("inf"), tl.float64)
        d = tl.zeros((TILE,), tl.float64)
    else:
        m = tl.full((TILE,), -float("inf"), tl.float32)
        d = tl.zeros((TILE,), tl.float32)
    for off in range(start, end, TILE):
        idx = off + cols
        x = tl.load(x_row + idx, mask=idx < end, other=-float("inf"), eviction_policy=EVICT)
        x = _acc(x, F64) * scale
        m_new = tl.maximum(m, x)
        safe = tl.where(m_new == -float("inf"), 0.0, m_new)
        d = d * tl.exp(m - safe) + tl.exp(x - safe)
        m = m_new
    mm = tl.max(m, 0)
    safe = tl.where(mm == -float("inf"), 0.0, mm)
    return mm, tl.sum(d * tl.exp(m - safe), 0)


@triton.jit
def _row_state(x_row, n_cols, scale, TILE: tl.constexpr, F64: tl.constexpr, EVICT: tl.constexpr):
    """The whole row's state read by this program alone: (safe max, sum)."""
    m, s = _span_stats(x_row, 0, n_cols, scale, TILE, F64, EVICT)
    return tl.where(m == -float("inf"), 0.0, m), s


@triton.jit
def _merged_stats(Mp, Sp, row, n_chunks, BLOCK_C: tl.constexpr, VOLATILE: tl.constexpr):
    """Merge the ``n_chunks`` partial states of ``row``: returns (safe max, sum).
    ``VOLATILE``: states other programs of this launch wrote (no cached copy)."""
    c = tl.arange(0, BLOCK_C)
    pm = tl.load(Mp + row * n_chunks + c, mask=c < n_chunks, other=-float("inf"),
                 volatile=VOLATILE)
    ps = tl.load(Sp + row * n_chunks + c, mask=c < n_chunks, other=0.0, volatile=VOLATILE)
    m = tl.max(pm, 0)
    safe = tl.where(m == -float("inf"), 0.0, m)
    return safe, tl.sum(ps * tl.exp(pm - safe), 0)


@triton.jit
def _fwd_stats(X, Mp, Sp, n_cols, span, n_chunks, scale, TILE: tl.constexpr,
               F64: tl.constexpr):
    """Program (row, c): the partial state of span ``c`` of ``row``."""
    row = tl.program_id(0).to(tl.int64)
    c = tl.program_id(1)
    start = c * span
    end = tl.minimum(start + span, n_cols)
    m, d = _span_stats(X + row * n_cols, start, end, scale, TILE, F64, "")
    tl.store(Mp + row * n_chunks + c, m)
    tl.store(Sp + row * n_chunks + c, d)


@triton.jit
def _fwd_apply(X, Y, Mp, Sp, n_cols, span, n_chunks, scale, LOG: tl.constexpr,
               SELF_STATS: tl.constexpr, TILE: tl.constexpr, BLOCK_C: tl.constexpr,
               F64: tl.constexpr):
    """Program (row, c) writes span ``c``; with ``SELF_STATS`` (one span per row) it first
    computes the row's state itself instead of merging the partial states."""
    row = tl.program_id(0).to(tl.int64)
    c = tl.program_id(1)
    start = c * span
    end = tl.minimum(start + span, n_cols)
    x_row = X + row * n_cols
    if SELF_STATS:
        m, s = _row_state(x_row, n_cols, scale, TILE, F64, "")
    else:
        m, s = _merged_stats(Mp, Sp, row, n_chunks, BLOCK_C, False)
    log_s = tl.log(s)
    inv_s = 1.0 / tl.where(s == 0, 1.0, s)
    cols = tl.arange(0, TILE)
    for off in range(start, end, TILE):
        idx = off + cols
        x = _acc(tl.load(x_row + idx, mask=idx < end, other=-float("inf")), F64) * scale
        if LOG:
            y = tl.where(s == 0, -float("inf"), x - m - log_s)
        else:
            y = tl.exp(x - m) * inv_s
        tl.store(Y + row * n_cols + idx, y.to(Y.dtype.element_ty), mask=idx < end)


@triton.jit
def _arrive(Cnt, row):
    """Count this program in at ``Cnt[row]`` once its partial state is stored."""
    tl.debug_barrier()  # every thread's store of the state happens before the release
    tl.atomic_add(Cnt + row, 1, sem="release", scope="gpu")


@triton.jit
def _all_arrived(Cnt, row, n_chunks, spin):
    """Poll ``Cnt[row]`` (at most ``spin`` times) until the row's ``n_chunks`` programs have
    all arrived; returns whether they did (else the caller computes the row's state
    itself)."""
    arrived = tl.atomic_add(Cnt + row, 0, sem="acquire", scope="gpu")
    polls = 0
    while (arrived < n_chunks) & (polls < spin):
        arrived = tl.atomic_add(Cnt + row, 0, sem="acquire", scope="gpu")
        polls += 1
    return arrived >= n_chunks


@triton.jit
def _coop_program(n_cols, n_chunks, CHUNK: tl.constexpr):
    """This program's ``(chunk c, first row, row step, columns, column mask)`` on the
    cooperative path: chunk ``pid % n_chunks`` of rows ``pid // n_chunks + k * groups``."""
    pid = tl.program_id(0)
    c = pid % n_chunks
    cols = c * CHUNK + tl.arange(0, CHUNK)
    return c, pid // n_chunks, tl.num_programs(0) // n_chunks, cols, cols < n_cols


@triton.jit
def _fwd_coop(X, Y, Mp, Sp, Cnt, n_rows, n_cols, n_chunks, scale, spin, LOG: tl.constexpr,
              CHUNK: tl.constexpr, BLOCK_C: tl.constexpr, TILE: tl.constexpr,
              PREFETCH: tl.constexpr, F64: tl.constexpr):
    """Cooperative: program ``pid`` keeps chunk ``pid % n_chunks`` of rows ``pid //
    n_chunks``, then ``+ groups``, ...; per row it stores its chunk's state, meets the
    row's other programs (:func:`_arrive`, :func:`_all_arrived`), merges and writes its
    chunk. ``PREFETCH``: the next row's chunk is loaded while the program waits."""
    c, group, groups, cols, ok = _coop_program(n_cols, n_chunks, CHUNK)
    if PREFETCH:
        xr = tl.load(X + group.to(tl.int64) * n_cols + cols, mask=ok, other=-float("inf"))
    for i in range(0, tl.cdiv(n_rows - group, groups)):
        row = (group + i * groups).to(tl.int64)
        if not PREFETCH:
            xr = tl.load(X + row * n_cols + cols, mask=ok, other=-float("inf"))
        x = _acc(xr, F64) * scale
        mc = tl.max(x, 0)
        tl.store(Mp + row * n_chunks + c, mc)
        tl.store(Sp + row * n_chunks + c,
                 tl.sum(tl.exp(x - tl.where(mc == -float("inf"), 0.0, mc)), 0))
        _arrive(Cnt, row)
        if PREFETCH:
            nxt = row + groups
            nxt_ok = cols < tl.where(nxt < n_rows, n_cols, 0)
            xr = tl.load(X + nxt * n_cols + cols, mask=nxt_ok, other=-float("inf"))
        if _all_arrived(Cnt, row, n_chunks, spin):
            m, s = _merged_stats(Mp, Sp, row, n_chunks, BLOCK_C, True)
        else:
            m, s = _row_state(X + row * n_cols, n_cols, scale, TILE, F64, "")
        if LOG:
            y = tl.where(s == 0, -float("inf"), x - m - tl.log(s))
        else:
            y = tl.exp(x - m) / tl.where(s == 0, 1.0, s)
        tl.store(Y + row * n_cols + cols, y.to(Y.dtype.element_ty), mask=ok)


# ------------------------------------------------------------------ backward kernels
@triton.jit
def _bwd_single(Yp, G, DX, n_rows, n_cols, scale, LOG: tl.constexpr, ROWS: tl.constexpr,
                BLOCK: tl.constexpr, F64: tl.constexpr):
    rows = tl.program_id(0) * ROWS + tl.arange(0, ROWS)
    cols = tl.arange(0, BLOCK)
    mask = (rows[:, None] < n_rows) & (cols[None, :] < n_cols)
    offs = rows[:, None].to(tl.int64) * n_cols + cols[None, :]
    g = _acc(tl.load(G + offs, mask=mask, other=0.0), F64)
    if LOG:
        y = _acc(tl.load(Yp + offs, mask=mask, other=-float("inf")), F64)
        dx = g - tl.exp(y) * tl.sum(g, 1)[:, None]
        dx = tl.where(y == -float("inf"), 0.0, dx)
    else:
        y = _acc(tl.load(Yp + offs, mask=mask, other=0.0), F64)
        dx = y * (g - tl.sum(g * y, 1)[:, None])
    tl.store(DX + offs, (dx * scale).to(DX.dtype.element_ty), mask=mask)


@triton.jit
def _span_dot(y_row, g_row, start, end, LOG: tl.constexpr, TILE: tl.constexpr,
              F64: tl.constexpr, EVICT: tl.constexpr):
    """``sum g`` (log) or ``sum g * y`` over ``[start, end)``."""
    cols = tl.arange(0, TILE)
    if F64:
        acc = tl.zeros((TILE,), tl.float64)
    else:
        acc = tl.zeros((TILE,), tl.float32)
    for off in range(start, end, TILE):
        idx = off + cols
        g = _acc(tl.load(g_row + idx, mask=idx < end, other=0.0, eviction_policy=EVICT), F64)
        if LOG:
            acc += g
        else:
            y = tl.load(y_row + idx, mask=idx < end, other=0.0, eviction_policy=EVICT)
            acc += g * _acc(y, F64)
    return tl.sum(acc, 0)


@triton.jit
def _merged_dot(Dp, row, n_chunks, BLOCK_C: tl.constexpr, VOLATILE: tl.constexpr):
    """Sum of the ``n_chunks`` partial dots of ``row`` (``VOLATILE``: as
    :func:`_merged_stats`)."""
    c = tl.arange(0, BLOCK_C)
    return tl.sum(tl.load(Dp + row * n_chunks + c, mask=c < n_chunks, other=0.0,
                          volatile=VOLATILE), 0)


@triton.jit
def _bwd_stats(Yp, G, Dp, n_cols, span, n_chunks, LOG: tl.constexpr, TILE: tl.constexpr,
               F64: tl.constexpr):
    row = tl.program_id(0).to(tl.int64)
    c = tl.program_id(1)
    start = c * span
    end = tl.minimum(start + span, n_cols)
    dot = _span_dot(Yp + row * n_cols, G + row * n_cols, start, end, LOG, TILE, F64, "")
    tl.store(Dp + row * n_chunks + c, dot)


@triton.jit
def _bwd_apply(Yp, G, DX, Dp, n_cols, span, n_chunks, scale, LOG: tl.constexpr,
               SELF_STATS: tl.constexpr, TILE: tl.constexpr, BLOCK_C: tl.constexpr,
               F64: tl.constexpr):
    row = tl.program_id(0).to(tl.int64)
    c = tl.program_id(1)
    start = c * span
    end = tl.minimum(start + span, n_cols)
    y_row = Yp + row * n_cols
    g_row = G + row * n_cols
    if SELF_STATS:
        dot = _span_dot(y_row, g_row, 0, n_cols, LOG, TILE, F64, "")
    else:
        dot = _merged_dot(Dp, row, n_chunks, BLOCK_C, False)
    cols = tl.arange(0, TILE)
    for off in range(start, end, TILE):
        idx = off + cols
        g = _acc(tl.load(g_row + idx, mask=idx < end, other=0.0), F64)
        if LOG:
            y = _acc(tl.load(y_row + idx, mask=idx < end, other=-float("inf")), F64)
            dx = tl.where(y == -float("inf"), 0.0, g - tl.exp(y) * dot)
        else:
            y = _acc(tl.load(y_row + idx, mask=idx < end, other=0.0), F64)
            dx = y * (g - dot)
        tl.store(DX + row * n_cols + idx, (dx * scale).to(DX.dtype.element_ty), mask=idx < end)


@triton.jit
def _bwd_coop(Yp, G, DX, Dp, Cnt, n_rows, n_cols, n_chunks, scale, spin, LOG: tl.constexpr,
              CHUNK: tl.constexpr, BLOCK_C: tl.constexpr, TILE: tl.constexpr,
              PREFETCH: tl.constexpr, F64: tl.constexpr):
    """Cooperative backward, as :func:`_fwd_coop`: the partial state is ``sum g`` (log) or
    ``sum g * y`` over the chunk."""
    c, group, groups, cols, ok = _coop_program(n_cols, n_chunks, CHUNK)
    if LOG:
        y_other = -float("inf")
    else:
        y_other = 0.0
    if PREFETCH:
        gr = tl.load(G + group.to(tl.int64) * n_cols + cols, mask=ok, other=0.0)
        yr = tl.load(Yp + group.to(tl.int64) * n_cols + cols, mask=ok, other=y_other)
    for i in range(0, tl.cdiv(n_rows - group, groups)):
        row = (group + i * groups).to(tl.int64)
        if not PREFETCH:
            gr = tl.load(G + row * n_cols + cols, mask=ok, other=0.0)
            yr = tl.load(Yp + row * n_cols + cols, mask=ok, other=y_other)
        g = _acc(gr, F64)
        y = _acc(yr, F64)
        if LOG:
            tl.store(Dp + row * n_chunks + c, tl.sum(g, 0))
        else:
            tl.store(Dp + row * n_chunks + c, tl.sum(g * y, 0))
        _arrive(Cnt, row)
        if PREFETCH:
            nxt = row + groups
            nxt_ok = cols < tl.where(nxt < n_rows, n_cols, 0)
            gr = tl.load(G + nxt * n_cols + cols, mask=nxt_ok, other=0.0)
            yr = tl.load(Yp + nxt * n_cols + cols, mask=nxt_ok, other=y_other)
        if _all_arrived(Cnt, row, n_chunks, spin):
            dot = _merged_dot(Dp, row, n_chunks, BLOCK_C, True)
        else:
            dot = _span_dot(Yp + row * n_cols, G + row * n_cols, 0, n_cols, LOG, TILE, F64, "")
        if LOG:
            dx = tl.where(y == -float("inf"), 0.0, g - tl.exp(y) * dot)
        else:
            dx = y * (g - dot)
        tl.store(DX + row * n_cols + cols, (dx * scale).to(DX.dtype.element_ty), mask=ok)


@triton.jit
def _fwd_rows(X, Y, n_rows, n_cols, scale, LOG: tl.constexpr, TILE: tl.constexpr,
              F64: tl.constexpr, KEEP: tl.constexpr, DROP: tl.constexpr):
    """Persistent: each program takes rows ``pid, pid + P, ...``; per row one pass for the
    state, then a second pass (last tile first, so that what the first pass read most
    recently is still in L2) that writes the output. ``KEEP``/``DROP``: L2 eviction hints
    for the first pass's loads / the second pass's loads and stores ("" for none)."""
    cols = tl.arange(0, TILE)
    n_tiles = tl.cdiv(n_cols, TILE)
    first = tl.program_id(0)
    for i in range(0, tl.cdiv(n_rows - first, tl.num_programs(0))):
        row = (first + i * tl.num_programs(0)).to(tl.int64)
        x_row = X + row * n_cols
        y_row = Y + row * n_cols
        m, s = _row_state(x_row, n_cols, scale, TILE, F64, KEEP)
        log_s = tl.log(s)
        inv_s = 1.0 / tl.where(s == 0, 1.0, s)
        for j in range(0, n_tiles):
            idx = (n_tiles - 1 - j) * TILE + cols
            x = tl.load(x_row + idx, mask=idx < n_cols, other=-float("inf"), eviction_policy=DROP)
            x = _acc(x, F64) * scale
            if LOG:
                y = tl.where(s == 0, -float("inf"), x - m - log_s)
            else:
                y = tl.exp(x - m) * inv_s
            tl.store(y_row + idx, y.to(Y.dtype.element_ty), mask=idx < n_cols,
                     eviction_policy=DROP)


@triton.jit
def _bwd_rows(Yp, G, DX, n_rows, n_cols, scale, LOG: tl.constexpr, TILE: tl.constexpr,
              F64: tl.constexpr, KEEP: tl.constexpr, DROP: tl.constexpr):
    """Persistent backward, as :func:`_fwd_rows` (second pass last tile first)."""
    cols = tl.arange(0, TILE)
    n_tiles = tl.cdiv(n_cols, TILE)
    first = tl.program_id(0)
    for i in range(0, tl.cdiv(n_rows - first, tl.num_programs(0))):
        off_row = (first + i * tl.num_programs(0)).to(tl.int64) * n_cols
        dot = _span_dot(Yp + off_row, G + off_row, 0, n_cols, LOG, TILE, F64, KEEP)
        for j in range(0, n_tiles):
            idx = (n_tiles - 1 - j) * TILE + cols
            ok = idx < n_cols
            g = _acc(tl.load(G + off_row + idx, mask=ok, other=0.0, eviction_policy=DROP), F64)
            if LOG:
                y = tl.load(Yp + off_row + idx, mask=ok, other=-float("inf"), eviction_policy=DROP)
                y = _acc(y, F64)
                dx = tl.where(y == -float("inf"), 0.0, g - tl.exp(y) * dot)
            else:
                y = _acc(tl.load(Yp + off_row + idx, mask=ok, other=0.0, eviction_policy=DROP), F64)
                dx = y * (g - dot)
            tl.store(DX + off_row + idx, (dx * scale).to(DX.dtype.element_ty), mask=ok,
                     eviction_policy=DROP)


# ------------------------------------------------------------------ host functions
def row_stats(x: torch.Tensor, scale: float = 1.0) -> tuple[torch.Tensor, torch.Tensor]:
    """Online normalizer of each row of ``x`` ``(M, N)`` (contiguous): the safe max ``m``
    (0 for a row with no finite max) and ``d = sum exp(scale * x - m)``, both ``(M,)`` in the
    compute dtype."""
    m_rows, n = x.shape
    p = L.multi_block(m_rows, n, x.device)
    acc = L.acc_dtype(x)
    mp = torch.empty((m_rows, p.n_chunks), dtype=acc, device=x.device)
    sp = torch.empty_like(mp)
    if m_rows:
        _fwd_stats[(m_rows, p.n_chunks)](x, mp, sp, n, p.span, p.n_chunks, scale, TILE=p.tile,
                                        F64=L.is_f64(x), num_warps=p.num_warps)
    m = mp.amax(1)
    m = m.masked_fill(m == NEG_INF, 0.0)
    return m, (sp * (mp - m[:, None]).exp()).sum(1)


def softmax_forward(x: torch.Tensor, scale: float, log: bool) -> torch.Tensor:
    """(Log-)softmax of the rows of ``x`` ``(M, N)`` (contiguous), in ``x``'s dtype."""
    m, n = x.shape
    y = torch.empty_like(x)
    if m == 0 or n == 0:
        return y
    f64 = L.is_f64(x)
    if L.is_single(n):
        L.PATHS["softmax.single"] += 1
        c = L.single_block(m, n)
        _fwd_single[c.grid](x, y, m, n, scale, LOG=log, ROWS=c.rows, BLOCK=c.block, F64=f64,
                            num_warps=c.num_warps)
        return y
    c = L.coop(m, n, x, backward=False)
    if c is not None:
        L.PATHS["softmax.coop"] += 1
        states = torch.empty((2, m, c.n_chunks), dtype=L.acc_dtype(x), device=x.device)
        count = torch.zeros(m, dtype=torch.int32, device=x.device)
        _fwd_coop[c.grid](x, y, states[0], states[1], count, m, n, c.n_chunks, scale, c.spin,
                          LOG=log, CHUNK=c.chunk, BLOCK_C=c.block_c, TILE=c.tile,
                          PREFETCH=L.COOP_PREFETCH, F64=f64, num_warps=c.num_warps)
        return y
    p = L.multi_block(m, n, x.device)
    self_stats = p.n_chunks == 1
    if self_stats and L.PERSISTENT_PROGRAMS_PER_SM:
        L.PATHS["softmax.persistent"] += 1
        grid = (min(m, L.PERSISTENT_PROGRAMS_PER_SM * L.sm_count(x.device)),)
        tile = min(L.PERSISTENT_TILE, L.next_pow2(n))
        _fwd_rows[grid](x, y, m, n, scale, LOG=log, TILE=tile, F64=f64, **L.evict_hints(),
                        num_warps=L.warps(tile, 8))
        return y
    L.PATHS["softmax.multi.fused" if self_stats else "softmax.multi.split"] += 1
    acc = L.acc_dtype(x)
    mp = torch.empty((m, p.n_chunks), dtype=acc, device=x.device)
    sp = torch.empty_like(mp)
    if not self_stats:
        _fwd_stats[(m, p.n_chunks)](x, mp, sp, n, p.span, p.n_chunks, scale, TILE=p.tile,
                                   F64=f64, num_warps=p.num_warps)
    _fwd_apply[(m, p.n_chunks)](x, y, mp, sp, n, p.span, p.n_chunks, scale, LOG=log,
                               SELF_STATS=self_stats, TILE=p.tile, BLOCK_C=p.block_c, F64=f64,
                               num_warps=p.num_warps)
    return y


def softmax_backward(y: torch.Tensor, g: torch.Tensor, scale: float, log: bool) -> torch.Tensor:
    """Input gradient of (log-)softmax from its output ``y`` and output gradient ``g``."""
    m, n = y.shape
    g = g.contiguous()
    dx = torch.empty_like(y)
    if m == 0 or n == 0:
        return dx
    f64 = L.is_f64(y)
    if L.is_single(n):
        L.PATHS["softmax_bwd.single"] += 1
        c = L.single_block(m, n)
        _bwd_single[c.grid](y, g, dx, m, n, scale, LOG=log, ROWS=c.rows, BLOCK=c.block, F64=f64,
                            num_warps=c.num_warps)
        return dx
    c = L.coop(m, n, y, backward=True)
    if c is not None:
        L.PATHS["softmax_bwd.coop"] += 1
        dp = torch.empty((m, c.n_chunks), dtype=L.acc_dtype(y), device=y.device)
        count = torch.zeros(m, dtype=torch.int32, device=y.device)
        _bwd_coop[c.grid](y, g, dx, dp, count, m, n, c.n_chunks, scale, c.spin, LOG=log,
                          CHUNK=c.chunk, BLOCK_C=c.block_c, TILE=c.tile,
                          PREFETCH=L.COOP_PREFETCH, F64=f64, num_warps=c.num_warps)
        return dx
    p = L.multi_block(m, n, y.device)
    self_stats = p.n_chunks == 1
    if self_stats and L.PERSISTENT_PROGRAMS_PER_SM:
        L.PATHS["softmax_bwd.persistent"] += 1
        grid = (min(m, L.PERSISTENT_PROGRAMS_PER_SM * L.sm_count(y.device)),)
        tile = min(L.PERSISTENT_TILE, L.next_pow2(n))
        _bwd_rows[grid](y, g, dx, m, n, scale, LOG=log, TILE=tile, F64=f64, **L.evict_hints(),
                        num_warps=L.warps(tile, 8))
        return dx
    L.PATHS["softmax_bwd.multi.fused" if self_stats else "softmax_bwd.multi.split"] += 1
    dp = torch.empty((m, p.n_chunks), dtype=L.acc_dtype(y), device=y.device)
    if not self_stats:
        _bwd_stats[(m, p.n_chunks)](y, g, dp, n, p.span, p.n_chunks, LOG=log, TILE=p.tile,
                                   F64=f64, num_warps=p.num_warps)
    _bwd_apply[(m, p.n_chunks)](y, g, dx, dp, n, p.span, p.n_chunks, scale, LOG=log,
                               SELF_STATS=self_stats, TILE=p.tile, BLOCK_C=p.block_c, F64=f64,
                               num_warps=p.num_warps)
    return dx


def expnorm_forward(l: torch.Tensor, log: bool) -> torch.Tensor:
    """Row function of op family ``expnorm`` (:mod:`softmaxlab.kernels.ops`): (log-)softmax
    of contiguous rows ``(*, n)`` in their own dtype (computed in float32 or float64)."""
    return softmax_forward(l.view(-1, max(l.shape[-1], 1)), 1.0, log).view(l.shape)


def expnorm_backward(g: torch.Tensor, out: torch.Tensor, log: bool) -> torch.Tensor:
    """Input gradient of :func:`expnorm_forward` from its output (log form: the upstream
    gradient at excluded entries is ignored, as if they were sliced out)."""
    if log:
        g = g.masked_fill(out == NEG_INF, 0.0)
    n = max(out.shape[-1], 1)
    return softmax_backward(out.view(-1, n), g.view(-1, n), 1.0, log).view(out.shape)
