"""Loss modules: each stores the keyword options of one function in
:mod:`softmaxlab.losses` and calls it; ``forward`` takes that function's positional
arguments, and any keyword option per call (e.g. ``bias=`` of the output layer), which
overrides the stored one. Tensor options (class weights, a graph) are registered as buffers."""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import nn

from .. import losses as L


class LossModule(nn.Module):
    """Base: ``forward(*inputs, **overrides) = function(*inputs, **{**options, **overrides})``."""

    function: Callable[..., torch.Tensor]

    def __init__(self, **options):
        super().__init__()
        self._tensor_options = []
        for name, value in list(options.items()):
            if isinstance(value, torch.Tensor):
                self.register_buffer(f"_opt_{name}", value)
                self._tensor_options.append(name)
                del options[name]
        self.options = options

    def forward(self, *inputs, **overrides):
        options = {n: getattr(self, f"_opt_{n}") for n in self._tensor_options}
        options.update(self.options)
        options.update(overrides)
        return type(self).function(*inputs, **options)

    def extra_repr(self) -> str:
        shown = [f"{k}={v!r}" for k, v in self.options.items()]
        return ", ".join(shown + [f"{n}=<tensor>" for n in self._tensor_options])


class CrossEntropyLoss(LossModule):
    """Module form of :func:`softmaxlab.losses.cross_entropy`: ``forward(logits, target)``."""

    function = staticmethod(L.cross_entropy)

    def __init__(self, *, mapping: str = "softmax", weight: torch.Tensor | None = None,
                 ignore_index: int = -100, reduction: str = "mean", label_smoothing: float = 0.0,
                 **mapping_params):
        super().__init__(mapping=mapping, weight=weight, ignore_index=ignore_index,
                         reduction=reduction, label_smoothing=label_smoothing, **mapping_params)


class FenchelYoungLoss(LossModule):
    """Module form of :func:`softmaxlab.losses.fenchel_young_loss`: ``forward(logits, target)``."""

    function = staticmethod(L.fenchel_young_loss)

    def __init__(self, *, mapping: str = "sparsemax", weight: torch.Tensor | None = None,
                 ignore_index: int = -100, reduction: str = "mean", label_smoothing: float = 0.0,
                 **mapping_params):
        super().__init__(mapping=mapping, weight=weight, ignore_index=ignore_index,
                         reduction=reduction, label_smoothing=label_smoothing, **mapping_params)


class SoftMarginLoss(LossModule):
    """Module form of :func:`softmaxlab.losses.soft_margin_loss`: ``forward(logits, target)``."""

    function = staticmethod(L.soft_margin_loss)

    def __init__(self, *, margin: float, mapping: str = "softmax",
                 weight: torch.Tensor | None = None, ignore_index: int = -100,
                 reduction: str = "mean", label_smoothing: float = 0.0, **mapping_params):
        super().__init__(margin=margin, mapping=mapping, weight=weight, ignore_index=ignore_index,
                         reduction=reduction, label_smoothing=label_smoothing, **mapping_params)


class AMSoftmaxLoss(LossModule):
    """Module form of :func:`softmaxlab.losses.am_softmax_loss`: ``forward(cosine, target)``."""

    function = staticmethod(L.am_softmax_loss)

    def __init__(self, *, scale: float = 30.0, margin: float = 0.35, real: bool = False,
                 weight: torch.Tensor | None = None, ignore_index: int = -100,
                 reduction: str = "mean", label_smoothing: float = 0.0):
        super().__init__(scale=scale, margin=margin, real=real, weight=weight,
                         ignore_index=ignore_index, reduction=reduction,
                         label_smoothing=label_smoothing)


class ArcFaceLoss(LossModule):
    """Module form of :func:`softmaxlab.losses.arcface_loss`: ``forward(cosine, target)``."""

    function = staticmethod(L.arcface_loss)

    def __init__(self, *, scale: float = 64.0, margin: float = 0.5,
                 weight: torch.Tensor | None = None, ignore_index: int = -100,
                 reduction: str = "mean", label_smoothing: float = 0.0):
        super().__init__(scale=scale, margin=margin, weight=weight, ignore_index=ignore_index,
                         reduction=reduction, label_smoothing=label_smoothing)


class EnsembleSoftMarginLoss(LossModule):
    """Module form of :func:`softmaxlab.losses.ensemble_soft_margin_loss`:
    ``forward(logits_list, target)``."""

    function = staticmethod(L.ensemble_soft_margin_loss)

    def __init__(self, *, margin: float, diversity: float = 0.0,
                 weight: torch.Tensor | None = None, ignore_index: int = -100,
                 reduction: str = "mean"):
        super().__init__(margin=margin, diversity=diversity, weight=weight,
                         ignore_index=ignore_index, reduction=reduction)


class SparseSoftmaxLoss(LossModule):
    """Module form of :func:`softmaxlab.losses.sparse_softmax_loss`: ``forward(logits, target)``."""

    function = staticmethod(L.sparse_softmax_loss)

    def __init__(self, *, k: int, weight: torch.Tensor | None = None, ignore_index: int = -100,
                 reduction: str = "mean"):
        super().__init__(k=k, weight=weight, ignore_index=ignore_index, reduction=reduction)


class SampledSoftmaxLoss(LossModule):
    """Module form of :func:`softmaxlab.losses.sampled_softmax_loss`:
    ``forward(hidden, weight, target)``."""

    function = staticmethod(L.sampled_softmax_loss)

    def __init__(self, *, num_sampled: int = 64, bias: torch.Tensor | None = None,
                 noise: str | L.Noise = "log_uniform", samples: torch.Tensor | None = None,
                 remove_accidental_hits: bool = True, generator: torch.Generator | None = None,
                 ignore_index: int = -100, reduction: str = "mean"):
        super().__init__(num_sampled=num_sampled, bias=bias, noise=noise, samples=samples,
                         remove_accidental_hits=remove_accidental_hits, generator=generator,
                         ignore_index=ignore_index, reduction=reduction)


class NCELoss(SampledSoftmaxLoss):
    """Module form of :func:`softmaxlab.losses.nce_loss`: ``forward(hidden, weight, target)``."""

    function = staticmethod(L.nce_loss)


class LinearCrossEntropyLoss(LossModule):
    """Module form of :func:`softmaxlab.losses.linear_cross_entropy`:
    ``forward(hidden, weight, target)``."""

    function = staticmethod(L.linear_cross_entropy)

    def __init__(self, *, bias: torch.Tensor | None = None, mapping: str = "softmax",
                 chunk_size: int | None = None, class_weight: torch.Tensor | None = None,
                 ignore_index: int = -100, reduction: str = "mean", label_smoothing: float = 0.0,
                 **mapping_params):
        super().__init__(bias=bias, mapping=mapping, chunk_size=chunk_size,
                         class_weight=class_weight,
                         ignore_index=ignore_index, reduction=reduction,
                         label_smoothing=label_smoothing, **mapping_params)


class GraphTVPenalty(LossModule):
    """Module form of :func:`softmaxlab.losses.graph_tv_penalty`: ``forward(probs)``; the
    graph (adjacency tensor) is stored as a buffer."""

    function = staticmethod(L.graph_tv_penalty)
    graph: torch.Tensor  # a buffer

    def __init__(self, graph: torch.Tensor, *, weight: float = 1.0, reduction: str = "mean"):
        super().__init__(weight=weight, reduction=reduction)
        self.register_buffer("graph", graph)

    def forward(self, probs: torch.Tensor) -> torch.Tensor:
        return L.graph_tv_penalty(probs, self.graph, **self.options)
