"""The ``gpu`` suite (CUDA only): softmax fwd/bwd on 2^27 entries, float32 rows of 1024..1M
entries and bfloat16 rows of 4096..262144, against copy bandwidth, torch and
``liger-kernel``, with the Triton launch settings' alternatives (the other side of the
single-block threshold, the cooperative and multi-block long-row schedules); log_softmax;
softmax_topk (float32, bfloat16) with the reference algorithm (topk + logsumexp) and
torch.topk alone; sparsemax (single-block and streamed rows) vs ``entmax`` and Liger; linear
cross-entropy at N=8192, d=4096, V=128256 in bfloat16 vs ``liger-kernel`` (bf16 and fp32
accumulation) and ``cut-cross-entropy`` (default and exact), with other chunk budgets and
without the grad_h accumulator kept in grad_W's last rows.
"""

from __future__ import annotations

import contextlib
import importlib
from typing import Any

import torch

from ..baselines import (
    TORCH_LOG_SOFTMAX,
    TORCH_SOFTMAX,
    candidate,
    entmax_impl,
    liger_flce,
    liger_softmax,
    liger_sparsemax,
    linear_candidate,
    linear_impls,
    naive,
    topk_impls,
)
from ..records import Case, Impl, LinearCase, RowsCase, Target, TopkCase
from ..timing import AutogradStep, Step


class _Configured(Step):
    """``inner`` with attributes of ``module`` set while it runs, its untimed forward too
    (setting them inside the timed call costs microseconds of Python)."""

    def __init__(self, inner: Step, module, settings: dict):
        self.inner, self.module, self.settings = inner, module, settings

    @contextlib.contextmanager
    def _set(self):
        old = {k: getattr(self.module, k) for k in self.settings}
        for k, v in self.settings.items():
            setattr(self.module, k, v)
        try:
            yield
        finally:
            for k, v in old.items():
                setattr(self.module, k, v)

    def before(self) -> None:
        with self._set():
            self.inner.before()

    def call(self) -> Any:
        with self._set():
            return self.inner.call()

    def after(self) -> None:
        self.inner.after()


def _configured(name: str, base: Impl, module: str, settings: dict) -> Impl:
    """The candidate ``base`` with module attributes of the Triton kernels changed (launch
    settings, chunk budgets): the defaults' alternatives, measured against them."""

    def load():
        fn, mod = base.load(), importlib.import_module(module)
        return lambda case, inputs, mode: _Configured(AutogradStep(fn, inputs, mode), mod,
                                                      settings)

    return Impl(f"softmaxlab {name}", load, manual=True,
                note=", ".join(f"{module}.{k} = {v}" for k, v in settings.items()))


_LAUNCH = "softmaxlab.kernels.triton._launch"
_OFF = {"COOP_PROGRAMS_PER_SM": 0}
_COOP = {"COOP_FORWARD": True, "COOP_MIN_ITEMSIZE": 0}
#: Long-row schedules of the Triton softmax other than the defaults (float32 backward on the
#: cooperative path, 1 program per SM, chunks of 16384; the rest on the multi-block paths:
#: persistent grid of 1 program per SM with L2 eviction hints, rows split only below 1
#: program per SM): the cooperative path in both passes and every dtype, with other chunks
#: and prefetching, and the multi-block paths alone and split further.
_MULTI_BLOCK = {"coop": _COOP,
                "coop, prefetch": {**_COOP, "COOP_PREFETCH": True},
                "coop chunk 32768": {**_COOP, "COOP_CHUNK": 32768},
                "coop chunk 32768, prefetch": {**_COOP, "COOP_CHUNK": 32768, "COOP_PREFETCH": True},
                "multi-block": _OFF,
                "multi-block, split to 4 programs/SM": {**_OFF, "PROGRAMS_PER_SM": 4}}


def _softmax_variants(n: int) -> tuple[Impl, ...]:
    """The Triton softmax at other launch settings for rows of ``n``: the other side of the
    single-block threshold (32768) for 8192 <= n <= 65536, the other long-row schedules
    above it."""
    variants = {}
    if 8192 <= n <= 32768:
        variants["coop"] = {**_COOP, "MAX_SINGLE_BLOCK": 1, "COOP_CHUNK": min(n, 8192)}
        variants["multi-block"] = {"MAX_SINGLE_BLOCK": 1, **_OFF}
    if n == 65536:
        variants["single block"] = {"MAX_SINGLE_BLOCK": n}
    if n > 32768:
        variants.update(_MULTI_BLOCK)
    return tuple(_configured(k, candidate("softmax"), _LAUNCH, v) for k, v in variants.items())


