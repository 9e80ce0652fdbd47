"""Fused linear + cross-entropy: the loss of ``hidden @ weight.T`` without the N x V logits."""

from __future__ import annotations

from dataclasses import dataclass

import torch

from .. import kernels
from .._constants import LOW_PRECISION
from .._registry import resolve_log_mapping
from .._validation import check_input, check_int, checks_values
from ._common import (
    Rows,
    check_label_smoothing,
    check_reduction,
    check_target,
    class_weights,
    loss_dtype,
    nll_rows,
)
from .cross_entropy import log_probs

#: Logit elements per chunk when ``chunk_size`` is not given (256 MiB of float32): larger
#: chunks make the weight-gradient product more efficient (each chunk reads and writes the
#: whole ``(V, d)`` gradient), at O(chunk) memory.
CHUNK_ELEMENTS = 1 << 26


@dataclass(frozen=True)
class _Options:
    mapping: str
    params: tuple
    ignore_index: int
    reduction: str
    label_smoothing: float
    chunk_size: int
    kernel: str | None  # the CPU chunk kernel chosen by linear_cross_entropy, if any


def _logits(h, w, b, buf):
    """``h @ w.T + b`` written into the first rows of ``buf`` (float32 or float64)."""
    out = buf[: h.shape[0]]
    if h.dtype == out.dtype:
        torch.mm(h, w.T, out=out)
    else:
        out.copy_(h @ w.T)
    return out if b is None else out.add_(b)


def _chunk(h, w, b, t, keep, cw, opts: _Options, buf, fast, scale=None):
    """Per-row losses of one chunk of rows and, when ``scale`` is given, the gradient of
    ``sum(scale * loss)`` with respect to the chunk's logits (``fast``: the CPU softmax
    kernel, which writes it over the logits in ``buf``; else autograd through the mapping)."""
    logits = _logits(h, w, b, buf)
    if fast is not None:
        loss = fast(logits, t, keep, cw, opts.label_smoothing, scale)
        return loss, None if scale is None else logits
    with torch.set_grad_enabled(scale is not None):
        logits = logits.detach().requires_grad_(scale is not None)
        rows = Rows(logits, t, keep, torch.Size([h.shape[0]]))
        loss, _ = nll_rows(log_probs(opts.mapping, logits, dict(opts.params)), rows, cw,
                           opts.label_smoothing)
        if scale is None:
            return loss, None
        (g,) = torch.autograd.grad((loss * scale).sum(), logits)
    return loss.detach(), g


def _chunk_loss(h, w, b, t, keep, cw, opts: _Options):
    """Per-row losses of one chunk of rows as plain differentiable ops."""
    acc = torch.float32 if h.dtype in LOW_PRECISION else h.dtype
    logits = (h @ w.T).to(acc)
    logits = logits if b is None else logits + b.to(acc)
    rows = Rows(logits, t, keep, torch.Size([h.shape[0]]))
    return nll_rows(log_probs(opts.mapping, logits, dict(opts.params)), rows, cw,
                    opts.label_smoothing)[0]


def _chunk_losses(h, w, b, t, keep, cw, opts: _Options):
    """Per-row losses of every chunk as plain differentiable ops (all logits kept)."""
    cs = opts.chunk_size
    return torch.cat([_chunk_loss(h[s:s + cs], w, b, t[s:s + cs], keep[s:s + cs], cw, opts)
                      for s in range(0, h.shape[0], cs)])


def _compiled(h, w, b, t, keep, cw, denom, opts: _Options):
    """What ``torch.compile`` traces instead of :class:`_LinearCrossEntropy` (whose
    per-chunk ``torch.autograd.grad`` dynamo cannot trace): the same chunks, each under
    ``torch.utils.checkpoint`` so its logits are recomputed in backward, not kept."""
    n, cs = h.shape[0], opts.chunk_size
    if torch.compiler.is_exporting():  # an exported program is a forward: no recompute
        loss = _chunk_losses(h, w, b, t, keep, cw, opts)
    else:
        loss = torch.cat([
            torch.utils.checkpoint.checkpoint(_chunk_loss, h[s:s + cs], w, b, t[s:s + cs],
                                              keep[s:s + cs], cw, opts, use_reentrant=False)
            for s in range(0, n, cs)
        ])
    return loss if opts.reduction == "none" else loss.sum() / denom


def _add_grads(g, h, w, rows, gh, gw, gb):
    """Accumulate the parameter gradients of one chunk from its logits gradient ``g``:
    ``gh[rows] = g @ w``, ``gw += g.T @ h``, ``gb += sum g`` (in place, no temporaries in
    full precision)."""
    if gb is not None:
        gb += g.sum(0)
    g = g.to(h.dtype)
    torch.mm(g, w, out=gh[rows])
    if gw.dtype == g.dtype:
        gw.addmm_(g.T, h)
    else:
        gw += g.T @ h


