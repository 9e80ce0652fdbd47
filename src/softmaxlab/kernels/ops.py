"""The fast paths as PyTorch custom ops (``torch.ops.softmaxlab.*``).

Each op family is one forward op and one backward op, with a fake (meta) implementation, a
registered autograd formula and a vmap rule, so that ``torch.compile(fullgraph=True)``,
``torch.export`` and ``torch.vmap`` see one opaque, well-described node. The op's argument
``kernel`` names the :class:`~softmaxlab.kernels.registry.KernelSpec` chosen by
:func:`~softmaxlab.kernels.registry.select`; its module provides the row functions:

==============  ===============================================================
family          row functions of a kernel module (rows ``(*, n)``, contiguous)
==============  ===============================================================
``expnorm``     ``expnorm_forward(l, log) -> out``,
                ``expnorm_backward(g, out, log) -> grad``
``score``       ``score_forward(z, coef, log) -> (out, stats (*, 2) float64)``,
                ``score_output(z, coef, log) -> out`` (the forward alone: no graph),
                ``score_backward(g, z, stats, coef, log) -> grad``
``sparse``      ``sparse_forward(z, alpha) -> p`` (alpha 2: sparsemax, 1.5: entmax15),
                ``sparse_backward(g, p, alpha) -> grad``
``topk``        ``topk_forward(x, k) -> (p (*, k), idx (*, k) int64, stats (*, 2) float64)``,
                ``topk_backward(g, x, p, idx, stats) -> grad``
(forward only)  ``<name>_output(z, *params) -> out or None`` (no custom op: the
                common call that needs no graph, ``graph_free`` fact; ``None``
                declines it), e.g. :mod:`softmaxlab.kernels.cpu.composite`
==============  ===============================================================

Log forms pass zero gradient to excluded (``-inf``) entries and ignore the upstream gradient
there, exactly as if those entries were sliced out: each backward row function does this
itself (the numba kernels in the same pass).

An eager call that needs no autograd graph (inference, ``torch.no_grad``) runs the row
function directly, without the dispatcher's per-call cost.

Higher-order gradients: autograd runs a backward with grad mode on exactly when its result
is to be differentiated again (``create_graph=True``: Hessian-vector products, gradient
penalties, MAML). A backward kernel's result has no graph, so then each family computes its
gradient with differentiable torch ops instead, and double backward is the reference's:

* ``expnorm``: its backward op, whose own autograd formula is the second derivative;
* ``sparse``: the reference's vector-Jacobian product of the saved output;
* ``score``, ``topk``: the reference's gradient, recomputed from the saved input (their
  kernels save what no formula can differentiate: float64 row statistics).

The reference's formulas come from the functional layer, which registers them with
:func:`register_vjp` (kernels never import it). ``backward()`` without ``create_graph``, and
the backward that ``torch.compile`` traces (without grad mode), run the backward kernels.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import torch
from torch import Tensor

from . import registry

NEG_INF = float("-inf")


def _direct(t: Tensor) -> bool:
    """Whether a call may skip the dispatcher: a plain eager tensor that needs no graph."""
    return (type(t) is Tensor and not (t.requires_grad and torch.is_grad_enabled())
            and not _is_compiling() and not _tracing_state())


_is_compiling = torch.compiler.is_compiling
_tracing_state = torch._C._get_tracing_state


def _batched(info, in_dims: Sequence[int | None], args: Sequence[Any]) -> list[Any]:
    """``args`` with each tensor's vmapped dimension moved first (expanded where absent):
    every tensor of a row op has the rows' leading shape, so the batch becomes more rows."""
    out = []
    for a, d in zip(args, in_dims, strict=True):
        if isinstance(a, Tensor):
            a = a.movedim(d, 0) if d is not None else a.expand(info.batch_size, *a.shape)
        out.append(a)
    return out


def _vmap_rule(op: Callable) -> Callable:
    def rule(info, in_dims, *args):
        result = op(*_batched(info, in_dims, args))
        return result, (tuple(0 for _ in result) if isinstance(result, tuple) else 0)
    return rule


