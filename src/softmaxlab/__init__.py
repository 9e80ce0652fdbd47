"""softmaxlab: the softmax function and its alternatives, under one convention.

>>> import torch, softmaxlab as sl
>>> sl.sparsemax(torch.tensor([-2.0, 0.0, 0.5]))
tensor([0.0000, 0.2500, 0.7500])
>>> [m.name for m in sl.mappings()][:3]
['softmax', 'taylor_softmax', 'spherical_softmax']
"""

from . import functional
from ._registry import Mapping, Param, get_mapping, mappings
from .functional import *  # noqa: F403  (the mappings; listed in functional.__all__)

__version__ = "0.1.0"

__all__ = ["Mapping", "Param", "functional", "get_mapping", "mappings", "__version__"]
__all__ += functional.__all__
