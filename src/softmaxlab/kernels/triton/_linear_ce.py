r"""Fused linear + cross-entropy on the GPU: cuBLAS matmuls over vocabulary chunks and two
Triton kernels, exact, never holding the ``N x V`` logits.

With logits :math:`z = (h W^\top + b) / T` (``h`` ``(N, d)``, ``W`` ``(V, d)``), class weights
:math:`w_c` (1 if none), :math:`W_\Sigma = \sum_c w_c` and label smoothing :math:`\varepsilon`:

.. math::
    \ell_i = (1-\varepsilon)\, w_{y_i} (\mathrm{lse}_i - z_{i y_i})
             + \tfrac{\varepsilon}{V} (W_\Sigma\, \mathrm{lse}_i - \textstyle\sum_c w_c z_{ic}),
    \qquad
    \frac{\partial \ell_i}{\partial z_{ic}} = p_{ic}\,\big((1-\varepsilon) w_{y_i}
        + \tfrac{\varepsilon}{V} W_\Sigma\big) - (1-\varepsilon) w_{y_i} [c = y_i]
        - \tfrac{\varepsilon}{V} w_c

(torch's definition; ignored rows count nowhere). Two passes over vocabulary chunks of
``Vc`` columns (and row blocks of ``R`` rows when ``N * Vc`` exceeds the budget):

1. **forward**: ``logits = h_R @ W_c^T`` (fp32 output for fp16/bf16 inputs), and
   ``_stats_kernel`` merges each row's online normalizer ``(max, sum)`` (Milakov &
   Gimelshein), the target logit and ``sum_c w_c z_c`` into running ``(N,)`` vectors.
2. **backward**: the same logits are recomputed; ``_grad_kernel`` turns them into
   ``dlogits`` scaled by the incoming gradient (in place: bf16 ``dlogits`` overwrite the
   front of their fp32 row), then ``grad_h += dlogits @ W_c`` (fp32 accumulator ``(N, d)``)
   and ``grad_W[c] = dlogits^T @ h`` (written once, fp32 accumulation inside cuBLAS; an fp32
   ``(Vc, d)`` accumulator only when rows are blocked).

Under ``create_graph=True`` (a second derivative) the backward is instead the same loss in
differentiable torch ops over the whole ``N x V`` logits (:func:`_differentiable_grads`):
exact, and as large as the naive form.

So grad_W is rounded once, as in the naive form, and no ``(V, d)`` fp32 accumulator exists.
For fp16/bf16 the ``(N, d)`` fp32 grad_h accumulator is kept in the last ``2N`` rows of grad_W,
not yet written (those vocabulary rows are processed last, then recomputed once more for their
grad_W rows, the logits of each chunk held in rows of grad_W still unwritten), so memory above
the inputs is the gradients themselves plus one chunk of ``R * Vc`` fp32 logits (forward, and
backward before grad_h exists) or ``N * TAIL_COLUMNS`` of them (the last rows of grad_W). The
price is one recomputed matmul (four ``2 N V d`` matmuls instead of three, plus ``2N / V`` of
one for the borrowed rows). Gradients are computed in backward for every reduction (with this
vocabulary-outer order computing them in forward saves nothing and would hold them from
forward to backward).

Peak memory above the inputs at N=8192, d=4096, V=128256, bf16, default budget ``2^24``
(``R, Vc = 8192, 2048``): grad_W ``V d 2`` = 1002 MiB, grad_h ``N d 2`` = 64 MiB, a chunk
``2^24 * 4`` = 64 MiB, the last rows' buffer ``N * 16 * 4`` = 0.5 MiB. Forward: 64; backward
while grad_h accumulates inside grad_W: 1002 + 64 = 1066; after: 1002 + 64 + 0.5 = 1066.5 MiB,
plus ``(N,)`` vectors (0.23 MiB measured). Measured on an H100
(benchmarks/results/gpu_bench_h100_notes.md) while the last rows had a buffer of their own
(``2^24 / 4`` logits, 16 MiB): 1082.2 MiB and 62.6 ms forward+backward, vs Liger 1128.7 MiB /
64.4 ms and CCE 1067.6 MiB / 88.6 ms.
"""

from __future__ import annotations

import functools
from dataclasses import dataclass

import torch
import torch.nn.functional as F
import triton
import triton.language as tl

from . import _launch as L
from ._softmax import _acc

