r"""Vocabulary-parallel fused linear + cross-entropy: the output projection split by rows.

Each rank holds the rows ``[lo, hi)`` of the output projection ``weight`` (``(V_local, d)``,
and of ``bias``) and the full ``hidden`` states; the logits of a chunk of rows are made on
the rank, reduced with the collectives of :mod:`softmaxlab.distributed.cross_entropy` (one
max and one sum per chunk), and dropped: memory is ``O(chunk_size * V_local)`` as in the
single-process :func:`softmaxlab.losses.linear_cross_entropy`. For ``mean``/``sum`` the
gradients are computed in forward (one pass), ``hidden``'s then summed over the group in
one ``all_reduce`` of ``N x d`` (the all-reduce Megatron-LM's column-parallel output layer
does in backward), so every rank holds the single-process gradient.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch

from .. import losses as L
from .._constants import LOW_PRECISION
from .._registry import Mapping, resolve_log_mapping
from .._validation import check_bool, check_input, check_int, checks_values
from ..losses._common import check_label_smoothing, check_reduction
from ..losses.linear import CHUNK_ELEMENTS, _add_grads, _logits
from ._comm import Comm, Shard, _is_dtensor, local, vocab_shard
from ._targets import Targets, log_scores, targets
from .cross_entropy import nll_forward, nll_grad

__all__ = ["linear_cross_entropy"]


@dataclass(frozen=True)
class _Options:
    mapping: Mapping
    params: tuple
    reduction: str
    eps: float
    chunk_size: int
    reduce_hidden_grad: bool
    plain: bool  # softmax at temperature 1: the log-scores are the logits (in place)
    excluded: bool  # the bias has -inf entries


def _chunk_grad(h, w, b, tg: Targets, opts: _Options, buf, comm: Comm, scale=None, lse=None):
    """One chunk's per-row losses, per-row log-normalizers and (``scale`` given: the
    per-row weights of ``sum(scale * loss)``) its logits' gradient. With ``lse`` given the
    normalizers are not reduced again (backward of ``reduction="none"``)."""
    z = _logits(h, w, b, buf)
    need = scale is not None
    if opts.plain:
        l = z
    else:
        z = z.detach().requires_grad_(need)
        with torch.set_grad_enabled(need):
            l = log_scores(opts.mapping, z, dict(opts.params))
    excluded = torch.isneginf(l) if opts.excluded else None
    if lse is None:
        loss, p, lse = nll_forward(l.detach(), tg, opts.eps, comm, inplace=opts.plain)
    else:
        loss = None
        safe = lse.masked_fill(torch.isneginf(lse), 0.0)[:, None]
        p = l.detach().sub_(safe).exp_() if opts.plain else (l.detach() - safe).exp()
    if not need:
        return loss, lse, None
    g_l = nll_grad(scale, p, excluded, tg, opts.eps, inplace=True)
    if opts.plain:
        return loss, lse, g_l
    (g_z,) = torch.autograd.grad(l, z, g_l)
    return loss, lse, g_z


class _VocabParallelLinearCE(torch.autograd.Function):
    @staticmethod
    def forward(ctx, h, w, b, tg: Targets, denom, opts: _Options, comm: Comm):
        n, cs = h.shape[0], opts.chunk_size
        acc = torch.float32 if h.dtype in LOW_PRECISION else h.dtype
        eager = any(ctx.needs_input_grad[:3]) and opts.reduction != "none"
        buf = torch.empty(min(cs, n), w.shape[0], dtype=acc, device=h.device)
        loss = torch.zeros(n, dtype=acc, device=h.device)
        lse = torch.empty(n, dtype=acc, device=h.device)
        if eager:
            gh = torch.empty_like(h)
            gw = torch.zeros(w.shape, dtype=acc, device=w.device)
            gb = None if b is None else torch.zeros(w.shape[0], dtype=acc, device=w.device)
            scale = torch.full((min(cs, n),), 1.0, dtype=acc, device=h.device) / denom
        for s in range(0, n, cs):
            sl = slice(s, min(s + cs, n))
            loss[sl], lse[sl], g = _chunk_grad(h[sl], w, b, tg.rows(sl), opts, buf, comm,
                                               scale[: sl.stop - s] if eager else None)
            if eager:
                _add_grads(g, h[sl], w, sl, gh, gw, gb)
        ctx.opts, ctx.eager, ctx.tg, ctx.comm = opts, eager, tg, comm
        if eager:
            if ctx.needs_input_grad[0] and opts.reduce_hidden_grad:
                comm.all_reduce(gh)
            ctx.save_for_backward(gh, gw.to(w.dtype),
                                  None if b is None or gb is None else gb.to(b.dtype))
            return loss.sum() / denom
        ctx.save_for_backward(h, w, b, lse)
        return loss if opts.reduction == "none" else loss.sum() / denom

    @staticmethod
    def backward(ctx, g):
        if ctx.eager:
            # loss.backward(): hand over the saved gradients, no copy
            one = checks_values() and bool(g == 1)
            return (*(x if x is None or one else x * g for x in ctx.saved_tensors),
                    *([None] * 4))
        h, w, b, lse = ctx.saved_tensors
        opts, tg, n, cs = ctx.opts, ctx.tg, h.shape[0], ctx.opts.chunk_size
        acc = torch.float32 if h.dtype in LOW_PRECISION else h.dtype
        buf = torch.empty(min(cs, n), w.shape[0], dtype=acc, device=h.device)
        gh = torch.empty_like(h)
        gw = torch.zeros(w.shape, dtype=acc, device=w.device)
        gb = None if b is None else torch.zeros(w.shape[0], dtype=acc, device=w.device)
        g = g.to(acc).expand(n) if g.dim() == 0 else g.to(acc)
        for s in range(0, n, cs):
            sl = slice(s, min(s + cs, n))
            _, _, g_c = _chunk_grad(h[sl], w, b, tg.rows(sl), opts, buf, ctx.comm, g[sl],
                                    lse[sl])
            _add_grads(g_c, h[sl], w, sl, gh, gw, gb)
        if ctx.needs_input_grad[0] and opts.reduce_hidden_grad:
            ctx.comm.all_reduce(gh)
        return (gh, gw.to(w.dtype), None if b is None or gb is None else gb.to(b.dtype),
                *([None] * 4))


def linear_cross_entropy(
    hidden: torch.Tensor,
    weight_shard: torch.Tensor,
    target: torch.Tensor,
    *,
    bias: torch.Tensor | None = None,
    mapping: str = "softmax",
    chunk_size: int | None = None,
    class_weight: torch.Tensor | None = None,
    ignore_index: int = -100,
    reduction: str = "mean",
    label_smoothing: float = 0.0,
    group=None,
    reduce_hidden_grad: bool = True,
    **mapping_params,
) -> torch.Tensor:
    r"""Cross-entropy of ``hidden @ weight.T + bias`` with ``weight``'s rows (the
    vocabulary) split across the ranks of ``group``, without materializing the logits.

    Equal to the single-process :func:`softmaxlab.losses.linear_cross_entropy` of the whole
    projection in value and gradients: ``weight_shard`` and ``bias`` get this shard's
    gradient, ``hidden`` the full one (summed over the group; with
    ``reduce_hidden_grad=False`` only this shard's part, for a caller that reduces it
    itself, as Megatron-LM's ``copy_to_tensor_model_parallel_region`` does).

    Args:
        hidden: ``(*, d)``, the same on every rank (or a replicated DTensor).
        weight_shard: this rank's rows ``(V_local, d)`` of the projection (ranks in order;
            any split), or a DTensor sharded along dim 0 (``Shard(0)``).
        target: class ids ``(*)`` of the whole vocabulary, the same on every rank.
        bias: this rank's slice ``(V_local,)``.
        chunk_size: rows of ``hidden`` per chunk, the same on every rank (default: about
            64M logits per chunk of the largest shard); each chunk issues its own max and
            sum.
        class_weight: per-class weights ``(V,)`` of the whole vocabulary.
        group: as :func:`softmaxlab.distributed.cross_entropy` (without
            ``torch.distributed``, or with a group of one, this is the single-process loss).

    Example:
        >>> h = torch.randn(6, 4); w = torch.randn(5, 4); t = torch.tensor([0, 1, 2, 3, 4, 0])
        >>> a = linear_cross_entropy(h, w, t, chunk_size=4)  # not distributed
        >>> torch.allclose(a, torch.nn.functional.cross_entropy(h @ w.T, t))
        True
    """
    hidden, target = local(hidden, "hidden"), local(target, "target")
    class_weight = local(class_weight, "class_weight")
    check_input(hidden, "hidden")
    check_input(weight_shard, "weight_shard")
    params = dict(mapping_params)
    m = resolve_log_mapping(mapping, params)
    if "mask" in params:
        raise TypeError("linear_cross_entropy takes no mask (mask the bias with -inf)")
    reduction = check_reduction(reduction)
    eps = check_label_smoothing(label_smoothing)
    check_bool("reduce_hidden_grad", reduce_hidden_grad)
    if chunk_size is not None:
        chunk_size = check_int("chunk_size", chunk_size)
    if hidden.dim() < 1:
        raise ValueError("hidden must have a feature dimension, got a 0-dim tensor")
    n_rows = hidden.shape[:-1].numel()
    w, shard = vocab_shard(weight_shard, "weight_shard", group, 0, n_rows)
    b: Any = bias.to_local() if _is_dtensor(bias) else bias  # type: ignore[union-attr]
    if b is not None:
        check_input(b, "bias")
    if w.dim() != 2 or hidden.shape[-1] != w.shape[1]:
        raise ValueError(
            f"hidden (*, d) and weight_shard (V_local, d) must agree in d, got "
            f"{tuple(hidden.shape)} and {tuple(w.shape)}")
    if b is not None and b.shape != (w.shape[0],):
        raise ValueError(f"bias must have this shard's shape ({w.shape[0]},), got "
                         f"{tuple(b.shape)}")
    if shard is None:
        return L.linear_cross_entropy(hidden, w, target, bias=b, mapping=mapping,
                                      chunk_size=chunk_size, class_weight=class_weight,
                                      ignore_index=ignore_index, reduction=reduction,
                                      label_smoothing=eps, **params)
    return _distributed(hidden, w, b, target, m, params, shard, chunk_size, class_weight,
                        ignore_index, reduction, eps, reduce_hidden_grad)


def _distributed(hidden, w, b, target, m: Mapping, params: dict, shard: Shard,
                 chunk_size: int | None, class_weight, ignore_index: int, reduction: str,
                 eps: float, reduce_hidden_grad: bool) -> torch.Tensor:
    h = hidden.reshape(-1, hidden.shape[-1])
    acc = torch.float32 if h.dtype in LOW_PRECISION else h.dtype
    tg = targets(target, hidden.shape[:-1], shard, class_weight, ignore_index, acc, h.device)
    one = torch.ones((), dtype=acc, device=h.device)
    denom = tg.w_rows.sum() if reduction == "mean" else one
    denom = torch.where(denom != 0, denom, one)
    plain = m.name == "softmax" and not isinstance(params.get("temperature", 1.0),
                                                   torch.Tensor) \
        and params.get("temperature", 1.0) == 1.0
    excluded = b is not None and bool(torch.isneginf(b).any())
    opts = _Options(m, tuple(sorted(params.items())), reduction, eps,
                    chunk_size or max(1, CHUNK_ELEMENTS // max(shard.max_size, 1)),
                    reduce_hidden_grad, plain, excluded)
    out = _VocabParallelLinearCE.apply(h, w, b, tg, denom, opts, shard.comm)
    out = out.reshape(target.shape) if reduction == "none" else out
    return out.to(hidden.dtype)