def _chunk_kernel(opts: _Options):
    """The chosen CPU kernel's ``softmax_chunk``, or ``None``."""
    return None if opts.kernel is None else kernels.registry.load(opts.kernel).softmax_chunk


class _LinearCrossEntropy(torch.autograd.Function):
    """Chunked over rows, never holding more than ``chunk_size`` rows of logits (one buffer,
    reused by every chunk).

    For ``mean``/``sum`` the gradients are computed during the forward pass (the three
    matrix products, one pass over the chunks) and only scaled in backward; for ``none``
    the backward recomputes each chunk with the incoming per-row gradients. Under
    ``create_graph=True`` (a second derivative) the backward is autograd through the
    chunks' losses in plain ops (:func:`_differentiable_grads`): exact, and as large as the
    naive form (all logits kept for the double backward).
    """

    @staticmethod
    def forward(ctx, h, w, b, t, keep, cw, denom, opts: _Options):
        n, cs = h.shape[0], opts.chunk_size
        eager = any(ctx.needs_input_grad[:3]) and opts.reduction != "none"
        acc = torch.float32 if h.dtype in LOW_PRECISION else h.dtype
        fast = _chunk_kernel(opts)
        buf = torch.empty(min(cs, n), w.shape[0], dtype=acc, device=h.device)
        loss = torch.zeros(n, dtype=acc, device=h.device)
        if eager:
            gh = torch.empty_like(h)
            gw = torch.zeros(w.shape, dtype=acc, device=w.device)
            gb = None if b is None else torch.zeros(w.shape[0], dtype=acc, device=w.device)
        for s in range(0, n, cs):
            sl = slice(s, min(s + cs, n))
            loss[sl], g = _chunk(h[sl], w, b, t[sl], keep[sl], cw, opts, buf, fast,
                                 1.0 / denom if eager else None)
            if eager:
                _add_grads(g, h[sl], w, sl, gh, gw, gb)
        ctx.opts, ctx.eager = opts, eager
        grads = (gh, gw.to(w.dtype), None if b is None or gb is None else gb.to(b.dtype)
                 ) if eager else (None, None, None)
        ctx.save_for_backward(h, w, b, t, keep, cw, denom, *grads)
        return loss if opts.reduction == "none" else loss.sum() / denom

    @staticmethod
    def backward(ctx, g):
        h, w, b, t, keep, cw, _denom, *grads = ctx.saved_tensors
        if torch.is_grad_enabled():  # create_graph=True: a gradient that has a graph
            return *_differentiable_grads(ctx, g), *([None] * 5)
        if ctx.eager:
            # loss.backward() (eager): hand over the saved gradients, no copy; under
            # torch.compile always scale (no data-dependent branch)
            one = checks_values() and bool(g == 1)
            return *(x if x is None or one else x * g for x in grads), *([None] * 5)
        opts, n, cs = ctx.opts, h.shape[0], ctx.opts.chunk_size
        acc = torch.float32 if h.dtype in LOW_PRECISION else h.dtype
        fast = _chunk_kernel(opts)
        buf = torch.empty(min(cs, n), w.shape[0], dtype=acc, device=h.device)
        gh = torch.empty_like(h)
        gw = torch.zeros(w.shape, dtype=acc, device=w.device)
        gb = None if b is None else torch.zeros(w.shape[0], dtype=acc, device=w.device)
        for s in range(0, n, cs):
            sl = slice(s, min(s + cs, n))
            _, g_c = _chunk(h[sl], w, b, t[sl], keep[sl], cw, opts, buf, fast, g[sl])
            _add_grads(g_c, h[sl], w, sl, gh, gw, gb)
        return (gh, gw.to(w.dtype), None if b is None or gb is None else gb.to(b.dtype),
                *([None] * 5))


def _differentiable_grads(ctx, g):
    """The input gradients of :class:`_LinearCrossEntropy` by autograd through the chunks'
    losses in plain ops, differentiable again."""
    h, w, b, t, keep, cw, denom = ctx.saved_tensors[:7]
    wanted = [x is not None and n for x, n in zip((h, w, b), ctx.needs_input_grad[:3],
                                                     strict=True)]
    with torch.enable_grad():
        loss = _chunk_losses(h, w, b, t, keep, cw, ctx.opts)
        total = (loss * g).sum() if ctx.opts.reduction == "none" else loss.sum() / denom * g
        grads = iter(torch.autograd.grad(
            total, [x for x, k in zip((h, w, b), wanted, strict=True) if k], create_graph=True))
    return tuple(next(grads) if k else None for k in wanted)


