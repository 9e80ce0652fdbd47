"""softmaxlab: the softmax function and its alternatives, under one convention.

>>> import torch, softmaxlab as sl
>>> sl.sparsemax(torch.tensor([-2.0, 0.0, 0.5]))
tensor([0.0000, 0.2500, 0.7500])
>>> [m.name for m in sl.mappings()][:3]
['softmax', 'taylor_softmax', 'spherical_softmax']
"""

from . import calibration, functional, losses, nn, online
from ._registry import Mapping, Param, get_mapping, mappings
from .functional import *  # noqa: F403  (the mappings; listed in functional.__all__)
from .online import softmax_topk
from .patch import patch, patched, unpatch

__version__ = "0.1.0"

__all__ = [
    "Mapping",
    "Param",
    "__version__",
    "calibration",
    "functional",
    "get_mapping",
    "losses",
    "mappings",
    "nn",
    "online",
    "patch",
    "patched",
    "softmax_topk",
    "unpatch",
]
__all__ += functional.__all__
