"""CPU kernels, registered with :mod:`softmaxlab.kernels.registry` (importing this package
imports neither numba nor a kernel module; each module loads when its kernel first runs).

==========================  ====================  =============================================
op                          kernel                module (row functions, :mod:`..ops`)
==========================  ====================  =============================================
``softmax`` (every          ``cpu.softmax``       :mod:`.expnorm` (numba, float32 forward)
exp-normalizing mapping)    ``cpu.softmax_torch`` :mod:`.softmax` (torch's kernels + the
                                                  empty-row repair; float64, or no numba)
``taylor_softmax``,         ``cpu.<op>``          :mod:`.scores` (numba), one fused kernel per
``spherical_softmax``,                            direction
``sigsoftmax``
``sparsemax``, ``entmax15`` ``cpu.<op>``          :mod:`.sparse` (numba), exact thresholds
                                                  among a few candidates, no sort
``sparse_softmax``,         ``cpu.<op>``          :mod:`.composite` (numba), forward only: the
``normalize``,                                    small call that needs no autograd graph
``activation_normalize``                          (``graph_free`` fact, :func:`..registry.eager`)
``softmax_topk``            ``cpu.softmax_topk``  :mod:`.topk` (numba), block maxima and a
                                                  streamed normalizer, when :func:`topk_applies`
``cross_entropy``           ``cpu.cross_entropy_  :mod:`.softmax`: torch's fused
(softmax, eager)            torch``               ``F.cross_entropy`` where its result is the
                                                  contract's (no NaN)
``linear_cross_entropy``    ``cpu.linear_ce_      :mod:`.linear_ce`, the softmax gradient of a
                            softmax``             chunk written over its logits
``attention``               ``cpu.attention_      :mod:`..sdpa`: torch's own SDPA (softmax, no
                            sdpa``                statistics or sink asked for)
                            ``cpu.attention_      :mod:`.attention_sparse` (numba): sparsemax,
                            sparse``              entmax15, visiting only the support
                            ``cpu.attention``     :mod:`.attention`: blocked over queries,
                                                  any normalizer, flash-style backward
==========================  ====================  =============================================

The numba kernels compute in float32 (half inputs are upcast first). Numba is optional
(``pip install 'softmaxlab[cpu]'``); without it the automatic backend uses the reference,
and ``SOFTMAXLAB_BACKEND=cpu`` raises an ``ImportError`` naming the extra. Compiled code is
cached on disk (numba ``cache=True``): the first call in the first process compiles (seconds
per kernel), later processes load it.
"""

from __future__ import annotations

import torch

from ..._constants import FLOAT32_MATH, FLOATING
from ..registry import KernelSpec, register

#: softmax_topk: entries per block (the top-k is searched among ``k * TOPK_BLOCK`` entries).
TOPK_BLOCK = 128
#: softmax_topk: the block search is used for ``k <= TOPK_MAX_K`` and rows of at least
#: ``TOPK_MIN_RATIO * k * TOPK_BLOCK`` entries (shorter rows: torch.topk is as fast).
TOPK_MAX_K = 64
TOPK_MIN_RATIO = 4


def topk_applies(n: int, k: int) -> bool:
    """Whether the block search serves ``softmax_topk`` of rows of ``n`` entries."""
    return k <= TOPK_MAX_K and n >= TOPK_MIN_RATIO * k * TOPK_BLOCK


def _cpu(op: str, name: str, module: str, dtypes=FLOAT32_MATH, needs: str | None = "numba",
         applies=None) -> None:
    path = module if module.startswith("softmaxlab.") else f"{__name__}.{module}"
    register(KernelSpec(op, "cpu", name, path, dtypes, needs, applies))


_cpu("softmax", "cpu.softmax", "expnorm")
_cpu("softmax", "cpu.softmax_torch", "softmax", FLOATING, needs=None)
for _op in ("taylor_softmax", "spherical_softmax", "sigsoftmax"):
    _cpu(_op, f"cpu.{_op}", "scores")
for _op in ("sparsemax", "entmax15"):
    _cpu(_op, f"cpu.{_op}", "sparse")
for _op in ("sparse_softmax", "normalize", "activation_normalize"):
    _cpu(_op, f"cpu.{_op}", "composite", (torch.float32,),
         applies=lambda f: f.get("graph_free", False))
_cpu("softmax_topk", "cpu.softmax_topk", "topk", applies=lambda f: topk_applies(f["n"], f["k"]))
_cpu("cross_entropy", "cpu.cross_entropy_torch", "softmax", FLOATING, needs=None,
     applies=lambda f: f["mapping"] == "softmax" and not f["params"])
_cpu("attention", "cpu.attention_sdpa", "softmaxlab.kernels.sdpa", FLOATING, needs=None,
     applies=lambda f: f["sdpa"])
_cpu("attention", "cpu.attention_sparse", "attention_sparse", (torch.float32, torch.float64),
     applies=lambda f: f.get("mapping") in ("sparsemax", "entmax15"))
_cpu("attention", "cpu.attention", "attention", FLOATING, needs=None)
_cpu("linear_cross_entropy", "cpu.linear_ce_softmax", "linear_ce", needs=None,
     applies=lambda f: f["mapping"] == "softmax" and not f["params"])
