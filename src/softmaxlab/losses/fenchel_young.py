"""Fenchel-Young losses: the natural losses of sparsemax, 1.5-entmax and alpha-entmax."""

from __future__ import annotations

import numbers
from dataclasses import dataclass

import torch

from .._registry import get_mapping, mappings
from ._common import (
    as_rows,
    check_label_smoothing,
    check_reduction,
    class_weights,
    loss_dtype,
    weighted_reduce,
)


def fenchel_young_names() -> list[str]:
    """The mappings whose natural loss is the Fenchel-Young loss (their registry records
    carry the Tsallis alpha, or take it as their ``alpha`` parameter)."""
    return [m.name for m in mappings() if m.loss == "fenchel_young"]


def tsallis_entropy(p: torch.Tensor, alpha: float | torch.Tensor) -> torch.Tensor:
    r"""Tsallis alpha-entropy along the last dim:
    :math:`H_\alpha(p) = (1 - \sum_i p_i^\alpha) / (\alpha(\alpha - 1))`, Shannon at 1."""
    if not isinstance(alpha, torch.Tensor):
        alpha = torch.tensor(float(alpha), dtype=p.dtype, device=p.device)
    is_one = alpha == 1
    a = alpha.masked_fill(is_one, 2.0)
    tsallis = (1 - p.clamp(min=0).pow(a).sum(-1, keepdim=True)) / (a * (a - 1))
    shannon = -torch.where(p > 0, p * p.clamp(min=torch.finfo(p.dtype).tiny).log(), 0.0).sum(
        -1, keepdim=True)
    return torch.where(is_one, shannon, tsallis)[..., 0]


@dataclass(frozen=True)
class _Options:
    mapping: str
    params: tuple  # the mapping's keyword arguments, as sorted (name, value) pairs
    alpha: float


class _FenchelYoung(torch.autograd.Function):
    """Per-row loss <z, p - q> + H(p) - H(q) with gradient p - q (p = the mapping of z).

    The second derivative is the mapping's Jacobian: under ``create_graph=True`` the
    backward recomputes ``p`` from ``z`` with autograd (the mapping's own exact, twice
    differentiable gradient), so that the gradient ``p - q`` has a graph; a plain backward
    uses the ``p - q`` of the forward."""

    @staticmethod
    def forward(ctx, z, q, p, opts: _Options):
        diff = p - q
        inner = torch.where(diff != 0, z * diff, 0.0).sum(-1)  # -inf logits have p = q = 0
        loss = inner + tsallis_entropy(p, opts.alpha) - tsallis_entropy(q, opts.alpha)
        ctx.opts = opts
        ctx.save_for_backward(z, q, diff)
        return loss

    @staticmethod
    def backward(ctx, g):
        z, q, diff = ctx.saved_tensors
        if torch.is_grad_enabled():  # create_graph=True: p - q as a function of z
            diff = get_mapping(ctx.opts.mapping).fn(z, -1, **dict(ctx.opts.params)) - q
        return g[:, None] * diff, None, None, None


def fenchel_young_loss(
    logits: torch.Tensor,
    target: torch.Tensor,
    *,
    mapping: str = "sparsemax",
    weight: torch.Tensor | None = None,
    ignore_index: int = -100,
    reduction: str = "mean",
    label_smoothing: float = 0.0,
    **mapping_params,
) -> torch.Tensor:
    r"""Fenchel-Young loss of a sparse mapping (Blondel et al. 2020).

    .. math:: \ell(z, q) = \langle z, p - q\rangle + H_\alpha(p) - H_\alpha(q),
              \quad p = \texttt{mapping}(z), \quad \nabla_z \ell = p - q

    with :math:`q` the one-hot target, or the target's class probabilities (a floating
    ``target`` of ``logits``' shape, on the simplex; not checked), smoothed by
    ``label_smoothing``, and :math:`H_\alpha` the Tsallis entropy: ``sparsemax`` (alpha 2),
    ``entmax15`` (1.5) or ``entmax`` (its ``alpha``, a float; alpha 1 gives the softmax
    cross-entropy). Non-negative, zero exactly when ``p == q``. A row's class weight
    multiplies its whole loss (for probabilities :math:`y`: :math:`\langle w, y\rangle`,
    and ``"mean"`` divides by the number of rows, as in
    :func:`softmaxlab.losses.cross_entropy`; no gradient flows to the target). Layout and
    other arguments as there.

    Example:
        >>> z = torch.tensor([[-2.0, 0.0, 0.5]])
        >>> fenchel_young_loss(z, torch.tensor([2]))  # sparsemax [0, .25, .75]
        tensor(0.0625)
        >>> fenchel_young_loss(z, torch.tensor([[0.0, 0.25, 0.75]]))  # q = p: zero loss
        tensor(0.)
    """
    valid = fenchel_young_names()
    if mapping not in valid:
        raise ValueError(f"mapping must be one of {valid}, got {mapping!r}")
    reduction = check_reduction(reduction)
    label_smoothing = check_label_smoothing(label_smoothing)
    alpha = get_mapping(mapping).tsallis_alpha
    if alpha is None:
        alpha = mapping_params.get("alpha", 1.5)
        if isinstance(alpha, torch.Tensor) or isinstance(alpha, bool) or not isinstance(
            alpha, numbers.Real
        ):
            raise TypeError(f"alpha must be a float for fenchel_young_loss, got {alpha!r}")
    rows = as_rows(logits, target, ignore_index, probs=True)
    w = class_weights(weight, rows.n_classes, rows.logits)
    z = rows.logits
    with torch.no_grad():
        p = get_mapping(mapping).fn(z.detach(), -1, **mapping_params)
    q = rows.onehot() if rows.probs is None else rows.probs
    if label_smoothing > 0:
        q = (1 - label_smoothing) * q + label_smoothing / rows.n_classes
    opts = _Options(mapping, tuple(sorted(mapping_params.items())), alpha)
    loss = _FenchelYoung.apply(z, q, p, opts)
    return weighted_reduce(loss, w, rows, reduction).to(loss_dtype(logits))
