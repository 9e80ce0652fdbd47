"""Every tolerance of the test suite, one table per kind of comparison, keyed by dtype.

A comparison ``assert_close(actual, expected, tol)`` (``tests/_helpers.py``) passes when
``|a - e| <= tol.atol + tol.rtol |e|`` on every finite entry. Low precision is bounded
relative to the naive formula in the same dtype (DESIGN.md §4, STYLE rule 7):
``err <= LOW_FACTOR * err_naive + atol``.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

F64, F32, F16, BF16 = torch.float64, torch.float32, torch.float16, torch.bfloat16


@dataclass(frozen=True)
class Tol:
    rtol: float
    atol: float

    def __add__(self, atol: float) -> Tol:
        return Tol(self.rtol, self.atol + atol)


def ulp(dtype: torch.dtype) -> Tol:
    """One unit in the last place of ``dtype`` (relative), for two float32 results rounded
    to it."""
    return Tol(torch.finfo(dtype).eps, 0.0)


# ---------------------------------------------------------------- against an oracle
#: A library function against the float64 oracle (or reference) on the *same* input values.
#: float64: the library and the oracle evaluate different but exact formulas (log space vs
#: direct, sort vs bisection), each to a few ulps; rtol 1e-10 / atol 1e-12 (~4500 ulp of 1)
#: leaves room for that reordering yet catches any formula error.
#: float32: the library computes in float32; rtol 1e-5 (~84 ulp), atol 4e-6 (~32 ulp of 1,
#: for the cancellation ``l - logsumexp(l)`` of order-1 terms in the log forms).
ORACLE = {
    F64: Tol(1e-10, 1e-12),
    F32: Tol(1e-5, 4e-6),
}

#: Low precision (float16/bfloat16) mappings: err_ours <= factor * err_naive + atol, where
#: err = max |result - oracle(float64 on the same low-precision values)| and err_naive is
#: the oracle's own formula evaluated in the low-precision dtype. atol is a few ulps of the
#: dtype near 1 (fp16 ulp(1) ~ 9.8e-4, bf16 ulp(1) ~ 7.8e-3). Values: (factor, atol).
LOW_PRECISION = {F16: (2.0, 1e-3), BF16: (2.0, 8e-3)}

#: |row total - 1| (log form: |logsumexp|) for the sums-to-one checks: a handful of
#: roundings of the summands (n <= 64 entries, each within half an ulp).
SUM_ATOL = {F64: 1e-12, F32: 1e-6}

#: Attention (any path) against the float64 oracle, or softmax against torch's SDPA, on the
#: same input values. float64: as ORACLE (the scores and the products are sums of <= 8
#: terms in another order). float32: the products q k^T and p v of a few order-1 terms,
#: each a few float32 roundings (~1e-7), then the mapping's own ORACLE error.
ATTENTION = {
    F64: Tol(1e-10, 1e-12),
    F32: Tol(1e-5, 4e-6),
}

# ---------------------------------------------------------------- losses
#: A loss against its float64 reference: the same formula evaluated in a different order.
LOSS = {F64: ORACLE[F64]}
#: A float64 loss and its gradient against torch's own (F.cross_entropy).
LOSS_VS_TORCH = {F64: Tol(1e-12, 1e-13)}
#: alpha-entmax by bisection (n_iter=50): |d tau| <= 2^-50, p = u^q is q-Lipschitz
#: (q = 1/(alpha-1) <= 4 here), times the loss's O(|z|) sensitivity: well under 1e-10.
LOSS_BISECT = {F64: Tol(1e-10, 1e-10)}
#: The same float64 linear cross-entropy computed in chunks of one row and in one chunk.
LOSS_CHUNKED = {F64: Tol(1e-14, 1e-14)}
#: float32 losses of logits of +-1e30 (values of order 1e30): a few float32 roundings.
LOSS_HUGE = {F32: Tol(1e-6, 0.0)}
#: Low precision losses: error vs float64 <= LOW_FACTOR * max(error of the naive torch
#: formula in the same dtype, the rounding of the result itself).
LOW_FACTOR = 2.0

# ---------------------------------------------------------------- calibration
#: Absolute error of a calibration metric computed by hand (a few roundings).
CALIBRATION = {F64: 1e-12, F32: 1e-6}

# ---------------------------------------------------------------- Triton kernels
#: A Triton kernel against the library's reference function on the same inputs; float32:
#: a float32 kernel against the float64 reference, within 1e-5 (1 + |ref|).
TRITON = {F64: ORACLE[F64], F32: Tol(1e-5, 1e-5)}
#: float32 logits of +-1e30 (and a mix with 0) against the reference in float32.
TRITON_EXTREMES = {F32: Tol(1e-6, 1e-7)}
#: softmax_topk in bfloat16 against the float64 reference on the same (rounded) values.
TRITON_TOPK = {BF16: Tol(8e-3, 1e-6)}
#: linear cross-entropy with one class (the loss is exactly 0 up to rounding).
TRITON_ONE_CLASS = {F64: Tol(1e-12, 1e-12)}
#: linear cross-entropy options: loss and gradient error vs the float64 reference.
TRITON_LCE = {F64: 1e-8, F32: 2e-5, BF16: 1e-2}
#: Low precision Triton kernels: err <= TRITON_LOW_FACTOR * err_naive + TRITON_LOW_EPS * eps.
TRITON_LOW_FACTOR = 2.0
TRITON_LOW_EPS = 2.0

#: A patched model against the unpatched one, or against its logits through the library
#: loss (tests/test_patch.py), in float64: the whole forward and backward of a small model
#: summed in another order (the fused loss's chunks, another reduction), ~1e5 ulp of 1.
#: float32: the unpatched model's own loss against the fused one, both in float32
#: (different chunking and summation order over ~30 tokens x 61 classes), ~100 ulp.
PATCHED_MODEL = {F64: Tol(1e-10, 1e-12), F32: Tol(1e-5, 1e-6)}
