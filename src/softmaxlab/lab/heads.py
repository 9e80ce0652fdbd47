"""The lab's heads: every registry mapping with its natural loss, plus the margin losses.

A :class:`Head` says how a model's last layer, its training loss and its test-time
probabilities fit together. One head per ``softmaxlab.mappings()`` entry (a linear output
layer, trained with the mapping's natural loss) and one per margin loss (a
:class:`softmaxlab.nn.CosineClassifier` output layer, trained with the margin loss, predicting
with the softmax of the scaled cosines). Nothing else lists mapping names.
"""

from __future__ import annotations

import inspect
from collections.abc import Callable
from dataclasses import dataclass
from functools import partial

import torch
import torch.nn.functional as F

from .. import losses as L
from .._registry import Mapping, get_mapping, mappings

__all__ = ["Head", "heads", "get_head", "parse_heads"]


def _one_vs_all_bce(out: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """Binary cross-entropy of each class against the rest, summed over classes."""
    onehot = F.one_hot(target, out.shape[-1]).to(out.dtype)
    return F.binary_cross_entropy_with_logits(out, onehot, reduction="sum") / out.shape[0]


#: Natural loss name (``Mapping.loss``) -> ``loss(mapping) -> (out, target) -> scalar``.
NATURAL_LOSSES: dict[str, Callable[[Mapping], Callable]] = {
    "cross_entropy": lambda m: partial(L.cross_entropy, mapping=m.name),
    "fenchel_young": lambda m: partial(L.fenchel_young_loss, mapping=m.name),
    "sparse_softmax_loss": lambda m: partial(L.sparse_softmax_loss, **m.defaults),
    "binary_cross_entropy": lambda m: _one_vs_all_bce,
}


@dataclass(frozen=True)
class Head:
    """How one lab entry trains and predicts.

    ``loss(out, target)`` trains on the model output ``out`` (logits, or cosines when
    ``scale`` is set); at test time ``mapping`` turns ``logits(out)`` (``scale * out`` for
    cosine heads) into probabilities. ``skip`` says why a head cannot train a classifier.
    """

    name: str
    mapping: Mapping
    loss: Callable[[torch.Tensor, torch.Tensor], torch.Tensor] | None
    scale: float | None = None
    skip: str | None = None

    @property
    def cosine(self) -> bool:
        """The output layer is a ``CosineClassifier`` (margin losses)."""
        return self.scale is not None

    @property
    def has_log(self) -> bool:
        """Log-probabilities exist: NLL, perplexity and temperature scaling are defined."""
        return self.mapping.log_fn is not None and self.mapping.normalized

    def logits(self, out: torch.Tensor) -> torch.Tensor:
        return out if self.scale is None else self.scale * out

    def probs(self, out: torch.Tensor, temperature: float = 1.0) -> torch.Tensor:
        return self.mapping.fn(self.logits(out) / temperature, -1)

    def log_probs(self, out: torch.Tensor, temperature: float = 1.0) -> torch.Tensor:
        return self.mapping.log_fn(self.logits(out) / temperature, -1)


def _mapping_head(m: Mapping) -> Head:
    if m.loss is None:
        return Head(m.name, m, None, skip=f"no natural training loss in the registry; "
                                         f"{m.name} is {m.summary}")
    return Head(m.name, m, NATURAL_LOSSES[m.loss](m))


def _margin_head(name: str, loss: Callable, **kw) -> Head:
    """Predicts with softmax(s * cosine), ``s`` the loss's default scale."""
    scale = inspect.signature(loss).parameters["scale"].default
    return Head(name, get_mapping("softmax"), partial(loss, **kw), scale=scale)


def heads() -> tuple[Head, ...]:
    """Every lab head: the registry's mappings (in order), then the margin losses."""
    return (
        *(_mapping_head(m) for m in mappings()),
        _margin_head("am_softmax", L.am_softmax_loss),
        _margin_head("real_am", L.am_softmax_loss, real=True),
        _margin_head("arcface", L.arcface_loss),
    )


def get_head(name: str) -> Head:
    """The head called ``name``; a ``ValueError`` lists the valid names otherwise."""
    found = {h.name: h for h in heads()}
    if name not in found:
        raise ValueError(f"unknown mapping {name!r}; valid names: {', '.join(found)}")
    return found[name]


def parse_heads(spec: str) -> tuple[Head, ...]:
    """``"all"`` (every head, skipped ones included) or comma-separated names."""
    if spec.strip() == "all":
        return heads()
    names = [s.strip() for s in spec.split(",") if s.strip()]
    if not names:
        raise ValueError(f"--mappings must be 'all' or comma-separated names, got {spec!r}")
    return tuple(get_head(n) for n in dict.fromkeys(names))
