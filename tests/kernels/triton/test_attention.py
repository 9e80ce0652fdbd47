"""The Triton attention kernel (``triton.attention``: softmax, sparsemax, entmax15, sigmoid,
softmax1 with its sink)
through ``softmaxlab.attention.scaled_dot_product_attention`` with the Triton backend forced,
against the naive float64 oracle (``tests/oracle/attention.py``): values, the gradients of q,
k, v (and of a float mask), the statistics, on tiny odd shapes that cross the kernels' tile
boundaries (16 rows / keys under the interpreter): bool and float masks, causal (also with
more queries than keys), GQA with a per-head mask, key padding, a fully masked query (zeros,
zero gradient, never NaN), different key and value widths; dropout equal to the oracle with
the CPU kernels' counter-hash keep mask; softmax1's sink as a learnable tensor. Each test
checks that the kernel ran (:data:`softmaxlab.kernels.triton._launch.PATHS`), and the
mappings it does not implement fall back to the reference, softmax without statistics to
torch's SDPA.

Under the interpreter (CPU tensors, ``TRITON_INTERPRET=1``, set by conftest.py) or natively
on CUDA (the ``device`` fixture). float64 is compared with tolerance ``ATTENTION[F64]``
(1e-10): the kernels compute every mapping exactly (the threshold maps' support iteration
ends on the exact support), so this catches any formula error; float32 with
``ATTENTION[F32]``.
"""

from __future__ import annotations

import pytest

pytest.importorskip("triton", reason="triton is not installed (pip install -e '.[dev]' or "
                    "'.[triton]')")

import torch
import torch.nn.functional as F

import softmaxlab.attention as sa
from softmaxlab import kernels
from softmaxlab.kernels.cpu import attention as cpu_attention
from softmaxlab.kernels.triton import _attention, _launch

from ..._helpers import assert_close, gen
from ...oracle import attention as oracle
from ...tolerances import ATTENTION

F64, F32 = torch.float64, torch.float32
NEG_INF = float("-inf")
MAPPINGS = ["softmax", "sparsemax", "entmax15", "sigmoid", "softmax1"]
pytestmark = pytest.mark.filterwarnings("ignore::RuntimeWarning")


def make(config: str, dtype, device, g: torch.Generator, nonneg: bool = False):
    """``(q, k, v, kwargs)`` of one configuration (requiring grad; a float mask too)."""
    B, Hq, Hk, L, S, E, Ev = 1, 2, 2, 17, 17, 8, 8
    kw: dict = {}
    if config == "odd":
        L, S, E, Ev = 5, 7, 16, 8
    if config == "causal-long-queries":
        L, S = 19, 5
    if config == "gqa":
        B, Hq, Hk, L, S = 2, 4, 2, 9, 18
        kw["enable_gqa"] = True

    def rnd(*shape, scale=2.0):
        return (torch.randn(*shape, generator=g, dtype=F64) * scale).to(device, dtype)

    q, k, v = rnd(B, Hq, L, E), rnd(B, Hk, S, E), rnd(B, Hk, S, Ev, scale=1.0)
    if config in ("bool-mask", "gqa"):
        shape = (B, Hq, L, S) if config == "gqa" else (L, S)
        m = torch.rand(shape, generator=g) > 0.4
        m[..., 0] = True
        m[..., 3, :] = False  # query 3: no key at all
        kw["attn_mask"] = m.to(device)
    if config == "key-padding":
        m = torch.ones(B, 1, 1, S, dtype=torch.bool)
        m[..., -6:] = False
        kw["attn_mask"] = m.to(device)
    if config == "float-mask":
        bias = rnd(L, S, scale=1.0)
        bias[1, 2] = bias[4, 0] = NEG_INF
        kw["attn_mask"] = bias.requires_grad_()
    if config in ("causal", "causal-long-queries", "gqa"):
        kw["is_causal"] = True
    q, k, v = (t.requires_grad_() for t in (q, k, v))
    return q, k, v, kw


CONFIGS = ["plain", "odd", "bool-mask", "key-padding", "float-mask", "causal",
           "causal-long-queries", "gqa"]


def _oracle_inputs(q, k, v, kw):
    """float64 leaf copies of the inputs (and of a float mask) for the oracle."""
    leaves = [t.detach().double().requires_grad_() for t in (q, k, v)]
    okw = dict(kw)
    mask = kw.get("attn_mask")
    if mask is not None and mask.is_floating_point():
        okw["attn_mask"] = mask.detach().double().requires_grad_()
        leaves.append(okw["attn_mask"])
    return leaves, okw


