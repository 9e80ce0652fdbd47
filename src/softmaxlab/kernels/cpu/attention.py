r"""Memory-efficient exact attention on CPU: blocked over queries (and heads), flash-style
recomputation in the backward pass, any normalizer; torch ops only (its GEMMs and the
mapping's own row kernel run on torch's threads).

The canonical layout is the one of :mod:`softmaxlab.attention._front`: ``q`` ``(B, Hk, G*L,
E)``, ``k`` ``(B, Hk, S, E)``, ``v`` ``(B, Hk, S, Ev)``, a 5-D ``mask`` ``(Bm, Hm, Gm, Lm,
Sm)`` (each 1 or full), a ``sink`` ``(Bs, Hs, Gs)``. ``norm`` is the bound normalizer
(:class:`softmaxlab.attention.normalizers.BoundNormalizer`, passed in by the caller: this
module imports nothing above the kernels).

Per block of ``bq`` query positions (all ``G`` query heads of a key/value head together,
several key/value heads and batch entries when they fit :data:`BLOCK_ELEMS`):

1. scores ``s = (scale * q_blk) @ k^T``, into one buffer that every block reuses, over the
   keys the block can see (under ``is_causal`` only the prefix ``k[:l1]``: the fully masked
   key blocks are never computed), the mask and the causal triangle applied (``-inf`` =
   excluded);
2. ``p = norm.forward(s)``: the mapping's exact row function on rows of ``S`` entries (one
   pass of the online normalizer inside softmax's row kernel, the exact threshold search of
   sparsemax/entmax15, bisection for alpha-entmax, ...);
3. ``out_blk = dropout(p) @ v``; for the threshold mappings only the key range holding the
   block's support enters the product (leading and trailing all-zero key blocks are skipped).

Peak transient memory is one block, at most :data:`BLOCK_ELEMS` scores (and the mapping's
temporaries of that size; :mod:`.attention_sparse` uses these blocks, larger), whatever
``L`` and ``S`` are as long as one query row of a head's group fits; the result and the
saved tensors are O(L D). The backward pass
recomputes each block's scores and ``p`` and accumulates ``dq``, ``dk``, ``dv`` (and the
gradients of a float mask and of the sink, when asked) block by block.

Dropout uses a counter-based hash of ``(seed, flat score index)`` (:func:`dropout_keep`), so
forward and backward draw the same mask without storing it, and any block order gives the
same result.
"""

from __future__ import annotations

import math

import torch

NEG_INF = float("-inf")
#: Score entries per block (all heads, rows and keys of one block together).
BLOCK_ELEMS = 1 << 21
#: Fewest query rows per block before heads are split into smaller groups.
MIN_ROWS = 16
_MIX1 = -4658895280553007687  # 0xBF58476D1CE4E5B9 as int64
_MIX2 = -7723592293110705685  # 0x94D049BB133111EB
_GOLDEN = -7046029254386353131  # 0x9E3779B97F4A7C15


def _srl(x: torch.Tensor, k: int) -> torch.Tensor:
    """Logical right shift of int64 by ``k``."""
    return (x >> k) & ((1 << (64 - k)) - 1)


def dropout_keep(seed: torch.Tensor, index: torch.Tensor, p: float) -> torch.Tensor:
    """Which entries dropout keeps: splitmix64 of ``index + seed * golden``; 24 bits of it
    compared with ``p * 2^24`` (keep probability ``1 - p`` to within ``2^-24``)."""
    z = index + seed.to(torch.int64) * _GOLDEN
    z = (z ^ _srl(z, 30)) * _MIX1
    z = (z ^ _srl(z, 27)) * _MIX2
    z = z ^ _srl(z, 31)
    return _srl(z, 40) >= int(p * (1 << 24))


def score_index(B: int, Hk: int, G: int, L: int, S: int, b: slice, h: slice, l: slice,
                s_end: int, device) -> torch.Tensor:
    """Flat indices ``(((b Hk + h) G + g) L + l) S + j`` of a block's scores, 5-D
    ``(nb, nh, G, bq, s_end)``."""
    ar = lambda sl, n: torch.arange(*sl.indices(n), device=device, dtype=torch.int64)  # noqa: E731
    bi, hi, li = ar(b, B), ar(h, Hk), ar(l, L)
    gi = torch.arange(G, device=device, dtype=torch.int64)
    base = ((bi[:, None, None, None] * Hk + hi[None, :, None, None]) * G
            + gi[None, None, :, None]) * L + li[None, None, None, :]
    return base[..., None] * S + torch.arange(s_end, device=device, dtype=torch.int64)


