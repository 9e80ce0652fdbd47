"""What every mapping shares: the one front end, the numerical contract, the safe normalizer.

The numerical contract (DESIGN.md §2) is implemented here once, by :func:`along`:

* ``dtype=`` casts the input first (as torch's softmax); half and bfloat16 are computed in
  float32 and returned in their own dtype;
* ``mask`` (bool, broadcastable, True = keep) and ``-inf`` logits mean "excluded": a masked
  entry is set to ``-inf``, so it gets zero gradient, exactly as if it were sliced out;
* a row with no kept entry gives zeros (log form ``-inf``) and zero gradient, never NaN;
* NaN stays in its own row.

Each mapping's row core then runs its kernel where :func:`softmaxlab.kernels.select` picks
one (a custom op, :mod:`softmaxlab.kernels.ops`), else its pure-torch reference.
"""

from __future__ import annotations

from collections.abc import Callable

import torch

from .. import kernels
from .._constants import LOW_PRECISION, NEG_INF
from .._validation import check_dim, check_dtype, check_input, check_mask
from ..kernels import ops
from ..kernels.ops import row_function
from ..kernels.registry import eager

__all__ = ["along", "common_call", "compute", "row_function"]


def common_call(op: str, row: str, x: torch.Tensor, dim: object, mask: object,
                dtype: object, *args, facts: tuple | None = None) -> torch.Tensor | None:
    """``op``'s kernel row function ``row(x, *args)`` for the common call, with no further
    check: along the last dimension, no ``mask``, no ``dtype=`` (the mapping's parameters
    are its defaults or checked by the caller or the row function), where
    :func:`~softmaxlab.kernels.registry.eager` finds a kernel for ``x`` (given ``facts``);
    else, or where the row function returns ``None``, ``None``: the mapping takes its
    general path (:func:`along`), which validates and dispatches."""
    if mask is None and dtype is None and dim == -1 and type(dim) is int:
        spec = eager(op, x, facts)
        if spec is not None:
            return row_function(spec.name, row)(x, *args)
    return None


def along(
    x: torch.Tensor,
    dim: int,
    mask: torch.Tensor | None,
    core: Callable[[torch.Tensor], torch.Tensor],
    dtype: torch.dtype | None = None,
) -> torch.Tensor:
    """Run ``core(z)`` on the rows of ``x`` along ``dim`` and return the result in ``x``'s
    layout and dtype (``dtype``'s when given).

    ``core`` sees ``z`` with the reduced dimension last (any leading shape, at least one
    entry per row), excluded entries at ``-inf``, in the input's dtype: it upcasts half
    types itself (:func:`compute`), unless its kernel takes them as they are.
    """
    check_input(x)
    d = check_dim(x, dim)
    if dtype is not None:
        x = x.to(check_dtype(dtype))
    ndim = x.dim()
    z = x if ndim else x.reshape(1)
    if mask is not None:
        z = z.masked_fill(~check_mask(mask, z), NEG_INF)
    last = d == ndim - 1 or not ndim
    if not last:
        z = z.movedim(d, -1)
    out = core(z) if z.shape[-1] else z.clone()
    if not last:
        out = out.movedim(-1, d)
    if not ndim:
        out = out.reshape(())
    return out if out.dtype == x.dtype else out.to(x.dtype)


#: The fact of a common call (:func:`common_call`): it needs no autograd graph, so
#: forward-only kernels serve it.
GRAPH_FREE = (("graph_free", True),)


def compute(z: torch.Tensor) -> torch.Tensor:
    """``z`` in its compute dtype: float32 for half types, else itself."""
    return z.float() if z.dtype in LOW_PRECISION else z


def excluded_entries(z: torch.Tensor) -> torch.Tensor:
    """Entries that are excluded (``-inf``)."""
    return torch.isneginf(z)


def apply(function: type[torch.autograd.Function], traced: type[torch.autograd.Function], *args):
    """``function.apply(*args)``; while ``torch.compile`` traces, ``traced.apply(*args)``:
    ``function`` without its ``jvp`` (Dynamo cannot trace a custom ``jvp``; forward mode is
    an eager feature). Under ``torch.jit.trace`` the forward is recorded as plain ops (a
    Python Function cannot be saved in TorchScript; traced modules are for inference)."""
    if torch.jit.is_tracing():
        return traced.forward(*args)
    return (traced if torch.compiler.is_compiling() else function).apply(*args)


