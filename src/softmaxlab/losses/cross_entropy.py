"""Cross-entropy for every normalized mapping with a log form, soft-margin (SM) softmax and
the sparse-softmax loss."""

from __future__ import annotations

import torch

from .. import kernels
from .._registry import resolve_log_mapping
from .._validation import check_real
from ..kernels import ops
from ..kernels.registry import eager
from ._common import (
    as_rows,
    check_label_smoothing,
    check_reduction,
    check_target_ids,
    class_weights,
    eager_cpu_ids,
    logit_rows,
    loss_dtype,
    nll_loss,
    nll_rows,
    raise_bad_target,
    reduce,
    weighted_reduce,
)


def log_probs(name: str, logits: torch.Tensor, params: dict) -> torch.Tensor:
    """Log-probabilities of mapping ``name`` along the last dim (``ValueError`` when the
    mapping has no log form)."""
    log_fn = resolve_log_mapping(name, params).log_fn
    assert log_fn is not None  # resolve_log_mapping returns only mappings with a log form
    return log_fn(logits, -1, **params)


def _as(loss: torch.Tensor, logits: torch.Tensor) -> torch.Tensor:
    """``loss`` in the dtype of a loss of ``logits`` (:func:`._common.loss_dtype`)."""
    dtype = loss_dtype(logits)
    return loss if loss.dtype == dtype else loss.to(dtype)


def cross_entropy(
    logits: torch.Tensor,
    target: torch.Tensor,
    *,
    mapping: str = "softmax",
    weight: torch.Tensor | None = None,
    ignore_index: int = -100,
    reduction: str = "mean",
    label_smoothing: float = 0.0,
    **mapping_params,
) -> torch.Tensor:
    r"""Negative log-likelihood of any normalized mapping with a log form.

    .. math:: \ell_i = -w_{y_i} \log p_{y_i}(z_i), \quad p = \texttt{mapping}(z)

    or, for class probabilities :math:`y_i` (smoothed to :math:`(1-\epsilon) y_i +
    \epsilon / C`), :math:`\ell_i = -\sum_c w_c\, y_{ic} \log p_c(z_i)`, where
    ``reduction="mean"`` divides by the number of rows and ``ignore_index`` does not apply
    (it must stay negative; torch's rules); :math:`0 \log 0 = 0`, so a masked class with
    :math:`y = 0` adds nothing.

    With ``mapping="softmax"`` it equals ``torch.nn.functional.cross_entropy`` in value and
    gradient for every combination of ``weight``, ``ignore_index``, ``reduction`` and
    ``label_smoothing``, for both kinds of target (and gives 0, not NaN, when every row is
    ignored). Under ``torch.compile`` the check of target ids against the class range is
    skipped (as in torch's kernels).

    Args:
        logits: ``(C,)``, ``(N, C)`` or ``(N, C, d1, ...)`` (class dimension 1, as torch).
        target: class indices ``()``, ``(N,)`` or ``(N, d1, ...)`` (an integer tensor), or
            class probabilities of ``logits``' shape (a floating tensor, e.g. mixup targets).
        mapping: registry name (``softmax``, ``taylor_softmax``, ``spherical_softmax``,
            ``sigsoftmax``, ``activation_normalize``, ...); ``**mapping_params`` go to it.
        weight: per-class weights ``(C,)``.

    Example:
        >>> z = torch.tensor([[2.0, 0.0, -1.0]]); t = torch.tensor([0])
        >>> cross_entropy(z, t)
        tensor(0.1698)
        >>> cross_entropy(z, t, mapping="taylor_softmax", order=2)
        tensor(0.2624)
        >>> cross_entropy(z, torch.tensor([[0.8, 0.2, 0.0]]))  # class probabilities
        tensor(0.5698)
    """
    if (mapping == "softmax" and not mapping_params and weight is None and ignore_index == -100
            and reduction == "mean" and type(label_smoothing) is float and not label_smoothing):
        loss = _common_call(logits, target)
        if loss is not None:
            return loss
    reduction = check_reduction(reduction)
    label_smoothing = check_label_smoothing(label_smoothing)
    if not label_smoothing and eager_cpu_ids(logits, target):
        z, batch_shape = logit_rows(logits)
        w = class_weights(weight, z.shape[-1], z)
        t = check_target_ids(target, batch_shape, ignore_index, "logits' batch shape")
        t = t if t.dim() == 1 else t.reshape(-1)
        t = t if t.dtype == torch.int64 else t.long()
        spec = kernels.select("cross_entropy", z, mapping=mapping, params=mapping_params)
        if spec is not None:
            try:
                loss = ops.row_function(spec.name, "cross_entropy_forward")(
                    z, t, w, ignore_index, reduction)
            except IndexError:  # torch's "Target 9 is out of bounds."
                raise_bad_target(t, z.shape[-1], ignore_index)
                raise
            if loss is not None:
                return _as(loss.reshape(batch_shape) if reduction == "none" else loss, logits)
        logp = log_probs(mapping, z, mapping_params)
        return _as(nll_loss(logp, t, batch_shape, w, ignore_index, reduction), logits)
    rows = as_rows(logits, target, ignore_index, probs=True)
    w = class_weights(weight, rows.n_classes, rows.logits)
    logp = log_probs(mapping, rows.logits, mapping_params)
    loss, w_rows = nll_rows(logp, rows, w, label_smoothing)
    return _as(reduce(loss, w_rows, rows.batch_shape, reduction), logits)


