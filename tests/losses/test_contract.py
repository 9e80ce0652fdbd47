"""The numerical contract of DESIGN.md §2 across the row losses of softmaxlab.losses
(a NaN row stays in its row, -inf padding equals slicing, huge float32 logits,
linear_cross_entropy without grad or with partial grads)."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from softmaxlab import losses as L

from .._helpers import assert_close, gen
from ..tolerances import LOSS, LOSS_HUGE
from ._common import REDUCTIONS, grad_of, lce_inputs, upstream

F64, F32 = torch.float64, torch.float32


# ================================================================== numerical contract (§2)
ROW_LOSSES = [
    ("cross_entropy", lambda x, t, **k: L.cross_entropy(x, t, **k)),
    ("cross_entropy-taylor", lambda x, t, **k: L.cross_entropy(x, t, mapping="taylor_softmax",
                                                                **k)),
    ("fenchel_young-sparsemax", lambda x, t, **k: L.fenchel_young_loss(x, t, **k)),
    ("fenchel_young-entmax15", lambda x, t, **k: L.fenchel_young_loss(x, t, mapping="entmax15",
                                                                       **k)),
    ("fenchel_young-entmax1.3", lambda x, t, **k: L.fenchel_young_loss(x, t, mapping="entmax",
                                                                        alpha=1.3, **k)),
    ("soft_margin", lambda x, t, **k: L.soft_margin_loss(x, t, margin=0.5, **k)),
    ("sparse_softmax", lambda x, t, **k: L.sparse_softmax_loss(x, t, k=2, **k)),
]


@pytest.mark.parametrize("loss", ROW_LOSSES, ids=lambda c: c[0])
def test_nan_row_gives_nan_only_in_that_row(loss):
    _, fn = loss
    x = torch.randn(4, 5, generator=gen("nan"), dtype=F64)
    x[1, 3] = float("nan")
    t = torch.tensor([0, 1, 4, 2])
    out = fn(x, t, reduction="none")
    assert out.isnan().tolist() == [False, True, False, False], out
    assert fn(x, t, reduction="mean").isnan()


#: -inf is an exclusion for these (taylor_softmax: f_n(-inf) = +inf, not an exclusion)
EXCLUDING_LOSSES = [c for c in ROW_LOSSES if "taylor" not in c[0]]


@pytest.mark.parametrize("loss", EXCLUDING_LOSSES, ids=lambda c: c[0])
def test_minus_inf_padding_equals_slicing(loss):
    name, fn = loss
    x = torch.randn(5, 4, generator=gen("pad"), dtype=F64)
    t = torch.tensor([0, 3, 1, 2, 3])
    padded = torch.cat([x[:, :2], torch.full((5, 2), float("-inf"), dtype=F64), x[:, 2:]], 1)
    tp = torch.where(t >= 2, t + 2, t)
    for reduction in REDUCTIONS:
        out, (gp,) = grad_of(lambda z, *, reduction=reduction: fn(z, tp, reduction=reduction),
                             padded)
        exp, (gs,) = grad_of(lambda z, *, reduction=reduction: fn(z, t, reduction=reduction), x)
        assert_close(out, exp, LOSS[F64], f"{name} {reduction}")
        assert_close(gp[:, [0, 1, 4, 5]], gs, LOSS[F64], f"{name} {reduction} grad")
        assert torch.equal(gp[:, 2:4], torch.zeros(5, 2, dtype=F64))


def test_huge_float32_logits():
    x = torch.tensor([[1e30, -1e30, 0.0]] * 3)
    t = torch.tensor([0, 1, 2])
    expected = torch.tensor([0.0, 2e30, 1e30])
    for name, fn in EXCLUDING_LOSSES:
        out = fn(x, t, reduction="none")
        assert_close(out, expected, LOSS_HUGE[F32], name)
    out = L.cross_entropy(x, t, reduction="none")
    assert torch.equal(out, F.cross_entropy(x, t, reduction="none"))


def test_linear_cross_entropy_without_grad_and_partial_grads():
    h, w, b, t = lce_inputs("nograd")
    exp = F.cross_entropy(h @ w.T + b, t)
    with torch.no_grad():
        assert_close(L.linear_cross_entropy(h, w, t, bias=b, chunk_size=5), exp, LOSS[F64],
                     "no_grad")
    assert_close(L.linear_cross_entropy(h, w, t, bias=b, chunk_size=5), exp, LOSS[F64],
                 "no input requires grad")
    # only the weight is trained (frozen hidden), and a non-contiguous hidden
    ht = h.T.contiguous().T
    assert not ht.is_contiguous()
    for reduction in REDUCTIONS:
        wg = w.clone().requires_grad_()
        out = L.linear_cross_entropy(ht, wg, t, bias=b, chunk_size=5, reduction=reduction)
        up = upstream(out, gen("partial", reduction))
        (out * up).sum().backward()
        wr = w.clone().requires_grad_()
        (F.cross_entropy(h @ wr.T + b, t, reduction=reduction) * up).sum().backward()
        assert_close(wg.grad, wr.grad, LOSS[F64], reduction)
