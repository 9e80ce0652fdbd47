r"""Sparsemax along the last dim in Triton: a sort-free threshold search per row.

.. math:: \mathrm{sparsemax}(z) = [z - \tau]_+, \quad \sum_i [z_i - \tau]_+ = 1

After shifting by the row max, :math:`\tau \in [-1, 0)`. ``N_BISECT`` bisection steps on
:math:`f(\tau) = \sum_i [z_i - \tau]_+` (decreasing, :math:`f(-1) \ge 1`) give a lower
bound ``lo`` of :math:`\tau`; Michelot's iteration from there,
:math:`S = \{z > \tau\},\ \tau \leftarrow (\sum_S z - 1)/|S|`, shrinks the support to the
exact one in a few steps and stops when it no longer changes (each step is exact, so the
result is the sort-based one up to rounding). Rows that fit a block run in registers; longer
rows stream from memory (one program per row). Backward, with ``s = [p > 0]``:

.. math:: \partial z = s \odot (g - \langle s, g\rangle / |S|)

Contract: ``-inf`` entries are excluded (0), a row with no kept entry gives zeros and zero
gradient, a NaN (or ``+inf``) makes its row NaN.
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl

from . import _launch as L
from ._softmax import _acc

#: Bisection steps before Michelot's iteration (registers / streamed rows).
N_BISECT = 16
N_BISECT_STREAMED = 8


@triton.jit
def _fwd_single(X, P, n_rows, n_cols, ROWS: tl.constexpr, BLOCK: tl.constexpr,
                N_BISECT: tl.constexpr, F64: tl.constexpr):
    rows = tl.program_id(0) * ROWS + tl.arange(0, ROWS)
    cols = tl.arange(0, BLOCK)
    mask = (rows[:, None] < n_rows) & (cols[None, :] < n_cols)
    offs = rows[:, None].to(tl.int64) * n_cols + cols[None, :]
    z = _acc(tl.load(X + offs, mask=mask, other=-float("inf")), F64)
    m = tl.max(z, 1)
    z = z - tl.where(m == -float("inf"), 0.0, m)[:, None]
    bad = tl.sum((z != z).to(tl.int32), 1) > 0  # NaN, or +inf (inf - inf)
    lo = tl.full((ROWS,), -1.0, z.dtype)
    hi = tl.zeros((ROWS,), z.dtype)
    for _ in range(N_BISECT):
        mid = (lo + hi) * 0.5
        f = tl.sum(tl.where(z > mid[:, None], z - mid[:, None], 0.0), 1)
        lo = tl.where(f >= 1, mid, lo)
        hi = tl.where(f >= 1, hi, mid)
    tau = lo
    k_prev = tl.full((ROWS,), -1, tl.int32)
    go = tl.sum(tl.full((ROWS,), 1, tl.int32), 0)
    steps = go * 0
    while go > 0:  # the support shrinks at every step until it is exact: <= n_cols steps
        supp = z > tau[:, None]
        k = tl.sum(supp.to(tl.int32), 1)
        tau = (tl.sum(tl.where(supp, z, 0.0), 1) - 1) / tl.maximum(k, 1)
        steps += 1
        go = tl.sum((k != k_prev).to(tl.int32), 0) * (steps <= n_cols).to(tl.int32)
        k_prev = k
    p = tl.where(z > tau[:, None], z - tau[:, None], 0.0)
    p = tl.where(bad[:, None], float("nan"), p)
    tl.store(P + offs, p.to(P.dtype.element_ty), mask=mask)


@triton.jit
def _above(z_row, n_cols, m, tau, TILE: tl.constexpr, F64: tl.constexpr):
    """Over the streamed row shifted by ``m``: (sum of z - tau, sum of z, count) for z > tau."""
    cols = tl.arange(0, TILE)
    if F64:
        f = tl.zeros((TILE,), tl.float64)
        sz = tl.zeros((TILE,), tl.float64)
    else:
        f = tl.zeros((TILE,), tl.float32)
        sz = tl.zeros((TILE,), tl.float32)
    k = tl.zeros((TILE,), tl.int32)
    for off in range(0, n_cols, TILE):
        idx = off + cols
        z = _acc(tl.load(z_row + idx, mask=idx < n_cols, other=-float("inf")), F64) - m
        supp = z > tau
        f += tl.where(supp, z - tau, 0.0)
        sz += tl.where(supp, z, 0.0)
        k += supp.to(tl.int32)
    return tl.sum(f, 0), tl.sum(sz, 0), tl.sum(k, 0)


@triton.jit
def _fwd_streamed(X, P, n_cols, TILE: tl.constexpr, N_BISECT: tl.constexpr,
                  F64: tl.constexpr):
    """One program per row, the row streamed from memory at every step."""
    row = tl.program_id(0).to(tl.int64)
    z_row = X + row * n_cols
    cols = tl.arange(0, TILE)
    if F64:
        mv = tl.full((TILE,), -float("inf"), tl.float64)
    else:
        mv = tl.full((TILE,), -float("inf"), tl.float32)
    nan = tl.zeros((TILE,), tl.int32)
    for off in range(0, n_cols, TILE):
        idx = off + cols
        z = _acc(tl.load(z_row + idx, mask=idx < n_cols, other=-float("inf")), F64)
        mv = tl.maximum(mv, z)
        nan += (z != z).to(tl.int32)
    m = tl.max(mv, 0)
    m = tl.where(m == -float("inf"), 0.0, m)
    bad = (tl.sum(nan, 0) > 0) | (m == float("inf"))
    lo = m * 0 - 1.0
    hi = m * 0
    for _ in range(N_BISECT):
        mid = (lo + hi) * 0.5
        f, _sz, _k = _above(z_row, n_cols, m, mid, TILE, F64)
        lo = tl.where(f >= 1, mid, lo)
        hi = tl.where(f >= 1, hi, mid)
    tau = lo
    k_prev = tl.sum(tl.zeros((TILE,), tl.int32), 0) - 1
    go = k_prev + 2
    steps = go * 0
    while go > 0:
        _f, sz, k = _above(z_row, n_cols, m, tau, TILE, F64)
        tau = (sz - 1) / tl.maximum(k, 1)
        steps += 1
        go = (k != k_prev).to(tl.int32) * (steps <= n_cols).to(tl.int32)
        k_prev = k
    for off in range(0, n_cols, TILE):
        idx = off + cols
        z = _acc(tl.load(z_row + idx, mask=idx < n_cols, other=-float("inf")), F64) - m
        p = tl.where(z > tau, z - tau, 0.0)
        p = tl.where(bad, float("nan"), p)
        tl.store(P + row * n_cols + idx, p.to(P.dtype.element_ty), mask=idx < n_cols)


@triton.jit
def _bwd_single(Pp, G, DX, n_rows, n_cols, ROWS: tl.constexpr, BLOCK: tl.constexpr,
                F64: tl.constexpr):
    rows = tl.program_id(0) * ROWS + tl.arange(0, ROWS)
    cols = tl.arange(0, BLOCK)
    mask = (rows[:, None] < n_rows) & (cols[None, :] < n_cols)
    offs = rows[:, None].to(tl.int64) * n_cols + cols[None, :]
    s = tl.load(Pp + offs, mask=mask, other=0.0) > 0
    g = tl.where(s, _acc(tl.load(G + offs, mask=mask, other=0.0), F64), 0.0)
    k = tl.maximum(tl.sum(s.to(tl.int32), 1), 1)
    dx = tl.where(s, g - (tl.sum(g, 1) / k)[:, None], 0.0)
    tl.store(DX + offs, dx.to(DX.dtype.element_ty), mask=mask)


@triton.jit
def _bwd_streamed(Pp, G, DX, n_cols, TILE: tl.constexpr, F64: tl.constexpr):
    row = tl.program_id(0).to(tl.int64)
    cols = tl.arange(0, TILE)
    if F64:
        acc = tl.zeros((TILE,), tl.float64)
    else:
        acc = tl.zeros((TILE,), tl.float32)
    k = tl.zeros((TILE,), tl.int32)
    for off in range(0, n_cols, TILE):
        idx = off + cols
        s = tl.load(Pp + row * n_cols + idx, mask=idx < n_cols, other=0.0) > 0
        g = _acc(tl.load(G + row * n_cols + idx, mask=idx < n_cols, other=0.0), F64)
        acc += tl.where(s, g, 0.0)
        k += s.to(tl.int32)
    mean = tl.sum(acc, 0) / tl.maximum(tl.sum(k, 0), 1)
    for off in range(0, n_cols, TILE):
        idx = off + cols
        s = tl.load(Pp + row * n_cols + idx, mask=idx < n_cols, other=0.0) > 0
        g = _acc(tl.load(G + row * n_cols + idx, mask=idx < n_cols, other=0.0), F64)
        tl.store(DX + row * n_cols + idx, tl.where(s, g - mean, 0.0).to(DX.dtype.element_ty),
                 mask=idx < n_cols)


def sparsemax_forward(x: torch.Tensor) -> torch.Tensor:
    """Sparsemax of the rows of ``x`` ``(M, N)`` (contiguous), in ``x``'s dtype."""
    m, n = x.shape
    p = torch.empty_like(x)
    if m == 0 or n == 0:
        return p
    f64 = L.is_f64(x)
    if L.is_single(n):
        L.PATHS["sparsemax.single"] += 1
        c = L.single_block(m, n)
        _fwd_single[c.grid](x, p, m, n, ROWS=c.rows, BLOCK=c.block, N_BISECT=N_BISECT,
                            F64=f64, num_warps=c.num_warps)
    else:
        L.PATHS["sparsemax.streamed"] += 1
        plan = L.multi_block(m, n, x.device, split=False)
        _fwd_streamed[(m,)](x, p, n, TILE=plan.tile, N_BISECT=N_BISECT_STREAMED, F64=f64,
                            num_warps=plan.num_warps)
    return p


