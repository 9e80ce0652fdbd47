"""Every probability mapping, as functions of logits: ``f(x, dim=-1, *, <params>, mask=None)``.

Importing this package registers the mappings in :func:`softmaxlab.mappings`.
"""

# Import order is registration order (softmax first): keep it.
from .softmax import log_softmax, softmax  # isort: skip
from .taylor import log_taylor_softmax, taylor_softmax  # isort: skip
from .spherical import log_spherical_softmax, spherical_softmax  # isort: skip
from .sigsoftmax import log_sigsoftmax, sigsoftmax  # isort: skip
from .sparsemax import entmax, entmax15, sparsemax  # isort: skip
from .sparse_softmax import sparse_softmax  # isort: skip
from .activations import (  # isort: skip
    activation_normalize,
    log_activation_normalize,
    normalize,
    ova_sigmoid,
)

__all__ = [
    "softmax",
    "log_softmax",
    "taylor_softmax",
    "log_taylor_softmax",
    "spherical_softmax",
    "log_spherical_softmax",
    "sigsoftmax",
    "log_sigsoftmax",
    "sparsemax",
    "entmax15",
    "entmax",
    "sparse_softmax",
    "normalize",
    "ova_sigmoid",
    "activation_normalize",
    "log_activation_normalize",
]
