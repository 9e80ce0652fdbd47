"""One thin module per mapping: it stores ``dim`` and the parameters and calls the functional.

Each module's constructor has the functional's signature less ``x`` and ``mask``;
``forward(x, mask=None)``. The formula is in the functional's docstring. A parameter given
as an ``nn.Parameter`` (a learned temperature or ``alpha``) is registered on the module.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TypeVar

import torch
from torch import nn

from .. import functional as F
from .._registry import mapping_of


class MappingModule(nn.Module):
    """Base of the mapping modules: validates and stores ``dim`` and the parameters."""

    function: Callable[..., torch.Tensor]

    def __init__(self, dim: int = -1, **params):
        super().__init__()
        for p in mapping_of(type(self).function).params:
            p.validate(params[p.name])
        if isinstance(dim, bool) or not isinstance(dim, int):
            raise TypeError(f"dim must be an int, got {dim!r}")
        self.dim = dim
        self.params = params
        for name, value in params.items():
            if isinstance(value, nn.Parameter):
                self.register_parameter(name, value)

    def forward(self, x: torch.Tensor, mask: torch.Tensor | None = None) -> torch.Tensor:
        return type(self).function(x, self.dim, **self.params, mask=mask)

    def extra_repr(self) -> str:
        shown = [f"dim={self.dim}"]
        shown += [f"{k}={v!r}" for k, v in self.params.items() if not isinstance(v, nn.Parameter)]
        return ", ".join(shown)


class Softmax(MappingModule):
    """Module form of :func:`softmaxlab.softmax`."""

    function = staticmethod(F.softmax)

    def __init__(self, dim: int = -1, *, temperature: float | torch.Tensor = 1.0):
        super().__init__(dim, temperature=temperature)


class LogSoftmax(Softmax):
    """Module form of :func:`softmaxlab.log_softmax`."""

    function = staticmethod(F.log_softmax)


class TaylorSoftmax(MappingModule):
    """Module form of :func:`softmaxlab.taylor_softmax`."""

    function = staticmethod(F.taylor_softmax)

    def __init__(self, dim: int = -1, *, order: int = 2):
        super().__init__(dim, order=order)


class LogTaylorSoftmax(TaylorSoftmax):
    """Module form of :func:`softmaxlab.log_taylor_softmax`."""

    function = staticmethod(F.log_taylor_softmax)


class SphericalSoftmax(MappingModule):
    """Module form of :func:`softmaxlab.spherical_softmax`."""

    function = staticmethod(F.spherical_softmax)

    def __init__(self, dim: int = -1, *, eps: float = 0.01):
        super().__init__(dim, eps=eps)


class LogSphericalSoftmax(SphericalSoftmax):
    """Module form of :func:`softmaxlab.log_spherical_softmax`."""

    function = staticmethod(F.log_spherical_softmax)


class SigSoftmax(MappingModule):
    """Module form of :func:`softmaxlab.sigsoftmax`."""

    function = staticmethod(F.sigsoftmax)

    def __init__(self, dim: int = -1):
        super().__init__(dim)


class LogSigSoftmax(SigSoftmax):
    """Module form of :func:`softmaxlab.log_sigsoftmax`."""

    function = staticmethod(F.log_sigsoftmax)


class Sparsemax(SigSoftmax):
    """Module form of :func:`softmaxlab.sparsemax`."""

    function = staticmethod(F.sparsemax)


class Entmax15(SigSoftmax):
    """Module form of :func:`softmaxlab.entmax15`."""

    function = staticmethod(F.entmax15)


class Entmax(MappingModule):
    """Module form of :func:`softmaxlab.entmax` (pass ``alpha`` as an ``nn.Parameter`` to
    learn it)."""

    function = staticmethod(F.entmax)

    def __init__(self, dim: int = -1, *, alpha: float | torch.Tensor = 1.5, n_iter: int = 50):
        super().__init__(dim, alpha=alpha, n_iter=n_iter)


class SparseSoftmax(MappingModule):
    """Module form of :func:`softmaxlab.sparse_softmax`."""

    function = staticmethod(F.sparse_softmax)

    def __init__(self, dim: int = -1, *, k: int = 1):
        super().__init__(dim, k=k)


class Normalize(SigSoftmax):
    """Module form of :func:`softmaxlab.normalize`."""

    function = staticmethod(F.normalize)


class OvaSigmoid(SigSoftmax):
    """Module form of :func:`softmaxlab.ova_sigmoid`."""

    function = staticmethod(F.ova_sigmoid)


class ActivationNormalize(MappingModule):
    """Module form of :func:`softmaxlab.activation_normalize`."""

    function = staticmethod(F.activation_normalize)

    def __init__(self, dim: int = -1, *, activation: str = "softplus"):
        super().__init__(dim, activation=activation)


class LogActivationNormalize(ActivationNormalize):
    """Module form of :func:`softmaxlab.log_activation_normalize`."""

    function = staticmethod(F.log_activation_normalize)


def module_for(fn: Callable[..., torch.Tensor]) -> type[MappingModule]:
    """The module class whose ``function`` is ``fn``."""
    for cls in _all_subclasses(MappingModule):
        if cls.__dict__.get("function") is not None and cls.function is fn:
            return cls
    raise ValueError(f"no module for {getattr(fn, '__name__', fn)!r}")


_M = TypeVar("_M")


def _all_subclasses(cls: type[_M]) -> list[type[_M]]:
    out: list[type[_M]] = []
    for sub in cls.__subclasses__():
        out += [sub, *_all_subclasses(sub)]
    return out
