"""Argument checks shared by the whole package: each raises ``TypeError`` (wrong type) or
``ValueError`` (out of range) naming the argument and the value it got."""

from __future__ import annotations

import math
import numbers
from typing import Any

from ._registry import Mapping, get_mapping, mappings


def check_int(name: str, value: Any, minimum: int = 1) -> int:
    """An ``int`` (not a bool) ``>= minimum``."""
    if isinstance(value, bool) or not isinstance(value, numbers.Integral):
        raise TypeError(f"{name} must be an int, got {value!r} ({type(value).__name__})")
    if value < minimum:
        raise ValueError(f"{name} must be an int >= {minimum}, got {value}")
    return int(value)


def check_real(name: str, value: Any, *, low: float = -math.inf, high: float = math.inf,
               low_open: bool = False, high_open: bool = False) -> float:
    """A finite real number in ``[low, high]`` (an end is excluded when ``*_open``)."""
    if isinstance(value, bool) or not isinstance(value, numbers.Real):
        raise TypeError(f"{name} must be a real number, got {value!r} ({type(value).__name__})")
    v = float(value)
    below = v <= low if low_open else v < low
    above = v >= high if high_open else v > high
    if not math.isfinite(v) or below or above:
        lo = f"{'(' if low_open else '['}{low:g}"
        hi = f"{high:g}{')' if high_open else ']'}"
        raise ValueError(f"{name} must be a finite number in {lo}, {hi}, got {value!r}")
    return v


def check_bool(name: str, value: Any) -> bool:
    if not isinstance(value, bool):
        raise TypeError(f"{name} must be a bool, got {value!r} ({type(value).__name__})")
    return value


def log_mapping_names() -> list[str]:
    """Mappings that define a likelihood: normalized, with a log form."""
    return [m.name for m in mappings() if m.log_fn is not None and m.normalized]


def log_mapping(name: Any, params: dict[str, Any]) -> Mapping:
    """The registry record of a normalized mapping with a log form, ``params`` validated
    against its :class:`~softmaxlab.Param` records (``mask`` is always accepted)."""
    valid = log_mapping_names()
    if not isinstance(name, str) or name not in valid:
        natural = ""
        if isinstance(name, str) and name in {m.name for m in mappings()}:
            natural = f" ({name!r} has none; its natural loss is {get_mapping(name).loss!r})"
        raise ValueError(
            f"mapping must be a normalized mapping with a log form, one of "
            f"{', '.join(map(repr, valid))}; got {name!r}{natural}"
        )
    m = get_mapping(name)
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