class _ExpNormalize(torch.autograd.Function):
    """Safe softmax of log-scores ``l`` along the last dim; saves only its output.

    ``exp(l) / sum(exp(l))`` (or its log) with ``-inf`` meaning excluded; a row with no kept
    entry gives zeros (log: ``-inf``) and zero gradient. Supports ``torch.func`` (vmap, grad)
    and ``torch.compile``; :class:`ExpNormalizeFunction` adds forward mode (jvp).
    """

    generate_vmap_rule = True

    @staticmethod
    def forward(l: torch.Tensor, log: bool) -> torch.Tensor:
        m = l.amax(-1, keepdim=True)
        m = m.masked_fill(m == NEG_INF, 0.0)
        shifted = l - m
        e = shifted.exp()
        s = e.sum(-1, keepdim=True)
        empty = s == 0
        if log:
            return (shifted - s.log()).masked_fill(empty, NEG_INF)
        return e / s.masked_fill(empty, 1.0)

    @staticmethod
    def setup_context(ctx, inputs, output):
        ctx.log = inputs[1]
        ctx.save_for_backward(output)
        ctx.save_for_forward(output)

    @staticmethod
    def backward(ctx, g: torch.Tensor):
        (out,) = ctx.saved_tensors
        return _expnorm_vjp(g, out, ctx.log), None


class ExpNormalizeFunction(_ExpNormalize):
    """:class:`_ExpNormalize` with its forward-mode derivative."""

    @staticmethod
    def jvp(ctx, dl: torch.Tensor, _dlog):
        (out,) = ctx.saved_tensors
        p = out.exp() if ctx.log else out
        dl = dl.masked_fill(p == 0, 0.0)
        d = dl - (p * dl).sum(-1, keepdim=True)
        return d.masked_fill(p == 0, 0.0) if ctx.log else p * d


def _expnorm_vjp(g: torch.Tensor, out: torch.Tensor, log: bool) -> torch.Tensor:
    """Input gradient of the safe (log-)softmax from its output; excluded entries get 0 and
    their upstream gradient is ignored."""
    if log:
        excluded = out == NEG_INF
        g = g.masked_fill(excluded, 0.0)
        return (g - out.exp() * g.sum(-1, keepdim=True)).masked_fill(excluded, 0.0)
    return out * (g - (g * out).sum(-1, keepdim=True))


def exp_normalize(l: torch.Tensor, log: bool) -> torch.Tensor:
    """Safe (log-)softmax of log-scores along the last dim: the ``softmax`` kernel where one
    is chosen, else :class:`ExpNormalizeFunction`."""
    spec = kernels.select("softmax", l)
    if spec is None:
        return apply(ExpNormalizeFunction, _ExpNormalize, compute(l), log)
    return ops.expnorm(l if spec.low_precision or l.dtype not in LOW_PRECISION else l.float(),
                       log, spec.name)


def log_score_mapping(
    z: torch.Tensor,
    log_score: Callable[[torch.Tensor, torch.Tensor], torch.Tensor],
    log: bool,
) -> torch.Tensor:
    """``g(z) / sum g(z)`` for a positive score ``g`` given as ``log_score(z, excl) = log g``.

    Excluded entries (``-inf``) are replaced by 0 before ``log_score`` runs, so no infinite
    intermediate can turn their zero gradient into NaN, then set to ``-inf``.
    ``log_score`` may add any per-row constant (the result does not change).
    """
    z = compute(z)
    excl = excluded_entries(z)
    l = log_score(z.masked_fill(excl, 0.0), excl).masked_fill(excl, NEG_INF)
    return exp_normalize(l, log)


def recomputed_vjp(rows: Callable[..., torch.Tensor]) -> Callable[..., torch.Tensor]:
    """``vjp(g, x, *params)``: the vector-Jacobian product of ``rows(x, *params)`` by autograd
    through it, itself differentiable (for :func:`softmaxlab.kernels.ops.register_vjp`): the
    reference's gradient, and second derivative, for a kernel that saves only its input."""

    def vjp(g: torch.Tensor, x: torch.Tensor, *params) -> torch.Tensor:
        with torch.enable_grad():
            out = rows(x, *params)
            (grad,) = torch.autograd.grad(out, x, g.to(out.dtype), create_graph=True)
        return grad

    return vjp


def score_mapping(op: str, z: torch.Tensor, coef: tuple[float, ...], log: bool,
                  reference: Callable[[torch.Tensor], torch.Tensor]) -> torch.Tensor:
    """A score mapping's rows: its fused kernel (``coef``: the polynomial, lowest degree
    first; ``()``: sigsoftmax) where one is chosen, else ``reference(z)``."""
    spec = kernels.select(op, z)
    if spec is None:
        return reference(z)
    return ops.score_map(compute(z), coef, log, spec.name)


def safe_where(cond: torch.Tensor, z: torch.Tensor, fill: float) -> torch.Tensor:
    """``z`` where ``cond`` else ``fill``: feeds one branch of a ``torch.where`` so that the
    unselected branch never sees values that would give it infinite gradients."""
    return torch.where(cond, z, torch.full_like(z, fill))


def normalized(f: torch.Tensor) -> torch.Tensor:
    """``f / sum f`` along the last dim (the naive formulas' last step)."""
    return f / f.sum(-1, keepdim=True)