_ROW_FUNCTIONS: dict[tuple[str, str], Callable] = {}


def row_function(kernel: str, name: str) -> Callable:
    """Row function ``name`` of kernel ``kernel``'s module."""
    fn = _ROW_FUNCTIONS.get((kernel, name))
    if fn is None:
        fn = _ROW_FUNCTIONS[kernel, name] = getattr(registry.load(kernel), name)
    return fn


_fn = row_function

#: op -> the reference's vector-Jacobian product in differentiable torch ops, with the
#: arguments of its family's backward (see :func:`register_vjp`)
_VJPS: dict[str, Callable[..., Tensor]] = {}


def register_vjp(op: str, vjp: Callable[..., Tensor]) -> None:
    """Register the reference's vector-Jacobian product of ``op`` (a
    :class:`~softmaxlab.kernels.registry.KernelSpec` op), which a custom op's backward runs
    instead of its backward kernel when that backward is to be differentiated again.

    Its arguments by family: ``sparse`` ``vjp(g, p)`` (``p`` the output); ``score``
    ``vjp(g, z, coef, log)``; ``topk`` ``vjp(g, x, idx)`` (``x`` the input, ``idx`` the
    top-k indices); it returns the input gradient, differentiable in every tensor argument.
    """
    _VJPS[op] = vjp


def _reference_vjp(kernel: str) -> Callable[..., Tensor]:
    op = registry.spec(kernel).op
    vjp = _VJPS.get(op)
    if vjp is None:
        raise NotImplementedError(
            f"create_graph=True through kernel {kernel}: op {op!r} has no differentiable "
            f"backward registered (softmaxlab.kernels.ops.register_vjp); run it with "
            f"{registry.ENV_VAR}=reference for higher-order gradients")
    return vjp


#: Whether a backward is to be differentiated again: autograd runs backward functions with
#: grad mode on exactly under ``create_graph=True``.
_create_graph = torch.is_grad_enabled

# --------------------------------------------------------------------------- expnorm
@torch.library.custom_op("softmaxlab::expnorm", mutates_args=())
def expnorm_op(l: Tensor, log: bool, kernel: str) -> Tensor:
    """Safe (log-)softmax of log-scores ``l`` along the last dim (``-inf``: excluded)."""
    return _fn(kernel, "expnorm_forward")(l.contiguous(), log)


@torch.library.custom_op("softmaxlab::expnorm_backward", mutates_args=())
def expnorm_backward_op(g: Tensor, out: Tensor, log: bool, kernel: str) -> Tensor:
    return _fn(kernel, "expnorm_backward")(g.contiguous(), out.contiguous(), log)


@expnorm_op.register_fake
def _(l, log, kernel):
    return torch.empty_like(l, memory_format=torch.contiguous_format)


@expnorm_backward_op.register_fake
def _(g, out, log, kernel):
    return torch.empty_like(out, memory_format=torch.contiguous_format)


def _expnorm_setup(ctx, inputs, output):
    ctx.log, ctx.kernel = inputs[1], inputs[2]
    ctx.save_for_backward(output)


def _expnorm_backward(ctx, g):
    (out,) = ctx.saved_tensors
    return expnorm_backward_op(g, out, ctx.log, ctx.kernel), None, None


def _expnorm_backward_setup(ctx, inputs, output):
    g, out, log, kernel = inputs
    ctx.log, ctx.kernel = log, kernel
    ctx.save_for_backward(g, out)


def _expnorm_double_backward(ctx, gg):
    """Second derivative: the backward ``y = p * (g - <g, p>)`` (log form ``y = g - e^out
    sum g`` over the kept entries, 0 at the excluded ones) differentiated in ``g`` and
    ``out``."""
    g, out = ctx.saved_tensors
    if ctx.log:
        excluded = out == NEG_INF
        p = out.exp()
        d_g = (gg - (gg * p).sum(-1, keepdim=True)).masked_fill(excluded, 0.0)
        d_out = -gg * p * g.masked_fill(excluded, 0.0).sum(-1, keepdim=True)
        return d_g, d_out, None, None
    d_g = expnorm_backward_op(gg, out, False, ctx.kernel)
    d_out = gg * (g - (g * out).sum(-1, keepdim=True)) - g * (gg * out).sum(-1, keepdim=True)
    return d_g, d_out, None, None


