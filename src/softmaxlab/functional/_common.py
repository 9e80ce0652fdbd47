"""What every mapping shares: argument checks, the numerical contract, the safe normalizer.

The numerical contract (DESIGN.md §2) is implemented here once:

* half and bfloat16 inputs are computed in float32 and returned in the input dtype;
* ``mask`` (bool, broadcastable, True = keep) and ``-inf`` logits mean "excluded";
* a row with no kept entry gives zeros (log form ``-inf``) and zero gradient, never NaN;
* NaN stays in its own row.
"""

from __future__ import annotations

from typing import Callable

import torch

from .. import kernels

LOW_PRECISION = (torch.float16, torch.bfloat16)
NEG_INF = float("-inf")


def check_input(x: object, name: str = "x") -> torch.Tensor:
    """Raise ``TypeError`` unless ``x`` is a real floating-point tensor."""
    if not isinstance(x, torch.Tensor):
        raise TypeError(f"{name} must be a torch.Tensor, got {type(x).__name__}")
    if not x.is_floating_point():
        raise TypeError(f"{name} must be a real floating-point tensor, got dtype {x.dtype}")
    return x


def check_dim(x: torch.Tensor, dim: object) -> int:
    """``dim`` as a non-negative index into ``x`` (``IndexError`` when out of range)."""
    if isinstance(dim, bool) or not isinstance(dim, int):
        raise TypeError(f"dim must be an int, got {dim!r} ({type(dim).__name__})")
    ndim = max(x.dim(), 1)
    if not -ndim <= dim < ndim:
        raise IndexError(f"dim={dim} is out of range for a tensor with {x.dim()} dimension(s)")
    return dim % ndim


def check_broadcast(t: torch.Tensor, shape: torch.Size, name: str) -> None:
    """Raise ``ValueError`` unless ``t`` broadcasts to ``shape`` without growing it."""
    try:
        ok = torch.broadcast_shapes(t.shape, shape) == shape
    except RuntimeError:
        ok = False
    if not ok:
        raise ValueError(f"{name} of shape {tuple(t.shape)} does not broadcast to {tuple(shape)}")


def check_mask(mask: object, x: torch.Tensor) -> torch.Tensor:
    """A bool mask broadcast to ``x``'s shape (True = keep)."""
    if not isinstance(mask, torch.Tensor):
        raise TypeError(f"mask must be a bool tensor or None, got {type(mask).__name__}")
    if mask.dtype != torch.bool:
        raise TypeError(f"mask must have dtype torch.bool (True = keep), got {mask.dtype}")
    check_broadcast(mask, x.shape, "mask")
    return mask.to(x.device).broadcast_to(x.shape)


def apply_along(
    x: torch.Tensor,
    dim: int,
    mask: torch.Tensor | None,
    core: Callable[[torch.Tensor, torch.Tensor | None], torch.Tensor],
) -> torch.Tensor:
    """Run ``core(z, excluded)`` on the rows of ``x`` along ``dim``.

    ``core`` sees ``z`` with the reduced dimension last, in float32 or float64, and
    ``excluded`` (bool, same shape, or ``None`` when no mask was given). The result is
    moved back and returned in ``x``'s dtype.
    """
    check_input(x)
    d = check_dim(x, dim)
    excluded = None if mask is None else ~check_mask(mask, x)
    z = x.float() if x.dtype in LOW_PRECISION else x
    if z.dim() == 0:
        z = z.reshape(1)
        excluded = None if excluded is None else excluded.reshape(1)
    z = z.movedim(d, -1)
    if excluded is not None:
        excluded = excluded.movedim(d, -1)
    out = z.clone() if z.shape[-1] == 0 else core(z, excluded)
    out = out.movedim(-1, d)
    return (out.reshape(()) if x.dim() == 0 else out).to(x.dtype)


def excluded_entries(z: torch.Tensor, excluded: torch.Tensor | None) -> torch.Tensor:
    """Entries that are masked out or equal to ``-inf``."""
    neg_inf = torch.isneginf(z)
    return neg_inf if excluded is None else excluded | neg_inf


class _ExpNormalize(torch.autograd.Function):
    """Safe softmax of log-scores ``l`` along the last dim; saves only its output.

    ``exp(l) / sum(exp(l))`` (or its log) with ``-inf`` meaning excluded; a row with no kept
    entry gives zeros (log: ``-inf``) and zero gradient.
    """

    @staticmethod
    def forward(ctx, l: torch.Tensor, log: bool) -> torch.Tensor:
        m = l.amax(-1, keepdim=True)
        m = m.masked_fill(m == NEG_INF, 0.0)
        shifted = l - m
        e = shifted.exp()
        s = e.sum(-1, keepdim=True)
        empty = s == 0
        if log:
            out = (shifted - s.log()).masked_fill(empty, NEG_INF)
        else:
            out = e.div_(s.masked_fill(empty, 1.0))
        ctx.log = log
        ctx.save_for_backward(out)
        return out

    @staticmethod
    def backward(ctx, g: torch.Tensor):
        (out,) = ctx.saved_tensors
        if ctx.log:
            grad = g - out.exp() * g.sum(-1, keepdim=True)
            return grad.masked_fill(out == NEG_INF, 0.0), None
        return out * (g - (g * out).sum(-1, keepdim=True)), None


def exp_normalize(l: torch.Tensor, log: bool) -> torch.Tensor:
    """Safe (log-)softmax of log-scores along the last dim (see :class:`_ExpNormalize`; the
    CPU kernel ``cpu.softmax`` where :mod:`softmaxlab.kernels` chooses it)."""
    kernel = kernels.cpu_kernel("softmax", l)
    return _ExpNormalize.apply(l, log) if kernel is None else kernel.fn(l, log)


def with_kernel(op: str, reference: Callable, *args) -> Callable:
    """A ``core`` for :func:`apply_along`: the CPU kernel of ``op``, called as
    ``kernel(z, excluded, *args)``, where :mod:`softmaxlab.kernels` chooses one, else
    ``reference(z, excluded)``."""

    def core(z: torch.Tensor, excluded: torch.Tensor | None) -> torch.Tensor:
        kernel = kernels.cpu_kernel(op, z)
        return reference(z, excluded) if kernel is None else kernel.fn(z, excluded, *args)

    return core


def log_score_mapping(
    z: torch.Tensor,
    excluded: torch.Tensor | None,
    log_score: Callable[[torch.Tensor, torch.Tensor], torch.Tensor],
    log: bool,
) -> torch.Tensor:
    """``g(z) / sum g(z)`` for a positive score ``g`` given as ``log_score(z, excl) = log g``.

    Excluded entries (mask or ``-inf``) are replaced by 0 before ``log_score`` runs, so no
    infinite intermediate can turn their zero gradient into NaN, then set to ``-inf``.
    ``log_score`` may add any per-row constant (the result does not change).
    """
    excl = excluded_entries(z, excluded)
    l = log_score(z.masked_fill(excl, 0.0), excl).masked_fill(excl, NEG_INF)
    return exp_normalize(l, log)


def safe_where(cond: torch.Tensor, z: torch.Tensor, fill: float) -> torch.Tensor:
    """``z`` where ``cond`` else ``fill``: feeds one branch of a ``torch.where`` so that the
    unselected branch never sees values that would give it infinite gradients."""
    return torch.where(cond, z, torch.full_like(z, fill))
