"""Fused linear + cross-entropy: the loss of ``hidden @ weight.T`` without the N x V logits."""

from __future__ import annotations

from dataclasses import dataclass

import torch

from .._checks import check_int
from ..functional._common import LOW_PRECISION, check_input
from ._common import (
    Rows,
    check_target,
    check_label_smoothing,
    check_reduction,
    class_weights,
    nll_rows,
)
from .cross_entropy import log_probs

#: Logit elements per chunk when ``chunk_size`` is not given (64 MiB of float32).
CHUNK_ELEMENTS = 1 << 24


@dataclass(frozen=True)
class _Options:
    mapping: str
    params: tuple
    ignore_index: int
    reduction: str
    label_smoothing: float
    chunk_size: int


def _chunk(h, w, b, t, keep, cw, opts: _Options, scale=None):
    """Per-row losses of one chunk of rows and, when ``scale`` is given, the gradients of
    ``sum(scale * loss)`` with respect to ``h``, ``w`` and ``b``."""
    logits = h @ w.T
    if b is not None:
        logits = logits + b
    logits = logits.float() if logits.dtype in LOW_PRECISION else logits
    with torch.set_grad_enabled(scale is not None):
        logits.requires_grad_(scale is not None)
        rows = Rows(logits, t, keep, torch.Size([h.shape[0]]))
        loss, _ = nll_rows(log_probs(opts.mapping, logits, dict(opts.params)), rows, cw,
                           opts.label_smoothing)
        if scale is None:
            return loss, None, None, None
        (g,) = torch.autograd.grad((loss * scale).sum(), logits)
    gb = None if b is None else g.sum(0)
    g = g.to(h.dtype)
    return loss.detach(), g @ w, g.T @ h, gb


class _LinearCrossEntropy(torch.autograd.Function):
    """Chunked over rows, never holding more than ``chunk_size`` rows of logits.

    For ``mean``/``sum`` the gradients are computed during the forward pass (the three
    matrix products, one pass over the chunks) and only scaled in backward; for ``none``
    the backward recomputes each chunk with the incoming per-row gradients.
    """

    @staticmethod
    def forward(ctx, h, w, b, t, keep, cw, denom, opts: _Options):
        n, cs = h.shape[0], opts.chunk_size
        eager = any(ctx.needs_input_grad[:3]) and opts.reduction != "none"
        acc = torch.float32 if h.dtype in LOW_PRECISION else h.dtype
        loss = torch.zeros(n, dtype=acc, device=h.device)
        if eager:
            gh = torch.empty_like(h)
            gw = torch.zeros(w.shape, dtype=acc, device=w.device)
            gb = None if b is None else torch.zeros(w.shape[0], dtype=acc, device=w.device)
        for s in range(0, n, cs):
            sl = slice(s, min(s + cs, n))
            loss[sl], gh_c, gw_c, gb_c = _chunk(h[sl], w, b, t[sl], keep[sl], cw, opts,
                                                1.0 / denom if eager else None)
            if eager:
                gh[sl] = gh_c
                gw += gw_c
                if gb is not None:
                    gb += gb_c
        ctx.opts, ctx.eager = opts, eager
        if eager:
            ctx.save_for_backward(gh, gw.to(w.dtype), None if b is None else gb.to(b.dtype))
            return loss.sum() / denom
        ctx.save_for_backward(h, w, b, t, keep, cw)
        return loss if opts.reduction == "none" else loss.sum() / denom

    @staticmethod
    def backward(ctx, g):
        if ctx.eager:
            gh, gw, gb = ctx.saved_tensors
            return gh * g, gw * g, None if gb is None else gb * g, *([None] * 5)
        h, w, b, t, keep, cw = ctx.saved_tensors
        opts, n = ctx.opts, h.shape[0]
        acc = torch.float32 if h.dtype in LOW_PRECISION else h.dtype
        gh = torch.empty_like(h)
        gw = torch.zeros(w.shape, dtype=acc, device=w.device)
        gb = None if b is None else torch.zeros(w.shape[0], dtype=acc, device=w.device)
        for s in range(0, n, opts.chunk_size):
            sl = slice(s, min(s + opts.chunk_size, n))
            _, gh[sl], gw_c, gb_c = _chunk(h[sl], w, b, t[sl], keep[sl], cw, opts, g[sl])
            gw += gw_c
            if gb is not None:
                gb += gb_c
        return gh, gw.to(w.dtype), None if b is None else gb.to(b.dtype), *([None] * 5)


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
        chunk_size: rows per chunk (default: about 16M logits per chunk).
        class_weight: per-class weights ``(V,)`` (torch's ``weight``; renamed because
            ``weight`` is the output projection here).

    Example:
        >>> h = torch.randn(6, 4); w = torch.randn(5, 4); t = torch.tensor([0, 1, 2, 3, 4, 0])
        >>> a = linear_cross_entropy(h, w, t, chunk_size=4)
        >>> torch.allclose(a, torch.nn.functional.cross_entropy(h @ w.T, t))
        True
    """
    check_input(hidden, "hidden")
    check_input(weight, "weight")
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
    v = weight.shape[0]
    if chunk_size is None:
        chunk_size = max(1, CHUNK_ELEMENTS // v)
    chunk_size = check_int("chunk_size", chunk_size)
    h = hidden.reshape(-1, hidden.shape[-1])
    t, keep = check_target(target, hidden.shape[:-1], v, ignore_index, "hidden without its last dim")
    t, keep = t.to(h.device), keep.to(h.device)
    acc = torch.float32 if h.dtype in LOW_PRECISION else h.dtype
    cw = class_weights(class_weight, v, h.new_empty((), dtype=acc), "class_weight")
    w_rows = (torch.ones(t.shape, dtype=acc, device=h.device) if cw is None else cw[t]) * keep
    denom = w_rows.sum() if reduction == "mean" else torch.ones((), dtype=acc, device=h.device)
    denom = torch.where(denom != 0, denom, torch.ones_like(denom))
    opts = _Options(mapping, tuple(sorted(mapping_params.items())), ignore_index, reduction,
                    label_smoothing, chunk_size)
    out = _LinearCrossEntropy.apply(h, weight, bias, t, keep, cw, denom, opts)
    out = out.reshape(target.shape) if reduction == "none" else out
    return out.to(hidden.dtype)
