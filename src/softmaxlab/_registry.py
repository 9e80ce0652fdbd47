"""The one registry of probability mappings.

Every mapping is described once, by a :class:`Mapping` record, and everything else (the
``nn`` modules, the CLI, the lab, the tests and the benchmarks) iterates :func:`mappings`.
Parameters are :class:`Param` records: the public functions validate their arguments with
them, so the ranges listed here are the ranges enforced.
"""

from __future__ import annotations

import math
import numbers
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import torch

from ._validation import checks_values

__all__ = ["Param", "Mapping", "register", "get_mapping", "log_mapping_names", "mapping_of",
           "mappings", "resolve_log_mapping"]


@dataclass(frozen=True)
class Param:
    """A keyword parameter of a mapping: default, accepted types, valid range.

    ``check(value) -> bool`` decides the range; ``valid`` are further good values the tests
    sweep; ``bad`` are values that must raise (``TypeError`` when the type is wrong, else
    ``ValueError``).
    """

    name: str
    default: Any
    types: tuple[type, ...]
    check: Callable[[Any], bool]
    description: str
    valid: tuple = ()
    bad: tuple = ()

    def validate(self, value: Any) -> Any:
        """Return ``value`` if it is acceptable, else raise naming the parameter and value."""
        if type(value) is type(self.default) and value == self.default:
            return value  # the default is valid (and the common case)
        if isinstance(value, torch.Tensor):
            if torch.Tensor not in self.types:
                raise TypeError(f"{self.name} must be {self.description}, got a tensor")
            if not value.is_floating_point():
                raise TypeError(f"{self.name} must be a floating-point tensor, got {value.dtype}")
            if checks_values() and not bool(self.check(value.detach())):
                raise ValueError(f"{self.name} must be {self.description}, got {value}")
            return value
        if isinstance(value, bool) or not isinstance(value, self.types):
            raise TypeError(
                f"{self.name} must be {self.description}, got {value!r} ({type(value).__name__})"
            )
        if not self.check(value):
            raise ValueError(f"{self.name} must be {self.description}, got {value!r}")
        return value


def positive_finite(v: Any) -> bool:
    """``v > 0`` and finite (every entry of a tensor); a module-level function, so records
    holding it pickle."""
    if isinstance(v, torch.Tensor):
        return bool(((v > 0) & torch.isfinite(v)).all())
    return v > 0 and math.isfinite(v)


def positive_real(name: str, default: float, *, tensor: bool = True, **kw: Any) -> Param:
    """A strictly positive, finite real parameter (float, int, or a floating tensor)."""
    types = (numbers.Real, torch.Tensor) if tensor else (numbers.Real,)
    return Param(name, default, types, positive_finite, "a finite number > 0", **kw)


@dataclass(frozen=True)
class Mapping:
    """One probability mapping (or its relative) and what it promises.

    ``fn(x, dim=-1, *, **params, mask=None)`` maps logits to the output; ``log_fn`` is its
    log form (``None`` when it has none); ``loss`` names its natural training loss.
    ``naive(x, **params)`` is the textbook formula along the last dim in unfused torch ops
    (the benchmarks' baseline; not safe on masked rows or extreme logits).
    ``tsallis_alpha`` is the entropy of a Fenchel-Young mapping (``None``: its ``alpha``
    parameter). ``log_score(z, **params)`` is, for a mapping of the form ``g(z) / sum g(z)``,
    the element-wise log-score ``log g`` of finite logits with no per-row constant, so that
    ``log_fn(z) = log_score(z) - logsumexp(log_score(z))``: what lets a row split across
    devices be normalized with one global max and one global sum
    (:mod:`softmaxlab.distributed`); ``None`` where the mapping has no such form. Property
    flags are checked by the test suite for every registered mapping.
    """

    name: str
    fn: Callable[..., torch.Tensor]
    log_fn: Callable[..., torch.Tensor] | None
    loss: str | None
    params: tuple[Param, ...] = ()
    normalized: bool = True
    sparse: bool = False
    shift_invariant: bool = False
    scale_invariant: bool = False
    training_only: bool = False
    summary: str = ""
    formula: str = ""
    naive: Callable[..., torch.Tensor] | None = None
    tsallis_alpha: float | None = None
    log_score: Callable[..., torch.Tensor] | None = None

    def __reduce__(self):
        # A record pickles (and deep-copies) as its registry lookup: modules that hold one
        # (MixtureOfSoftmaxes, DecoupledOutput, ...) pickle, and it stays the one record.
        return get_mapping, (self.name,)

    @property
    def defaults(self) -> dict[str, Any]:
        """The default keyword arguments."""
        return {p.name: p.default for p in self.params}

    def param(self, name: str) -> Param:
        for p in self.params:
            if p.name == name:
                return p
        raise KeyError(f"{self.name} has no parameter {name!r}")


_REGISTRY: dict[str, Mapping] = {}


def register(mapping: Mapping) -> Mapping:
    """Add ``mapping`` to the registry (names are unique)."""
    if mapping.name in _REGISTRY:
        raise ValueError(f"mapping {mapping.name!r} is already registered")
    _REGISTRY[mapping.name] = mapping
    return mapping


def mappings() -> tuple[Mapping, ...]:
    """All registered mappings, in registration order."""
    import softmaxlab.functional  # noqa: F401  (registers the built-in mappings)

    return tuple(_REGISTRY.values())


def mapping_of(fn: Callable) -> Mapping:
    """The mapping whose function or log function is ``fn``."""
    for m in mappings():
        if fn in (m.fn, m.log_fn):
            return m
    raise ValueError(f"{fn!r} is not a registered mapping function")


def get_mapping(name: str) -> Mapping:
    """The mapping called ``name``; a ``ValueError`` lists the valid names otherwise."""
    import softmaxlab.functional  # noqa: F401

    try:
        return _REGISTRY[name]
    except (KeyError, TypeError):
        raise ValueError(
            f"unknown mapping {name!r}; valid names: {', '.join(_REGISTRY)}"
        ) from None


def log_mapping_names() -> list[str]:
    """Mappings that define a likelihood: normalized, with a log form."""
    return [m.name for m in mappings() if m.log_fn is not None and m.normalized]


def resolve_log_mapping(name: Any, params: dict[str, Any]) -> Mapping:
    """The registry record of a normalized mapping with a log form, ``params`` validated
    against its :class:`~softmaxlab.Param` records (``mask`` is always accepted)."""
    if not _REGISTRY:
        mappings()  # registers the built-in mappings
    m = _REGISTRY.get(name) if isinstance(name, str) else None
    if m is not None and m.log_fn is not None and m.normalized:
        if not params:
            return m
    else:
        valid = log_mapping_names()
        natural = ""
        if isinstance(name, str) and name in _REGISTRY:
            natural = f" ({name!r} has none; its natural loss is {get_mapping(name).loss!r})"
        raise ValueError(
            f"mapping must be a normalized mapping with a log form, one of "
            f"{', '.join(map(repr, valid))}; got {name!r}{natural}"
        )
    known = {p.name for p in m.params}
    for key, value in params.items():
        if key == "mask":
            continue
        if key not in known:
            raise TypeError(
                f"mapping {name!r} has no parameter {key!r} "
                f"(its parameters: {', '.join(sorted(known)) or 'none'})"
            )
        m.param(key).validate(value)
    return m
