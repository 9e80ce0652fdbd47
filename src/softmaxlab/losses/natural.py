"""Each mapping's natural training loss (its registry record's ``loss``), as one callable."""

from __future__ import annotations

from collections.abc import Callable
from functools import partial

import torch
import torch.nn.functional as F

from .._registry import get_mapping
from .cross_entropy import cross_entropy, sparse_softmax_loss
from .fenchel_young import fenchel_young_loss

__all__ = ["natural_loss", "one_vs_all_bce"]


def one_vs_all_bce(out: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """Binary cross-entropy of each class against the rest, summed over classes, mean over
    rows: ``ova_sigmoid``'s loss. ``out`` ``(N, C)`` logits, ``target`` ``(N,)`` ids."""
    onehot = F.one_hot(target, out.shape[-1]).to(out.dtype)
    return F.binary_cross_entropy_with_logits(out, onehot, reduction="sum") / out.shape[0]


def natural_loss(mapping: str, **params) -> Callable[..., torch.Tensor]:
    """``loss(logits, target, **options)`` that trains ``mapping`` (its parameters in
    ``params``): ``cross_entropy`` for a mapping with a log form, ``fenchel_young_loss`` for
    the sparse maps, ``sparse_softmax_loss``, or the one-vs-all BCE of ``ova_sigmoid``;
    ``ValueError`` for a mapping without one.

    Example:
        >>> natural_loss("sparsemax")(torch.tensor([[2.0, 0.0]]), torch.tensor([0]))
        tensor(0.)
    """
    m = get_mapping(mapping)
    if m.loss == "cross_entropy":
        return partial(cross_entropy, mapping=m.name, **params)
    if m.loss == "fenchel_young":
        return partial(fenchel_young_loss, mapping=m.name, **params)
    if m.loss == "sparse_softmax_loss":
        return partial(sparse_softmax_loss, **{**m.defaults, **params})
    if m.loss == "binary_cross_entropy":
        return one_vs_all_bce
    raise ValueError(f"mapping {m.name} has no natural training loss in softmaxlab "
                     f"({m.summary})")
