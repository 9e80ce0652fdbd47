"""Argument checks shared by the whole package: each raises ``TypeError`` (wrong type) or
``ValueError`` (out of range) naming the argument and the value it got."""

from __future__ import annotations

from typing import Any

from ._registry import Mapping, get_mapping, mappings
from ._validation import check_bool, check_int, check_real  # noqa: F401  (re-exported)


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