def linear_cross_entropy(
    hidden: torch.Tensor,
    weight: torch.Tensor,
    target: torch.Tensor,
    *,
    bias: torch.Tensor | None = None,
    mapping: str = "softmax",
    chunk_size: int | None = None,
    class_weight: torch.Tensor | None = None,
    ignore_index: int = -100,
    reduction: str = "mean",
    label_smoothing: float = 0.0,
    **mapping_params,
) -> torch.Tensor:
    r"""Cross-entropy of ``hidden @ weight.T + bias`` without materializing the logits.

    .. math:: \ell_i = -\log p_{y_i}(W h_i + b)

    Exactly ``cross_entropy(hidden @ weight.T + bias, target, mapping=..., ...)`` in value and
    gradients (for ``hidden``, ``weight`` and ``bias``), but only ``chunk_size`` rows of logits
    exist at a time, so memory above the inputs and their gradients is ``O(chunk_size * V)``
    instead of ``O(N * V)``. Works for every mapping with a log form.

    Args:
        hidden: ``(*, d)``. weight: ``(V, d)``. target: ``(*)`` class ids. bias: ``(V,)``.
        chunk_size: rows per chunk (default: about 64M logits per chunk). On CPU, with
            ``mapping="softmax"`` and float32 or half inputs, each chunk's gradient is
            written over its logits by :mod:`softmaxlab.kernels.cpu.linear_ce`.
        class_weight: per-class weights ``(V,)`` (torch's ``weight``; renamed because
            ``weight`` is the output projection here).

    Under ``torch.autocast`` ``hidden`` and ``weight`` are cast to its dtype (as the matmul
    ``hidden @ weight.T`` would be) and the loss is float32 (as ``F.cross_entropy``'s).

    Example:
        >>> h = torch.randn(6, 4); w = torch.randn(5, 4); t = torch.tensor([0, 1, 2, 3, 4, 0])
        >>> a = linear_cross_entropy(h, w, t, chunk_size=4)
        >>> torch.allclose(a, torch.nn.functional.cross_entropy(h @ w.T, t))
        True
    """
    check_input(hidden, "hidden")
    check_input(weight, "weight")
    resolve_log_mapping(mapping, mapping_params)
    if weight.dim() != 2 or hidden.dim() < 1 or hidden.shape[-1] != weight.shape[1]:
        raise ValueError(
            f"hidden (*, d) and weight (V, d) must agree in d, got {tuple(hidden.shape)} and "
            f"{tuple(weight.shape)}"
        )
    if bias is not None:
        check_input(bias, "bias")
        if bias.shape != (weight.shape[0],):
            raise ValueError(f"bias must have shape ({weight.shape[0]},), got {tuple(bias.shape)}")
    reduction = check_reduction(reduction)
    label_smoothing = check_label_smoothing(label_smoothing)
    out_dtype = loss_dtype(hidden)
    if torch.is_autocast_enabled(hidden.device.type):
        # torch.autocast: the logits hidden @ weight.T in its dtype (torch's policy for a
        # matmul), the loss in float32 (its policy for cross-entropy)
        hidden, weight = _autocast_inputs(hidden, weight)
    v = weight.shape[0]
    if chunk_size is not None:
        chunk_size = check_int("chunk_size", chunk_size)
    h = hidden.reshape(-1, hidden.shape[-1])
    t, keep = check_target(target, hidden.shape[:-1], v, ignore_index,
                           "hidden without its last dim")
    t, keep = t.to(h.device), keep.to(h.device)
    acc = torch.float32 if h.dtype in LOW_PRECISION else h.dtype
    cw = class_weights(class_weight, v, h.new_empty((), dtype=acc), "class_weight")
    spec = kernels.select("linear_cross_entropy", h, mapping=mapping, params=mapping_params,
                          dtypes={h.dtype, weight.dtype, (bias if bias is not None else h).dtype})
    if spec is not None and spec.backend == "triton":
        out = kernels.registry.load(spec.name).linear_ce(
            h, weight, bias, t, keep, cw, reduction=reduction, label_smoothing=label_smoothing,
            temperature=mapping_params.get("temperature", 1.0), chunk_size=chunk_size)
        out = out.reshape(target.shape) if reduction == "none" else out
        return out.to(out_dtype)
    w_rows = (torch.ones(t.shape, dtype=acc, device=h.device) if cw is None else cw[t]) * keep
    denom = w_rows.sum() if reduction == "mean" else torch.ones((), dtype=acc, device=h.device)
    denom = torch.where(denom != 0, denom, torch.ones_like(denom))
    opts = _Options(mapping, tuple(sorted(mapping_params.items())), ignore_index, reduction,
                    label_smoothing, chunk_size or max(1, CHUNK_ELEMENTS // v),
                    None if spec is None else spec.name)
    apply = _compiled if torch.compiler.is_compiling() else _LinearCrossEntropy.apply
    out = apply(h, weight, bias, t, keep, cw, denom, opts)
    out = out.reshape(target.shape) if reduction == "none" else out
    return out.to(out_dtype)


def _autocast_inputs(*tensors: torch.Tensor) -> list[torch.Tensor]:
    """``tensors`` as ``torch.autocast`` casts a matmul's inputs on their device: floating
    tensors other than float64 to its dtype."""
    dtype = torch.get_autocast_dtype(tensors[0].device.type)
    return [t.to(dtype) if t.is_floating_point() and t.dtype != torch.float64 else t
            for t in tensors]
