"""Fast paths, chosen per call: which backend runs an op on a given tensor.

Layering (DESIGN.md §3): reference math → kernel → ``autograd.Function`` → functional. The
reference (the pure-torch code in :mod:`softmaxlab.functional`, :mod:`softmaxlab.online` and
:mod:`softmaxlab.losses`) is the ground truth; every kernel is tested against it.

The backend of a call is read from the environment variable ``SOFTMAXLAB_BACKEND`` at every
call:

* unset, ``""`` or ``"auto"``: CUDA tensors use the Triton kernel of the op where
  ``softmaxlab.kernels.triton`` provides one (and ``triton`` is installed), CPU tensors use
  the CPU kernel where one applies (see :mod:`softmaxlab.kernels.cpu`); the reference
  otherwise;
* ``"reference"``: always the reference;
* ``"cpu"``: the CPU kernels where one applies to the case (an error for a tensor that is
  not on the CPU, or when a kernel needs numba and numba is missing);
* ``"triton"``: the Triton kernels where one exists for the op (an error for a tensor that
  is not on a CUDA device, or when triton is missing).

:func:`kernel_name` tells which kernel a call would run (tests assert that every branch of
the dispatch is taken).
"""

from __future__ import annotations

import importlib
import importlib.util
import os
from collections.abc import Callable

import torch

from . import cpu

__all__ = ["BACKENDS", "ENV_VAR", "backend", "cpu_kernel", "kernel_name", "triton_kernel"]

ENV_VAR = "SOFTMAXLAB_BACKEND"
BACKENDS = ("auto", "reference", "cpu", "triton")


def requested_backend() -> str:
    """The value of ``SOFTMAXLAB_BACKEND`` (``"auto"`` when unset or empty)."""
    value = os.environ.get(ENV_VAR, "") or "auto"
    if value not in BACKENDS:
        raise ValueError(
            f"{ENV_VAR}={value!r} is not a backend; valid values: "
            f"{', '.join(map(repr, BACKENDS))} (or unset, which means 'auto')")
    return value


def backend(x: torch.Tensor) -> str:
    """The backend that runs ops on ``x``: ``"reference"``, ``"cpu"`` or ``"triton"``."""
    requested = requested_backend()
    device = x.device.type
    if requested in ("cpu", "triton"):
        needs = "cpu" if requested == "cpu" else "cuda"
        if device != needs:
            raise ValueError(
                f"{ENV_VAR}={requested!r} runs on {needs!r} tensors only, got a tensor on "
                f"{x.device}; unset {ENV_VAR} to choose by device")
        return requested
    if requested == "reference":
        return "reference"
    if device == "cpu":
        return "cpu"
    if device == "cuda" and importlib.util.find_spec("triton") is not None:
        return "triton"
    return "reference"


# ----------------------------------------------------------------------------- triton
# The Triton backend plugs in here. ``softmaxlab.kernels.triton`` (owned by the Triton
# kernels, imported on demand) exposes ``KERNELS``: a dict op name -> callable with the
# signature of the public function of that name (``softmax``, ``log_softmax``,
# ``softmax_topk``, ``linear_cross_entropy``, ``sparsemax``, ...). Public functions call
# :func:`triton_kernel` first and return its result when it gives one.
def _triton_kernels() -> dict[str, Callable]:
    return importlib.import_module(".triton", __name__).KERNELS


def triton_kernel(op: str, x: torch.Tensor) -> Callable | None:
    """The Triton kernel for public function ``op`` on ``x``, or ``None`` (not CUDA, no
    kernel for ``op``, or another backend requested). Forced with triton missing: the
    ``ImportError`` of ``softmaxlab.kernels.triton`` says what to install."""
    if backend(x) != "triton":
        return None
    try:
        kernels = _triton_kernels()
    except ImportError:
        if requested_backend() == "triton":
            raise
        return None
    return kernels.get(op)


# -------------------------------------------------------------------------------- cpu
def cpu_kernel(op: str, x: torch.Tensor, **case) -> cpu.Kernel | None:
    """The CPU kernel for ``op`` on ``x`` (``case``: the op's facts that decide, e.g. ``k``),
    or ``None`` for the reference."""
    if backend(x) != "cpu":
        return None
    return cpu.select(op, x, forced=requested_backend() == "cpu", **case)


def kernel_name(op: str, x: torch.Tensor, **case) -> str:
    """Which kernel ``op`` runs on ``x``: ``"reference"``, ``"triton.<op>"`` or the CPU
    kernel's name (e.g. ``"cpu.sparsemax"``)."""
    if backend(x) == "triton":
        return f"triton.{op}" if triton_kernel(op, x) is not None else "reference"
    kernel = cpu_kernel(op, x, **case)
    return "reference" if kernel is None else kernel.name