#: The kernel facts of the common call (:func:`_common_call`), decided once.
_SOFTMAX_FACTS = (("mapping", "softmax"), ("params", ()))


def _common_call(logits: torch.Tensor, target: object) -> torch.Tensor | None:
    """The softmax cross-entropy's common call without a graph, ``(N, C)`` logits and
    ``(N,)`` int64 class ids on CPU, by its kernel (torch's fused loss) with no further
    check; ``None`` where that is not the call or the result needs the general path (an id
    out of range, a NaN)."""
    spec = eager("cross_entropy", logits, _SOFTMAX_FACTS)
    if (spec is None or type(target) is not torch.Tensor or target.dtype is not torch.int64
            or logits.dim() != 2 or target.dim() != 1 or not target.is_cpu):
        return None
    try:
        return ops.row_function(spec.name, "cross_entropy_forward")(logits, target, None,
                                                                    -100, "mean")
    except (IndexError, RuntimeError, ValueError):  # a bad id or size: the general path says it
        return None


def soft_margin_loss(
    logits: torch.Tensor,
    target: torch.Tensor,
    *,
    margin: float,
    mapping: str = "softmax",
    weight: torch.Tensor | None = None,
    ignore_index: int = -100,
    reduction: str = "mean",
    label_smoothing: float = 0.0,
    **mapping_params,
) -> torch.Tensor:
    r"""Soft-margin softmax (SM-softmax) and SM-Taylor softmax (Banerjee et al. 2020).

    .. math:: \ell = -\log \frac{f(z_y - m)}{f(z_y - m) + \sum_{j \ne y} f(z_j)}

    with :math:`f = \exp` (``mapping="softmax"``) or the Taylor polynomial :math:`f_n`
    (``mapping="taylor_softmax"``, ``order=n``). The target must win by ``margin`` ``m >= 0``;
    a training-time loss (predict with the plain mapping). Other arguments as
    :func:`cross_entropy`.

    Example:
        >>> z = torch.tensor([[2.0, 0.0, -1.0]]); t = torch.tensor([0])
        >>> soft_margin_loss(z, t, margin=1.0) > cross_entropy(z, t)
        tensor(True)
    """
    return _as(soft_margin_rows(logits, target, margin=margin, mapping=mapping, weight=weight,
                                ignore_index=ignore_index, reduction=reduction,
                                label_smoothing=label_smoothing, **mapping_params), logits)


def soft_margin_rows(logits: torch.Tensor, target: torch.Tensor, *, margin: float,
                     mapping: str, ignore_index: int, reduction: str, **options
                     ) -> torch.Tensor:
    """:func:`soft_margin_loss` in the compute dtype (float32 for half logits)."""
    if mapping not in ("softmax", "taylor_softmax"):
        raise ValueError(f"mapping must be 'softmax' or 'taylor_softmax', got {mapping!r}")
    m = check_real("margin", margin, low=0.0)
    rows = as_rows(logits, target, ignore_index)
    shifted = rows.logits - m * (rows.onehot() * rows.keep[:, None])
    return rows_cross_entropy(rows, shifted, mapping=mapping, ignore_index=ignore_index,
                              reduction=reduction, **options)


def rows_cross_entropy(rows, logits: torch.Tensor, *, ignore_index: int, reduction: str,
                       **options) -> torch.Tensor:
    """:func:`cross_entropy` of logits ``(M, C)`` derived from ``rows`` (a margin applied,
    say), with the rows' targets (ignored rows keep ``ignore_index``); ``reduction="none"``
    gives the original batch shape."""
    target = rows.target.masked_fill(~rows.keep, ignore_index)
    out = cross_entropy(logits, target, ignore_index=ignore_index, reduction=reduction, **options)
    return out.reshape(rows.batch_shape) if reduction == "none" else out


def sparse_softmax_loss(
    logits: torch.Tensor,
    target: torch.Tensor,
    *,
    k: int,
    weight: torch.Tensor | None = None,
    ignore_index: int = -100,
    reduction: str = "mean",
) -> torch.Tensor:
    r"""Sparse-softmax loss (Sun et al. 2021): cross-entropy normalized over the top k.

    .. math:: \ell = \log \sum_{j \in S} e^{z_j} - z_y, \quad S = \mathrm{top}_k(z) \cup \{y\}

    The target is kept in the normalizer when it falls outside the top k, so the loss is
    never negative; only the logits in :math:`S` receive gradient.

    Example:
        >>> z = torch.tensor([[3.0, 2.0, -1.0, -2.0]])
        >>> sparse_softmax_loss(z, torch.tensor([0]), k=2)
        tensor(0.3133)
    """
    from ..functional.sparse_softmax import K

    reduction = check_reduction(reduction)
    rows = as_rows(logits, target, ignore_index)
    K.validate(k)
    if k > rows.n_classes:
        raise ValueError(f"k must be <= the number of classes ({rows.n_classes}), got k={k}")
    w = class_weights(weight, rows.n_classes, rows.logits)
    z = rows.logits
    top, idx = z.topk(k, dim=-1)
    zt = z.gather(-1, rows.target[:, None])[:, 0]
    lse = top.logsumexp(-1)
    outside = ~(idx == rows.target[:, None]).any(-1)
    lse = torch.where(outside, torch.logaddexp(lse, zt), lse)
    return _as(weighted_reduce(lse - zt, w, rows, reduction), logits)
