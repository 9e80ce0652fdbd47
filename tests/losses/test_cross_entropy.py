"""The losses of softmaxlab.losses against independent float64 references of the published
formulas (tests/oracle/loss_refs.py), torch where torch has the loss, gradcheck in float64, the
conventions of DESIGN.md §1 (ignored rows count nowhere, also not in label smoothing or the
mean's denominator) and the numerical contract of §2.
"""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F
from hypothesis import given
from hypothesis import settings as hsettings
from hypothesis import strategies as st

import softmaxlab as sl
from softmaxlab import losses as L
from softmaxlab.losses import linear as linear_module

from ..oracle import loss_refs as R
from .._helpers import assert_close, gen
from ..tolerances import (
    LOSS,
    LOSS_BISECT,
    LOSS_CHUNKED,
    LOSS_HUGE,
    LOSS_VS_TORCH,
    LOW_FACTOR,
    Tol,
)

F32, F64 = torch.float32, torch.float64
REDUCTIONS = ("none", "mean", "sum")
LOW_DTYPES = (torch.float16, torch.bfloat16)


def upstream(out: torch.Tensor, g: torch.Generator) -> torch.Tensor:
    """A random upstream gradient (per row for reduction='none', a scalar otherwise)."""
    if out.dim() == 0:
        return torch.tensor(0.7, dtype=out.dtype)
    return torch.randn(out.shape, generator=g, dtype=F64).to(out.dtype)


def grad_of(fn, *inputs, up=None):
    """Value of fn(*inputs) and the gradients of sum(up * value) w.r.t. each input."""
    leaves = [x.detach().clone().requires_grad_(True) for x in inputs]
    out = fn(*leaves)
    u = up if up is not None else torch.ones_like(out)
    (out * u).sum().backward()
    return out.detach(), [x.grad if x.grad is not None else torch.zeros_like(x) for x in leaves]


# ------------------------------------------------------------------ batches in torch's layout
LAYOUTS = {"C": (5,), "NC": (7, 5), "NCdd": (3, 5, 2, 3)}