def _topk_references(k: int) -> tuple[Impl, ...]:
    """The library's reference algorithm in torch ops, and the selection alone (a floor)."""

    def reference():
        def fn(x):
            top, idx = x.topk(k, -1)
            lse = torch.logsumexp(x.float(), -1, keepdim=True)
            return (top.float() - lse).exp().to(x.dtype), idx

        return fn

    return (Impl("topk + logsumexp", reference,
                 note="the reference algorithm: torch.topk, torch.logsumexp (float32)"),
            Impl("torch.topk", lambda: lambda x: x.topk(k, -1), note="the selection alone"))


def gpu_suite(quick: bool) -> list[Case]:
    dev = "cuda"
    out: list[Case] = []
    f32, bf16 = torch.float32, torch.bfloat16
    # 2^27 entries (512 MiB in float32: far larger than L2)
    rows = ([(f32, 4096), (f32, 65536), (bf16, 32768)] if quick
            else [(f32, n) for n in (1024, 4096, 8192, 16384, 32768, 65536, 131072, 262144,
                                     1 << 20)]
            + [(bf16, n) for n in (4096, 32768, 131072, 262144)])
    total = 1 << (22 if quick else 27)
    liger_soft = Impl("liger", liger_softmax, package="liger_kernel", dist="liger-kernel",
                      note="LigerSoftmax")
    bandwidth = Target("bandwidth", 0.8, modes=("forward",),
                       source="target: >= 80% of copy bandwidth")
    for dt, n in rows:
        out.append(RowsCase("gpu", "softmax", (total // n, n), dt, dev,
                            (candidate("softmax"), TORCH_SOFTMAX, naive("softmax"), liger_soft,
                             *_softmax_variants(n)),
                            (bandwidth,) if n >= 4096 else ()))
    for n in [4096] if quick else [4096, 65536]:
        out.append(RowsCase("gpu", "log_softmax", (total // n, n), f32, dev,
                            (candidate("log_softmax"), TORCH_LOG_SOFTMAX, naive("log_softmax"))))
    for shape, dt, k in ([((64, 32768), f32, 10), ((4096, 8192), bf16, 10)] if quick
                         else [((64, 262144), f32, 10), ((8, 1000000), f32, 10),
                               ((1024, 128256), f32, 10), ((4096, 128256), f32, 10),
                               ((4096, 128256), bf16, 10), ((16384, 4096), f32, 5)]):
        out.append(TopkCase("gpu", f"softmax_topk(k={k})", shape, dt, dev,
                            topk_impls(k) + _topk_references(k), (), k=k))
    liger_sparse = Impl("liger", liger_sparsemax, package="liger_kernel", dist="liger-kernel",
                        note="liger_sparsemax")
    for shape in ([(4096, 1024), (8, 131072)] if quick
                  else [(4096, 1024), (4096, 8192), (1024, 32768), (4096, 32768), (64, 131072)]):
        out.append(RowsCase("gpu", "sparsemax", shape, f32, dev,
                            (candidate("sparsemax"), entmax_impl("sparsemax"), liger_sparse,
                             TORCH_SOFTMAX, naive("sparsemax")),
                            ()))
    shape = (4096, 1024, 32768) if quick else (8192, 4096, 128256)
    lce = "softmaxlab.kernels.triton._linear_ce"
    settings = {**{f"budget 2^{b}": {"CHUNK_ELEMENTS": 1 << b} for b in (23, 25)},
                "no borrowed rows": {"BORROW_ROWS": False}}
    budgets = tuple(_configured(k, Impl("softmaxlab", linear_candidate), lce, v)
                    for k, v in settings.items())
    liger_fp32 = Impl("liger fp32 accum", liger_flce(accum_dtype=torch.float32),
                      package="liger_kernel", dist="liger-kernel",
                      note="LigerFusedLinearCrossEntropyLoss, accum_dtype=float32")
    out.append(LinearCase("gpu", "linear_cross_entropy", shape, bf16, dev,
                          (*linear_impls(gpu=True), liger_fp32, *budgets),
                          (Target("memory", 1.0, "cce", ("both",),
                                  "target: memory <= cut-cross-entropy's"),
                           Target("time", 1.1, "liger", ("both",),
                                  "target: <= 1.1x the faster of CCE and Liger"),
                           Target("time", 1.1, "cce", ("both",),
                                  "target: <= 1.1x the faster of CCE and Liger"))))
    return out