expnorm_op.register_autograd(_expnorm_backward, setup_context=_expnorm_setup)
expnorm_backward_op.register_autograd(_expnorm_double_backward,
                                      setup_context=_expnorm_backward_setup)
expnorm_op.register_vmap(_vmap_rule(expnorm_op))
expnorm_backward_op.register_vmap(_vmap_rule(expnorm_backward_op))


def expnorm(l: Tensor, log: bool, kernel: str) -> Tensor:
    """:func:`expnorm_op`, called directly where no graph is needed."""
    if _direct(l):
        return _fn(kernel, "expnorm_forward")(l.contiguous(), log)
    return expnorm_op(l, log, kernel)


# ----------------------------------------------------------------------------- score
@torch.library.custom_op("softmaxlab::score_map", mutates_args=())
def score_op(z: Tensor, coef: Sequence[float], log: bool, kernel: str) -> tuple[Tensor, Tensor]:
    """``f(z) / sum f(z)`` (or its log) of a positive score ``f``: the polynomial with
    coefficients ``coef`` (lowest degree first), or sigsoftmax when ``coef`` is empty."""
    return _fn(kernel, "score_forward")(z.contiguous(), tuple(coef) or None, log)


@torch.library.custom_op("softmaxlab::score_map_backward", mutates_args=())
def score_backward_op(g: Tensor, z: Tensor, stats: Tensor, coef: Sequence[float], log: bool,
                      kernel: str) -> Tensor:
    return _fn(kernel, "score_backward")(g.contiguous(), z.contiguous(), stats.contiguous(),
                                         tuple(coef) or None, log)


@score_op.register_fake
def _(z, coef, log, kernel):
    out = torch.empty_like(z, memory_format=torch.contiguous_format)
    return out, z.new_empty((*z.shape[:-1], 2), dtype=torch.float64)


@score_backward_op.register_fake
def _(g, z, stats, coef, log, kernel):
    return torch.empty_like(z, memory_format=torch.contiguous_format)


def _score_setup(ctx, inputs, output):
    z, coef, log, kernel = inputs
    ctx.coef, ctx.log, ctx.kernel = coef, log, kernel
    ctx.mark_non_differentiable(output[1])
    ctx.save_for_backward(z, output[1])


def _score_backward(ctx, g, _g_stats):
    z, stats = ctx.saved_tensors
    if _create_graph():
        return _reference_vjp(ctx.kernel)(g, z, tuple(ctx.coef), ctx.log), None, None, None
    return score_backward_op(g, z, stats, ctx.coef, ctx.log, ctx.kernel), None, None, None


score_op.register_autograd(_score_backward, setup_context=_score_setup)
score_op.register_vmap(_vmap_rule(score_op))
score_backward_op.register_vmap(_vmap_rule(score_backward_op))


def score_map(z: Tensor, coef: tuple[float, ...], log: bool, kernel: str) -> Tensor:
    """The output of :func:`score_op` (``coef=()``: sigsoftmax)."""
    if _direct(z):
        return _fn(kernel, "score_output")(z.contiguous(), coef or None, log)
    return score_op(z, coef, log, kernel)[0]


# ---------------------------------------------------------------------------- sparse
@torch.library.custom_op("softmaxlab::sparse_map", mutates_args=())
def sparse_op(z: Tensor, alpha: float, kernel: str) -> Tensor:
    """Sparsemax (``alpha=2``) or 1.5-entmax (``alpha=1.5``) along the last dim."""
    return _fn(kernel, "sparse_forward")(z.contiguous(), alpha)