#: Logits held per chunk when ``chunk_size`` is not given (float32 elements).
CHUNK_ELEMENTS = 1 << 24
#: Vocabulary chunks are multiples of this (when the vocabulary is larger).
VOCAB_ALIGN = 128
#: Entries per loop iteration of the two kernels.
TILE = 2048
#: Columns per chunk of the last grad_W rows, whose logits have no unwritten rows left to
#: live in (see :func:`_fill_borrowed_rows`): ``N * TAIL_COLUMNS`` float32 logits.
TAIL_COLUMNS = 16
#: Keep the float32 grad_h accumulator of fp16/bf16 inputs in the last rows of grad_W (off:
#: a tensor of its own, ``N d 4`` bytes more, no recomputed rows).
BORROW_ROWS = True


@triton.jit
def _stats_kernel(Lg, ld, Bias, T, CW, Mx, Sx, ZT, ZS, vc, v0, inv_t, HAS_BIAS: tl.constexpr,
                  HAS_CW: tl.constexpr, SMOOTH: tl.constexpr, TILE: tl.constexpr,
                  F64: tl.constexpr):
    """Program ``row``: merge this chunk's ``(max, sum exp)`` of ``z = (logit + b) * inv_t``
    into ``(Mx, Sx)``; add the target's ``z`` to ``ZT`` and ``sum_c w_c z_c`` to ``ZS``."""
    row = tl.program_id(0).to(tl.int64)
    t = tl.load(T + row) - v0
    cols = tl.arange(0, TILE)
    if F64:
        m = tl.full((TILE,), -float("inf"), tl.float64)
        d = tl.zeros((TILE,), tl.float64)
        zt = tl.zeros((TILE,), tl.float64)
        zs = tl.zeros((TILE,), tl.float64)
    else:
        m = tl.full((TILE,), -float("inf"), tl.float32)
        d = tl.zeros((TILE,), tl.float32)
        zt = tl.zeros((TILE,), tl.float32)
        zs = tl.zeros((TILE,), tl.float32)
    for off in range(0, vc, TILE):
        idx = off + cols
        ok = idx < vc
        z = _acc(tl.load(Lg + row * ld + idx, mask=ok, other=-float("inf")), F64)
        if HAS_BIAS:
            z += _acc(tl.load(Bias + idx, mask=ok, other=0.0), F64)
        z = z * inv_t
        m_new = tl.maximum(m, z)
        safe = tl.where(m_new == -float("inf"), 0.0, m_new)
        d = d * tl.exp(m - safe) + tl.exp(z - safe)
        m = m_new
        zt += tl.where(idx == t, z, 0.0)
        if SMOOTH:
            if HAS_CW:
                zs += tl.where(ok, z * _acc(tl.load(CW + idx, mask=ok, other=0.0), F64), 0.0)
            else:
                zs += tl.where(ok, z, 0.0)
    mc = tl.max(m, 0)
    safe = tl.where(mc == -float("inf"), 0.0, mc)
    dc = tl.sum(d * tl.exp(m - safe), 0)
    m_old = tl.load(Mx + row)
    d_old = tl.load(Sx + row)
    m_new = tl.maximum(m_old, mc)
    safe = tl.where(m_new == -float("inf"), 0.0, m_new)
    tl.store(Sx + row, d_old * tl.exp(m_old - safe) + dc * tl.exp(mc - safe))
    tl.store(Mx + row, m_new)
    tl.store(ZT + row, tl.load(ZT + row) + tl.sum(zt, 0))
    if SMOOTH:
        tl.store(ZS + row, tl.load(ZS + row) + tl.sum(zs, 0))


