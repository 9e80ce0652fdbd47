"""softmaxlab.losses.sampled: sampled softmax and NCE against float64 references, the noise
distributions, reproducibility, ignore_index and bad arguments."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

from softmaxlab import losses as L

from .._helpers import assert_close, gen
from ..oracle import loss_refs as R
from ..tolerances import LOSS
from ._common import REDUCTIONS, grad_of, upstream

F64 = torch.float64


# ================================================================== sampled softmax, NCE
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

            def ours(hh, ww, bb=None, *, kw=kw):
                return fn(hh, ww, t, bias=bb, **kw)

            def ref(hh, ww, bb=None, *, hits=hits):
                return R.sampled_loss(loss, hh, ww, t, q=q, samples=samples.tolist(), bias=bb,
                                      remove_hits=hits, reduction=reduction)

            out0 = ours(*inputs)
            up = upstream(out0, gen("up", loss, kind, reduction))
            out, grads = grad_of(ours, *inputs, up=up)
            exp, ref_grads = grad_of(ref, *inputs, up=up)
            what = f"bias={bias is not None} hits={hits}"
            assert_close(out, exp, LOSS[F64], what)
            for a, e in zip(grads, ref_grads, strict=True):
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
        out, (gh, gw) = grad_of(
            lambda hh, ww, *, reduction=reduction: fn(hh, ww, t, reduction=reduction, **kw), h, w)
        sub, (gh_s, gw_s) = grad_of(
            lambda hh, ww, *, reduction=reduction: fn(hh, ww, t[kept], reduction=reduction, **kw),
            h[kept], w)
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
