"""softmaxlab.losses.margins: AM-softmax, ArcFace, HSIC and the ensemble soft-margin loss
against float64 references."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

from softmaxlab import losses as L

from .._helpers import assert_close, gen
from ..oracle import loss_refs as R
from ..tolerances import LOSS
from ._common import REDUCTIONS, class_weight, grad_of, make_batch, upstream

F64 = torch.float64


# ================================================================== AM-softmax, ArcFace
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
        out, (g,) = grad_of(lambda c, *, kw=kw: L.am_softmax_loss(c, t, **kw), cos, up=up)
        ref, (g_ref,) = grad_of(lambda c, *, kw=kw: R.am_softmax(c, t, **kw), cos, up=up)
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
        out, (g,) = grad_of(lambda c, *, kw=kw: L.arcface_loss(c, t, **kw), cos, up=up)
        ref, (g_ref,) = grad_of(lambda c, *, kw=kw: R.arcface(c, t, **kw), cos, up=up)
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
            lambda c, *, margin=margin: L.arcface_loss(c, t, scale=8.0, margin=margin, weight=w,
                                     reduction="none", label_smoothing=0.1), (cos,))
        assert torch.autograd.gradcheck(
            lambda c, *, margin=margin: L.am_softmax_loss(c, t, scale=8.0, margin=margin,
                                                          weight=w), (cos,))
    with pytest.raises(ValueError, match="margin"):
        L.arcface_loss(cos, t, margin=3.5)


# ================================================================== ensemble soft margin
def test_ensemble_diversity_zero_is_mean_of_members():
    x, t, _ii, c = make_batch("NC", "neg100", "ens")
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
    x, t, _ii, _c = make_batch("NC", "neg100", "ensdiv")
    g = gen("ensdiv2")
    zs = [x, torch.randn(x.shape, generator=g, dtype=F64), x + 0.3 * torch.randn(
        x.shape, generator=g, dtype=F64)]
    kept = t != -100
    lam = 0.7
    pairs = [R.hsic(zs[i][kept], zs[j][kept]) for i in range(3) for j in range(i + 1, 3)]
    for reduction in ("mean", "sum"):
        base = L.ensemble_soft_margin_loss(zs, t, margin=0.2, reduction=reduction)
        out, grads = grad_of(lambda *z, reduction=reduction: L.ensemble_soft_margin_loss(
            list(z), t, margin=0.2, diversity=lam, reduction=reduction), *zs)
        assert_close(out, base + lam * torch.stack(pairs).mean(), LOSS[F64], reduction)
        _, ref_grads = grad_of(lambda *z, reduction=reduction: torch.stack(
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