@triton.jit
def _grad_kernel(Lg, ld, G, ldg, Bias, T, CW, LSE, CP, CT, RS, vc, v0, inv_t, eps_v,
                 HAS_BIAS: tl.constexpr, HAS_CW: tl.constexpr, SMOOTH: tl.constexpr,
                 IN_PLACE: tl.constexpr, TILE: tl.constexpr, F64: tl.constexpr):
    """Program ``row``: ``G = RS * inv_t * (CP * p - CT * [c = t] - eps_v * w_c)`` with
    ``p = exp(z - LSE)``. ``IN_PLACE``: ``G`` overlays the front of the row of ``Lg`` (a
    narrower dtype), so every tile is loaded by all threads before any of them stores."""
    row = tl.program_id(0).to(tl.int64)
    t = tl.load(T + row) - v0
    lse = tl.load(LSE + row)
    cp = tl.load(CP + row)
    ct = tl.load(CT + row)
    rs = tl.load(RS + row) * inv_t
    cols = tl.arange(0, TILE)
    for off in range(0, vc, TILE):
        idx = off + cols
        ok = idx < vc
        z = _acc(tl.load(Lg + row * ld + idx, mask=ok, other=0.0), F64)
        if HAS_BIAS:
            z += _acc(tl.load(Bias + idx, mask=ok, other=0.0), F64)
        g = cp * tl.exp(z * inv_t - lse) - tl.where(idx == t, ct, 0.0)
        if SMOOTH:
            if HAS_CW:
                g -= eps_v * _acc(tl.load(CW + idx, mask=ok, other=0.0), F64)
            else:
                g -= eps_v
        if IN_PLACE:
            tl.debug_barrier()
        tl.store(G + row * ldg + idx, (g * rs).to(G.dtype.element_ty), mask=ok)


# ------------------------------------------------------------------ matmul helpers
@functools.cache
def _native_f32_out(device: str, dtype: torch.dtype) -> bool:
    """Whether ``torch.mm``/``torch.addmm`` take ``out_dtype=float32`` for ``dtype`` inputs
    here (CUDA, torch >= 2.8)."""
    try:
        a = torch.ones(8, 8, dtype=dtype, device=device)
        o = torch.zeros(8, 8, dtype=torch.float32, device=device)
        torch.mm(a, a, out_dtype=torch.float32, out=o)
        torch.addmm(o, a, a, out_dtype=torch.float32, out=o)
        return bool((o == 16).all())
    except (TypeError, RuntimeError, NotImplementedError):
        return False


def _mm(a: torch.Tensor, b: torch.Tensor, out: torch.Tensor) -> None:
    """``out = a @ b`` in ``out``'s dtype (float32 output of fp16/bf16 inputs)."""
    if out.dtype == a.dtype:
        torch.mm(a, b, out=out)
    elif _native_f32_out(str(a.device), a.dtype):
        torch.mm(a, b, out_dtype=out.dtype, out=out)
    else:
        torch.mm(a.to(out.dtype), b.to(out.dtype), out=out)


def _addmm_(acc: torch.Tensor, a: torch.Tensor, b: torch.Tensor) -> None:
    """``acc += a @ b`` accumulated in ``acc``'s dtype."""
    if acc.dtype == a.dtype:
        acc.addmm_(a, b)
    elif _native_f32_out(str(a.device), a.dtype):
        torch.addmm(acc, a, b, out_dtype=acc.dtype, out=acc)
    else:
        acc.addmm_(a.to(acc.dtype), b.to(acc.dtype))


# ------------------------------------------------------------------ the two passes
@dataclass(frozen=True)
class Options:
    reduction: str
    label_smoothing: float
    inv_t: float
    budget: int  # logits per chunk


