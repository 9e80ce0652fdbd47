"""Fast paths, chosen per call; the pure-torch reference in :mod:`softmaxlab.functional`,
:mod:`softmaxlab.online` and :mod:`softmaxlab.losses` is the ground truth every kernel is
tested against.

* :mod:`.registry`: :class:`KernelSpec`, :func:`register`, :func:`select`,
  :func:`kernel_name`, the backend choice (``SOFTMAXLAB_BACKEND`` or :func:`use`);
* :mod:`.ops`: the kernels as PyTorch custom ops (``torch.ops.softmaxlab.*``: fake
  implementations, autograd formulas, vmap rules);
* :mod:`.cpu` (numba, extra ``cpu``) and :mod:`.triton` (extra ``triton``): the kernels, each
  registered by its package without importing numba or triton.

Example:
    >>> kernel_name("sparsemax", torch.zeros(2, 3, dtype=torch.float64))
    'reference'
"""

from __future__ import annotations

from . import cpu, ops, triton  # noqa: F401  (registers the kernels and custom ops)
from .registry import (
    BACKENDS,
    ENV_VAR,
    KernelSpec,
    backend,
    kernel_name,
    kernels,
    register,
    requested_backend,
    select,
    use,
)

__all__ = ["BACKENDS", "ENV_VAR", "KernelSpec", "backend", "kernel_name", "kernels", "ops",
           "register", "requested_backend", "select", "use"]
