r"""Vocabulary-parallel Fenchel-Young losses of the sparse maps.

``p = [(alpha - 1) z - tau]_+^{1/(alpha-1)}`` needs the threshold ``tau`` of the whole row.
A sort of a row split across ranks would need its values gathered (up to ``V`` per row:
the support of sparsemax can be the whole vocabulary), so ``tau`` is found with reductions
of a few numbers per row instead, in float64:

* sparsemax and 1.5-entmax: Newton's method on the convex, decreasing
  ``f(tau) = sum_j [a_j - tau]_+^q - 1`` (``a = (alpha - 1) z``, ``q = 1/(alpha - 1)``),
  from ``tau_0 = max a - 1`` (where ``f >= 0``: the largest entry alone gives 1), so every
  iterate stays left of the root and the support only shrinks. Each step is one
  ``all_reduce(SUM)`` of the support's size and sums. For sparsemax ``f`` is piecewise
  linear and the step is Michelot's algorithm: once the support stops changing, ``tau`` is
  the exact ``(sum_S a - 1) / |S|``. For 1.5-entmax ``f`` is piecewise quadratic: each step
  also yields the closed-form root of the current support's quadratic, and the next
  reduction checks that it leaves exactly that support (then it is the exact ``tau``). So
  both end on the threshold of the sort-based single-process maps, after a few steps (the
  count is bounded by the support size; typically under ten).
* alpha-entmax (``mapping="entmax"``, alpha other than 1 and 2): the single process's own
  bisection (same bracket, ``n_iter`` halvings), with one ``all_reduce(SUM)`` per step.
* alpha 1 is the softmax: one max, one sum.

The loss ``<z, p - q> + H(p) - H(q)`` then needs three sums per row (one
``all_reduce(SUM)``); its gradient ``p - q`` is local.
"""

from __future__ import annotations

import numbers

import torch

from .. import losses as L
from .._constants import NEG_INF
from .._registry import get_mapping
from ..losses._common import Rows, check_label_smoothing, check_reduction, weighted_reduce
from ..losses.fenchel_young import fenchel_young_names
from ._comm import Comm
from ._targets import Targets, compute_dtype, loss_inputs, targets

__all__ = ["fenchel_young_loss", "entmax_threshold"]

#: Newton steps before giving up on the exact end (the iterate is then accurate to
#: rounding: it converges quadratically); never reached in the tests.
MAX_NEWTON = 200


def _row_max(x: torch.Tensor, comm: Comm) -> torch.Tensor:
    m = x.amax(-1) if x.shape[-1] else x.new_full(x.shape[:1], NEG_INF)
    return comm.all_reduce(m, "max")


def entmax_threshold(a: torch.Tensor, alpha: float, comm: Comm) -> tuple[torch.Tensor, int]:
    """The exact threshold ``tau`` (float64, per row) of sparsemax (``alpha=2``) or
    1.5-entmax (``alpha=1.5``) of the rows whose shard-local part is ``a = (alpha - 1) z``
    (float64), and the number of reductions it took (after the max)."""
    quad = alpha == 1.5
    m = _row_max(a, comm)
    done = ~torch.isfinite(m)  # rows with no kept entry (or NaN): no support
    tau = torch.where(done, 0.0, m - 1)
    cand = n_prev = None
    steps = 0
    for _ in range(MAX_NEWTON):
        b = a - tau[:, None]
        sel = b > 0
        b = torch.where(sel, b, 0.0)
        parts = [sel.sum(-1, dtype=a.dtype), b.sum(-1)]
        if quad:
            parts.append(b.square().sum(-1))
            if cand is not None:
                parts.append((a > cand[:, None]).sum(-1, dtype=a.dtype))
        stats = comm.all_reduce(torch.stack(parts))
        steps += 1
        n, b1 = stats[0], stats[1]
        if n_prev is not None:
            if quad:
                assert cand is not None
                exact = ~done & (stats[3] == n_prev)  # the candidate keeps its support
                tau = torch.where(exact, cand, tau)
                done = done | exact
            else:
                done = done | (n == n_prev)  # support unchanged: tau is exact
        done = done | (n == 0)
        if bool(done.all()):
            break
        safe_n = n.clamp(min=1)
        if quad:
            b2 = stats[2]
            # the smaller root of sum_S (b - d)^2 = 1, and Newton's step (b2 - 1) / (2 b1)
            disc = (b1.square() - n * (b2 - 1)).clamp(min=0)
            cand = tau + (b1 - disc.sqrt()) / safe_n
            step = (b2 - 1) / (2 * b1.clamp(min=torch.finfo(a.dtype).tiny))
            stalled = ~done & ~(tau + step > tau)  # converged to rounding (ties at tau)
            done = done | stalled
            new = tau + step
        else:
            new = tau + (b1 - 1) / safe_n
        tau = torch.where(done, tau, new)
        n_prev = n
    return tau, steps