def sparsemax_backward(p: torch.Tensor, g: torch.Tensor) -> torch.Tensor:
    m, n = p.shape
    g = g.contiguous()
    dx = torch.empty_like(p)
    if m == 0 or n == 0:
        return dx
    f64 = L.is_f64(p)
    if L.is_single(n):
        L.PATHS["sparsemax_bwd.single"] += 1
        c = L.single_block(m, n)
        _bwd_single[c.grid](p, g, dx, m, n, ROWS=c.rows, BLOCK=c.block, F64=f64,
                            num_warps=c.num_warps)
    else:
        L.PATHS["sparsemax_bwd.streamed"] += 1
        plan = L.multi_block(m, n, p.device, split=False)
        _bwd_streamed[(m,)](p, g, dx, n, TILE=plan.tile, F64=f64, num_warps=plan.num_warps)
    return dx


def sparse_forward(z: torch.Tensor, alpha: float) -> torch.Tensor:
    """Row function of op family ``sparse``: sparsemax (``alpha`` is 2) of rows ``(*, n)``."""
    return sparsemax_forward(z.view(-1, max(z.shape[-1], 1))).view(z.shape)


def sparse_backward(g: torch.Tensor, p: torch.Tensor, alpha: float) -> torch.Tensor:
    """Input gradient of :func:`sparse_forward` from its output."""
    n = max(p.shape[-1], 1)
    return sparsemax_backward(p.view(-1, n), g.view(-1, n)).view(p.shape)