def _scores(q, k, v, kw):
    """The masked, scaled float64 scores ``(B, Hq, L, S)`` (torch's semantics, as the
    oracle)."""
    q, k = q.detach(), k.detach()
    k = k.repeat_interleave(q.shape[-3] // k.shape[-3], -3)
    s = (q @ k.transpose(-1, -2)) / q.shape[-1] ** 0.5
    mask = kw.get("attn_mask")
    if mask is not None:
        s = s.masked_fill(~mask, NEG_INF) if mask.dtype == torch.bool else s + mask.detach()
    if kw.get("is_causal"):
        keep = torch.ones(s.shape[-2:], dtype=torch.bool, device=s.device).tril()
        s = s.masked_fill(~keep, NEG_INF)
    return s


def _run(q, k, v, kw, name, params, **extra):
    """Value, statistics and gradients through the Triton kernel (checked to run)."""
    before = dict(_launch.PATHS)
    with kernels.use("triton"):
        assert kernels.kernel_name("attention", q.detach(), sdpa=False, mapping=name) == \
            "triton.attention"
        out, st = sa.scaled_dot_product_attention(q, k, v, **kw, mapping=name,
                                                  return_stats=True, **params, **extra)
        w = torch.randn(out.shape, generator=gen("w", out.shape), dtype=F64).to(out)
        inputs = [q, k, v] + ([kw["attn_mask"]] if kw.get("attn_mask") is not None
                              and kw["attn_mask"].requires_grad else [])
        grads = torch.autograd.grad((out * w).sum(), inputs)
    for direction in ("forward", "backward"):
        key = f"attention.{direction}.{name}"
        assert _launch.PATHS[key] == before.get(key, 0) + 1, f"{key} did not run"
    return out, st, grads, w


def _assert_matches_oracle(q, k, v, kw, name, tol, what):
    """The kernel's value and q, k, v gradients against the float64 oracle, within ``tol``."""
    out, _st, grads, w = _run(q, k, v, kw, name, {})
    leaves, okw = _oracle_inputs(q, k, v, kw)
    exp, _p = oracle.attention(*leaves[:3], **okw, mapping=name)
    want = torch.autograd.grad((exp * w.double()).sum(), leaves)
    assert_close(out, exp, tol, f"{what} value")
    for a, e, n in zip(grads, want, "qkv", strict=True):
        assert_close(a, e, tol, f"{what} d{n}")


@pytest.mark.parametrize("config", CONFIGS)
@pytest.mark.parametrize("name", MAPPINGS)
def test_matches_the_oracle(device, name, config):
    """Value, statistics and gradients (q, k, v, a float mask) in float64."""
    q, k, v, kw = make(config, F64, device, gen("triton-attention", name, config))
    out, st, grads, w = _run(q, k, v, kw, name, {})
    leaves, okw = _oracle_inputs(q, k, v, kw)
    exp, p = oracle.attention(*leaves[:3], **okw, mapping=name)
    want = torch.autograd.grad((exp * w.double()).sum(), leaves)
    tol = ATTENTION[F64]
    assert_close(out, exp, tol, f"{name} {config} value")
    for a, e, n in zip(grads, want, ("q", "k", "v", "mask")[:len(want)], strict=True):
        assert_close(a, e, tol, f"{name} {config} d{n}")
    assert torch.equal(st.support, (p > 0).sum(-1).to(F64)), f"{name} {config} support"
    s = _scores(*leaves[:3], okw)
    if name == "softmax":
        assert_close(st.logsumexp, s.logsumexp(-1), tol, "logsumexp")
    if name == "softmax1":  # the sink's logit (0) counts
        assert_close(st.logsumexp, torch.cat([s, torch.zeros_like(s[..., :1])], -1)
                     .logsumexp(-1), tol, "logsumexp with the sink")
    if name in ("sparsemax", "entmax15"):
        am1 = 1.0 if name == "sparsemax" else 0.5
        back = (am1 * s - st.threshold[..., None]).clamp(min=0) ** (1 / am1)
        assert_close(back, p, tol, "p from the threshold")


@pytest.mark.parametrize("config", ["causal-long-queries", "gqa"])
@pytest.mark.parametrize("name", ["softmax", "entmax15"])
def test_float64_tiles_of_8(device, name, config, monkeypatch):
    """The 8 x 8 tiles float64 takes on a GPU for head dims above 64 (the broadcast products
    stay in registers): values and gradients still match the oracle."""
    monkeypatch.setattr(_attention, "blocks", lambda f64=False, head_dim=0: (8, 8))
    q, k, v, kw = make(config, F64, device, gen("triton-attention-8", name, config))
    _assert_matches_oracle(q, k, v, kw, name, ATTENTION[F64], f"{name} {config}")


@pytest.mark.parametrize("config", ["bool-mask", "gqa"])
@pytest.mark.parametrize("name", MAPPINGS)
def test_float32_matches_the_float64_oracle(device, name, config):
    q, k, v, kw = make(config, F32, device, gen("triton-attention-f32", name, config))
    _assert_matches_oracle(q, k, v, kw, name, ATTENTION[F32], f"{name} {config}")


@pytest.mark.parametrize("name, params", [("softmax", {"temperature": 0.5}),
                                          ("sigmoid", {"bias": "-log n"})])
def test_parameters(device, name, params):
    q, k, v, kw = make("bool-mask", F64, device, gen("triton-attention-params", name))
    out, _st, grads, w = _run(q, k, v, kw, name, params)
    leaves, okw = _oracle_inputs(q, k, v, kw)
    exp, _p = oracle.attention(*leaves, **okw, mapping=name, **params)
    want = torch.autograd.grad((exp * w.double()).sum(), leaves)
    assert_close(out, exp, ATTENTION[F64], f"{name} {params} value")
    for a, e, n in zip(grads, want, "qkv", strict=True):
        assert_close(a, e, ATTENTION[F64], f"{name} {params} d{n}")


@pytest.mark.parametrize("name", MAPPINGS)
def test_fully_masked_query_gives_zeros_and_zero_gradient(device, name):
    q, k, v, kw = make("bool-mask", F32, device, gen("triton-attention-empty", name))
    out, st, (gq, _gk, _gv), _w = _run(q, k, v, kw, name, {})
    assert not out.isnan().any() and not gq.isnan().any()
    assert torch.equal(out[..., 3, :], torch.zeros_like(out[..., 3, :]))
    assert torch.equal(gq[..., 3, :], torch.zeros_like(gq[..., 3, :]))
    assert (st.support[..., 3] == 0).all()
    if name == "softmax":
        assert (st.logsumexp[..., 3] == NEG_INF).all()
    if name == "softmax1":  # the sink's logit alone
        assert (st.logsumexp[..., 3] == 0.0).all()
    if name in ("sparsemax", "entmax15"):
        assert (st.threshold[..., 3] == float("inf")).all()


@pytest.mark.parametrize("name", ["sparsemax", "entmax15"])
def test_support_iteration_alone_is_exact(device, name, monkeypatch):
    """With no bisection step, the support iteration from tau = -1 still ends on the exact
    threshold (more iterations), over several key blocks."""
    monkeypatch.setattr(_attention, "N_BISECT", 0)
    g = gen("triton-attention-refine", name)
    q = (torch.randn(1, 1, 7, 8, generator=g, dtype=F64) * 3).to(device).requires_grad_()
    k = torch.randn(1, 1, 40, 8, generator=g, dtype=F64).to(device).requires_grad_()
    v = torch.randn(1, 1, 40, 8, generator=g, dtype=F64).to(device).requires_grad_()
    out, st, grads, w = _run(q, k, v, {}, name, {})
    leaves, _ = _oracle_inputs(q, k, v, {})
    exp, p = oracle.attention(*leaves, mapping=name)
    want = torch.autograd.grad((exp * w.double()).sum(), leaves)
    assert_close(out, exp, ATTENTION[F64], name)
    for a, e, n in zip(grads, want, "qkv", strict=True):
        assert_close(a, e, ATTENTION[F64], f"{name} d{n}")
    assert torch.equal(st.support, (p > 0).sum(-1).to(F64))


@pytest.mark.parametrize("name", MAPPINGS)
def test_dropout_is_the_counter_hash_mask(device, name):
    """Dropout equals the oracle with the keep mask of ``dropout_keep(seed, flat index)`` (the
    CPU kernels' mask for the same seed), in value and gradient; statistics before dropout."""
    q, k, v, kw = make("gqa", F64, device, gen("triton-attention-dropout", name))
    p = 0.3
    torch.manual_seed(11)
    seed = torch.randint(0, 1 << 62, (), dtype=torch.int64, device=device)
    B, Hq, L, S = 2, 4, 9, 18
    keep = cpu_attention.dropout_keep(seed, torch.arange(B * Hq * L * S, device=device)
                                      .view(B, Hq, L, S), p)
    torch.manual_seed(11)
    out, st, grads, w = _run(q, k, v, kw, name, {}, dropout_p=p)
    leaves, okw = _oracle_inputs(q, k, v, kw)
    exp, probs = oracle.attention(*leaves, **okw, mapping=name, keep=keep, dropout_p=p)
    want = torch.autograd.grad((exp * w.double()).sum(), leaves)
    assert_close(out, exp, ATTENTION[F64], f"{name} dropout value")
    for a, e, n in zip(grads, want, "qkv", strict=True):
        assert_close(a, e, ATTENTION[F64], f"{name} dropout d{n}")
    assert torch.equal(st.support, (probs > 0).sum(-1).to(F64))


@pytest.mark.parametrize("shape", [(4,), (2, 1)], ids=["per-head", "per-batch"])
def test_softmax1_sink_tensor_and_its_gradient(device, shape):
    q, k, v, kw = make("gqa", F64, device, gen("triton-attention-sink", shape))
    sink = torch.randn(shape, generator=gen("sink", shape), dtype=F64).to(device)
    sink.requires_grad_()
    before = _launch.PATHS["attention.backward.softmax1"]
    with kernels.use("triton"):
        out = sa.scaled_dot_product_attention(q, k, v, **kw, mapping="softmax1", sink=sink)
        w = torch.randn(out.shape, generator=gen("w-sink"), dtype=F64).to(out)
        grads = torch.autograd.grad((out * w).sum(), (q, k, v, sink))
    assert _launch.PATHS["attention.backward.softmax1"] == before + 1
    leaves, okw = _oracle_inputs(q, k, v, kw)
    osink = sink.detach().clone().requires_grad_()
    exp, _p = oracle.attention(*leaves, **okw, mapping="softmax1", sink=osink.expand(2, 4))
    want = torch.autograd.grad((exp * w).sum(), (*leaves, osink))
    assert_close(out, exp, ATTENTION[F64], "softmax1 value")
    for a, e, n in zip(grads, want, ("q", "k", "v", "sink"), strict=True):
        assert_close(a, e, ATTENTION[F64], f"softmax1 d{n}")


def test_half_inputs_compute_in_float32(device):
    q, k, v, kw = make("causal", F32, device, gen("triton-attention-half"))
    qh, kh, vh = (t.detach().half() for t in (q, k, v))
    with kernels.use("triton"):
        out = sa.scaled_dot_product_attention(qh, kh, vh, **kw, mapping="entmax15")
        ref = sa.scaled_dot_product_attention(qh.float(), kh.float(), vh.float(), **kw,
                                              mapping="entmax15")
    assert out.dtype == torch.float16
    assert torch.equal(out, ref.half())


def test_unsupported_options_fall_back(device):
    """The other mappings take the reference; softmax without statistics torch's SDPA (equal
    to it)."""
    q, k, v, kw = make("bool-mask", F32, device, gen("triton-attention-fallback"))
    qd = q.detach()
    with kernels.use("triton"):
        name = kernels.kernel_name
        assert name("attention", qd, sdpa=False, mapping="entmax15", dropout=True) == \
            "triton.attention"
        assert name("attention", qd, sdpa=False, mapping="softmax1", sink=True) == \
            "triton.attention"
        for other in ("taylor_softmax", "entmax", "sparse_softmax", "normalize"):
            assert name("attention", qd, sdpa=False, mapping=other) == "reference"
        assert name("attention", qd, sdpa=True, mapping="softmax") == "triton.attention_sdpa"
        before = sum(n for key, n in _launch.PATHS.items() if key.startswith("attention."))
        taylor = sa.scaled_dot_product_attention(q, k, v, **kw, mapping="taylor_softmax")
        plain = sa.scaled_dot_product_attention(q, k, v, **kw)
        assert sum(n for key, n in _launch.PATHS.items() if key.startswith("attention.")) == \
            before, "an unsupported call ran the Triton kernel"
    exp, _p = oracle.attention(*(t.detach().double() for t in (q, k, v)), **kw,
                               mapping="taylor_softmax")
    assert_close(taylor, exp, ATTENTION[F32], "taylor_softmax")
    assert_close(plain, F.scaled_dot_product_attention(q, k, v, **kw), ATTENTION[F32], "sdpa")
