"""Sparse projections onto the simplex: sparsemax, 1.5-entmax (exact, sort-based) and
alpha-entmax (bisection, differentiable in alpha)."""

from __future__ import annotations

import numbers
from dataclasses import dataclass

import torch

from .. import kernels
from .._constants import NEG_INF
from .._registry import Mapping, Param, register
from .._validation import check_broadcast, check_dim, check_input, checks_values
from ..kernels import ops
from ._common import along, apply, common_call, compute, exp_normalize
from .softmax import softmax


def _shifted_sorted(z: torch.Tensor, scale: float = 1.0):
    """(z - max) * scale (excluded entries stay -inf), its descending sort, and which sorted
    entries are finite (kept and not NaN)."""
    m = z.amax(-1, keepdim=True)
    zs = (z - m.masked_fill(m == NEG_INF, 0.0)) * scale
    srt = zs.sort(-1, descending=True).values
    finite = torch.isfinite(srt)
    return zs, srt.masked_fill(~finite, 0.0), finite


def _ranks(z: torch.Tensor) -> torch.Tensor:
    return torch.arange(1, z.shape[-1] + 1, device=z.device, dtype=z.dtype)


def _threshold_at(values: torch.Tensor, support: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """values[..., k-1] with k = the support size (0 where the row has nothing kept)."""
    k = support.sum(-1, keepdim=True)
    return values.gather(-1, (k - 1).clamp(min=0)), k


def _sparsemax_vjp(g: torch.Tensor, p: torch.Tensor) -> torch.Tensor:
    """Jacobian (symmetric) times ``g``: ``diag(s) - s s^T / |S|``, s = support indicator.

    ``s`` is 1 where ``p > 0`` from ``sign(p)``, whose derivative autograd knows to be 0:
    the Jacobian is piecewise constant, so the second derivative is exactly 0, and with
    ``create_graph`` the gradient still has a graph (as torch's ``relu``), not a detached
    constant."""
    s = torch.where(p > 0, p.sign(), 0.0).to(g.dtype)
    mean = (g * s).sum(-1, keepdim=True) / s.sum(-1, keepdim=True).clamp(min=1)
    return s * (g - mean)


class _Sparsemax(torch.autograd.Function):
    """Sparsemax of rows along the last dim (excluded entries ``-inf``), sort-based."""

    generate_vmap_rule = True

    @staticmethod
    def forward(z: torch.Tensor) -> torch.Tensor:
        zs, srt, finite = _shifted_sorted(z)
        cs = srt.cumsum(-1)
        support = (1 + _ranks(z) * srt > cs) & finite
        cs_k, k = _threshold_at(cs, support)
        tau = ((cs_k - 1) / k.clamp(min=1)).masked_fill(k == 0, 0.0)
        return (zs - tau).clamp(min=0)

    @staticmethod
    def setup_context(ctx, inputs, output):
        ctx.save_for_backward(output)
        ctx.save_for_forward(output)

    @staticmethod
    def backward(ctx, g: torch.Tensor):
        (p,) = ctx.saved_tensors
        return _sparsemax_vjp(g, p)


class SparsemaxFunction(_Sparsemax):
    @staticmethod
    def jvp(ctx, dz: torch.Tensor):
        (p,) = ctx.saved_tensors
        return _sparsemax_vjp(dz, p)


class _Entmax15(torch.autograd.Function):
    """1.5-entmax of rows along the last dim (excluded entries ``-inf``), sort-based."""

    generate_vmap_rule = True

    @staticmethod
    def forward(z: torch.Tensor) -> torch.Tensor:
        # p = [z/2 - tau]_+^2 (Peters et al. 2019, Alg. 2 on z/2).
        zs, srt, finite = _shifted_sorted(z, scale=0.5)
        r = _ranks(z)
        mean = srt.cumsum(-1) / r
        mean_sq = srt.square().cumsum(-1) / r
        delta = (1 - r * (mean_sq - mean.square())) / r
        tau = mean - delta.clamp(min=0).sqrt()
        support = (tau <= srt) & finite
        tau_k, k = _threshold_at(tau, support)
        # Entries tied at the threshold round tau a hair low; p <= 1 exactly in the math.
        return (zs - tau_k.masked_fill(k == 0, 0.0)).clamp(min=0).square().clamp(max=1)

    @staticmethod
    def setup_context(ctx, inputs, output):
        ctx.save_for_backward(output)
        ctx.save_for_forward(output)

    @staticmethod
    def backward(ctx, g: torch.Tensor):
        (p,) = ctx.saved_tensors
        return _entmax15_vjp(g, p)


class Entmax15Function(_Entmax15):
    @staticmethod
    def jvp(ctx, dz: torch.Tensor):
        (p,) = ctx.saved_tensors
        return _entmax15_vjp(dz, p)


def _entmax15_vjp(g: torch.Tensor, p: torch.Tensor) -> torch.Tensor:
    """Jacobian (symmetric) of 1.5-entmax times ``g``, from its output ``p``."""
    return _entmax_input_grad(g, support_pow(p, 0.5))


def support_pow(p: torch.Tensor, exponent: float | torch.Tensor) -> torch.Tensor:
    """``p ** exponent`` on the support, 0 where ``p == 0`` (NaN stays NaN), with finite
    derivatives everywhere: the power of 0 (``0 ** 0.5`` has an infinite derivative, and
    ``torch.where`` would turn it into ``0 * inf = NaN`` in a second derivative) is never
    taken."""
    off = p == 0
    return torch.where(off, 0.0, torch.where(off, 1.0, p).pow(exponent))


def _support_log(p: torch.Tensor) -> torch.Tensor:
    """``log p`` on the support, 0 where ``p == 0`` (finite derivatives everywhere)."""
    off = p == 0
    return torch.where(off, 0.0, torch.where(off, 1.0, p).log())


def _entmax_input_grad(g: torch.Tensor, gppr: torch.Tensor) -> torch.Tensor:
    """Vector-Jacobian product of alpha-entmax (the Jacobian is symmetric, so also its
    Jacobian-vector product): gppr * g - gppr * <gppr, g> / sum gppr, where gppr =
    p^(2 - alpha) on the support."""
    dz = g * gppr
    total = gppr.sum(-1, keepdim=True)
    q = dz.sum(-1, keepdim=True) / total.masked_fill(total == 0, 1.0)
    return dz - q * gppr


def _alpha_parts(p: torch.Tensor, alpha: torch.Tensor):
    """``gppr = p^(2 - alpha)`` on the support and ``dp/dalpha`` (per entry), as functions
    of ``(p, alpha)`` that autograd differentiates again (second derivatives in the logits
    and in alpha; no NaN off the support)."""
    is_one = alpha == 1
    am1 = alpha.masked_fill(is_one, 2.0) - 1
    gppr = support_pow(p, 2 - alpha)
    # dp/dalpha = F(p, alpha) = (p - y)/(a-1)^2 - (p log p - y H)/(a-1), y = gppr / sum gppr,
    # H = sum p log p. At alpha = 1 its expansion in (alpha - 1) at fixed p, with l = log p
    # and m_k = E_p[l^k]: F = p (m_2 - l^2)/2 + (alpha - 1) p ((l^3 - m_3)/6
    # - m_2 (l - m_1)/2) + O((alpha - 1)^2); the second term is 0 in value and gives the
    # exact d2p/dalpha2 there.
    total = gppr.sum(-1, keepdim=True)
    y = gppr / total.masked_fill(total == 0, 1.0)
    logp = _support_log(p)
    plogp = p * logp
    ent = plogp.sum(-1, keepdim=True)
    dp = (p - y) / am1.square() - (plogp - y * ent) / am1
    m2 = (plogp * logp).sum(-1, keepdim=True)
    m3 = (plogp * logp.square()).sum(-1, keepdim=True)
    dp_one = p * ((m2 - logp.square()) / 2
                  + (alpha - 1) * ((logp.pow(3) - m3) / 6 - m2 * (logp - ent) / 2))
    return gppr, torch.where(is_one, dp_one, dp)


@dataclass(frozen=True)
class BisectOptions:
    n_iter: int


class _EntmaxBisect(torch.autograd.Function):
    """alpha-entmax by bisection on tau; rows with alpha == 1 are softmax, alpha == 2 exact
    sparsemax. Gradients (and forward-mode derivatives) for both the logits and alpha."""

    generate_vmap_rule = True

    @staticmethod
    def forward(z, alpha, opts: BisectOptions):
        alpha = alpha.to(z.dtype)
        excl = torch.isneginf(z)
        is_one = alpha == 1
        am1 = alpha.masked_fill(is_one, 2.0) - 1
        x = z * am1
        m = x.amax(-1, keepdim=True)
        x = x - m.masked_fill(m == NEG_INF, 0.0)
        kept = (~excl).sum(-1, keepdim=True).clamp(min=1).to(z.dtype)
        lo = torch.full_like(m, -1.0)
        width = 1 - kept.pow(-am1)  # hi - lo, hi = -(1/d)^(alpha-1): there sum p <= 1
        expo = am1.reciprocal()
        mid = lo
        for _ in range(opts.n_iter):
            width = width / 2
            mid = lo + width
            f = (x - mid).clamp(min=0).pow(expo).sum(-1, keepdim=True) - 1
            lo = torch.where(f >= 0, mid, lo)
        p = (x - mid).clamp(min=0).pow(expo)
        total = p.sum(-1, keepdim=True)
        p = p / total.masked_fill(total == 0, 1.0)
        p = torch.where(is_one, exp_normalize(z, False), p)
        return torch.where(alpha == 2, apply(SparsemaxFunction, _Sparsemax, z), p)

    @staticmethod
    def setup_context(ctx, inputs, output):
        alpha = inputs[1].to(output.dtype)
        ctx.save_for_backward(output, alpha)
        ctx.save_for_forward(output, alpha)

    @staticmethod
    def backward(ctx, g):
        p, alpha = ctx.saved_tensors
        gppr, dp_dalpha = _alpha_parts(p, alpha)
        dalpha = (g * dp_dalpha).sum(-1, keepdim=True) if ctx.needs_input_grad[1] else None
        return _entmax_input_grad(g, gppr), dalpha, None


class EntmaxBisectFunction(_EntmaxBisect):
    @staticmethod
    def jvp(ctx, dz, dalpha, _opts):
        p, alpha = ctx.saved_tensors
        gppr, dp_dalpha = _alpha_parts(p, alpha)
        out = _entmax_input_grad(dz, gppr)
        return out if dalpha is None else out + dp_dalpha * dalpha.to(out.dtype)


# The sparse kernels' backward under create_graph=True (see kernels/ops.py)
ops.register_vjp("sparsemax", _sparsemax_vjp)
ops.register_vjp("entmax15", _entmax15_vjp)


def _sparse(op: str, z: torch.Tensor, alpha: float, reference, traced) -> torch.Tensor:
    """Rows of sparsemax (``alpha=2``) or 1.5-entmax: the kernel, or the sort-based
    ``reference`` (``traced``: the same without jvp, see :func:`._common.apply`)."""
    spec = kernels.select(op, z)
    if spec is None:
        return apply(reference, traced, compute(z))
    return ops.sparse_map(z if spec.low_precision else compute(z), alpha, spec.name)


def sparsemax(x: torch.Tensor, dim: int = -1, *, mask: torch.Tensor | None = None,
              dtype: torch.dtype | None = None) -> torch.Tensor:
    r"""Sparsemax (Martins & Astudillo 2016): the Euclidean projection onto the simplex.

    .. math:: \mathrm{sparsemax}(z) = \arg\min_{p \in \Delta} \|p - z\|^2 = [z - \tau]_+

    with :math:`\tau` from a sort of the row. Exact zeros outside the support; Jacobian
    :math:`\mathrm{diag}(s) - s s^\top/|S|`. Shift-invariant. Shapes, ``dim`` and ``mask`` as
    in :func:`softmaxlab.softmax`.

    Example:
        >>> sparsemax(torch.tensor([-2.0, 0.0, 0.5]))
        tensor([0.0000, 0.2500, 0.7500])
    """
    out = common_call("sparsemax", "sparse_forward", x, dim, mask, dtype, 2.0)
    if out is not None:
        return out
    return along(x, dim, mask,
                 lambda z: _sparse("sparsemax", z, 2.0, SparsemaxFunction, _Sparsemax), dtype)


def entmax15(x: torch.Tensor, dim: int = -1, *, mask: torch.Tensor | None = None,
             dtype: torch.dtype | None = None) -> torch.Tensor:
    r"""1.5-entmax (Peters et al. 2019), exact and sort-based.

    .. math:: \arg\max_{p\in\Delta} p^\top z + H^T_{1.5}(p) = [z/2 - \tau]_+^2

    Sparse like sparsemax, smoother like softmax. Shapes, ``dim`` and ``mask`` as in
    :func:`softmaxlab.softmax`.

    Example:
        >>> entmax15(torch.tensor([-2.0, 0.0, 0.5]))
        tensor([0.0000, 0.3260, 0.6740])
    """
    out = common_call("entmax15", "sparse_forward", x, dim, mask, dtype, 1.5)
    if out is not None:
        return out
    return along(x, dim, mask,
                 lambda z: _sparse("entmax15", z, 1.5, Entmax15Function, _Entmax15), dtype)


def _check_alpha(alpha: object) -> None:
    if isinstance(alpha, torch.Tensor):
        if not alpha.is_floating_point():
            raise TypeError(f"alpha must be a float or a floating tensor, got {alpha.dtype}")
        a = alpha.detach()
        if checks_values() and not bool(((a >= 1) & torch.isfinite(a)).all()):
            raise ValueError(f"alpha must be >= 1 and finite, got {alpha}")
        return
    ALPHA.validate(alpha)


def entmax(
    x: torch.Tensor,
    dim: int = -1,
    *,
    alpha: float | torch.Tensor = 1.5,
    n_iter: int = 50,
    mask: torch.Tensor | None = None,
    dtype: torch.dtype | None = None,
) -> torch.Tensor:
    r"""alpha-entmax (Peters et al. 2019): softmax at 1, sparsemax at 2, sparse in between.

    .. math:: \arg\max_{p\in\Delta} p^\top z + H^T_\alpha(p)
              = [(\alpha-1) z - \tau]_+^{1/(\alpha-1)}

    ``alpha >= 1``: a float, or a tensor broadcastable to ``x`` with size 1 along ``dim``
    (per-row, learnable: the gradient with respect to ``alpha`` is exact, also at 1).
    ``alpha`` 1, 1.5 and 2 are computed exactly (:func:`softmax`, :func:`entmax15`,
    :func:`sparsemax`); other values by ``n_iter`` bisection steps on
    :math:`\tau`. Shapes, ``dim`` and ``mask`` as in :func:`softmaxlab.softmax`.

    Example:
        >>> entmax(torch.tensor([-2.0, 0.0, 0.5]), alpha=2.0)
        tensor([0.0000, 0.2500, 0.7500])
    """
    if type(alpha) is float and alpha == 1.5 and type(n_iter) is int and n_iter >= 1:
        return entmax15(x, dim, mask=mask, dtype=dtype)  # the default, exact
    check_input(x)
    _check_alpha(alpha)
    N_ITER.validate(n_iter)
    if not isinstance(alpha, torch.Tensor):
        if alpha == 1:
            return softmax(x, dim, mask=mask, dtype=dtype)
        if alpha == 1.5:
            return entmax15(x, dim, mask=mask, dtype=dtype)
        if alpha == 2:
            return sparsemax(x, dim, mask=mask, dtype=dtype)
        alpha = torch.tensor(float(alpha), dtype=torch.float64)
    d = check_dim(x, dim)
    rows = list(x.shape) or [1]
    rows[d] = 1
    check_broadcast(alpha, torch.Size(rows), "alpha")
    a = alpha.to(x.device).broadcast_to(rows).movedim(d, -1)
    opts = BisectOptions(n_iter)
    return along(x, dim, mask,
                 lambda z: apply(EntmaxBisectFunction, _EntmaxBisect, compute(z), a, opts), dtype)


ALPHA = Param(
    "alpha",
    1.5,
    (numbers.Real, torch.Tensor),
    lambda a: a >= 1 and a < float("inf"),
    "a finite number >= 1 (or a floating tensor of them)",
    valid=(1.0, 1.25, 2.0, 3.0),
    bad=(0.5, 0.0, -1.0, float("inf"), float("nan"), "1.5"),
)
N_ITER = Param("n_iter", 50, (int,), lambda n: n >= 1, "an integer >= 1", bad=(0, -3, 2.5))


def naive_sparsemax(x: torch.Tensor) -> torch.Tensor:
    """Sort-based sparsemax in torch ops (Martins & Astudillo 2016, Alg. 1), autograd
    through the ops."""
    z = x - x.amax(-1, keepdim=True)
    srt = z.sort(-1, descending=True).values
    r = torch.arange(1, z.shape[-1] + 1, device=z.device, dtype=z.dtype)
    cs = srt.cumsum(-1)
    k = (1 + r * srt > cs).sum(-1, keepdim=True)
    tau = (cs.gather(-1, k - 1) - 1) / k
    return (z - tau).clamp(min=0)


def naive_entmax15(x: torch.Tensor) -> torch.Tensor:
    """Sort-based 1.5-entmax in torch ops (Peters et al. 2019, Alg. 2), autograd through
    the ops."""
    z = (x - x.amax(-1, keepdim=True)) / 2
    srt = z.sort(-1, descending=True).values
    r = torch.arange(1, z.shape[-1] + 1, device=z.device, dtype=z.dtype)
    mean = srt.cumsum(-1) / r
    mean_sq = (srt * srt).cumsum(-1) / r
    tau = mean - ((1 - r * (mean_sq - mean * mean)) / r).clamp(min=0).sqrt()
    k = (tau <= srt).sum(-1, keepdim=True)
    return (z - tau.gather(-1, k - 1)).clamp(min=0) ** 2


register(
    Mapping(
        "sparsemax",
        sparsemax,
        None,
        loss="fenchel_young",
        sparse=True,
        shift_invariant=True,
        summary="Euclidean projection onto the simplex",
        formula="argmin_{p in simplex} ||p - z||^2",
        naive=naive_sparsemax,
        tsallis_alpha=2.0,
    )
)
register(
    Mapping(
        "entmax15",
        entmax15,
        None,
        loss="fenchel_young",
        sparse=True,
        shift_invariant=True,
        summary="1.5-entmax, exact (sort-based)",
        formula="[z/2 - tau]_+^2",
        naive=naive_entmax15,
        tsallis_alpha=1.5,
    )
)
register(
    Mapping(
        "entmax",
        entmax,
        None,
        loss="fenchel_young",
        params=(ALPHA, N_ITER),
        sparse=True,
        shift_invariant=True,
        summary="alpha-entmax: softmax (1) to sparsemax (2) and beyond",
        formula="[(alpha-1) z - tau]_+^(1/(alpha-1))",
    )
)
