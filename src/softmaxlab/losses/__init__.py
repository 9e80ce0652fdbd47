"""Losses for every mapping, with torch's conventions (``weight``, ``ignore_index=-100``,
``reduction``, ``label_smoothing``; ignored rows count nowhere)."""

from .cross_entropy import cross_entropy, soft_margin_loss, sparse_softmax_loss
from .fenchel_young import fenchel_young_loss, tsallis_entropy
from .graph import graph_tv_penalty
from .linear import linear_cross_entropy
from .margins import am_softmax_loss, arcface_loss, ensemble_soft_margin_loss, hsic
from .natural import natural_loss
from .sampled import Noise, nce_loss, sampled_softmax_loss

__all__ = [
    "Noise",
    "am_softmax_loss",
    "arcface_loss",
    "cross_entropy",
    "ensemble_soft_margin_loss",
    "fenchel_young_loss",
    "graph_tv_penalty",
    "hsic",
    "linear_cross_entropy",
    "natural_loss",
    "nce_loss",
    "sampled_softmax_loss",
    "soft_margin_loss",
    "sparse_softmax_loss",
    "tsallis_entropy",
]
