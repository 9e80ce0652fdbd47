"""Every argument check of the package. Each raises ``TypeError`` (wrong type) or
``ValueError`` (out of range; ``IndexError`` for ``dim``) naming the argument and its value.

Checks of tensor *values* (a target out of range, a negative input to ``normalize``) need a
look at the data; they run in eager mode and are skipped while ``torch.compile`` traces and
inside ``torch.func`` transforms (:func:`checks_values`), where a data-dependent branch
cannot be taken, as torch's own functions leave such checks to their kernels.
"""

from __future__ import annotations

import math
import numbers
from typing import Any

import torch


def checks_values() -> bool:
    """Whether value checks run: in eager code, not in a ``torch.compile`` trace or a
    ``torch.func`` transform."""
    return not (torch.compiler.is_compiling() or torch._C._are_functorch_transforms_active())


def check_input(x: object, name: str = "x") -> torch.Tensor:
    """Raise ``TypeError`` unless ``x`` is a real floating-point tensor."""
    if not isinstance(x, torch.Tensor):
        raise TypeError(f"{name} must be a torch.Tensor, got {type(x).__name__}")
    if not x.is_floating_point():
        raise TypeError(f"{name} must be a real floating-point tensor, got dtype {x.dtype}")
    return x


def check_dim(x: torch.Tensor, dim: object) -> int:
    """``dim`` as a non-negative index into ``x`` (``IndexError`` when out of range)."""
    if dim == -1 and type(dim) is int:  # the common case, first
        return max(x.dim() - 1, 0)
    if isinstance(dim, bool) or not isinstance(dim, int):
        raise TypeError(f"dim must be an int, got {dim!r} ({type(dim).__name__})")
    ndim = max(x.dim(), 1)
    if not -ndim <= dim < ndim:
        raise IndexError(f"dim={dim} is out of range for a tensor with {x.dim()} dimension(s)")
    return dim % ndim


def check_dtype(dtype: object) -> torch.dtype | None:
    """``None`` or a floating-point ``torch.dtype`` (the ``dtype=`` argument of torch's
    softmax: the input is cast to it before the operation)."""
    if dtype is None:
        return None
    if not isinstance(dtype, torch.dtype):
        raise TypeError(f"dtype must be a torch.dtype or None, got {dtype!r}")
    if not dtype.is_floating_point:
        raise TypeError(f"dtype must be a floating-point dtype, got {dtype}")
    return dtype


def check_broadcast(t: torch.Tensor, shape: torch.Size, name: str) -> None:
    """Raise ``ValueError`` unless ``t`` broadcasts to ``shape`` without growing it."""
    try:
        ok = torch.broadcast_shapes(t.shape, shape) == shape
    except RuntimeError:
        ok = False
    if not ok:
        raise ValueError(f"{name} of shape {tuple(t.shape)} does not broadcast to {tuple(shape)}")


def check_mask(mask: object, x: torch.Tensor) -> torch.Tensor:
    """A bool mask broadcast to ``x``'s shape (True = keep)."""
    if not isinstance(mask, torch.Tensor):
        raise TypeError(f"mask must be a bool tensor or None, got {type(mask).__name__}")
    if mask.dtype != torch.bool:
        raise TypeError(f"mask must have dtype torch.bool (True = keep), got {mask.dtype}")
    check_broadcast(mask, x.shape, "mask")
    return mask.to(x.device).broadcast_to(x.shape)


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
    """A ``bool``."""
    if not isinstance(value, bool):
        raise TypeError(f"{name} must be a bool, got {value!r} ({type(value).__name__})")
    return value


def check_k(x: torch.Tensor, dim: int, k: object) -> int:
    """``k`` of a top-k along ``dim`` (an index into ``x``): an int in ``[1, size of dim]``."""
    n = x.shape[dim] if x.dim() else 1
    if isinstance(k, bool) or not isinstance(k, int):
        raise TypeError(f"k must be an int, got {k!r} ({type(k).__name__})")
    if not 1 <= k <= n:
        raise ValueError(f"k must be in [1, {n}] (the size of dim {dim}), got k={k}")
    return k
