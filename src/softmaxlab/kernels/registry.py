"""The one plug-in point of the fast paths: kernels register here, public functions ask here.

A kernel is described by a :class:`KernelSpec`: the op it implements (``"softmax"``,
``"sparsemax"``, ``"softmax_topk"``, ...), its backend (``"cpu"`` or ``"triton"``), the name
:func:`kernel_name` reports, the module that holds its row functions (imported only when the
kernel first runs), the dtypes it takes and any further condition on the call. Every kernel
follows the *row contract*: it receives rows ``(*, n)`` along the last dimension, contiguous,
float32 or float64 (or the input's half dtype when ``low_precision``), excluded entries
already ``-inf``, and returns the same layout; the function names a module provides per op
family are listed in :mod:`softmaxlab.kernels.ops`.

The backend of a call comes from :func:`requested_backend` (``SOFTMAXLAB_BACKEND``, or the
innermost :func:`use`):

* ``"auto"`` (unset): CPU tensors use a CPU kernel where one applies, CUDA tensors a Triton
  kernel where one exists and ``triton`` is installed, and the reference otherwise;
* ``"reference"``: always the pure-torch reference;
* ``"cpu"`` / ``"triton"``: that backend's kernels where one applies (an error for a tensor
  on another device, or when the package a kernel needs is missing); with
  ``TRITON_INTERPRET=1``, ``"triton"`` runs on CPU tensors (Triton's interpreter).

Inside ``torch.func`` transforms (vmap, grad, jvp, ...) eager calls take the reference, which
supports them all; under ``torch.compile`` the kernels are custom ops the graph calls.
"""

from __future__ import annotations

import contextlib
import importlib
import importlib.util
import os
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass
from types import ModuleType
from typing import Any

import torch

__all__ = ["BACKENDS", "ENV_VAR", "KernelSpec", "available", "backend", "eager", "kernel_name",
           "kernels", "load", "register", "requested_backend", "select", "spec", "use"]

ENV_VAR = "SOFTMAXLAB_BACKEND"
BACKENDS = ("auto", "reference", "cpu", "triton")
#: The device type each forced backend runs on.
DEVICE_OF = {"cpu": "cpu", "triton": "cuda"}
#: Optional packages the kernels need, and the extra that installs each.
EXTRAS = {"numba": "cpu", "triton": "triton"}
_AVAILABLE = {name: importlib.util.find_spec(name) is not None for name in EXTRAS}
_ENV_DATA: dict | None = getattr(os.environ, "_data", None)
_ENV_KEY = os.environ.encodekey(ENV_VAR) if _ENV_DATA is not None else None


@dataclass(frozen=True)
class KernelSpec:
    """One fast path of one op.

    ``applies(facts)`` decides on the op's facts beyond dtype and device (``k`` and ``n`` of
    a top-k, the ``mapping`` of a fused loss); ``None`` means always.
    """

    op: str
    backend: str
    name: str
    module: str
    dtypes: tuple[torch.dtype, ...]
    needs: str | None = None
    applies: Callable[[Mapping[str, Any]], bool] | None = None
    low_precision: bool = False


_SPECS: dict[str, list[KernelSpec]] = {}
_BY_NAME: dict[str, KernelSpec] = {}
_MODULES: dict[str, ModuleType] = {}
_OVERRIDE: list[str] = []
#: (op, backend, dtype) -> the kernels of ``op`` on that backend that take that dtype.
_CANDIDATES: dict[tuple[str, str, torch.dtype], tuple[KernelSpec, ...]] = {}


def register(spec: KernelSpec) -> KernelSpec:
    """Add ``spec``; kernels of one op are tried in registration order."""
    if spec.name in _BY_NAME:
        raise ValueError(f"kernel {spec.name!r} is already registered")
    if spec.backend not in DEVICE_OF:
        raise ValueError(f"backend must be one of {tuple(DEVICE_OF)}, got {spec.backend!r}")
    _SPECS.setdefault(spec.op, []).append(spec)
    _BY_NAME[spec.name] = spec
    _CANDIDATES.clear()
    _EAGER.clear()
    return spec


def kernels(op: str | None = None) -> tuple[KernelSpec, ...]:
    """The registered kernels (of ``op``), in registration order."""
    if op is not None:
        return tuple(_SPECS.get(op, ()))
    return tuple(s for specs in _SPECS.values() for s in specs)


def spec(name: str) -> KernelSpec:
    """The registered kernel called ``name``."""
    return _BY_NAME[name]


def load(name: str) -> ModuleType:
    """The module of kernel ``name`` (imported on first use)."""
    module = _MODULES.get(name)
    if module is None:
        module = _MODULES[name] = importlib.import_module(_BY_NAME[name].module)
    return module


def available(package: str) -> bool:
    """Whether optional ``package`` (a key of :data:`EXTRAS`) is installed."""
    return _AVAILABLE[package]


def requested_backend() -> str:
    """The innermost :func:`use`, else ``SOFTMAXLAB_BACKEND`` (``"auto"`` when unset)."""
    if _OVERRIDE:
        return _OVERRIDE[-1]
    value = _environment_value()
    if not value:
        return "auto"
    if value not in BACKENDS:
        raise ValueError(
            f"{ENV_VAR}={value!r} is not a backend; valid values: "
            f"{', '.join(map(repr, BACKENDS))} (or unset, which means 'auto')")
    return value


def _environment_value() -> str | None:
    """``os.environ.get(ENV_VAR)``, read on every call (tests and the lab set it at run
    time). ``os.environ`` encodes the key and decodes the value in Python (~1 us, a third of
    a tiny softmax); its backing dict (``_data``, there since Python 3.2) answers in 40 ns."""
    if _ENV_DATA is None:
        return os.environ.get(ENV_VAR)
    value = _ENV_DATA.get(_ENV_KEY)
    return None if value is None else os.environ.decodevalue(value)


