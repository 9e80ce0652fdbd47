"""Modules: one per mapping (same signature as the functional), the output heads, the
loss modules, temperature scaling, ``MultiheadAttention`` with any mapping, and ``Maxout``
for the lab's models."""

from ..calibration import TemperatureScaler
from .attention import MultiheadAttention
from .heads import CosineClassifier, DecoupledOutput, DoublySparseSoftmax, MixtureOfSoftmaxes
from .losses import (
    AMSoftmaxLoss,
    ArcFaceLoss,
    CrossEntropyLoss,
    EnsembleSoftMarginLoss,
    FenchelYoungLoss,
    GraphTVPenalty,
    LinearCrossEntropyLoss,
    LossModule,
    NCELoss,
    SampledSoftmaxLoss,
    SoftMarginLoss,
    SparseSoftmaxLoss,
)
from .mappings import (
    ActivationNormalize,
    Entmax,
    Entmax15,
    LogActivationNormalize,
    LogSigSoftmax,
    LogSoftmax,
    LogSphericalSoftmax,
    LogTaylorSoftmax,
    MappingModule,
    Normalize,
    OvaSigmoid,
    SigSoftmax,
    Softmax,
    Sparsemax,
    SparseSoftmax,
    SphericalSoftmax,
    TaylorSoftmax,
    module_for,
)
from .maxout import Maxout

__all__ = [
    # mappings
    "ActivationNormalize",
    "Entmax",
    "Entmax15",
    "LogActivationNormalize",
    "LogSigSoftmax",
    "LogSoftmax",
    "LogSphericalSoftmax",
    "LogTaylorSoftmax",
    "MappingModule",
    "Normalize",
    "OvaSigmoid",
    "SigSoftmax",
    "Softmax",
    "SparseSoftmax",
    "Sparsemax",
    "SphericalSoftmax",
    "TaylorSoftmax",
    "module_for",
    # heads and layers
    "CosineClassifier",
    "DecoupledOutput",
    "DoublySparseSoftmax",
    "Maxout",
    "MixtureOfSoftmaxes",
    "MultiheadAttention",
    "TemperatureScaler",
    # losses
    "AMSoftmaxLoss",
    "ArcFaceLoss",
    "CrossEntropyLoss",
    "EnsembleSoftMarginLoss",
    "FenchelYoungLoss",
    "GraphTVPenalty",
    "LinearCrossEntropyLoss",
    "LossModule",
    "NCELoss",
    "SampledSoftmaxLoss",
    "SoftMarginLoss",
    "SparseSoftmaxLoss",
]
