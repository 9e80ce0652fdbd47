"""The CPU suites (``--quick`` shrinks every shape; targets keep referring to the full
shapes):

* ``softmax``: softmax, log_softmax at (4096, 1024), (1024, 32768), (64, 262144).
* ``topk``: softmax_topk, k=10, at (64, 262144), (8, 1000000) vs softmax -> topk.
* ``linear_ce``: linear_cross_entropy, N=4096, d=1024, V=50257, vs F.cross_entropy of the
  logits, the naive formula, and the bound "the 3 GEMMs alone" (h @ W.T, g @ W, g.T @ h).
* ``sparse``: sparsemax, entmax15 at (4096, 1024), (256, 32768) vs ``entmax`` and
  torch.softmax.
* ``elementwise``: taylor_softmax, spherical_softmax, sigsoftmax and their log forms at
  (4096, 1024), (1024, 32768) vs torch.softmax / torch.log_softmax.
* ``attention``: softmaxlab.attention.scaled_dot_product_attention with softmax, entmax15
  and sparsemax, B=4, H=8, D=64, L=S=1024 and 4096, forward and forward+backward, vs
  F.scaled_dot_product_attention and the naive path that materializes the scores (and
  the ``entmax`` package on them); the two lengths show the peak memory's growth.
* ``overhead``: the per-call time, forward, on a (4, 8) float32 input of every registered
  mapping function (its defaults), softmax_topk(k=2) and losses.cross_entropy vs torch.

With ``--compile``, the softmax and overhead cases also time ``torch.compile(fullgraph=True)``
of the candidate and of the torch baseline.
"""

from __future__ import annotations

import dataclasses

import torch

import softmaxlab as sl

from ..baselines import (
    TORCH_LOG_SOFTMAX,
    TORCH_SOFTMAX,
    attention_impls,
    candidate,
    cross_entropy_impls,
    entmax_impl,
    linear_impls,
    naive,
    topk_impls,
)
from ..records import (
    AttentionCase,
    Case,
    LinearCase,
    OverheadCase,
    RowsCase,
    Target,
    TopkCase,
)


def softmax_suite(quick: bool) -> list[Case]:
    shapes = ([(64, 1024), (4, 32768), (2, 262144)] if quick
              else [(4096, 1024), (1024, 32768), (64, 262144)])
    src = "target: never slower than torch by more than 5%"
    out = []
    for shape in shapes:
        for op, base in (("softmax", TORCH_SOFTMAX), ("log_softmax", TORCH_LOG_SOFTMAX)):
            out.append(RowsCase("softmax", op, shape, torch.float32, "cpu",
                                (candidate(op), base, naive(op)),
                                (Target("time", 1.05, base.name, source=src),),
                                compilable=("softmaxlab", base.name)))
    return out


def topk_suite(quick: bool) -> list[Case]:
    shapes = [(2, 262144), (1, 1000000)] if quick else [(64, 262144), (8, 1000000)]
    target = Target("time", 0.25, "torch.softmax.topk", ("forward",),
                    "target: >= 4x faster than softmax -> topk (one read of the input)")
    return [TopkCase("topk", "softmax_topk(k=10)", shape, torch.float32, "cpu", topk_impls(10),
                     (target,), k=10) for shape in shapes]


def linear_suite(quick: bool) -> list[Case]:
    shape = (128, 128, 8192) if quick else (4096, 1024, 50257)
    targets = (
        Target("time", 0.8, "F.cross_entropy", ("both",), "target: <= 0.8x naive time"),
        Target("memory", 0.25, "F.cross_entropy", ("both",), "target: <= 25% of naive memory"),
        Target("time", 1 / 0.85, "3 GEMMs", ("both",), "target: >= 85% of the 3-GEMM bound"),
    )
    return [LinearCase("linear_ce", "linear_cross_entropy", shape, torch.float32, "cpu",
                       linear_impls(), targets)]


def sparse_suite(quick: bool) -> list[Case]:
    shapes = [(64, 1024), (4, 32768)] if quick else [(4096, 1024), (256, 32768)]
    targets = (Target("time", 1 / 8, "entmax", ("both",), "target: >= 8x faster than entmax"),
               Target("time", 4.0, "torch.softmax", ("both",), "target: <= 4x torch.softmax"))
    return [RowsCase("sparse", op, shape, torch.float32, "cpu",
                     (candidate(op), entmax_impl(op), TORCH_SOFTMAX, naive(op)), targets)
            for shape in shapes for op in ("sparsemax", "entmax15")]


def elementwise_suite(quick: bool) -> list[Case]:
    shapes = [(64, 1024), (4, 32768)] if quick else [(4096, 1024), (1024, 32768)]
    target = Target("time", 1.2, None, ("both",), "target: <= 1.2x torch.softmax")
    out = []
    for shape in shapes:
        for base_op in ("taylor_softmax", "spherical_softmax", "sigsoftmax"):
            for op, base in ((base_op, TORCH_SOFTMAX), ("log_" + base_op, TORCH_LOG_SOFTMAX)):
                out.append(RowsCase("elementwise", op, shape, torch.float32, "cpu",
                                    (candidate(op), base, naive(op)),
                                    (dataclasses.replace(target, baseline=base.name),)))
    return out


def attention_suite(quick: bool) -> list[Case]:
    """Shapes ``(B, H, L, S, D)``; ``quick``: (1, 2, L, L, 16) with L = 128 and 256."""
    lengths = (128, 256) if quick else (1024, 4096)
    B, H, D = (1, 2, 16) if quick else (4, 8, 64)
    sdpa = "F.scaled_dot_product_attention"
    modes = ("forward", "both")
    softmax_target = (Target("time", 1.3, sdpa, modes, "issue 11: within 1.3x of torch's "
                             "SDPA (its CPU flash kernel)"),)
    sparse_targets = (
        Target("time", 0.1, "naive", modes, "issue 11: >= 10x faster than materializing "
               "the scores and calling the mapping"),
        Target("memory", 0.25, "naive", modes, "issue 11: peak memory O(L D), not O(L S)"),
    )
    out: list[Case] = []
    for n in lengths:
        for mapping in ("softmax", "entmax15", "sparsemax"):
            out.append(AttentionCase(
                "attention", f"sdpa({mapping})", (B, H, n, n, D), torch.float32, "cpu",
                attention_impls(mapping),
                softmax_target if mapping == "softmax" else sparse_targets))
    return out


def overhead_suite(quick: bool) -> list[Case]:
    """Every registered mapping function (log forms against torch.log_softmax),
    softmax_topk(k=2) and losses.cross_entropy; ``calls`` per timed sample."""
    shape, calls = (4, 8), 100 if quick else 1000
    ops = [(f.__name__, (candidate(f.__name__), TORCH_LOG_SOFTMAX if f is m.log_fn
                         else TORCH_SOFTMAX))
           for m in sl.mappings() for f in (m.fn, m.log_fn) if f is not None]
    ops += [("softmax_topk(k=2)", topk_impls(2)[:2]), ("cross_entropy", cross_entropy_impls())]
    out = []
    for op, impls in ops:
        base = impls[1].name
        out.append(OverheadCase("overhead", op, shape, torch.float32, "cpu", impls,
                                (Target("time", 2.0, base, ("forward",),
                                        "target: within 2x of torch"),),
                                compilable=("softmaxlab", base), calls=calls,
                                with_target=op == "cross_entropy"))
    return out