def _bisect(x: torch.Tensor, alpha: float, n_iter: int, comm: Comm) -> torch.Tensor:
    """alpha-entmax of the rows by the single process's bisection (its bracket, ``n_iter``
    halvings), one sum per halving over the group; this shard's probabilities."""
    am1 = alpha - 1
    x = x * am1
    m = _row_max(x, comm)
    x = x - m.masked_fill(m == NEG_INF, 0.0)[:, None]
    kept = comm.all_reduce((~torch.isneginf(x)).sum(-1, dtype=x.dtype)).clamp(min=1)
    lo = torch.full_like(m, -1.0)
    width = 1 - kept.pow(-am1)
    expo = 1 / am1
    mid = lo
    for _ in range(n_iter):
        width = width / 2
        mid = lo + width
        f = comm.all_reduce((x - mid[:, None]).clamp(min=0).pow(expo).sum(-1)) - 1
        lo = torch.where(f >= 0, mid, lo)
    p = (x - mid[:, None]).clamp(min=0).pow(expo)
    total = comm.all_reduce(p.sum(-1))
    return p / total.masked_fill(total == 0, 1.0)[:, None]


def sparse_probs(z: torch.Tensor, mapping: str, alpha: float, n_iter: int,
                 comm: Comm) -> torch.Tensor:
    """This shard's probabilities of ``mapping`` over the whole rows (no gradient)."""
    if alpha == 1:
        m = _row_max(z, comm)
        e = (z - m.masked_fill(m == NEG_INF, 0.0)[:, None]).exp()
        s = comm.all_reduce(e.sum(-1))
        return e / s.masked_fill(s == 0, 1.0)[:, None]
    if alpha == 2 or mapping == "entmax15":
        a = z.double() * (alpha - 1)
        tau, _ = entmax_threshold(a, alpha, comm)
        u = (a - tau[:, None]).clamp(min=0)
        return (u if alpha == 2 else u.square()).to(z.dtype)
    return _bisect(z, alpha, n_iter, comm)


def _entropy_sum(p: torch.Tensor, alpha: float) -> torch.Tensor:
    """The shard's part of ``sum p^alpha`` (alpha 1: ``sum p log p``)."""
    if alpha == 1:
        return torch.where(p > 0, p * p.clamp(min=torch.finfo(p.dtype).tiny).log(), 0.0).sum(-1)
    return p.clamp(min=0).pow(alpha).sum(-1)


def _entropy(total: torch.Tensor, alpha: float) -> torch.Tensor:
    return -total if alpha == 1 else (1 - total) / (alpha * (alpha - 1))


class _VocabParallelFY(torch.autograd.Function):
    """Per-row ``<z, p - q> + H(p) - H(q)`` with gradient ``p - q``; one sum in forward."""

    @staticmethod
    def forward(ctx, z, p, q, alpha: float, comm: Comm):
        diff = p - q
        inner = torch.where(diff != 0, z * diff, 0.0).sum(-1)
        stats = comm.all_reduce(torch.stack([inner, _entropy_sum(p, alpha),
                                             _entropy_sum(q, alpha)]))
        ctx.save_for_backward(diff)
        return stats[0] + _entropy(stats[1], alpha) - _entropy(stats[2], alpha)

    @staticmethod
    def backward(ctx, g):
        (diff,) = ctx.saved_tensors
        return g[:, None] * diff, None, None, None, None