@torch.library.custom_op("softmaxlab::sparse_map_backward", mutates_args=())
def sparse_backward_op(g: Tensor, p: Tensor, alpha: float, kernel: str) -> Tensor:
    return _fn(kernel, "sparse_backward")(g.contiguous(), p.contiguous(), alpha)


@sparse_op.register_fake
def _(z, alpha, kernel):
    return torch.empty_like(z, memory_format=torch.contiguous_format)


@sparse_backward_op.register_fake
def _(g, p, alpha, kernel):
    return torch.empty_like(p, memory_format=torch.contiguous_format)


def _sparse_setup(ctx, inputs, output):
    ctx.alpha, ctx.kernel = inputs[1], inputs[2]
    ctx.save_for_backward(output)


def _sparse_backward(ctx, g):
    (p,) = ctx.saved_tensors
    if _create_graph():
        return _reference_vjp(ctx.kernel)(g, p), None, None
    return sparse_backward_op(g, p, ctx.alpha, ctx.kernel), None, None


sparse_op.register_autograd(_sparse_backward, setup_context=_sparse_setup)
sparse_op.register_vmap(_vmap_rule(sparse_op))
sparse_backward_op.register_vmap(_vmap_rule(sparse_backward_op))


def sparse_map(z: Tensor, alpha: float, kernel: str) -> Tensor:
    """:func:`sparse_op`, called directly where no graph is needed."""
    if _direct(z):
        return _fn(kernel, "sparse_forward")(z.contiguous(), alpha)
    return sparse_op(z, alpha, kernel)


# ------------------------------------------------------------------------------ topk
@torch.library.custom_op("softmaxlab::softmax_topk", mutates_args=())
def topk_op(x: Tensor, k: int, kernel: str) -> tuple[Tensor, Tensor, Tensor]:
    """The ``k`` largest softmax probabilities along the last dim, their indices and the
    rows' normalizer statistics."""
    return _fn(kernel, "topk_forward")(x.contiguous(), k)


@torch.library.custom_op("softmaxlab::softmax_topk_backward", mutates_args=())
def topk_backward_op(g: Tensor, x: Tensor, p: Tensor, idx: Tensor, stats: Tensor,
                     kernel: str) -> Tensor:
    return _fn(kernel, "topk_backward")(g.contiguous(), x.contiguous(), p.contiguous(),
                                        idx.contiguous(), stats.contiguous())


@topk_op.register_fake
def _(x, k, kernel):
    shape = (*x.shape[:-1], k)
    return (x.new_empty(shape), x.new_empty(shape, dtype=torch.int64),
            x.new_empty((*x.shape[:-1], 2), dtype=torch.float64))


@topk_backward_op.register_fake
def _(g, x, p, idx, stats, kernel):
    return torch.empty_like(x, memory_format=torch.contiguous_format)


def _topk_setup(ctx, inputs, output):
    ctx.kernel = inputs[2]
    p, idx, stats = output
    ctx.mark_non_differentiable(idx, stats)
    ctx.save_for_backward(inputs[0], p, idx, stats)


def _topk_backward(ctx, g, _g_idx, _g_stats):
    x, p, idx, stats = ctx.saved_tensors
    if _create_graph():
        return _reference_vjp(ctx.kernel)(g, x, idx), None, None
    return topk_backward_op(g, x, p, idx, stats, ctx.kernel), None, None


topk_op.register_autograd(_topk_backward, setup_context=_topk_setup)
topk_op.register_vmap(_vmap_rule(topk_op))
topk_backward_op.register_vmap(_vmap_rule(topk_backward_op))


def softmax_topk(x: Tensor, k: int, kernel: str) -> tuple[Tensor, Tensor]:
    """Top-k probabilities and indices of :func:`topk_op`."""
    if _direct(x):
        p, idx, _ = _fn(kernel, "topk_forward")(x.contiguous(), k)
    else:
        p, idx, _ = topk_op(x, k, kernel)
    return p, idx
