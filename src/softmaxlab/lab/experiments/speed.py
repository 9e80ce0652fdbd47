"""Speed claims, timed with the bench harness: each repetition times every implementation
once (interleaved, so load bursts hit them alike), median of several calls; a repetition is
a "seed" of the paired comparison. Records go to ``results.jsonl`` by :func:`._runs.runs`
(``kind="run"``, ``mapping`` = the implementation), so an interrupted run resumes.

Milakov & Gimelshein 2018 (arXiv 1805.02867), "Online normalizer calculation for softmax":
safe softmax reads each entry 4 times, the online normalizer 3; up to 1.3x faster softmax
and up to 5x faster softmax + top-k (V100, batch 4000 and 10, K = 5).
"""

from __future__ import annotations

import statistics
from collections.abc import Callable
from pathlib import Path

import torch

from . import Check, Experiment, register
from ._runs import runs

__all__ = ["run"]


def _impls(name: str) -> dict[str, Callable[[torch.Tensor], object]]:
    import softmaxlab as sl
    from softmaxlab.functional.softmax import naive_softmax

    if name == "softmax":
        return {"softmaxlab.softmax": sl.softmax, "safe softmax (3 passes)": naive_softmax,
                "torch.softmax": lambda x: torch.softmax(x, -1)}
    if name == "topk":
        return {"softmaxlab.softmax_topk": lambda x: sl.softmax_topk(x, 5),
                "softmax().topk": lambda x: torch.softmax(x, -1).topk(5, -1)}
    if name == "sparse_loss":
        return {"sparse_softmax_loss(k=10)": _step(lambda z, t: sl.losses.sparse_softmax_loss(
                    z, t, k=10)),
                "cross_entropy": _step(sl.losses.cross_entropy)}
    raise ValueError(f"unknown speed case {name!r}")


def _step(loss):
    """A training step of ``loss`` on logits ``x`` (targets: the row's index mod classes):
    forward and the gradient of the logits."""

    def step(x):
        with torch.enable_grad():
            z = x.detach().requires_grad_()
            t = torch.arange(len(z)) % z.shape[-1]
            return torch.autograd.grad(loss(z, t), z)[0]

    return step


def _median_time(fn, x, calls: int) -> float:
    """The median of ``calls`` timed calls ``fn(x)`` (the bench harness's CPU timer)."""
    from ...bench.timing import CallStep, Timer

    timer, step = Timer("cpu"), CallStep(lambda: fn(x))
    return statistics.median(timer.time(step) for _ in range(calls))


def run(out: str | Path, *, case: str, shape: tuple[int, int], repeats: int, calls: int = 5,
        progress: bool = True) -> Path:
    """Time ``case``'s implementations on a float32 ``shape`` input, ``repeats`` times
    (resuming: repetitions already in ``out/results.jsonl`` are kept)."""
    config = {"case": case, "shape": list(shape), "calls": calls, "dtype": "float32",
              "threads": torch.get_num_threads()}
    impls = _impls(case)
    x = torch.randn(*shape, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        for fn in impls.values():  # warm-up: compilation, first-touch of the pages
            fn(x)
        return runs(out, config, list(impls), repeats,
                    lambda name, rep: {"time_ms": _median_time(impls[name], x, calls) * 1e3},
                    progress)


_SOFTMAX = {"smoke": ((256, 4096), 3), "small": ((4000, 32768), 10),
            "full": ((4000, 262144), 20)}
_TOPK = {"smoke": ((16, 65536), 3), "small": ((10, 1 << 20), 10), "full": ((10, 1 << 23), 20)}
_SPARSE = {"smoke": ((256, 2048), 3), "small": ((2048, 10000), 10), "full": ((4096, 50257), 20)}


def _setup(table, case):
    return lambda scale: dict(case=case, shape=table[scale][0], repeats=table[scale][1])


register(Experiment(
    name="online-normalizer",
    paper="Milakov & Gimelshein 2018 (arXiv 1805.02867)",
    claim="softmax that reads the input fewer times (online normalizer: 3 accesses per "
          "entry instead of safe softmax's 4) is up to 1.3x faster",
    # the paper's baseline is safe softmax as a kernel: torch's CPU softmax is one (a max
    # pass, an exp-and-sum pass, a normalizing pass); the same formula in unfused torch ops
    # is shown beside it, not as the claim's baseline (it also pays for its temporaries)
    checks=(Check("softmaxlab.softmax", "torch.softmax", "time_ms", higher=False,
                  paper="up to 1.3x faster than safe softmax"),
            Check("softmaxlab.softmax", "safe softmax (3 passes)", "time_ms", higher=False,
                  paper="(not in the paper: safe softmax in unfused ops)")),
    setup=_setup(_SOFTMAX, "softmax"),
    differences=lambda scale: (
        f"CPU (this machine's {torch.get_num_threads()} threads), float32 "
        f"{_SOFTMAX[scale][0][0]}x{_SOFTMAX[scale][0][1]}; ours is one numba kernel that "
        "reads each row from memory once and keeps it in cache between its passes (not the "
        "paper's one-pass online normalizer); the baseline is torch.softmax, torch's "
        "safe-softmax kernel, and beside it safe softmax in unfused torch ops (max, exp, "
        "sum, divide); the paper compared CUDA kernels on a V100"),
    kind="speed",
    tags=("speed",),
))

register(Experiment(
    name="fused-softmax-topk",
    paper="Milakov & Gimelshein 2018 (arXiv 1805.02867)",
    claim="softmax fused with top-k (the input read once, K values written) is up to 5x "
          "faster than softmax followed by top-k",
    checks=(Check("softmaxlab.softmax_topk", "softmax().topk", "time_ms", higher=False,
                  paper="up to 5x faster"),),
    setup=_setup(_TOPK, "topk"),
    differences=lambda scale: (
        f"CPU, float32 {_TOPK[scale][0][0]}x{_TOPK[scale][0][1]}, K=5; the library's block "
        "search (block maxima and a streamed normalizer) against torch.softmax + "
        "torch.topk; the paper: CUDA on a V100, batch 4000 and 10, V up to ~10M"),
    kind="speed",
    tags=("speed",),
))

register(Experiment(
    name="sparse-softmax-speed",
    paper="Sun et al. 2021 (arXiv 2112.12433)",
    claim="sparse-softmax (normalized over the k largest logits) is simpler and faster than "
          "softmax cross-entropy for many classes (> 100)",
    checks=(Check("sparse_softmax_loss(k=10)", "cross_entropy", "time_ms", higher=False,
                  paper="faster (numbers not in our sources)"),),
    setup=_setup(_SPARSE, "sparse_loss"),
    differences=lambda scale: (
        f"CPU, float32 logits {_SPARSE[scale][0][0]}x{_SPARSE[scale][0][1]}, a training "
        "step (loss and logit gradient) of the library's sparse_softmax_loss(k=10) against "
        "its softmax cross_entropy (torch's fused kernel); the paper's setting (GPU, "
        "fine-tuning) is not stated in our sources"),
    kind="speed",
    tags=("speed",),
))