def make_batch(layout: str, ignore: str, *key):
    """Float64 logits, targets (some ignored per ``ignore``) and the ignore_index."""
    g = gen("batch", layout, ignore, *key)
    shape = LAYOUTS[layout]
    c = shape[0] if len(shape) == 1 else shape[1]
    x = torch.randn(shape, generator=g, dtype=F64) * 2
    tshape = () if len(shape) == 1 else shape[:1] + shape[2:]
    t = torch.randint(0, c, tshape, generator=g)
    ii = -100
    if ignore == "custom2":
        ii = 2  # a valid class id used as ignore_index
    if ignore in ("neg100", "custom2"):
        if t.dim() == 0:
            t = torch.tensor(ii)
        else:
            flat = t.reshape(-1)
            flat[flat == 2] = 1
            idx = torch.randperm(flat.numel(), generator=g)[: max(1, flat.numel() // 3)]
            flat[idx] = ii
            assert (flat != ii).any() and (flat == ii).any()
    return x, t, ii, c


def class_weight(c, *key):
    return torch.rand(c, generator=gen("w", c, *key), dtype=F64) + 0.5


def rows_to_layout(rows: torch.Tensor, shape) -> torch.Tensor:
    """Inverse of R.to_rows for a gradient ``(M, C)``."""
    if len(shape) == 1:
        return rows[0]
    moved = (shape[0],) + tuple(shape[2:]) + (shape[1],)
    return rows.reshape(moved).movedim(-1, 1)


# ================================================================== 1. cross_entropy
@pytest.mark.parametrize("reduction", REDUCTIONS)
@pytest.mark.parametrize("smoothing", [0.0, 0.1, 1.0])
@pytest.mark.parametrize("ignore", ["none", "neg100", "custom2"])
@pytest.mark.parametrize("weighted", [False, True], ids=["noweight", "weight"])
@pytest.mark.parametrize("layout", list(LAYOUTS))
def test_cross_entropy_softmax_equals_torch(layout, weighted, ignore, smoothing, reduction):
    x, t, ii, c = make_batch(layout, ignore)
    w = class_weight(c, layout) if weighted else None
    kw = dict(weight=w, ignore_index=ii, reduction=reduction, label_smoothing=smoothing)
    ours = L.cross_entropy(x, t, **kw)
    up = upstream(ours, gen("up", layout, ignore, reduction))
    ours, (g_ours,) = grad_of(lambda z: L.cross_entropy(z, t, **kw), x, up=up)
    theirs, (g_theirs,) = grad_of(lambda z: F.cross_entropy(z, t, **kw), x, up=up)
    assert ours.dtype == F64
    if bool((t == ii).all()) and reduction == "mean":
        # torch divides 0 by 0 here; the contract says 0 with zero gradient
        assert ours.item() == 0.0 and torch.equal(g_ours, torch.zeros_like(x))
    else:
        assert_close(ours, theirs, LOSS_VS_TORCH[F64], "value vs torch")
        assert_close(g_ours, g_theirs, LOSS_VS_TORCH[F64], "gradient vs torch")
    assert_close(ours, R.cross_entropy(x, t, **kw), LOSS[F64], "value vs float64 reference")


@pytest.mark.parametrize("reduction", REDUCTIONS)
@pytest.mark.parametrize("layout", list(LAYOUTS))
def test_cross_entropy_every_row_ignored_is_zero(layout, reduction):
    for ii, weighted, smoothing in [(-100, False, 0.0), (2, True, 0.1), (-100, True, 1.0)]:
        x, t, _, c = make_batch(layout, "none")
        t = torch.full_like(t, ii)
        w = class_weight(c) if weighted else None
        kw = dict(weight=w, ignore_index=ii, reduction=reduction, label_smoothing=smoothing)
        out, (g,) = grad_of(lambda z: L.cross_entropy(z, t, **kw), x,
                            up=torch.full(t.shape if reduction == "none" else (), 0.3, dtype=F64))
        assert out.shape == (t.shape if reduction == "none" else ())
        assert not out.isnan().any() and (out == 0).all(), (ii, weighted, smoothing, out)
        assert torch.equal(g, torch.zeros_like(x)), (ii, weighted, smoothing)


@pytest.mark.parametrize("weighted", [False, True], ids=["noweight", "weight"])
@pytest.mark.parametrize("smoothing", [0.1, 1.0])
@pytest.mark.parametrize("mapping", ["softmax", "taylor_softmax"])
def test_label_smoothing_does_not_count_ignored_rows(mapping, smoothing, weighted):
    g = gen("ls", mapping)
    x = torch.randn(9, 6, generator=g, dtype=F64) * 3
    t = torch.randint(0, 6, (9,), generator=g)
    ignored = torch.tensor([1, 4, 5, 8])
    t[ignored] = -100
    kept = t != -100
    w = class_weight(6) if weighted else None
    for reduction in ("mean", "sum"):
        kw = dict(mapping=mapping, weight=w, reduction=reduction, label_smoothing=smoothing)
        full, (g_full,) = grad_of(lambda z: L.cross_entropy(z, t, **kw), x)
        sub, (g_sub,) = grad_of(lambda z: L.cross_entropy(z, t[kept], **kw), x[kept])
        assert_close(full, sub, LOSS[F64], f"{reduction}: ignored rows changed the loss")
        assert_close(g_full[kept], g_sub, LOSS[F64], f"{reduction}: kept rows' gradient")
        assert torch.equal(g_full[~kept], torch.zeros_like(g_full[~kept]))


OTHER_MAPPINGS = [
    ("taylor_softmax", {"order": 2}),
    ("taylor_softmax", {"order": 4}),
    ("spherical_softmax", {}),
    ("spherical_softmax", {"eps": 0.5}),
    ("sigsoftmax", {}),
    ("activation_normalize", {"activation": "softplus"}),
    ("activation_normalize", {"activation": "arctan"}),
    ("activation_normalize", {"activation": "gaussian"}),
    ("activation_normalize", {"activation": "relu"}),
]
CE_CONFIGS = [  # (weighted, ignore, label_smoothing, reduction)
    (False, "none", 0.0, "mean"),
    (True, "neg100", 0.1, "mean"),
    (True, "custom2", 0.3, "sum"),
    (False, "neg100", 1.0, "none"),
    (True, "custom2", 0.0, "none"),
]


def _mid_ids(v):
    if isinstance(v, tuple) and len(v) == 2 and isinstance(v[1], dict):
        return v[0] + "".join(f"-{k}={x}" for k, x in v[1].items())
    return None


def away_from_zero(x: torch.Tensor) -> torch.Tensor:
    """Entries with |x| >= 0.2 (no relu kink, no spherical minimum nearby)."""
    return torch.where(x >= 0, x + 0.2, x - 0.2)


@pytest.mark.parametrize("config", CE_CONFIGS, ids=lambda c: "-".join(map(str, c)))
@pytest.mark.parametrize("layout", ["NC", "NCdd"])
@pytest.mark.parametrize("mapping", OTHER_MAPPINGS, ids=_mid_ids)
def test_cross_entropy_other_mappings_vs_reference(mapping, layout, config):
    name, params = mapping
    weighted, ignore, smoothing, reduction = config
    x, t, ii, c = make_batch(layout, ignore, name)
    x = away_from_zero(x)
    w = class_weight(c, name) if weighted else None
    kw = dict(weight=w, ignore_index=ii, reduction=reduction, label_smoothing=smoothing)
    out = L.cross_entropy(x, t, mapping=name, **kw, **params)
    up = upstream(out, gen("up", name, layout))
    out, (g_out,) = grad_of(lambda z: L.cross_entropy(z, t, mapping=name, **kw, **params), x,
                            up=up)
    ref, (g_ref,) = grad_of(lambda z: R.cross_entropy(z, t, mapping=name, **kw, **params), x,
                            up=up)
    assert_close(out, ref, LOSS[F64], "value")
    assert_close(g_out, g_ref, LOSS[F64], "gradient")


@pytest.mark.parametrize("mapping", OTHER_MAPPINGS, ids=_mid_ids)
def test_cross_entropy_other_mappings_gradcheck(mapping):
    name, params = mapping
    g = gen("gc", name)
    x = away_from_zero(torch.randn(3, 4, generator=g, dtype=F64)).requires_grad_()
    t = torch.tensor([0, -100, 3])
    w = class_weight(4)
    for reduction in ("none", "mean"):
        assert torch.autograd.gradcheck(
            lambda z: L.cross_entropy(z, t, mapping=name, weight=w, reduction=reduction,
                                      label_smoothing=0.2, **params), (x,))


def test_cross_entropy_value_of_taylor_docstring_example():
    # f_2(z) = 1 + z + z^2/2: f(2) = 5, f(0) = 1, f(-1) = 0.5 -> -log(5 / 6.5)
    z = torch.tensor([[2.0, 0.0, -1.0]], dtype=F64)
    out = L.cross_entropy(z, torch.tensor([0]), mapping="taylor_softmax", order=2)
    assert abs(out.item() - math.log(6.5 / 5)) < 1e-14


@pytest.mark.parametrize("name", ["sparsemax", "entmax15", "entmax", "sparse_softmax",
                                  "normalize", "ova_sigmoid"])
def test_cross_entropy_without_log_form_raises(name):
    x = torch.randn(2, 4, dtype=F64).abs()
    with pytest.raises(ValueError) as e:
        L.cross_entropy(x, torch.tensor([0, 1]), mapping=name)
    msg = str(e.value)
    assert name in msg and "'softmax'" in msg and "'taylor_softmax'" in msg, msg


def test_cross_entropy_bad_arguments():
    x, t = torch.randn(3, 4, dtype=F64), torch.tensor([0, 1, 2])
    for kwargs, exc, word in [
        (dict(reduction="avg"), ValueError, "reduction"),
        (dict(label_smoothing=1.5), ValueError, "label_smoothing"),
        (dict(label_smoothing=-0.1), ValueError, "label_smoothing"),
        (dict(weight=torch.ones(3, dtype=F64)), ValueError, "weight"),
        (dict(mapping="nope"), ValueError, "nope"),
        (dict(mapping="taylor_softmax", order=3), ValueError, "order"),
    ]:
        with pytest.raises(exc, match=word):
            L.cross_entropy(x, t, **kwargs)
    with pytest.raises(ValueError, match="target"):
        L.cross_entropy(x, torch.tensor([0, 1, 4]))
    with pytest.raises(ValueError, match="target"):
        L.cross_entropy(x, torch.tensor([0, 1]))
    with pytest.raises(TypeError, match="target"):
        L.cross_entropy(x, torch.tensor([0.0, 1.0, 2.0]))
    with pytest.raises(TypeError, match="logits"):
        L.cross_entropy(torch.ones(3, 4, dtype=torch.long), t)


@pytest.mark.parametrize("dtype", LOW_DTYPES, ids=str)
def test_cross_entropy_low_precision(dtype):
    g = gen("lowp", str(dtype))
    x = (torch.randn(200, 11, generator=g, dtype=F64) * 4).to(dtype)
    t = torch.randint(0, 11, (200,), generator=g)
    t[::7] = -100
    w = class_weight(11).to(dtype)
    u = torch.finfo(dtype).eps / 2
    for kw in (dict(reduction="none"), dict(reduction="mean", label_smoothing=0.1),
               dict(reduction="sum", weight=w)):
        ref = F.cross_entropy(x.double(), t, **{k: (v.double() if torch.is_tensor(v) else v)
                                                  for k, v in kw.items()})
        ours = L.cross_entropy(x, t, **kw)
        naive = F.cross_entropy(x, t, **kw)
        assert ours.dtype == dtype, kw
        err = (ours.double() - ref).abs().max().item()
        err_naive = (naive.double() - ref).abs().max().item()
        floor = u * ref.abs().max().item()
        assert err <= LOW_FACTOR * max(err_naive, floor), (kw, err, err_naive, floor)
    xg = x.clone().requires_grad_()
    L.cross_entropy(xg, t).backward()
    assert xg.grad.dtype == dtype and torch.isfinite(xg.grad).all()
    xd = x.double().requires_grad_()
    F.cross_entropy(xd, t).backward()
    xn = x.clone().requires_grad_()
    F.cross_entropy(xn, t).backward()
    err = (xg.grad.double() - xd.grad).abs().max().item()
    err_naive = (xn.grad.double() - xd.grad).abs().max().item()
    assert err <= LOW_FACTOR * max(err_naive, u * xd.grad.abs().max().item()), (err, err_naive)


# ================================================================== 2. fenchel_young_loss
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


# ================================================================== 3. soft_margin_loss
SM_CASES = [("softmax", {}), ("taylor_softmax", {"order": 2}), ("taylor_softmax", {"order": 4})]


@pytest.mark.parametrize("config", CE_CONFIGS, ids=lambda c: "-".join(map(str, c)))
@pytest.mark.parametrize("case", SM_CASES, ids=_mid_ids)
def test_soft_margin_vs_reference(case, config):
    mapping, params = case
    weighted, ignore, smoothing, reduction = config
    x, t, ii, c = make_batch("NC", ignore, "sm")
    w = class_weight(c, "sm") if weighted else None
    kw = dict(weight=w, ignore_index=ii, reduction=reduction, label_smoothing=smoothing)
    for margin in (0.0, 0.35, 1.5):
        fn = lambda z: L.soft_margin_loss(z, t, margin=margin, mapping=mapping, **kw,  # noqa: E731
                                          **params)
        out0 = fn(x)
        up = upstream(out0, gen("up", mapping, reduction))
        out, (g,) = grad_of(fn, x, up=up)
        ref, (g_ref,) = grad_of(lambda z: R.soft_margin(z, t, margin=margin, mapping=mapping,
                                                        **kw, **params), x, up=up)
        assert_close(out, ref, LOSS[F64], f"value m={margin}")
        assert_close(g, g_ref, LOSS[F64], f"gradient m={margin}")


def test_soft_margin_published_formula_single_row():
    z = torch.tensor([1.0, 0.5, -0.3, 2.0], dtype=F64)
    y, m = 0, 0.7
    num = math.exp(1.0 - m)
    expected = -math.log(num / (num + math.exp(0.5) + math.exp(-0.3) + math.exp(2.0)))
    out = L.soft_margin_loss(z[None], torch.tensor([y]), margin=m)
    assert abs(out.item() - expected) < 1e-14
    f2 = lambda v: 1 + v + v * v / 2  # noqa: E731
    num = f2(1.0 - m)
    expected = -math.log(num / (num + f2(0.5) + f2(-0.3) + f2(2.0)))
    out = L.soft_margin_loss(z[None], torch.tensor([y]), margin=m, mapping="taylor_softmax")
    assert abs(out.item() - expected) < 1e-14


@pytest.mark.parametrize("case", SM_CASES, ids=_mid_ids)
def test_soft_margin_zero_margin_is_cross_entropy_and_monotone(case):
    mapping, params = case
    x, t, ii, c = make_batch("NCdd", "neg100", "smmono")
    w = class_weight(c)
    for reduction in REDUCTIONS:
        kw = dict(weight=w, reduction=reduction, label_smoothing=0.1)
        assert_close(L.soft_margin_loss(x, t, margin=0.0, mapping=mapping, **kw, **params),
                     L.cross_entropy(x, t, mapping=mapping, **kw, **params), LOSS[F64], reduction)
    # f_n of SM-Taylor is increasing only right of its minimum (z = -1 for n = 2, about
    # -1.6 for n = 4): put the targets where z_y - m stays there for every margin below
    kept = t != -100
    rows = x.movedim(1, -1)
    onehot = F.one_hot(t.clamp(min=0), c).bool() & kept[..., None]
    x = torch.where(onehot, rows.abs() + 3.5, rows).movedim(-1, 1)
    prev = None
    for m in (0.0, 0.1, 0.5, 1.0, 3.0):
        cur = L.soft_margin_loss(x, t, margin=m, mapping=mapping, reduction="none", **params)
        if prev is not None:
            assert (cur[kept] > prev[kept]).all(), m
            assert torch.equal(cur[~kept], prev[~kept])
        prev = cur


def test_soft_margin_gradcheck_and_bad_args():
    x = torch.randn(3, 4, generator=gen("smgc"), dtype=F64).requires_grad_()
    t = torch.tensor([2, -100, 0])
    for mapping in ("softmax", "taylor_softmax"):
        assert torch.autograd.gradcheck(
            lambda z: L.soft_margin_loss(z, t, margin=0.4, mapping=mapping, reduction="none",
                                         weight=class_weight(4)), (x,))
    with pytest.raises(ValueError, match="margin"):
        L.soft_margin_loss(x, t, margin=-0.1)
    for mapping in ("sigsoftmax", "sparsemax", "spherical_softmax"):
        with pytest.raises(ValueError, match="mapping"):
            L.soft_margin_loss(x, t, margin=0.1, mapping=mapping)


# ================================================================== 4. AM-softmax, ArcFace
def random_cosine(shape, *key, low=-0.95, high=0.95):
    g = gen("cos", *key)
    return low + (high - low) * torch.rand(shape, generator=g, dtype=F64)


@pytest.mark.parametrize("reduction", REDUCTIONS)
@pytest.mark.parametrize("real", [False, True])
def test_am_softmax_vs_reference(real, reduction):
    cos = random_cosine((9, 6), "am")
    t = torch.randint(0, 6, (9,), generator=gen("amt"))
    t[3] = -100
    w = class_weight(6)
    for scale, margin in ((30.0, 0.35), (10.0, 0.2), (5.0, 0.0)):
        kw = dict(scale=scale, margin=margin, real=real, weight=w, reduction=reduction)
        out0 = L.am_softmax_loss(cos, t, **kw)
        up = upstream(out0, gen("up", reduction))
        out, (g,) = grad_of(lambda c: L.am_softmax_loss(c, t, **kw), cos, up=up)
        ref, (g_ref,) = grad_of(lambda c: R.am_softmax(c, t, **kw), cos, up=up)
        assert_close(out, ref, LOSS[F64], f"value s={scale} m={margin}")
        assert_close(g, g_ref, LOSS[F64], f"gradient s={scale} m={margin}")


def test_am_softmax_label_smoothing_is_smoothed_ce_of_shifted_logits():
    cos = random_cosine((5, 4), "amls")
    t = torch.tensor([0, 3, -100, 1, 2])
    out = L.am_softmax_loss(cos, t, scale=20.0, margin=0.3, label_smoothing=0.2)
    shifted = 20.0 * (cos - 0.3 * F.one_hot(t.clamp(min=0), 4).to(F64))
    assert_close(out, R.cross_entropy(shifted, t, label_smoothing=0.2), LOSS[F64])
    with pytest.raises(ValueError, match="label_smoothing"):
        L.am_softmax_loss(cos, t, real=True, label_smoothing=0.2)


def test_real_am_softmax_gradient_vanishes_once_margin_is_met():
    m = 0.3
    cos = random_cosine((6, 5), "realam", low=-0.9, high=0.2)
    t = torch.tensor([0, 1, 2, 3, 4, 0])
    # every target beats every other class by more than m
    cos[torch.arange(6), t] = cos.max(1).values + m + 0.05
    out, (g,) = grad_of(lambda c: L.am_softmax_loss(c, t, margin=m, real=True,
                                                    reduction="none"), cos)
    assert torch.equal(g, torch.zeros_like(cos))
    assert_close(out, torch.full((6,), math.log(5), dtype=F64), LOSS[F64], "floor log C")
    # plain AM-softmax still pushes there
    _, (g_am,) = grad_of(lambda c: L.am_softmax_loss(c, t, margin=m), cos)
    assert (g_am.abs() > 0).any()
    # one violated class in row 2 -> gradient only in row 2, on the target and that class
    cos2 = cos.clone()
    cos2[2, 0] = cos2[2, 2] - m + 0.1
    _, (g2,) = grad_of(lambda c: L.am_softmax_loss(c, t, margin=m, real=True), cos2)
    nz = (g2 != 0).nonzero().tolist()
    assert sorted(nz) == [[2, 0], [2, 2]], nz


@pytest.mark.parametrize("fn", [L.am_softmax_loss, L.arcface_loss], ids=lambda f: f.__name__)
def test_cosine_losses_reject_out_of_range_cosine(fn):
    t = torch.tensor([0, 1])
    for bad in (1.5, -1.2, 2.0):
        cos = torch.tensor([[0.2, bad], [0.1, 0.3]], dtype=F64)
        with pytest.raises(ValueError, match="cosine"):
            fn(cos, t)
    with pytest.raises(ValueError, match="scale"):
        fn(torch.zeros(2, 2, dtype=F64), t, scale=0.0)
    with pytest.raises(ValueError, match="margin"):
        fn(torch.zeros(2, 2, dtype=F64), t, margin=-0.1)


@pytest.mark.parametrize("reduction", REDUCTIONS)
def test_arcface_vs_reference(reduction):
    cos = random_cosine((10, 5), "arc", low=-0.999, high=0.999)
    t = torch.randint(0, 5, (10,), generator=gen("arct"))
    t[4] = -100
    # include targets past the fallback boundary theta_y > pi - m
    cos[0, t[0]] = -0.97
    cos[1, t[1]] = -0.999
    w = class_weight(5)
    for scale, margin in ((64.0, 0.5), (10.0, 0.2), (30.0, 1.0)):
        kw = dict(scale=scale, margin=margin, weight=w, reduction=reduction)
        boundary = math.cos(math.pi - margin)
        assert ((cos - boundary).abs() > 1e-6).all()
        out0 = L.arcface_loss(cos, t, **kw)
        up = upstream(out0, gen("up", reduction))
        out, (g,) = grad_of(lambda c: L.arcface_loss(c, t, **kw), cos, up=up)
        ref, (g_ref,) = grad_of(lambda c: R.arcface(c, t, **kw), cos, up=up)
        assert_close(out, ref, LOSS[F64], f"value s={scale} m={margin}")
        assert_close(g, g_ref, LOSS[F64], f"gradient s={scale} m={margin}")


def test_arcface_docstring_value():
    cos = torch.tensor([[0.9, 0.1, -0.3]], dtype=F64)
    th = math.acos(0.9)
    phi = 10 * math.cos(th + 0.5)
    expected = -phi + math.log(math.exp(phi) + math.exp(1.0) + math.exp(-3.0))
    assert abs(L.arcface_loss(cos, torch.tensor([0]), scale=10.0).item() - expected) < 1e-13


@pytest.mark.parametrize("dtype", [F64, torch.float32], ids=str)
def test_arcface_gradient_finite_at_plus_minus_one(dtype):
    cos = torch.tensor([[1.0, 0.2, -1.0], [-1.0, 1.0, 0.0], [1.0, -1.0, 1.0],
                        [-1.0, -1.0, -1.0]], dtype=dtype)
    t = torch.tensor([0, 0, 2, 1])
    for kw in (dict(), dict(scale=30.0, margin=0.35), dict(reduction="none")):
        x = cos.clone().requires_grad_()
        out = L.arcface_loss(x, t, **kw)
        up = torch.ones_like(out)
        (out * up).sum().backward()
        assert torch.isfinite(out).all() and torch.isfinite(x.grad).all(), (kw, x.grad)
    # the same for AM-softmax
    x = cos.clone().requires_grad_()
    L.am_softmax_loss(x, t).backward()
    assert torch.isfinite(x.grad).all()


def test_arcface_monotone_across_fallback_boundary():
    scale, margin = 64.0, 0.5
    boundary = math.cos(math.pi - margin)
    ys = torch.linspace(-1.0, 1.0, 4001, dtype=F64)
    cos = torch.zeros(len(ys), 3, dtype=F64)
    cos[:, 1], cos[:, 2] = 0.3, -0.2
    cos[:, 0] = ys
    t = torch.zeros(len(ys), dtype=torch.long)
    out = L.arcface_loss(cos, t, scale=scale, margin=margin, reduction="none")
    # a larger target cosine never gives a larger loss (the target logit phi(cos_y) is
    # increasing on both branches and jumps up at the boundary)
    assert (out.diff() <= 1e-12).all(), out.diff().max()
    # no jump away from the boundary (the fallback's jump there is about s m^2 / 2 = 8 here;
    # a grid step of 5e-4 moves the loss by far less than s * 6 * step = 0.19)
    step = 2.0 / 4000
    away = ((ys[1:] - boundary).abs() > 0.05) & ((ys[:-1] - boundary).abs() > 0.05)
    assert (out.diff().abs()[away] <= scale * 6 * step).all()
    # at the boundary: the published fallback's value on both sides
    for y in (boundary - 1e-9, boundary + 1e-9):
        c = torch.tensor([[y, 0.3, -0.2]], dtype=F64)
        assert_close(L.arcface_loss(c, torch.tensor([0]), scale=scale, margin=margin),
                     R.arcface(c, torch.tensor([0]), scale=scale, margin=margin), LOSS[F64],
                     f"cos_y={y}")


def test_arcface_gradcheck_away_from_boundary():
    cos = random_cosine((4, 5), "arcgc", low=-0.8, high=0.9).requires_grad_()
    t = torch.tensor([0, 4, -100, 2])
    w = class_weight(5)
    for margin in (0.5, 0.2):
        assert torch.autograd.gradcheck(
            lambda c: L.arcface_loss(c, t, scale=8.0, margin=margin, weight=w,
                                     reduction="none", label_smoothing=0.1), (cos,))
        assert torch.autograd.gradcheck(
            lambda c: L.am_softmax_loss(c, t, scale=8.0, margin=margin, weight=w), (cos,))
    with pytest.raises(ValueError, match="margin"):
        L.arcface_loss(cos, t, margin=3.5)


# ================================================================== 5. ensemble soft margin
def test_ensemble_diversity_zero_is_mean_of_members():
    x, t, ii, c = make_batch("NC", "neg100", "ens")
    members = [x, x * 0.5 + 1, torch.randn(x.shape, generator=gen("ens2"), dtype=F64)]
    w = class_weight(c)
    for reduction in REDUCTIONS:
        for k in (1, 2, 3):
            zs = members[:k]
            out = L.ensemble_soft_margin_loss(zs, t, margin=0.3, weight=w, reduction=reduction)
            ref = torch.stack([R.soft_margin(z, t, margin=0.3, weight=w, reduction=reduction)
                               for z in zs]).mean(0)
            assert_close(out, ref, LOSS[F64], f"K={k} {reduction}")


def test_hsic_vs_explicit_kernels():
    g = gen("hsic")
    for n, d in ((7, 3), (12, 5), (2, 1)):
        a = torch.randn(n, d, generator=g, dtype=F64)
        b = torch.randn(n, d, generator=g, dtype=F64) + a[:, :1]
        assert_close(L.hsic(a, b), R.hsic(a, b), LOSS[F64], f"n={n}")
        assert_close(L.hsic(a, a), R.hsic(a, a), LOSS[F64], f"n={n} self")
        assert L.hsic(a, a).item() > 0


def test_hsic_detects_dependence():
    g = gen("hsicstat")
    n = 4000
    a = torch.randn(n, 3, generator=g, dtype=F64)
    b = torch.randn(n, 3, generator=g, dtype=F64)
    self_dep = L.hsic(a, a).item()
    indep = L.hsic(a, b).item()
    dep = L.hsic(a, a @ torch.randn(3, 3, generator=g, dtype=F64)
                 + 0.5 * torch.randn(n, 3, generator=g, dtype=F64)).item()
    # independent: sum of 9 squared sample covariances ~ 9 / n; self: ~ ||I||_F^2 = 3
    assert abs(self_dep - 3.0) < 0.3
    assert 0 <= indep < 20 / n
    assert dep > 100 * indep


def test_ensemble_diversity_term():
    x, t, ii, c = make_batch("NC", "neg100", "ensdiv")
    g = gen("ensdiv2")
    zs = [x, torch.randn(x.shape, generator=g, dtype=F64), x + 0.3 * torch.randn(
        x.shape, generator=g, dtype=F64)]
    kept = t != -100
    lam = 0.7
    pairs = [R.hsic(zs[i][kept], zs[j][kept]) for i in range(3) for j in range(i + 1, 3)]
    for reduction in ("mean", "sum"):
        base = L.ensemble_soft_margin_loss(zs, t, margin=0.2, reduction=reduction)
        out, grads = grad_of(lambda *z: L.ensemble_soft_margin_loss(
            list(z), t, margin=0.2, diversity=lam, reduction=reduction), *zs)
        assert_close(out, base + lam * torch.stack(pairs).mean(), LOSS[F64], reduction)
        _, ref_grads = grad_of(lambda *z: torch.stack(
            [R.soft_margin(zz, t, margin=0.2, reduction=reduction) for zz in z]).mean()
            + lam * torch.stack([R.hsic(z[i][kept], z[j][kept]) for i in range(3)
                                 for j in range(i + 1, 3)]).mean(), *zs)
        for k in range(3):
            assert_close(grads[k], ref_grads[k], LOSS[F64], f"{reduction} grad member {k}")


def test_ensemble_bad_args():
    x = torch.randn(4, 3, dtype=F64)
    t = torch.tensor([0, 1, 2, 0])
    with pytest.raises(ValueError, match="shape"):
        L.ensemble_soft_margin_loss([x, torch.randn(4, 4, dtype=F64)], t, margin=0.1)
    with pytest.raises((ValueError, TypeError), match="logits_list"):
        L.ensemble_soft_margin_loss([], t, margin=0.1)
    with pytest.raises(ValueError, match="diversity"):
        L.ensemble_soft_margin_loss([x, x], t, margin=0.1, diversity=-1.0)
    with pytest.raises(ValueError, match="margin"):
        L.ensemble_soft_margin_loss([x, x], t, margin=-0.1)


# ================================================================== 6. sparse_softmax_loss
def distinct(shape, *key):
    """Float64 logits without ties (a random permutation of a jittered grid per row)."""
    g = gen("distinct", *key)
    rows, c = shape
    base = torch.linspace(-4, 4, c, dtype=F64) + torch.rand(rows, c, generator=g,
                                                          dtype=F64) * (4 / c)
    perm = torch.rand(rows, c, generator=g).argsort(-1)
    return base.gather(-1, perm)


@pytest.mark.parametrize("reduction", REDUCTIONS)
def test_sparse_softmax_vs_reference(reduction):
    x = distinct((12, 8), "ss")
    t = torch.randint(0, 8, (12,), generator=gen("sst"))
    t[5] = -100
    w = class_weight(8)
    for k in (1, 2, 3, 5, 8):
        kw = dict(k=k, weight=w, reduction=reduction)
        out0 = L.sparse_softmax_loss(x, t, **kw)
        up = upstream(out0, gen("up", k))
        out, (g,) = grad_of(lambda z: L.sparse_softmax_loss(z, t, **kw), x, up=up)
        ref, (g_ref,) = grad_of(lambda z: R.sparse_softmax(z, t, **kw), x, up=up)
        assert_close(out, ref, LOSS[F64], f"k={k}")
        assert_close(g, g_ref, LOSS[F64], f"grad k={k}")


def test_sparse_softmax_published_example_and_full_k():
    z = torch.tensor([[3.0, 2.0, -1.0, -2.0]], dtype=F64)
    assert abs(L.sparse_softmax_loss(z, torch.tensor([0]), k=2).item()
               - (math.log(math.exp(3) + math.exp(2)) - 3)) < 1e-14
    # target outside top-2: normalizer over {0, 1, 3}
    assert abs(L.sparse_softmax_loss(z, torch.tensor([3]), k=2).item()
               - (math.log(math.exp(3) + math.exp(2) + math.exp(-2)) + 2)) < 1e-14
    x, t, ii, c = make_batch("NCdd", "neg100", "ssfull")
    for reduction in REDUCTIONS:
        assert_close(L.sparse_softmax_loss(x, t, k=c, reduction=reduction),
                     F.cross_entropy(x, t, reduction=reduction), LOSS[F64], reduction)


def test_sparse_softmax_gradient_support():
    x = distinct((10, 9), "ssg")
    t = torch.randint(0, 9, (10,), generator=gen("ssgt"))
    k = 3
    _, (g,) = grad_of(lambda z: L.sparse_softmax_loss(z, t, k=k, reduction="sum"), x)
    top = x.topk(k, -1).indices
    support = torch.zeros_like(x, dtype=torch.bool).scatter_(-1, top, True)
    support[torch.arange(10), t] = True
    assert torch.equal(g != 0, support)


@hsettings(max_examples=80, deadline=None, derandomize=True)
@given(c=st.integers(1, 12), k_frac=st.floats(0, 1), seed=st.integers(0, 2**31),
       scale=st.sampled_from([1e-3, 1.0, 30.0, 1e4]), ties=st.booleans())
def test_sparse_softmax_never_negative(c, k_frac, seed, scale, ties):
    g = torch.Generator().manual_seed(seed)
    k = 1 + int(k_frac * (c - 1))
    x = torch.randn(6, c, generator=g, dtype=F64) * scale
    if ties:
        x = x.round()
    t = torch.randint(0, c, (6,), generator=g)
    out = L.sparse_softmax_loss(x, t, k=k, reduction="none")
    assert (out >= 0).all(), (out, x, t, k)
    out32 = L.sparse_softmax_loss(x.float(), t, k=k, reduction="none")
    assert (out32 >= 0).all(), (out32, x, t, k)


def test_sparse_softmax_bad_args():
    x = torch.randn(2, 4, dtype=F64)
    t = torch.tensor([0, 1])
    for k in (0, 5):
        with pytest.raises(ValueError, match="k"):
            L.sparse_softmax_loss(x, t, k=k)


# ================================================================== 7. sampled softmax, NCE
V_S, D_S = 13, 4


def noise_of(kind):
    if kind == "uniform":
        return "uniform", torch.full((V_S,), 1.0 / V_S, dtype=F64)
    if kind == "log_uniform":
        return "log_uniform", R.log_uniform_probs(V_S)
    counts = torch.arange(1, V_S + 1, dtype=F64).flip(0) ** 2
    counts[3] = 0.0
    counts[4] = 1.0
    return L.Noise.unigram(counts, power=0.75), counts**0.75 / (counts**0.75).sum()


@pytest.mark.parametrize("reduction", REDUCTIONS)
@pytest.mark.parametrize("kind", ["uniform", "log_uniform", "unigram"])
@pytest.mark.parametrize("loss", ["sampled", "nce"])
def test_sampled_losses_vs_reference(loss, kind, reduction):
    fn = L.sampled_softmax_loss if loss == "sampled" else L.nce_loss
    g = gen("samp", loss, kind)
    h = torch.randn(6, D_S, generator=g, dtype=F64)
    w = torch.randn(V_S, D_S, generator=g, dtype=F64) * 0.7
    b = torch.randn(V_S, generator=g, dtype=F64)
    t = torch.tensor([0, 5, -100, 7, 2, 0])
    noise, q = noise_of(kind)
    samples = torch.tensor([5, 1, 0, 12, 5, 9, 2])  # duplicates and accidental hits
    for bias in (None, b):
        for hits in (True, False):
            kw = dict(samples=samples, noise=noise, remove_accidental_hits=hits,
                      reduction=reduction)
            inputs = (h, w) if bias is None else (h, w, bias)

            def ours(hh, ww, bb=None):
                return fn(hh, ww, t, bias=bb, **kw)

            def ref(hh, ww, bb=None):
                return R.sampled_loss(loss, hh, ww, t, q=q, samples=samples.tolist(), bias=bb,
                                      remove_hits=hits, reduction=reduction)

            out0 = ours(*inputs)
            up = upstream(out0, gen("up", loss, kind, reduction))
            out, grads = grad_of(ours, *inputs, up=up)
            exp, ref_grads = grad_of(ref, *inputs, up=up)
            what = f"bias={bias is not None} hits={hits}"
            assert_close(out, exp, LOSS[F64], what)
            for a, e in zip(grads, ref_grads):
                assert_close(a, e, LOSS[F64], what + " grad")
            if reduction == "none":
                assert out[2] == 0


def test_sampled_docstring_values():
    h, w = torch.zeros(1, 2, dtype=F64), torch.zeros(4, 2, dtype=F64)
    # all corrected logits equal -> -log(1/4)
    out = L.sampled_softmax_loss(h, w, torch.tensor([1]), noise="uniform",
                                 samples=torch.tensor([0, 2, 3]))
    assert abs(out.item() - math.log(4)) < 1e-14
    # NCE with S=2, Q=1/4: corrected logit -log(1/2) = log 2 for all
    z = math.log(2.0)
    expected = math.log1p(math.exp(-z)) + 2 * math.log1p(math.exp(z))
    out = L.nce_loss(h, w, torch.tensor([1]), noise="uniform", samples=torch.tensor([0, 2]))
    assert abs(out.item() - expected) < 1e-14


def test_noise_distributions():
    for v in (1, 2, 10, 1000):
        p = L.Noise.log_uniform(v).probs
        assert abs(p.sum().item() - 1) < 1e-12
        assert_close(p, R.log_uniform_probs(v), LOSS[F64], f"V={v}")
        assert (p.diff() < 0).all()
        assert_close(L.Noise.uniform(v).probs, torch.full((v,), 1 / v, dtype=F64), LOSS[F64])
    counts = torch.tensor([5.0, 0.0, 1.0, 10.0], dtype=F64)
    assert_close(L.Noise.unigram(counts).probs, counts / 16, LOSS[F64])
    assert_close(L.Noise.unigram(counts, power=0.5).probs, counts.sqrt() / counts.sqrt().sum(),
                 LOSS[F64])
    assert_close(L.Noise.unigram(counts.long()).probs, counts / 16, LOSS[F64])
    for bad, err in ((0, ValueError), (-3, ValueError), (2.5, TypeError), (True, TypeError)):
        with pytest.raises(err, match="number of classes"):
            L.Noise.log_uniform(bad)
    with pytest.raises(ValueError):
        L.Noise.unigram(torch.zeros(3))
    with pytest.raises(ValueError):
        L.Noise.unigram(torch.tensor([1.0, -1.0]))


@pytest.mark.parametrize("kind", ["uniform", "log_uniform", "unigram"])
def test_noise_sample_frequencies(kind):
    noise = {"uniform": L.Noise.uniform(20), "log_uniform": L.Noise.log_uniform(20),
             "unigram": L.Noise.unigram(torch.arange(20.0) + 1, power=1.5)}[kind]
    n = 200_000
    s = noise.sample(n, generator=torch.Generator().manual_seed(123))
    assert s.shape == (n,) and s.dtype == torch.long
    assert int(s.min()) >= 0 and int(s.max()) < 20
    counts = torch.bincount(s, minlength=20).double()
    expected = noise.probs * n
    chi2 = ((counts - expected) ** 2 / expected).sum().item()
    # 19 degrees of freedom: mean 19, sd ~6.2; 60 is p ~ 1e-5
    assert chi2 < 60, chi2
    # sanity of the check: frequencies from the wrong distribution are rejected
    other = L.Noise.uniform(20) if kind != "uniform" else L.Noise.log_uniform(20)
    chi2_wrong = ((counts - other.probs * n) ** 2 / (other.probs * n)).sum().item()
    assert chi2_wrong > 1000


def test_sampled_softmax_gradient_approaches_full_softmax():
    g = gen("sampgrad")
    v, d, n = 40, 8, 16
    h = torch.randn(n, d, generator=g, dtype=F64)
    w = torch.randn(v, d, generator=g, dtype=F64) * 0.5
    t = torch.randint(0, v, (n,), generator=g)
    _, (g_full,) = grad_of(lambda hh: F.cross_entropy(hh @ w.T, t), h)
    _, (g_samp,) = grad_of(lambda hh: L.sampled_softmax_loss(
        hh, w, t, num_sampled=20 * v, noise="uniform",
        generator=torch.Generator().manual_seed(7)), h)
    cos = F.cosine_similarity(g_full.reshape(-1), g_samp.reshape(-1), dim=0).item()
    assert cos > 0.95, cos
    # and with few samples it is a (noisier) estimate: still positively aligned
    _, (g_few,) = grad_of(lambda hh: L.sampled_softmax_loss(
        hh, w, t, num_sampled=4, noise="uniform", generator=torch.Generator().manual_seed(7)), h)
    assert F.cosine_similarity(g_full.reshape(-1), g_few.reshape(-1), dim=0).item() < cos


def test_sampled_generator_is_reproducible():
    g = gen("samprep")
    h = torch.randn(4, 3, generator=g, dtype=F64)
    w = torch.randn(10, 3, generator=g, dtype=F64)
    t = torch.tensor([1, 2, 3, 4])
    for fn in (L.sampled_softmax_loss, L.nce_loss):
        a = fn(h, w, t, num_sampled=5, generator=torch.Generator().manual_seed(3))
        b = fn(h, w, t, num_sampled=5, generator=torch.Generator().manual_seed(3))
        assert torch.equal(a, b)


@pytest.mark.parametrize("fn", [L.sampled_softmax_loss, L.nce_loss], ids=lambda f: f.__name__)
def test_sampled_ignore_index(fn):
    g = gen("sampign", fn.__name__)
    h = torch.randn(5, 3, generator=g, dtype=F64)
    w = torch.randn(9, 3, generator=g, dtype=F64)
    t = torch.tensor([1, -1, 3, -1, 8])
    samples = torch.tensor([0, 4, 4, 7])
    kept = t != -1
    kw = dict(noise="log_uniform", samples=samples, ignore_index=-1)
    for reduction in REDUCTIONS:
        out, (gh, gw) = grad_of(lambda hh, ww: fn(hh, ww, t, reduction=reduction, **kw), h, w)
        sub, (gh_s, gw_s) = grad_of(lambda hh, ww: fn(hh, ww, t[kept], reduction=reduction,
                                                      **kw), h[kept], w)
        if reduction == "none":
            assert (out[~kept] == 0).all()
            assert_close(out[kept], sub, LOSS[F64])
        else:
            assert_close(out, sub, LOSS[F64], reduction)
        assert torch.equal(gh[~kept], torch.zeros_like(gh[~kept]))
        assert_close(gh[kept], gh_s, LOSS[F64])
        assert_close(gw, gw_s, LOSS[F64])
    all_ign = torch.full((5,), -1)
    for reduction in REDUCTIONS:
        out = fn(h, w, all_ign, reduction=reduction, **kw)
        assert (out == 0).all() and not out.isnan().any()


@pytest.mark.parametrize("fn", [L.sampled_softmax_loss, L.nce_loss], ids=lambda f: f.__name__)
def test_sampled_bad_args(fn):
    h, w, t = torch.randn(3, 4), torch.randn(10, 4), torch.tensor([0, 1, 2])
    with pytest.raises(ValueError, match="num_sampled"):
        fn(h, w, t, num_sampled=0)
    with pytest.raises(ValueError, match="noise"):
        fn(h, w, t, noise="zipf")
    with pytest.raises(ValueError, match="noise"):
        fn(h, w, t, noise=L.Noise.uniform(9))
    with pytest.raises(ValueError):
        fn(h, torch.randn(10, 5), t)
    with pytest.raises(ValueError, match="target"):
        fn(h, w, torch.tensor([0, 1]))
    with pytest.raises(ValueError, match="target"):
        fn(h, w, torch.tensor([0, 1, 10]))
    with pytest.raises(ValueError, match="bias"):
        fn(h, w, t, bias=torch.zeros(9))
    with pytest.raises(ValueError, match="reduction"):
        fn(h, w, t, reduction="avg")


# ================================================================== 8. linear_cross_entropy
N_L, V_L, D_L = 37, 23, 6


def lce_inputs(*key, dtype=F64, batch=(N_L,)):
    g = gen("lce", *key)
    h = torch.randn(*batch, D_L, generator=g, dtype=F64)
    w = torch.randn(V_L, D_L, generator=g, dtype=F64) * 0.6
    b = torch.randn(V_L, generator=g, dtype=F64)
    t = torch.randint(0, V_L, batch, generator=g)
    return h.to(dtype), w.to(dtype), b.to(dtype), t


LCE_CONFIGS = [  # (ignored rows, class weights, label smoothing, mapping params)
    ("plain", False, False, 0.0, "softmax", {}),
    ("ign-cw-ls", True, True, 0.1, "softmax", {}),
    ("taylor4-ign-ls", True, False, 0.2, "taylor_softmax", {"order": 4}),
]


@pytest.mark.parametrize("reduction", REDUCTIONS)
@pytest.mark.parametrize("with_bias", [False, True], ids=["nobias", "bias"])
@pytest.mark.parametrize("config", LCE_CONFIGS, ids=lambda c: c[0])
@pytest.mark.parametrize("chunk", [1, 5, 10, 37, 100, None])
def test_linear_cross_entropy_equals_naive(chunk, config, with_bias, reduction):
    _, ignored, weighted, smoothing, mapping, params = config
    h, w, b, t = lce_inputs(config[0])
    if ignored:
        t[::4] = -100
    cw = class_weight(V_L) if weighted else None
    kw = dict(mapping=mapping, reduction=reduction, label_smoothing=smoothing, **params)
    inputs = (h, w, b) if with_bias else (h, w)

    def ours(hh, ww, bb=None):
        return L.linear_cross_entropy(hh, ww, t, bias=bb, chunk_size=chunk, class_weight=cw,
                                      **kw)

    def naive(hh, ww, bb=None):
        z = hh @ ww.T + (bb if bb is not None else 0)
        return L.cross_entropy(z, t, weight=cw, **kw)

    def ref(hh, ww, bb=None):
        z = hh @ ww.T + (bb if bb is not None else 0)
        return R.cross_entropy(z, t, weight=cw, **kw)

    up = upstream(naive(*inputs), gen("up", chunk, reduction))
    out, grads = grad_of(ours, *inputs, up=up)
    exp, exp_grads = grad_of(naive, *inputs, up=up)
    assert_close(out, exp, LOSS[F64], "value vs naive")
    assert_close(out, ref(*inputs), LOSS[F64], "value vs reference")
    for name, a, e in zip(("hidden", "weight", "bias"), grads, exp_grads):
        assert_close(a, e, LOSS[F64], f"grad {name}")
    if ignored:
        assert torch.equal(grads[0][t == -100], torch.zeros_like(grads[0][t == -100]))
    if reduction == "none" and mapping == "softmax" and not weighted:
        assert (out >= 0).all()  # the bias path never gives a negative loss


def test_linear_cross_entropy_large_bias_never_negative():
    h, w, _, t = lce_inputs("bigbias")
    b = torch.linspace(-500, 500, V_L, dtype=F64)
    for dtype in (F64, torch.float32, torch.bfloat16, torch.float16):
        hh, ww, bb = h.to(dtype), w.to(dtype), b.to(dtype)
        out = L.linear_cross_entropy(hh, ww, t, bias=bb, reduction="none", chunk_size=7)
        assert out.dtype == dtype and (out >= 0).all(), dtype
        # the float64 loss of the same (rounded) inputs, and the naive formula in dtype
        exp = F.cross_entropy(hh.double() @ ww.double().T + bb.double(), t, reduction="none")
        if dtype == F64:
            assert_close(out, exp, LOSS[F64], "float64")
            continue
        naive = F.cross_entropy(hh @ ww.T + bb, t, reduction="none")
        err = (out.double() - exp).abs().max().item()
        err_naive = (naive.double() - exp).abs().max().item()
        floor = torch.finfo(dtype).eps / 2 * exp.abs().max().item()
        assert err <= LOW_FACTOR * max(err_naive, floor), (dtype, err, err_naive, floor)


@pytest.mark.parametrize("reduction", REDUCTIONS)
def test_linear_cross_entropy_batch_shape(reduction):
    h, w, b, t = lce_inputs("btd", batch=(3, 5))
    t[1, 2] = -100
    up = upstream(L.cross_entropy(torch.zeros(3, V_L, 5, dtype=F64), t, reduction=reduction),
                  gen("up", reduction))
    out, grads = grad_of(lambda hh, ww, bb: L.linear_cross_entropy(
        hh, ww, t, bias=bb, chunk_size=4, reduction=reduction, label_smoothing=0.1), h, w, b,
        up=up)
    exp, exp_grads = grad_of(lambda hh, ww, bb: F.cross_entropy(
        (hh @ ww.T + bb).movedim(-1, 1), t, reduction=reduction, label_smoothing=0.1), h, w, b,
        up=up)
    assert out.shape == exp.shape == (t.shape if reduction == "none" else ())
    assert_close(out, exp, LOSS[F64])
    for a, e in zip(grads, exp_grads):
        assert_close(a, e, LOSS[F64])


@pytest.mark.parametrize("reduction", REDUCTIONS)
def test_linear_cross_entropy_every_row_ignored(reduction):
    h, w, b, t = lce_inputs("allign")
    t = torch.full_like(t, -100)
    out, grads = grad_of(lambda hh, ww, bb: L.linear_cross_entropy(
        hh, ww, t, bias=bb, chunk_size=5, reduction=reduction, class_weight=class_weight(V_L),
        label_smoothing=0.3), h, w, b)
    assert (out == 0).all() and not out.isnan().any()
    for gr in grads:
        assert torch.equal(gr, torch.zeros_like(gr))


def test_linear_cross_entropy_low_precision():
    dtype = torch.bfloat16
    g = gen("lcebf")
    h = (torch.randn(64, 32, generator=g, dtype=F64)).to(dtype)
    w = (torch.randn(50, 32, generator=g, dtype=F64) * 0.3).to(dtype)
    b = (torch.randn(50, generator=g, dtype=F64)).to(dtype)
    t = torch.randint(0, 50, (64,), generator=g)
    t[::9] = -100
    out, grads = grad_of(lambda hh, ww, bb: L.linear_cross_entropy(hh, ww, t, bias=bb,
                                                                   chunk_size=10), h, w, b)
    assert out.dtype == dtype and all(gr.dtype == dtype for gr in grads)
    ref, ref_grads = grad_of(lambda hh, ww, bb: F.cross_entropy(hh @ ww.T + bb, t),
                             h.double(), w.double(), b.double())
    f32, f32_grads = grad_of(lambda hh, ww, bb: F.cross_entropy(hh @ ww.T + bb, t),
                             h.float(), w.float(), b.float())
    naive, naive_grads = grad_of(lambda hh, ww, bb: F.cross_entropy(hh @ ww.T + bb, t), h, w, b)
    u = torch.finfo(dtype).eps / 2
    err = abs(out.double() - ref).item()
    err_naive = abs(naive.double() - ref).item()
    assert err <= LOW_FACTOR * max(err_naive, u * ref.abs().item()), (err, err_naive)
    assert_close(out.double(), f32, Tol(2 * u, 0.0), "close to the float32 computation")
    for name, a, e, nv in zip(("hidden", "weight", "bias"), grads, ref_grads, naive_grads):
        err = (a.double() - e).norm().item()
        err_naive = (nv.double() - e).norm().item()
        assert err <= LOW_FACTOR * max(err_naive, u * e.norm().item()), (name, err, err_naive)


def test_linear_cross_entropy_is_chunked(monkeypatch):
    """Only chunk_size rows of logits ever exist: every logits block that reaches the
    mapping has <= chunk_size rows (forward and backward), and the default chunk follows
    CHUNK_ELEMENTS // V."""
    seen = []
    real = linear_module.log_probs

    def spy(name, logits, params):
        seen.append(tuple(logits.shape))
        return real(name, logits, params)

    monkeypatch.setattr(linear_module, "log_probs", spy)
    h, w, b, t = lce_inputs("chunked")
    for reduction in REDUCTIONS:
        for chunk in (1, 5, 10):
            seen.clear()
            x = h.clone().requires_grad_()
            out = L.linear_cross_entropy(x, w, t, bias=b, chunk_size=chunk, reduction=reduction)
            (out * torch.ones_like(out)).sum().backward()
            assert seen and max(r for r, _ in seen) <= chunk, (chunk, seen)
            assert sum(r for r, _ in seen) >= N_L
            assert all(v == V_L for _, v in seen)
    monkeypatch.setattr(linear_module, "CHUNK_ELEMENTS", 4 * V_L)
    seen.clear()
    L.linear_cross_entropy(h, w, t)
    assert max(r for r, _ in seen) <= 4, seen
    # chunk size 1 gives the same as one chunk
    a = L.linear_cross_entropy(h, w, t, bias=b, chunk_size=1, reduction="none")
    c = L.linear_cross_entropy(h, w, t, bias=b, chunk_size=N_L, reduction="none")
    assert_close(a, c, LOSS_CHUNKED[F64])


def test_linear_cross_entropy_bad_args():
    h, w, b, t = lce_inputs("bad")
    with pytest.raises(ValueError, match="agree"):
        L.linear_cross_entropy(h, w[:, :-1], t)
    with pytest.raises(ValueError, match="bias"):
        L.linear_cross_entropy(h, w, t, bias=b[:-1])
    for cs, err in ((0, ValueError), (-2, ValueError), (1.5, TypeError), (True, TypeError)):
        with pytest.raises(err, match="chunk_size"):
            L.linear_cross_entropy(h, w, t, chunk_size=cs)
    with pytest.raises(ValueError, match="target"):
        L.linear_cross_entropy(h, w, t[:-1])
    with pytest.raises(ValueError, match="target"):
        L.linear_cross_entropy(h, w, t.masked_fill(t == t[0], V_L))
    with pytest.raises(ValueError, match="class_weight"):
        L.linear_cross_entropy(h, w, t, class_weight=torch.ones(V_L + 1, dtype=F64))
    with pytest.raises(ValueError, match="reduction"):
        L.linear_cross_entropy(h, w, t, reduction="avg")
    with pytest.raises(ValueError, match="sparsemax"):
        L.linear_cross_entropy(h, w, t, mapping="sparsemax")


# ================================================================== 9. graph_tv_penalty
EDGES = [(0, 1, 2.0), (1, 2, 0.5), (3, 0, 1.0), (4, 4, 3.0), (2, 4, 0.25), (1, 0, 0.7)]
V_G = 5


def graph_forms():
    idx = torch.tensor([[i for i, _, _ in EDGES], [j for _, j, _ in EDGES]])
    val = torch.tensor([wt for _, _, wt in EDGES], dtype=F64)
    dense = torch.zeros(V_G, V_G, dtype=F64)
    dense[idx[0], idx[1]] = val
    sparse = torch.sparse_coo_tensor(idx, val, (V_G, V_G), check_invariants=True)
    return {"edges": (idx, val), "dense": dense, "sparse": sparse}


@pytest.mark.parametrize("reduction", REDUCTIONS)
@pytest.mark.parametrize("form", ["edges", "dense", "sparse"])
def test_graph_tv_vs_reference(form, reduction):
    g = gen("gtv")
    p = torch.softmax(torch.randn(3, 4, V_G, generator=g, dtype=F64), -1)
    graph = graph_forms()[form]
    for lam in (1.0, 0.3, 0.0):
        out, (gp,) = grad_of(lambda q: L.graph_tv_penalty(q, graph, weight=lam,
                                                          reduction=reduction), p)
        ref, (gr,) = grad_of(lambda q: R.graph_tv(q, EDGES, weight=lam, reduction=reduction), p)
        assert_close(out, ref, LOSS[F64], f"lambda={lam}")
        assert_close(gp, gr, LOSS[F64], f"grad lambda={lam}")


def test_graph_tv_forms_agree_and_constant_rows():
    p = torch.softmax(torch.randn(6, V_G, generator=gen("gtv2"), dtype=F64), -1)
    vals = [L.graph_tv_penalty(p, gr, reduction="none") for gr in graph_forms().values()]
    assert_close(vals[0], vals[1], LOSS[F64])
    assert_close(vals[0], vals[2], LOSS[F64])
    const = torch.full((4, V_G), 1.0 / V_G, dtype=F64)
    for gr in graph_forms().values():
        assert torch.equal(L.graph_tv_penalty(const, gr, reduction="none"),
                           torch.zeros(4, dtype=F64))
    p1 = torch.tensor([[0.7, 0.2, 0.1]])
    assert abs(L.graph_tv_penalty(p1, (torch.tensor([[0], [1]]), torch.tensor([2.0]))).item()
               - 1.0) < 1e-6


def test_graph_tv_bad_args():
    p = torch.softmax(torch.randn(2, V_G, dtype=F64), -1)
    forms = graph_forms()
    idx, val = forms["edges"]
    neg = val.clone()
    neg[1] = -0.5
    with pytest.raises(ValueError, match=">= 0"):
        L.graph_tv_penalty(p, (idx, neg))
    dense = forms["dense"].clone()
    dense[2, 3] = -1.0
    with pytest.raises(ValueError, match=">= 0"):
        L.graph_tv_penalty(p, dense)
    with pytest.raises(ValueError, match=">= 0"):
        L.graph_tv_penalty(p, dense.to_sparse())
    for shape in ((V_G, V_G + 1), (V_G + 1, V_G + 1), (V_G,)):
        with pytest.raises(ValueError, match="adjacency"):
            L.graph_tv_penalty(p, torch.ones(shape, dtype=F64))
    with pytest.raises(ValueError):
        L.graph_tv_penalty(p, (torch.tensor([[0], [V_G]]), torch.tensor([1.0])))
    with pytest.raises(ValueError):
        L.graph_tv_penalty(p, (idx, val[:-1]))
    with pytest.raises(ValueError, match="weight"):
        L.graph_tv_penalty(p, forms["dense"], weight=-1.0)
    with pytest.raises(ValueError, match="reduction"):
        L.graph_tv_penalty(p, forms["dense"], reduction="avg")
    with pytest.raises(TypeError):
        L.graph_tv_penalty(p, [[0, 1]])


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
        out, (gp,) = grad_of(lambda z: fn(z, tp, reduction=reduction), padded)
        exp, (gs,) = grad_of(lambda z: fn(z, t, reduction=reduction), x)
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
