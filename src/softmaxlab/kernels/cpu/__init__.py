"""CPU kernels and the rules that choose them (called by :func:`softmaxlab.kernels.cpu_kernel`).

* ``softmax`` (the safe (log-)softmax under every exp-normalizing mapping): :mod:`.softmax`;
  float32 forward by :mod:`.expnorm` (numba, ``cpu.softmax``), other dtypes, or float32
  without numba, by torch's own kernels plus the empty-row repair (``cpu.softmax_torch``);
  the backward is torch's.
* ``sparsemax``, ``entmax15``: :mod:`.sparse` (numba), exact thresholds found among a few
  candidates without sorting; float32, float16, bfloat16 (computed in float32).
* ``taylor_softmax``, ``spherical_softmax``, ``sigsoftmax`` and their log forms:
  :mod:`.scores` (numba), one fused kernel per direction; float32, float16, bfloat16.
* ``softmax_topk``: :mod:`.topk` (numba), block maxima and a streamed normalizer in one read
  of the input; float32, float16, bfloat16, when :func:`topk_applies` (``case``: ``k`` and
  the row length ``n``).
* ``linear_cross_entropy``: :mod:`.linear_ce`, the softmax gradient of each chunk written
  over its logits; ``case``: ``mapping="softmax"`` with no ``params``; float32, float16,
  bfloat16.

Numba is optional (``pip install 'softmaxlab[cpu]'``) and imported only when a numba kernel
is first chosen; without it the automatic backend uses the reference, and
``SOFTMAXLAB_BACKEND=cpu`` raises an ``ImportError`` naming the extra. Compiled code is cached
on disk (numba ``cache=True``): the first call in the first process compiles (seconds per
kernel), later processes load it.
"""

from __future__ import annotations

import functools
import importlib
import importlib.util
from collections.abc import Callable
from dataclasses import dataclass

import torch

#: Dtypes the numba kernels compute in float32 (the library's contract for half types).
FLOAT32_MATH = (torch.float32, torch.float16, torch.bfloat16)
NUMBA_OPS = ("sparsemax", "entmax15", "taylor_softmax", "spherical_softmax", "sigsoftmax",
             "softmax_topk")
#: softmax_topk: entries per block (the top-k is searched among ``k * TOPK_BLOCK`` entries).
TOPK_BLOCK = 128
#: softmax_topk: the block search is used for ``k <= TOPK_MAX_K`` and rows of at least
#: ``TOPK_MIN_RATIO * k * TOPK_BLOCK`` entries (shorter rows: torch.topk is as fast).
TOPK_MAX_K = 64
TOPK_MIN_RATIO = 4


def topk_applies(n: int, k: int) -> bool:
    """Whether the block search serves ``softmax_topk`` of rows of ``n`` entries."""
    return k <= TOPK_MAX_K and n >= TOPK_MIN_RATIO * k * TOPK_BLOCK


@dataclass(frozen=True)
class Kernel:
    """A chosen kernel: its name (what :func:`softmaxlab.kernels.kernel_name` reports) and
    the callable (its signature is the op's, see each module)."""

    name: str
    fn: Callable


def with_excluded(z: torch.Tensor, excluded: torch.Tensor | None) -> torch.Tensor:
    """``z`` with the ``excluded`` entries (mask, may be ``None``) set to ``-inf``."""
    return z if excluded is None else z.masked_fill(excluded, float("-inf"))


def numba_module(name: str, forced: bool):
    """``softmaxlab.kernels.cpu.<name>`` (a numba module), or ``None`` when numba is
    missing or broken (an ``ImportError`` naming the extra when ``forced``)."""
    try:
        if importlib.util.find_spec("numba") is None:
            raise ImportError("No module named 'numba'")
        return importlib.import_module(f".{name}", __name__)
    except ImportError as e:
        if forced:
            raise ImportError(
                f"SOFTMAXLAB_BACKEND='cpu': this CPU kernel needs numba ({e}); install it "
                "with pip install 'softmaxlab[cpu]', or unset SOFTMAXLAB_BACKEND") from e
        return None


def select(op: str, x: torch.Tensor, *, forced: bool = False, **case) -> Kernel | None:
    """The CPU kernel for ``op`` on ``x``, or ``None`` when none applies."""
    if op == "softmax":
        from .softmax import exp_normalize

        module = numba_module("expnorm", forced) if x.dtype in FLOAT32_MATH else None
        if module is None:
            return Kernel("cpu.softmax_torch", exp_normalize)
        return Kernel("cpu.softmax", functools.partial(exp_normalize, rows_kernel=module.forward))
    if op == "linear_cross_entropy":
        if case["mapping"] != "softmax" or case["params"] or x.dtype not in FLOAT32_MATH:
            return None
        from .linear_ce import softmax_chunk

        return Kernel("cpu.linear_ce_softmax", softmax_chunk)
    if op not in NUMBA_OPS or x.dtype not in FLOAT32_MATH:
        return None
    if op == "softmax_topk":
        if not topk_applies(case["n"], case["k"]):
            return None
        module = numba_module("topk", forced)
        return None if module is None else Kernel("cpu.softmax_topk", module.softmax_topk)
    if op in ("sparsemax", "entmax15"):
        module = numba_module("sparse", forced)
        return None if module is None else Kernel(f"cpu.{op}", module.SPARSE_MAPS[op])
    module = numba_module("scores", forced)
    return None if module is None else Kernel(f"cpu.{op}", module.score_mapping)