def plan(n: int, v: int, budget: int) -> tuple[int, int]:
    """(rows ``R``, vocabulary columns ``Vc``) per chunk with ``R * Vc <= budget`` where
    possible: all rows and as many columns as fit (multiples of ``VOCAB_ALIGN``), rows blocked
    only when even ``VOCAB_ALIGN`` columns of all rows do not fit."""
    n, v = max(n, 1), max(v, 1)
    vc = budget // n
    if vc >= v:
        vc = v
    else:
        vc = min(v, max(VOCAB_ALIGN, vc // VOCAB_ALIGN * VOCAB_ALIGN))
    return min(n, max(1, budget // vc)), vc


def _chunks(n: int, lo: int, hi: int, budget: int):
    """(v0, v1, r0, r1) of the chunks covering vocabulary rows ``[lo, hi)`` and all rows."""
    r, vc = plan(n, hi - lo, budget)
    for v0 in range(lo, hi, vc):
        for r0 in range(0, n, r):
            yield v0, min(v0 + vc, hi), r0, min(r0 + r, n)


def _logit_buffer(h: torch.Tensor, n: int, v: int, budget: int) -> torch.Tensor:
    r, vc = plan(n, v, budget)
    return torch.empty(r * vc, dtype=L.acc_dtype(h), device=h.device)


def forward_stats(h, w, b, t, cw, opts: Options):
    """Pass 1: ``lse``, the target's logit and ``sum_c w_c z_c`` per row (compute dtype)."""
    n, v = h.shape[0], w.shape[0]
    acc = L.acc_dtype(h)
    mx = torch.full((n,), float("-inf"), dtype=acc, device=h.device)
    sx, zt, zs = (torch.zeros(n, dtype=acc, device=h.device) for _ in range(3))
    buf = _logit_buffer(h, n, v, opts.budget)
    smooth = opts.label_smoothing > 0
    for v0, v1, r0, r1 in _chunks(n, 0, v, opts.budget):
        lg = buf[: (r1 - r0) * (v1 - v0)].view(r1 - r0, v1 - v0)
        _mm(h[r0:r1], w[v0:v1].T, lg)
        L.PATHS["linear_ce.stats"] += 1
        _stats_kernel[(r1 - r0,)](
            lg, v1 - v0, b[v0:v1] if b is not None else lg, t[r0:r1],
            cw[v0:v1] if cw is not None else lg, mx[r0:r1], sx[r0:r1], zt[r0:r1], zs[r0:r1],
            v1 - v0, v0, opts.inv_t, HAS_BIAS=b is not None, HAS_CW=cw is not None,
            SMOOTH=smooth, TILE=min(TILE, L.next_pow2(v1 - v0)), F64=L.is_f64(h), num_warps=8)
    return mx + sx.log(), zt, zs


def _grad_chunk(h, w, b, t, cw, lse, cp, ct, rs, opts, chunk, buf, gh, gw, gb, row_blocked):
    """dlogits of one chunk; ``gh += G @ W_c``, ``gw[c] = G^T @ h`` (or, with row blocks,
    accumulated in the float32 ``row_blocked`` buffer), ``gb[c] += sum G`` for those given."""
    v0, v1, r0, r1 = chunk
    rows, cols = r1 - r0, v1 - v0
    lg = buf[: rows * cols].view(rows, cols)
    _mm(h[r0:r1], w[v0:v1].T, lg)
    in_place = lg.dtype != h.dtype  # bf16/fp16 dlogits written over their fp32 logits
    g = lg.view(h.dtype)[:, :cols] if in_place else lg
    L.PATHS["linear_ce.grad"] += 1
    _grad_kernel[(rows,)](
        lg, cols, g, g.stride(0), b[v0:v1] if b is not None else lg, t[r0:r1],
        cw[v0:v1] if cw is not None else lg, lse[r0:r1], cp[r0:r1], ct[r0:r1], rs[r0:r1],
        cols, v0, opts.inv_t, opts.label_smoothing / w.shape[0], HAS_BIAS=b is not None,
        HAS_CW=cw is not None, SMOOTH=opts.label_smoothing > 0, IN_PLACE=in_place,
        TILE=min(TILE, L.next_pow2(cols)), F64=L.is_f64(h), num_warps=8)
    if gh is not None:
        _addmm_(gh[r0:r1], g, w[v0:v1])
    if gw is not None:
        if row_blocked is None:
            torch.mm(g.T, h, out=gw[v0:v1])
        else:
            if r0 == 0:
                row_blocked[:cols].zero_()
            _addmm_(row_blocked[:cols], g.T, h[r0:r1])
            if r1 == h.shape[0]:
                gw[v0:v1] = row_blocked[:cols]
    if gb is not None:
        gb[v0:v1] += g.sum(0, dtype=gb.dtype)


def _borrowed_rows(n: int, v: int, d: int, h: torch.Tensor, w: torch.Tensor, rows: int) -> int:
    """Rows at the end of grad_W that can hold the float32 grad_h accumulator (0: none)."""
    if not BORROW_ROWS or L.acc_dtype(h) == h.dtype or d % 2 or rows < n:
        return 0
    tail = L.cdiv(n * d * 4, d * w.element_size())
    return tail if tail <= v // 2 else 0


def backward_grads(h, w, b, t, cw, lse, cp, ct, rs, opts: Options, needs):
    """Pass 2: gradients of ``sum_i rs_i * loss_i`` for ``h``, ``w``, ``b`` (those asked).

    For fp16/bf16 the float32 accumulator of grad_h lives in the last ``2N`` rows of grad_W
    (still unwritten): those vocabulary rows are processed last, once for grad_h (and bias),
    then, after grad_h is rounded out of the way, once more for their rows of grad_W
    (:func:`_fill_borrowed_rows`). Memory above the gradients: one chunk of logits while grad_h
    is accumulated, ``N * TAIL_COLUMNS`` logits once it exists.
    """
    need_h, need_w, need_b = needs
    n, v, d = h.shape[0], w.shape[0], h.shape[1]
    r, vc = plan(n, v, opts.budget)
    acc = L.acc_dtype(h)
    gw = torch.empty_like(w) if need_w else None
    gb = torch.zeros(v, dtype=acc, device=h.device) if need_b else None
    row_blocked = torch.empty((vc, d), dtype=acc, device=h.device) if need_w and r < n else None
    tail = _borrowed_rows(n, v, d, h, w, r) if need_h and need_w else 0
    split = v - tail
    gh = None
    if tail:
        L.PATHS["linear_ce.borrowed"] += 1
        gh = gw[split:].view(acc).reshape(-1)[: n * d].view(n, d).zero_()
    elif need_h:
        gh = torch.zeros(h.shape, dtype=acc, device=h.device)
    buf = _logit_buffer(h, n, v, opts.budget)
    args = (h, w, b, t, cw, lse, cp, ct, rs, opts)
    for chunk in _chunks(n, 0, split, opts.budget):
        _grad_chunk(*args, chunk, buf, gh, gw, gb, row_blocked)
    if not tail:
        return (None if gh is None else gh.to(h.dtype), gw,
                None if gb is None else gb.to(b.dtype))
    for chunk in _chunks(n, split, v, opts.budget):
        _grad_chunk(*args, chunk, buf, gh, None, gb, None)
    del buf
    gh = gh.to(h.dtype, copy=True)
    _fill_borrowed_rows(args, gw, split)
    return gh, gw, None if gb is None else gb.to(b.dtype)


def _fill_borrowed_rows(args, gw, lo):
    """Write grad_W rows ``[lo, V)`` (free again once grad_h is rounded out of them) with no
    chunk buffer of their own: the logits of rows ``[lo, mid)`` live in the unwritten rows
    ``[mid, V)`` viewed as float32 (at most ``budget`` of them), then ``[mid, V)`` is halved
    the same way until that back half holds fewer than ``TAIL_COLUMNS`` columns of logits; the
    rows left use a buffer of ``N * TAIL_COLUMNS`` logits. Every chunk has all rows (grad_W
    rows are written once)."""
    h, opts = args[0], args[-1]
    n, v, acc = h.shape[0], gw.shape[0], L.acc_dtype(h)
    while True:
        mid = (lo + v) // 2
        buf = gw[mid:].view(acc).reshape(-1)[: opts.budget]
        cols = buf.numel() // n
        if mid == lo or cols < TAIL_COLUMNS:
            break
        L.PATHS["linear_ce.carved"] += 1
        for v0 in range(lo, mid, cols):
            _grad_chunk(*args, (v0, min(v0 + cols, mid), 0, n), buf, None, gw, None, None)
        lo = mid
    cols = min(TAIL_COLUMNS, v - lo)
    buf = torch.empty(n * cols, dtype=acc, device=h.device)
    for v0 in range(lo, v, cols):
        _grad_chunk(*args, (v0, min(v0 + cols, v), 0, n), buf, None, gw, None, None)


def _row_coefficients(t, keep, cw, v, eps, acc):
    """Per-row ``w_y``, ``CP = (1-e) w_y + (e/V) W_sum`` and ``CT = (1-e) w_y``."""
    wy = torch.ones(t.shape, dtype=acc, device=t.device) if cw is None else cw[t].to(acc)
    wsum = float(v) if cw is None else cw.sum().to(acc)
    return wy, (1 - eps) * wy + (eps / v) * wsum, (1 - eps) * wy, wsum


class LinearCrossEntropyFunction(torch.autograd.Function):
    """Rows ``h`` ``(N, d)``, ``w`` ``(V, d)``, optional ``b`` ``(V,)``, safe targets ``t``,
    ``keep`` mask, class weights ``cw``; returns per-row losses or their reduction."""

    @staticmethod
    def forward(ctx, h, w, b, t, keep, cw, opts: Options):
        acc = L.acc_dtype(h)
        lse, zt, zs = forward_stats(h, w, b, t, cw, opts)
        eps, v = opts.label_smoothing, w.shape[0]
        wy, _cp, _ct, wsum = _row_coefficients(t, keep, cw, v, eps, acc)
        loss = (1 - eps) * wy * (lse - zt)
        if eps > 0:
            loss = loss + (eps / v) * (wsum * lse - zs)
        loss = torch.where(keep, loss, torch.zeros((), dtype=acc, device=h.device))
        denom = torch.ones((), dtype=acc, device=h.device)
        if opts.reduction == "mean":
            denom = torch.where(keep, wy, 0.0).sum()
            denom = torch.where(denom != 0, denom, torch.ones_like(denom))
        ctx.opts = opts
        ctx.save_for_backward(h, w, b, t, keep, cw, lse, denom)
        return loss if opts.reduction == "none" else loss.sum() / denom

    @staticmethod
    def backward(ctx, g):
        h, w, b, t, keep, cw, lse, denom = ctx.saved_tensors
        opts = ctx.opts
        if torch.is_grad_enabled():  # create_graph=True: a gradient that has a graph
            return (*_differentiable_grads(ctx, g), None, None, None, None)
        acc = L.acc_dtype(h)
        _wy, cp, ct, _ = _row_coefficients(t, keep, cw, w.shape[0], opts.label_smoothing, acc)
        g = g.to(acc)
        rs = (g if opts.reduction == "none" else (g / denom).expand(h.shape[0])) * keep
        needs = (ctx.needs_input_grad[0], ctx.needs_input_grad[1],
                 b is not None and ctx.needs_input_grad[2])
        gh, gw, gb = backward_grads(h, w, b, t, cw, lse, cp, ct, rs.contiguous(), opts, needs)
        return gh, gw, gb, None, None, None, None


def _differentiable_grads(ctx, g):
    """The input gradients of :class:`LinearCrossEntropyFunction` by autograd through the
    same loss in torch ops (``F.cross_entropy`` of the full logits: the same definition of
    class weights and label smoothing), differentiable again."""
    h, w, b, t, keep, cw, _lse, denom = ctx.saved_tensors
    opts = ctx.opts
    needed = [x for x, n in zip((h, w, b), ctx.needs_input_grad[:3], strict=True)
              if x is not None and n]
    with torch.enable_grad():
        z = (h @ w.T).to(L.acc_dtype(h))
        z = (z if b is None else z + b.to(z.dtype)) * opts.inv_t
        rows = F.cross_entropy(z, t, weight=cw, reduction="none",
                               label_smoothing=opts.label_smoothing)
        rows = torch.where(keep, rows, torch.zeros((), dtype=rows.dtype, device=rows.device))
        total = (rows * g).sum() if opts.reduction == "none" else rows.sum() / denom * g
        grads = iter(torch.autograd.grad(total, needed, create_graph=True))
    return [next(grads) if x is not None and n else None
            for x, n in zip((h, w, b), ctx.needs_input_grad[:3], strict=True)]


def linear_ce(h, w, b, t, keep, cw, *, reduction: str, label_smoothing: float,
              temperature: float, chunk_size: int | None) -> torch.Tensor:
    r"""Row function of ``linear_cross_entropy`` (``mapping="softmax"``, float temperature):
    rows ``h`` ``(N, d)``, ``w`` ``(V, d)``, ``b`` ``(V,)`` or ``None`` (one dtype), safe
    targets ``t``, ``keep`` mask and class weights ``cw`` (compute dtype), all validated by
    :func:`softmaxlab.losses.linear_cross_entropy`.

    .. math:: \ell_i = -\log \mathrm{softmax}((W h_i + b)/T)_{y_i}

    Returns the per-row losses ``(N,)`` (``reduction="none"``) or their reduction, in the
    compute dtype. At most ``chunk_size * V`` logits exist at a time (default:
    :data:`CHUNK_ELEMENTS`).
    """
    budget = CHUNK_ELEMENTS if chunk_size is None else chunk_size * w.shape[0]
    inv_t = 1.0 / float(temperature)
    if h.dtype == torch.float64 and inv_t != 1.0:  # a kernel's float argument is float32
        h, b, inv_t = h * inv_t, None if b is None else b * inv_t, 1.0
    opts = Options(reduction, label_smoothing, inv_t, budget)
    return LinearCrossEntropyFunction.apply(h.contiguous(), w.contiguous(), b, t, keep, cw, opts)
