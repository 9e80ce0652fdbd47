"""Triton kernels for CUDA tensors (usable only where ``triton`` is installed).

Nothing in :mod:`softmaxlab` imports this package on its own: the dispatcher in
:mod:`softmaxlab.kernels` imports it on demand and routes CUDA tensors through
:data:`KERNELS`, a dict ``op name -> callable`` whose callables take the same arguments as
the public functions of the same name:

========================  ==========================================================
``softmax``               :func:`._softmax.softmax` (any dim, mask, float/tensor T)
``log_softmax``           :func:`._softmax.log_softmax`
``softmax_topk``          :func:`._topk.softmax_topk`
``linear_cross_entropy``  :func:`._linear_ce.linear_cross_entropy` (mapping="softmax";
                          other mappings raise ``NotImplementedError``: use the reference)
``sparsemax``             :func:`._sparsemax.sparsemax`
========================  ==========================================================

Each kernel computes in float32 (float64 for float64 inputs) and follows the library's
numerical contract; they are tested against the reference functions on CPU under
``TRITON_INTERPRET=1`` (``tests/test_triton.py``). :data:`._launch.PATHS` counts the kernel
paths taken (single-block vs multi-block). Without ``triton`` the package imports, but
every name (``KERNELS`` too) raises an ``ImportError`` that says what to install.
"""

from __future__ import annotations

import importlib.util

if importlib.util.find_spec("triton") is None:  # importable, but every name says what is missing
    _MISSING = ("softmaxlab.kernels.triton needs the 'triton' package (a CUDA GPU to run on, or "
                "TRITON_INTERPRET=1 on CPU): pip install 'softmaxlab[triton]'")

    def __getattr__(name: str):
        if name.startswith("__"):
            raise AttributeError(name)
        raise ImportError(_MISSING)

    __all__: list[str] = []
else:
    from ._linear_ce import linear_cross_entropy
    from ._softmax import log_softmax, softmax
    from ._sparsemax import sparsemax
    from ._topk import softmax_topk

    KERNELS = {
        "softmax": softmax,
        "log_softmax": log_softmax,
        "softmax_topk": softmax_topk,
        "linear_cross_entropy": linear_cross_entropy,
        "sparsemax": sparsemax,
    }

    __all__ = ["KERNELS", "linear_cross_entropy", "log_softmax", "softmax", "softmax_topk",
               "sparsemax"]
