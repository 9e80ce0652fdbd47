"""``use_mapping``: the attention mapping a block of code runs with, where the caller does not
pass one itself (the Hugging Face transformers integration reads it)."""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from typing import Any

from .normalizers import get_normalizer

__all__ = ["current_mapping", "use_mapping"]

#: The open blocks, innermost last: a plain module-level list, not a ``ContextVar``, because
#: ``torch.compile`` can read (and guard on) a global but cannot trace ``ContextVar.get``.
_STACK: list[tuple[str, dict[str, Any]]] = []


@contextlib.contextmanager
def use_mapping(mapping: str, **params: Any) -> Iterator[None]:
    """Within the block, attention that takes its mapping from the context (a model run
    with ``attn_implementation="softmaxlab"``) uses ``mapping`` with ``params``; blocks nest,
    the innermost wins; the name and parameters are checked on entry. The setting is
    process-wide (one for all threads). A compiled model recompiles when it changes.

    Example:
        >>> with use_mapping("entmax", alpha=1.25):
        ...     current_mapping()
        ('entmax', {'alpha': 1.25})
        >>> current_mapping() is None
        True
    """
    get_normalizer(mapping).validate(params)
    _STACK.append((mapping, dict(params)))
    try:
        yield
    finally:
        _STACK.pop()


def current_mapping() -> tuple[str, dict[str, Any]] | None:
    """``(mapping, params)`` of the innermost :func:`use_mapping` block, or ``None``."""
    return _STACK[-1] if _STACK else None
