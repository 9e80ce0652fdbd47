"""softmaxlab.losses.fenchel_young: fenchel_young_loss against the float64 reference
(loss and the gradient p - q), the published vector, the alpha equivalences, gradcheck,
bad arguments and low precision."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

import softmaxlab as sl
from softmaxlab import losses as L

from .._helpers import assert_close, gen
from ..oracle import loss_refs as R
from ..tolerances import LOSS, LOSS_BISECT, LOW_FACTOR
from ._common import (
    CE_CONFIGS,
    LOW_DTYPES,
    REDUCTIONS,
    class_weight,
    grad_of,
    make_batch,
    rows_to_layout,
    upstream,
)

F64 = torch.float64


# ================================================================== fenchel_young_loss
FY_CASES = [  # (mapping, params, alpha of the Tsallis entropy)
    ("sparsemax", {}, 2.0),
    ("entmax15", {}, 1.5),
    ("entmax", {"alpha": 1.25}, 1.25),
    ("entmax", {"alpha": 1.5}, 1.5),
    ("entmax", {"alpha": 2.0}, 2.0),
    ("entmax", {"alpha": 1.0}, 1.0),
]


def _fy_id(c):
    return c[0] + "".join(f"-{k}={v}" for k, v in c[1].items())


def fy_tol(alpha, mapping):
    return LOSS_BISECT[F64] if mapping == "entmax" and alpha not in (1.0, 2.0) else LOSS[F64]


def fy_expected_grad(ps, qs, t, w, ii, reduction, up):
    """d loss / d z: coef_i * w_{y_i} * (p_i - q_i) for kept rows."""
    tr = t.reshape(-1)
    kept = tr != ii
    wy = torch.ones(len(tr), dtype=F64) if w is None else w[tr.masked_fill(~kept, 0)]
    wy = wy * kept
    if reduction == "none":
        coef = up.reshape(-1) * wy
    elif reduction == "sum":
        coef = up * wy
    else:
        den = wy.sum()
        coef = up * wy / (den if den != 0 else 1)
    return coef[:, None] * (torch.stack(ps) - torch.stack(qs))


@pytest.mark.parametrize("config", CE_CONFIGS, ids=lambda c: "-".join(map(str, c)))
@pytest.mark.parametrize("layout", ["NC", "NCdd"])
@pytest.mark.parametrize("case", FY_CASES, ids=_fy_id)
def test_fenchel_young_vs_reference(case, layout, config):
    mapping, params, alpha = case
    weighted, ignore, smoothing, reduction = config
    x, t, ii, c = make_batch(layout, ignore, "fy")
    w = class_weight(c, "fy") if weighted else None
    kw = dict(weight=w, ignore_index=ii, reduction=reduction, label_smoothing=smoothing)
    out0 = L.fenchel_young_loss(x, t, mapping=mapping, **kw, **params)
    up = upstream(out0, gen("up", layout, reduction))
    out, (g,) = grad_of(lambda z: L.fenchel_young_loss(z, t, mapping=mapping, **kw, **params),
                        x, up=up)
    ref, ps, qs = R.fenchel_young(x, t, alpha=alpha, **kw)
    tol = fy_tol(alpha, mapping)
    assert_close(out, ref, tol, "value")
    expected = rows_to_layout(fy_expected_grad(ps, qs, t, w, ii, reduction, up), x.shape)
    assert_close(g, expected, tol, "gradient p - q")


def test_fenchel_young_published_vector():
    # papers.md: x = [-2, 0, 0.5] -> sparsemax [0, .25, .75], entmax15 [0, .3260, .6740]
    z = torch.tensor([[-2.0, 0.0, 0.5]], dtype=F64)
    t = torch.tensor([2])
    p = torch.tensor([0.0, 0.25, 0.75], dtype=F64)
    q = torch.tensor([0.0, 0.0, 1.0], dtype=F64)
    expected = (z[0] * (p - q)).sum() + (1 - (p**2).sum()) / 2  # H_2(q) = 0
    assert abs(L.fenchel_young_loss(z, t).item() - expected.item()) < 1e-15
    assert abs(L.fenchel_young_loss(z, t).item() - 0.0625) < 1e-15


@pytest.mark.parametrize("case", FY_CASES, ids=_fy_id)
def test_fenchel_young_gradient_is_exactly_p_minus_onehot(case):
    mapping, params, _ = case
    g = gen("fyexact", mapping)
    x = torch.randn(6, 7, generator=g, dtype=F64) * 2
    t = torch.randint(0, 7, (6,), generator=g)
    _, (grad,) = grad_of(lambda z: L.fenchel_young_loss(z, t, mapping=mapping,
                                                        reduction="sum", **params), x)
    p = sl.get_mapping(mapping).fn(x, -1, **params)
    assert torch.equal(grad, p - F.one_hot(t, 7).to(F64))


def test_fenchel_young_alpha_equivalences():
    g = gen("fyeq")
    x = torch.randn(8, 6, generator=g, dtype=F64) * 2
    t = torch.randint(0, 6, (8,), generator=g)
    t[2] = -100
    w = class_weight(6)
    for reduction in REDUCTIONS:
        kw = dict(weight=w, reduction=reduction)
        assert_close(L.fenchel_young_loss(x, t, mapping="entmax", alpha=1.5, **kw),
                     L.fenchel_young_loss(x, t, mapping="entmax15", **kw), LOSS_BISECT[F64],
                     "alpha 1.5 vs entmax15")
        assert_close(L.fenchel_young_loss(x, t, mapping="entmax", alpha=2.0, **kw),
                     L.fenchel_young_loss(x, t, mapping="sparsemax", **kw), LOSS[F64],
                     "alpha 2 vs sparsemax")
        assert_close(L.fenchel_young_loss(x, t, mapping="entmax", alpha=1.0, **kw),
                     F.cross_entropy(x, t, **kw), LOSS[F64], "alpha 1 vs softmax cross-entropy")


@pytest.mark.parametrize("case", FY_CASES, ids=_fy_id)
def test_fenchel_young_nonnegative_and_zero_at_onehot(case):
    mapping, params, _ = case
    g = gen("fynn", mapping)
    scales = torch.tensor([0.01, 0.3, 1.0, 3.0, 10.0, 100.0], dtype=F64).repeat(50)
    x = torch.randn(300, 7, generator=g, dtype=F64) * scales[:, None]
    t = torch.randint(0, 7, (300,), generator=g)
    for smoothing in (0.0, 0.2):
        out = L.fenchel_young_loss(x, t, mapping=mapping, reduction="none",
                                   label_smoothing=smoothing, **params)
        assert out.min().item() >= 0.0, (smoothing, out.min().item())
    # the target gets probability 1: one huge logit
    z = torch.zeros(4, 5, dtype=F64)
    tt = torch.tensor([0, 3, 4, 1])
    z[torch.arange(4), tt] = 60.0
    out = L.fenchel_young_loss(z, tt, mapping=mapping, reduction="none", **params)
    if params.get("alpha", 2.0) == 1.0:
        assert (out.abs() <= 1e-20).all(), out  # softmax: e^-60 terms only
    else:
        assert torch.equal(out, torch.zeros(4, dtype=F64)), out
    # ... and a wrong target gets a strictly positive loss
    wrong = L.fenchel_young_loss(z, (tt + 1) % 5, mapping=mapping, reduction="none", **params)
    assert (wrong > 1.0).all(), wrong


@pytest.mark.parametrize("case", FY_CASES, ids=_fy_id)
def test_fenchel_young_gradcheck(case):
    mapping, params, _ = case
    g = gen("fygc", mapping)
    x = torch.randn(3, 5, generator=g, dtype=F64).requires_grad_()
    t = torch.tensor([1, -100, 4])
    w = class_weight(5)
    assert torch.autograd.gradcheck(
        lambda z: L.fenchel_young_loss(z, t, mapping=mapping, weight=w, reduction="none",
                                       label_smoothing=0.1, **params), (x,))


def test_fenchel_young_every_row_ignored_and_bad_args():
    x = torch.randn(3, 4, dtype=F64, requires_grad=True)
    t = torch.full((3,), -100)
    for reduction in REDUCTIONS:
        out = L.fenchel_young_loss(x, t, reduction=reduction)
        assert (out == 0).all() and not out.isnan().any()
    L.fenchel_young_loss(x, t).backward()
    assert torch.equal(x.grad, torch.zeros_like(x))
    with pytest.raises(ValueError, match="softmax"):
        L.fenchel_young_loss(x, torch.tensor([0, 1, 2]), mapping="softmax")
    with pytest.raises(ValueError, match="alpha"):
        L.fenchel_young_loss(x, torch.tensor([0, 1, 2]), mapping="entmax", alpha=0.5)
    with pytest.raises(ValueError, match="reduction"):
        L.fenchel_young_loss(x, torch.tensor([0, 1, 2]), reduction="avg")


@pytest.mark.parametrize("dtype", LOW_DTYPES, ids=str)
def test_fenchel_young_low_precision(dtype):
    x = (torch.randn(50, 9, generator=gen("fylp"), dtype=F64) * 3).to(dtype)
    t = torch.randint(0, 9, (50,), generator=gen("fylpt"))
    for mapping in ("sparsemax", "entmax15"):
        out = L.fenchel_young_loss(x, t, mapping=mapping, reduction="none")
        assert out.dtype == dtype and torch.isfinite(out).all()
        ref, _, _ = R.fenchel_young(x.double(), t, alpha=2.0 if mapping == "sparsemax" else 1.5,
                                    reduction="none")
        # computed in float32 inside, rounded once to dtype (no naive torch formula exists)
        u = torch.finfo(dtype).eps / 2
        err = (out.double() - ref).abs()
        bound = LOW_FACTOR * u * ref.abs().clamp(min=1.0)
        assert (err <= bound).all(), (mapping, (err - bound).max().item())