def _plan(B: int, Hk: int, G: int, L: int, S: int, budget: int) -> tuple[int, int, int]:
    """(batch entries, key/value heads, query positions) per block of ``budget`` scores."""
    budget = max(budget, 1)
    row = G * max(S, 1)  # scores of one query position of one key/value head
    if Hk * row * MIN_ROWS <= budget:
        bq = min(L, max(MIN_ROWS, budget // (Hk * row)))
        nb = max(1, min(B, budget // (Hk * row * bq))) if bq == L else 1
        return nb, Hk, bq
    nh = max(1, budget // (row * MIN_ROWS))
    return 1, nh, min(L, max(1, budget // (nh * row)))


def _sub(t: torch.Tensor, dim: int, sl: slice) -> torch.Tensor:
    """``t`` sliced along ``dim`` unless it is broadcast there (size 1)."""
    if t.shape[dim] == 1:
        return t
    return t.narrow(dim, sl.start, sl.stop - sl.start)


class _Block:
    """One block: where it is, its scores and (unless ``norm`` is ``None``) probabilities."""

    def __init__(self, q5, k, mask, sink, causal, scale, norm, b, h, l, dims, buf):
        _, _, G, _, S = dims
        self.b, self.h, self.l = b, h, l
        nb, nh, bq = b.stop - b.start, h.stop - h.start, l.stop - l.start
        self.s_end = s_end = min(S, l.stop) if causal else S
        self.qb = q5[b, h, :, l].reshape(nb, nh, G * bq, q5.shape[-1])
        self.kb = k[b, h, :s_end]
        shape = (nb, nh, G * bq, s_end)
        sc = torch.matmul(self.qb * scale, self.kb.transpose(-1, -2),
                          out=buf[:math.prod(shape)].view(shape))
        s5 = sc.view(nb, nh, G, bq, s_end)
        if mask is not None:
            mb = _sub(_sub(_sub(mask, 0, b), 1, h), 3, l)
            mb = mb[..., :s_end] if mb.shape[-1] != 1 else mb
            if mb.dtype == torch.bool:
                s5.masked_fill_(~mb, NEG_INF)
            else:
                s5.add_(mb)
        if causal and l.start < s_end - 1:
            rows = torch.arange(l.start, l.stop, device=sc.device)
            cols = torch.arange(s_end, device=sc.device)
            s5.masked_fill_(cols[None, :] > rows[:, None], NEG_INF)
        self.sink = None
        if sink is not None:
            sb = _sub(_sub(sink, 0, b), 1, h)[..., None, None]
            self.sink = sb.expand(nb, nh, G, bq, 1).reshape(nb, nh, G * bq, 1)
        self.s = sc
        self.p = None if norm is None else norm.forward(sc, self.sink)

    def keep(self, seed, dims, p: float) -> torch.Tensor:
        idx = score_index(*dims, self.b, self.h, self.l, self.s_end, self.s.device)
        return dropout_keep(seed, idx, p).reshape(self.p.shape)

    def support_range(self, pd: torch.Tensor) -> tuple[int, int]:
        """The key range ``[c0, c1)`` outside which ``pd`` is zero in every row."""
        cols = (pd != 0).flatten(0, -2).any(0).nonzero()
        if cols.numel() == 0:
            return 0, 0
        return int(cols[0]), int(cols[-1]) + 1


def _blocks(q, k, mask, sink, causal, L, scale, norm, factor: int = 1):
    """The blocks of at most ``factor * BLOCK_ELEMS`` scores (and their ``dims``)."""
    B, Hk, R, E = q.shape
    G, S = R // L, k.shape[-2]
    dims = (B, Hk, G, L, S)
    q5 = q.view(B, Hk, G, L, E) if q.is_contiguous() else q.reshape(B, Hk, G, L, E)
    nb, nh, bq = _plan(B, Hk, G, L, S, factor * BLOCK_ELEMS)
    buf = q.new_empty(min(nb, B) * min(nh, Hk) * G * min(bq, L) * S)  # each block's scores
    for b0 in range(0, B, nb):
        for h0 in range(0, Hk, nh):
            for l0 in range(0, L, bq):
                yield _Block(q5, k, mask, sink, causal, scale, norm, slice(b0, min(b0 + nb, B)),
                             slice(h0, min(h0 + nh, Hk)), slice(l0, min(l0 + bq, L)), dims,
                             buf), dims


def _rows5(t: torch.Tensor, G: int, L: int) -> torch.Tensor:
    return t.view(t.shape[0], t.shape[1], G, L, t.shape[-1])


def attention_forward(q, k, v, mask, sink, seed, causal: bool, L: int, scale: float,
                      dropout_p: float, norm, want_stats: bool):
    """``(out (B, Hk, G*L, Ev), stats (B, Hk, G*L, 2) or (0,))`` of the canonical call."""
    B, Hk, R, _ = q.shape
    G = R // L
    out = q.new_empty(B, Hk, R, v.shape[-1])
    stats = q.new_empty(B, Hk, R, 2) if want_stats else q.new_empty(0)
    o5 = _rows5(out, G, L)
    st5 = _rows5(stats, G, L) if want_stats else None
    sparse = norm.kind != "exp"
    for blk, dims in _blocks(q, k, mask, sink, causal, L, scale, norm):
        p = blk.p
        nb, nh = p.shape[:2]
        bq = blk.l.stop - blk.l.start
        if st5 is not None:
            st5[blk.b, blk.h, :, blk.l] = norm.stats(blk.s, p, blk.sink).view(nb, nh, G, bq, 2)
        pd = p
        if dropout_p > 0:
            pd = p * blk.keep(seed, dims, dropout_p) / (1 - dropout_p)
        vb = v[blk.b, blk.h, :blk.s_end]
        if sparse:
            c0, c1 = blk.support_range(pd)
            pd, vb = pd[..., c0:c1], vb[..., c0:c1, :]
        o5[blk.b, blk.h, :, blk.l] = torch.matmul(pd, vb).view(nb, nh, G, bq, -1)
    return out, stats


def _reduce_to(t: torch.Tensor, shape: tuple[int, ...]) -> torch.Tensor:
    """``t`` summed over the dims where ``shape`` is 1 (a broadcast input's gradient)."""
    dims = [i for i, (a, s) in enumerate(zip(t.shape, shape, strict=True)) if s == 1 and a != 1]
    return t.sum(dims, keepdim=True) if dims else t


def attention_backward(dout, q, k, v, mask, sink, seed, causal: bool, L: int, scale: float,
                       dropout_p: float, norm, mask_grad: bool, sink_grad: bool):
    """``(dq, dk, dv, dmask, dsink)``; ``dmask``/``dsink`` are empty unless asked for."""
    G = q.shape[-2] // L
    dq = torch.empty_like(q)
    dk = torch.zeros_like(k)
    dv = torch.zeros_like(v)
    dmask = torch.zeros(mask.shape, dtype=q.dtype, device=q.device) if mask_grad else q.new_empty(0)
    dsink = torch.zeros(sink.shape, dtype=q.dtype, device=q.device) if sink_grad else q.new_empty(0)
    dq5, do5 = _rows5(dq, G, L), _rows5(dout, G, L)
    sparse = norm.kind != "exp"
    for blk, dims in _blocks(q, k, mask, sink, causal, L, scale, norm):
        p = blk.p
        nb, nh = p.shape[:2]
        bq = blk.l.stop - blk.l.start
        dob = do5[blk.b, blk.h, :, blk.l].reshape(nb, nh, G * bq, -1)
        keep = blk.keep(seed, dims, dropout_p) if dropout_p > 0 else None
        pd = p if keep is None else p * keep / (1 - dropout_p)
        c0, c1 = blk.support_range(p) if sparse else (0, blk.s_end)
        s_end = blk.s_end
        vb = v[blk.b, blk.h, c0:c1]
        kb = blk.kb[..., c0:c1, :]
        dv[blk.b, blk.h, c0:c1] += torch.matmul(pd[..., c0:c1].transpose(-1, -2), dob)
        dp = torch.matmul(dob, vb.transpose(-1, -2))
        if keep is not None:
            dp = dp * keep[..., c0:c1] / (1 - dropout_p)
        if (c0, c1) != (0, s_end):  # a threshold map's support range: ds is 0 outside
            ds, dsink_rows = norm.backward(dp, p[..., c0:c1], blk.s[..., c0:c1], blk.sink)
        else:
            ds, dsink_rows = norm.backward(dp, p, blk.s, blk.sink)
        if mask_grad:
            tb = _sub(_sub(_sub(dmask, 0, blk.b), 1, blk.h), 3, blk.l)
            d5 = ds.reshape(nb, nh, G, bq, c1 - c0)
            if tb.shape[-1] == 1:
                tb += _reduce_to(d5, (*tb.shape[:-1], c1 - c0)).sum(-1, keepdim=True)
            else:
                tb[..., c0:c1] += _reduce_to(d5, (*tb.shape[:-1], c1 - c0))
        if sink_grad and dsink_rows is not None:
            tb = _sub(_sub(dsink, 0, blk.b), 1, blk.h)
            tb += _reduce_to(dsink_rows.reshape(nb, nh, G, bq).sum(-1), tuple(tb.shape))
        ds = ds * scale
        dq5[blk.b, blk.h, :, blk.l] = torch.matmul(ds, kb).view(nb, nh, G, bq, -1)
        dk[blk.b, blk.h, c0:c1] += torch.matmul(ds.transpose(-1, -2), blk.qb)
    return dq, dk, dv, dmask, dsink