def _check_params(mapping: str, params: dict) -> tuple[float, int]:
    """Validated ``alpha`` (the mapping's Tsallis alpha, or its float ``alpha``) and
    ``n_iter`` (``mask`` is always accepted)."""
    m = get_mapping(mapping)
    known = {p.name for p in m.params}
    for key, value in params.items():
        if key == "mask":
            continue
        if key not in known:
            raise TypeError(f"mapping {mapping!r} has no parameter {key!r} "
                            f"(its parameters: {', '.join(sorted(known)) or 'none'})")
        m.param(key).validate(value)
    alpha = m.tsallis_alpha
    if alpha is None:
        alpha = params.get("alpha", m.defaults.get("alpha", 1.5))
        if isinstance(alpha, (bool, torch.Tensor)) or not isinstance(alpha, numbers.Real):
            raise TypeError(f"alpha must be a float for fenchel_young_loss, got {alpha!r}")
    return float(alpha), int(params.get("n_iter", m.defaults.get("n_iter", 50)))


def fenchel_young_loss(
    logits: torch.Tensor,
    target: torch.Tensor,
    *,
    mapping: str = "sparsemax",
    weight: torch.Tensor | None = None,
    ignore_index: int = -100,
    reduction: str = "mean",
    label_smoothing: float = 0.0,
    group=None,
    **mapping_params,
) -> torch.Tensor:
    r"""Fenchel-Young loss of vocabulary-sharded logits, equal to the single-process
    :func:`softmaxlab.losses.fenchel_young_loss` of the full logits (value and gradients).

    ``mapping``: ``sparsemax``, ``entmax15`` (exact thresholds, see the module) or
    ``entmax`` (its ``alpha``, a float; bisection with ``n_iter`` steps as the single
    process). Layout, ``group`` and the other arguments as
    :func:`softmaxlab.distributed.cross_entropy` (class-id targets).

    Example:
        >>> z = torch.tensor([[-2.0, 0.0, 0.5]])
        >>> fenchel_young_loss(z, torch.tensor([2]))  # not distributed: single process
        tensor(0.0625)
    """
    valid = fenchel_young_names()
    if mapping not in valid:
        raise ValueError(f"mapping must be one of {valid}, got {mapping!r}")
    reduction = check_reduction(reduction)
    eps = check_label_smoothing(label_smoothing)
    params = dict(mapping_params)
    alpha, n_iter = _check_params(mapping, params)
    a = loss_inputs(logits, target, weight, params.pop("mask", None), group)
    if a.shard is None:
        return a.single_process(L.fenchel_young_loss, reduction, mapping=mapping,
                                ignore_index=ignore_index, label_smoothing=eps, **params)
    z = a.z.to(compute_dtype(a.z)).reshape(a.batch_shape.numel(), a.z.shape[-1])
    tg = targets(a.target, a.batch_shape, a.shard, a.weight, ignore_index, z.dtype, z.device)
    with torch.no_grad():
        p = sparse_probs(z.detach(), mapping, alpha, n_iter, a.shard.comm)
    q = _smoothed(tg, z, eps)
    loss = _VocabParallelFY.apply(z, p, q, alpha, a.shard.comm)
    rows = Rows(z, tg.target, tg.keep, a.batch_shape)
    w = None if a.weight is None else a.weight.to(device=z.device, dtype=z.dtype)
    return weighted_reduce(loss, w, rows, reduction).to(logits.dtype)


def _smoothed(tg: Targets, z: torch.Tensor, eps: float) -> torch.Tensor:
    """This shard's part of the target distribution ``(1 - e) onehot + e / V``."""
    q = tg.onehot(z)
    return (1 - eps) * q + eps / tg.vocab if eps else q

