"""softmaxlab.losses.linear: linear_cross_entropy (chunked) against the naive
F.cross_entropy(hidden @ weight.T + bias) and the float64 reference, batch shapes, ignored
rows, low precision, chunking and bad arguments."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from softmaxlab import losses as L
from softmaxlab.losses import linear as linear_module

from .._helpers import assert_close, gen
from ..oracle import loss_refs as R
from ..tolerances import LOSS, LOSS_CHUNKED, LOW_FACTOR, Tol
from ._common import N_L, REDUCTIONS, V_L, class_weight, grad_of, lce_inputs, upstream

F64 = torch.float64


# ================================================================== linear_cross_entropy


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
    # without a bias there are two gradients: the names stop at "weight"
    for name, a, e in zip(("hidden", "weight", "bias"), grads, exp_grads, strict=False):
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
    for a, e in zip(grads, exp_grads, strict=True):
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
    f32, _f32_grads = grad_of(lambda hh, ww, bb: F.cross_entropy(hh @ ww.T + bb, t),
                             h.float(), w.float(), b.float())
    naive, naive_grads = grad_of(lambda hh, ww, bb: F.cross_entropy(hh @ ww.T + bb, t), h, w, b)
    u = torch.finfo(dtype).eps / 2
    err = abs(out.double() - ref).item()
    err_naive = abs(naive.double() - ref).item()
    assert err <= LOW_FACTOR * max(err_naive, u * ref.abs().item()), (err, err_naive)
    assert_close(out.double(), f32, Tol(2 * u, 0.0), "close to the float32 computation")
    names = ("hidden", "weight", "bias")
    for name, a, e, nv in zip(names, grads, ref_grads, naive_grads, strict=True):
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