@contextlib.contextmanager
def use(name: str) -> Iterator[None]:
    """Run the block with backend ``name`` (one of :data:`BACKENDS`), as if
    ``SOFTMAXLAB_BACKEND`` were set to it.

    Example:
        >>> with use("reference"):
        ...     kernel_name("softmax", torch.zeros(2, 3))
        'reference'
    """
    if name not in BACKENDS:
        raise ValueError(f"backend must be one of {BACKENDS}, got {name!r}")
    _OVERRIDE.append(name)
    try:
        yield
    finally:
        _OVERRIDE.pop()


def backend(x: torch.Tensor) -> str:
    """The backend that runs ops on ``x``: ``"reference"``, ``"cpu"`` or ``"triton"``."""
    return _backend(x, requested_backend())


def _backend(x: torch.Tensor, requested: str) -> str:
    if requested == "auto":
        if x.is_cpu:
            return "cpu"
        return "triton" if x.is_cuda and _AVAILABLE["triton"] else "reference"
    if requested == "reference":
        return "reference"
    needs = DEVICE_OF[requested]
    if requested == "triton" and os.environ.get("TRITON_INTERPRET") == "1":
        needs = "cpu"  # Triton's interpreter runs the kernels on CPU tensors
    if x.device.type != needs:
        raise ValueError(
            f"{ENV_VAR}={requested!r} runs on {needs!r} tensors only, got a tensor on "
            f"{x.device}; unset {ENV_VAR} to choose by device")
    return requested


def select(op: str, x: torch.Tensor, **facts: Any) -> KernelSpec | None:
    """The kernel that runs ``op`` on ``x`` (``facts``: what else decides), or ``None`` for
    the reference. A forced backend whose kernel needs a missing package raises
    ``ImportError`` naming the extra."""
    requested = _OVERRIDE[-1] if _OVERRIDE else requested_backend()
    chosen = _backend(x, requested)
    if chosen == "reference":
        return None
    if not _is_compiling() and _functorch_active():
        return None  # vmap/grad/jvp: the reference supports every transform
    candidates = _CANDIDATES.get((op, chosen, x.dtype))
    if candidates is None:
        candidates = _candidates(op, chosen, x.dtype)
    for spec in candidates:
        if spec.applies is not None and not spec.applies(facts):
            continue
        if spec.needs is not None and not _AVAILABLE[spec.needs]:
            if requested == chosen:
                raise ImportError(
                    f"{ENV_VAR}={chosen!r}: kernel {spec.name} needs {spec.needs}; install it "
                    f"with pip install 'softmaxlab[{EXTRAS[spec.needs]}]', or unset {ENV_VAR}")
            continue
        return spec
    return None


_is_compiling = torch.compiler.is_compiling
_functorch_active = torch._C._are_functorch_transforms_active
_grad_enabled = torch.is_grad_enabled
_tracing_state = torch._C._get_tracing_state
_Tensor = torch.Tensor
_MISSING = object()
#: (op, dtype, requested backend as set) -> what :func:`select` chose for the common call
_EAGER: dict[tuple, KernelSpec | None] = {}
_EAGER_DTYPES = (torch.float32, torch.float64)


def eager(op: str, x: torch.Tensor,
          facts: tuple[tuple[str, Any], ...] | None = None) -> KernelSpec | None:
    """:func:`select` for the common call, in one dict lookup: an eager call on a plain,
    non-empty float32/float64 CPU tensor of at least one dimension that needs no autograd
    graph, outside ``torch.compile``, ``torch.func`` and ``torch.jit.trace``, of an op whose
    kernels apply unconditionally, or are decided by ``facts`` (``(name, value)`` pairs,
    hashable: part of the cache key). ``None`` otherwise (or for the reference): the caller
    then takes its general path, which decides everything again.

    Example:
        >>> eager("softmax", torch.zeros(2, 3)).name
        'cpu.softmax'
    """
    if (type(x) is not _Tensor or not x.is_cpu or (x.requires_grad and _grad_enabled())
            or _is_compiling() or _functorch_active() or _tracing_state() or not x.numel()
            or not x.dim()):
        return None
    request = (_OVERRIDE[-1] if _OVERRIDE else
               _ENV_DATA.get(_ENV_KEY) if _ENV_DATA is not None else os.environ.get(ENV_VAR))
    key = (op, x.dtype, request, facts)
    found = _EAGER.get(key, _MISSING)
    if found is _MISSING:
        decided = facts is not None or all(s.applies is None for s in _SPECS.get(op, ()))
        found = (select(op, x, **dict(facts or ())) if decided and x.dtype in _EAGER_DTYPES
                 else None)
        if found is None or found.backend == "cpu":  # Triton on CPU tensors depends on
            _EAGER[key] = found                      # TRITON_INTERPRET: decided each call
    return found  # type: ignore[return-value]


def _candidates(op: str, backend: str, dtype: torch.dtype) -> tuple[KernelSpec, ...]:
    found = _CANDIDATES[op, backend, dtype] = tuple(
        s for s in _SPECS.get(op, ()) if s.backend == backend and dtype in s.dtypes)
    return found


def kernel_name(op: str, x: torch.Tensor, **facts: Any) -> str:
    """Which kernel ``op`` runs on ``x``: its name (e.g. ``"cpu.sparsemax"``) or
    ``"reference"``."""
    spec = select(op, x, **facts)
    return "reference" if spec is None else spec.name
