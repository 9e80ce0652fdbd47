"""Attention as a PyTorch custom op pair: ``torch.ops.softmaxlab.attention`` and
``attention_backward``, with fake implementations, a registered autograd formula and vmap
rules, so that ``torch.compile(fullgraph=True)`` sees one opaque node and never the
``(L, S)`` scores.

The op computes in the canonical layout of :mod:`._front`; ``kernel`` names the
:class:`~softmaxlab.kernels.KernelSpec` (``cpu.attention``, ``triton.attention``) whose
module provides ``attention_forward`` and ``attention_backward``; ``mapping`` and ``key``
name the bound normalizer (:func:`.normalizers.bound_from_key`), which the op passes to the
kernel. ``seed`` (int64, shape ``()``) drives dropout's counter-based mask.

These ops live here and not in :mod:`softmaxlab.kernels.ops` because they compose the
registry's mappings (a layer above the kernels).
"""

from __future__ import annotations

import torch
from torch import Tensor

from ..kernels.ops import row_function
from .normalizers import bound_from_key


@torch.library.custom_op("softmaxlab::attention", mutates_args=())
def attention_op(q: Tensor, k: Tensor, v: Tensor, mask: Tensor | None, sink: Tensor | None,
                 seed: Tensor | None, causal: bool, L: int, scale: float, dropout_p: float,
                 mapping: str, key: str, want_stats: bool, kernel: str) -> tuple[Tensor, Tensor]:
    """``(out (B, Hk, G*L, Ev), stats (B, Hk, G*L, 2), or (0,) when not asked for)``."""
    norm = bound_from_key(mapping, key)
    return row_function(kernel, "attention_forward")(
        q.contiguous(), k.contiguous(), v.contiguous(), mask, sink, seed, causal, L, scale,
        dropout_p, norm, want_stats)


@torch.library.custom_op("softmaxlab::attention_backward", mutates_args=())
def attention_backward_op(dout: Tensor, q: Tensor, k: Tensor, v: Tensor, mask: Tensor | None,
                          sink: Tensor | None, seed: Tensor | None, causal: bool, L: int,
                          scale: float, dropout_p: float, mapping: str, key: str,
                          mask_grad: bool, sink_grad: bool,
                          kernel: str) -> tuple[Tensor, Tensor, Tensor, Tensor, Tensor]:
    """``(dq, dk, dv, dmask, dsink)``; ``dmask``/``dsink`` have shape (0,) unless asked."""
    norm = bound_from_key(mapping, key)
    return row_function(kernel, "attention_backward")(
        dout.contiguous(), q.contiguous(), k.contiguous(), v.contiguous(), mask, sink, seed,
        causal, L, scale, dropout_p, norm, mask_grad, sink_grad)


@attention_op.register_fake
def _(q, k, v, mask, sink, seed, causal, L, scale, dropout_p, mapping, key, want_stats,
      kernel):
    out = q.new_empty((*q.shape[:-1], v.shape[-1]))
    stats = q.new_empty((*q.shape[:-1], 2)) if want_stats else q.new_empty(0)
    return out, stats


@attention_backward_op.register_fake
def _(dout, q, k, v, mask, sink, seed, causal, L, scale, dropout_p, mapping, key, mask_grad,
      sink_grad, kernel):
    dmask = q.new_empty(mask.shape) if mask_grad and mask is not None else q.new_empty(0)
    dsink = q.new_empty(sink.shape) if sink_grad and sink is not None else q.new_empty(0)
    # contiguous, as the kernels return them (not q's strides: q may be a transposed view)
    return q.new_empty(q.shape), k.new_empty(k.shape), v.new_empty(v.shape), dmask, dsink


_NON_TENSOR = ("causal", "L", "scale", "dropout_p", "mapping", "key", "want_stats", "kernel")


def _setup(ctx, inputs, output):
    q, k, v, mask, sink, seed, *rest = inputs
    ctx.options = dict(zip(_NON_TENSOR, rest, strict=True))
    ctx.has_mask, ctx.has_sink = mask is not None, sink is not None
    ctx.mark_non_differentiable(output[1])
    ctx.save_for_backward(q, k, v, mask, sink, seed)


def _backward(ctx, dout, _dstats):
    q, k, v, mask, sink, seed = ctx.saved_tensors
    o = ctx.options
    mask_grad = bool(ctx.has_mask and ctx.needs_input_grad[3] and mask.is_floating_point())
    sink_grad = bool(ctx.has_sink and ctx.needs_input_grad[4])
    dq, dk, dv, dmask, dsink = attention_backward_op(
        dout, q, k, v, mask, sink, seed, o["causal"], o["L"], o["scale"], o["dropout_p"],
        o["mapping"], o["key"], mask_grad, sink_grad, o["kernel"])
    return (dq, dk, dv, dmask if mask_grad else None, dsink if sink_grad else None,
            *([None] * (1 + len(_NON_TENSOR))))


attention_op.register_autograd(_backward, setup_context=_setup)


# --------------------------------------------------------------------------- vmap rules
def _merge(t: Tensor | None, d: int | None, size: int, batch: int,
           full: bool) -> Tensor | None:
    """A canonical tensor (batch dim first) with the vmapped dim ``d`` merged into its batch
    dim, ``(size * batch, ...)``; with ``full=False`` a tensor broadcast over the batch (size
    1 there) and not vmapped stays broadcast."""
    if t is None:
        return None
    t = t.unsqueeze(0) if d is None else t.movedim(d, 0)
    if not full and d is None and t.shape[1] == 1:
        return t[0]
    t = t.expand(size, batch, *t.shape[2:])
    return t.reshape(size * batch, *t.shape[2:])


def _vmap_forward(info, in_dims, q, k, v, mask, sink, seed, *rest):
    dq, dk, dv, dm, ds, dseed = in_dims[:6]
    if dseed is not None:
        raise ValueError("vmap over the dropout seed is not supported")
    size = info.batch_size
    B = max(t.shape[0] if d is None else t.movedim(d, 0).shape[1]
            for t, d in ((q, dq), (k, dk), (v, dv)))
    out, stats = attention_op(
        _merge(q, dq, size, B, True), _merge(k, dk, size, B, True),
        _merge(v, dv, size, B, True), _merge(mask, dm, size, B, False),
        _merge(sink, ds, size, B, False), seed, *rest)
    out = out.reshape(size, B, *out.shape[1:])
    stats = stats.reshape(size, B, *stats.shape[1:]) if stats.numel() else stats.expand(size, 0)
    return (out, stats), (0, 0)


attention_op.register_vmap(_vmap_forward)
