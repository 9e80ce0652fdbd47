"""Triton kernels for CUDA tensors, registered with :mod:`softmaxlab.kernels.registry`
(importing this package does not import triton; a module loads when its kernel first runs).

========================  ==========================  ====================================
op                        kernel                      module (row functions, :mod:`..ops`)
========================  ==========================  ====================================
``softmax`` (every        ``triton.softmax``          :mod:`._softmax` (any row length)
exp-normalizing mapping)
``softmax_topk``          ``triton.softmax_topk``     :mod:`._topk`
``sparsemax``             ``triton.sparsemax``        :mod:`._sparsemax`
``linear_cross_entropy``  ``triton.linear_cross_``    :mod:`._linear_ce` (``mapping="softmax"``)
                          ``entropy``
``attention``             ``triton.attention_sdpa``   :mod:`..sdpa`: torch's own SDPA (softmax,
                                                      no statistics asked for, no sink)
                          ``triton.attention``        :mod:`._attention`: flash-style forward
                                                      and backward for softmax (temperature),
                                                      softmax1 (sink, its gradient), sparsemax,
                                                      entmax15, sigmoid; bool/float masks (and
                                                      the float mask's gradient), causal, GQA,
                                                      dropout (the other mappings: the
                                                      reference)
========================  ==========================  ====================================

Each kernel computes in float32 (float64 for float64 inputs) and takes float16/bfloat16
rows as they are; they follow the library's numerical contract and are tested against the
reference on CPU under ``TRITON_INTERPRET=1``. :data:`._launch.PATHS` counts the kernel
paths taken (single-block vs multi-block; ``attention.forward.<mapping>``, ...).
"""

from __future__ import annotations

import torch

from ..._constants import FLOATING
from ..registry import KernelSpec, register

#: The mappings ``triton.attention`` runs (:data:`._attention.MAPS`, without importing it).
ATTENTION_MAPPINGS = ("softmax", "sparsemax", "entmax15", "sigmoid", "softmax1")


def _triton(op: str, module: str, applies=None) -> None:
    register(KernelSpec(op, "triton", f"triton.{op}", f"{__name__}.{module}", FLOATING, "triton",
                        applies, low_precision=True))


_triton("softmax", "_softmax")
_triton("softmax_topk", "_topk")
_triton("sparsemax", "_sparsemax")
#: torch's own SDPA first (flash / memory-efficient / cuDNN on CUDA) where it serves the call
#: (softmax, no statistics asked for, no sink); then the flash-style kernels
register(KernelSpec("attention", "triton", "triton.attention_sdpa", "softmaxlab.kernels.sdpa",
                    FLOATING, None, lambda f: f["sdpa"]))
register(KernelSpec("attention", "triton", "triton.attention", f"{__name__}._attention",
                    (torch.float32, torch.float64), "triton", lambda f: (
                        f.get("mapping") in ATTENTION_MAPPINGS)))
_triton("linear_cross_entropy", "_linear_ce", applies=lambda f: (
    f["mapping"] == "softmax" and set(f["params"]) <= {"temperature"}
    and not isinstance(f["params"].get("temperature"), torch.Tensor) and len(f["dtypes"]) == 1))
