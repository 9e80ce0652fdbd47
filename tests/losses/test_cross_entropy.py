"""softmaxlab.losses.cross_entropy: cross_entropy (equal to torch under softmax, every other
mapping against the float64 reference), soft_margin_loss and sparse_softmax_loss, against
independent float64 references of the published formulas (tests/oracle/loss_refs.py), with
the conventions of DESIGN.md §1 (ignored rows count nowhere, also not in label smoothing or
the mean's denominator)."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F
from hypothesis import given
from hypothesis import settings as hsettings
from hypothesis import strategies as st

from softmaxlab import losses as L

from .._helpers import assert_close, gen
from ..oracle import loss_refs as R
from ..tolerances import LOSS, LOSS_VS_TORCH, LOW_FACTOR
from ._common import (
    CE_CONFIGS,
    LAYOUTS,
    LOW_DTYPES,
    REDUCTIONS,
    _mid_ids,
    class_weight,
    grad_of,
    make_batch,
    upstream,
)

F64 = torch.float64


# ================================================================== cross_entropy
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
        out, (g,) = grad_of(lambda z, *, t=t, kw=kw: L.cross_entropy(z, t, **kw), x,
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
        full, (g_full,) = grad_of(lambda z, *, kw=kw: L.cross_entropy(z, t, **kw), x)
        sub, (g_sub,) = grad_of(lambda z, *, kw=kw: L.cross_entropy(z, t[kept], **kw), x[kept])
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
            lambda z, *, reduction=reduction: L.cross_entropy(
                z, t, mapping=name, weight=w, reduction=reduction, label_smoothing=0.2, **params),
            (x,))


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


# ================================================================== soft_margin_loss
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
        fn = lambda z, *, margin=margin: L.soft_margin_loss(  # noqa: E731
            z, t, margin=margin, mapping=mapping, **kw, **params)
        out0 = fn(x)
        up = upstream(out0, gen("up", mapping, reduction))
        out, (g,) = grad_of(fn, x, up=up)
        ref, (g_ref,) = grad_of(lambda z, *, margin=margin: R.soft_margin(
            z, t, margin=margin, mapping=mapping, **kw, **params), x, up=up)
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
    x, t, _ii, c = make_batch("NCdd", "neg100", "smmono")
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
            lambda z, *, mapping=mapping: L.soft_margin_loss(
                z, t, margin=0.4, mapping=mapping, reduction="none", weight=class_weight(4)),
            (x,))
    with pytest.raises(ValueError, match="margin"):
        L.soft_margin_loss(x, t, margin=-0.1)
    for mapping in ("sigsoftmax", "sparsemax", "spherical_softmax"):
        with pytest.raises(ValueError, match="mapping"):
            L.soft_margin_loss(x, t, margin=0.1, mapping=mapping)


# ================================================================== sparse_softmax_loss
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
        out, (g,) = grad_of(lambda z, *, kw=kw: L.sparse_softmax_loss(z, t, **kw), x, up=up)
        ref, (g_ref,) = grad_of(lambda z, *, kw=kw: R.sparse_softmax(z, t, **kw), x, up=up)
        assert_close(out, ref, LOSS[F64], f"k={k}")
        assert_close(g, g_ref, LOSS[F64], f"grad k={k}")


def test_sparse_softmax_published_example_and_full_k():
    z = torch.tensor([[3.0, 2.0, -1.0, -2.0]], dtype=F64)
    assert abs(L.sparse_softmax_loss(z, torch.tensor([0]), k=2).item()
               - (math.log(math.exp(3) + math.exp(2)) - 3)) < 1e-14
    # target outside top-2: normalizer over {0, 1, 3}
    assert abs(L.sparse_softmax_loss(z, torch.tensor([3]), k=2).item()
               - (math.log(math.exp(3) + math.exp(2) + math.exp(-2)) + 2)) < 1e-14
    x, t, _ii, c = make_batch("NCdd", "neg100", "ssfull")
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
