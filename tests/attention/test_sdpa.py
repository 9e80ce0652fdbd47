"""``softmaxlab.attention.scaled_dot_product_attention`` for every normalizer attention takes
(the registry's normalized mappings, sigmoid, softmax1): agreement with the naive float64
oracle (``tests/oracle/attention.py``) on every configuration of torch's semantics (bool and
float masks, causal, GQA, scale, odd lengths, batch broadcasting, 2-D inputs), on each path
(torch's SDPA for softmax, the blocked CPU kernel — also split into many blocks — and the
reference); softmax equal to ``F.scaled_dot_product_attention``; gradcheck; fully masked
queries; dropout; the statistics; low precision; every bad argument.
"""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

import softmaxlab.attention as sa
from softmaxlab import kernels
from softmaxlab.kernels.cpu import attention as cpu_attention
from softmaxlab.kernels.cpu import attention_sparse as cpu_sparse

from .._helpers import NONNEGATIVE_DOMAIN, assert_close, bisection_error, expect_raises, gen, ids
from ..oracle import attention as oracle
from ..tolerances import ATTENTION, LOW_PRECISION, Tol

F64, F32 = torch.float64, torch.float32
NAMES = sa.normalizer_names()
#: Parameters a normalizer needs on the test shapes (k of top-k must not exceed S).
NEEDED = {"sparse_softmax": {"k": 2}}


def settings(name: str) -> list[dict]:
    """Defaults, then each ``Param.valid`` value one at a time (as the mapping tests)."""
    n = sa.get_normalizer(name)
    base = dict(NEEDED.get(name, {}))
    return [base] + [{**base, p.name: v} for p in n.params for v in p.valid
                     if p.name not in base]


SETTINGS = [(n, s) for n in NAMES for s in settings(n)]


def _id(obj):
    if isinstance(obj, dict):
        return ",".join(f"{k}={v}" for k, v in obj.items()) or "defaults"
    return ids(obj)


def _tol(params: dict, dtype) -> Tol:
    return ATTENTION[dtype] + bisection_error(params, dtype)


# ---------------------------------------------------------------- configurations
def make(name: str, config: str, dtype=F64, grad: bool = False):
    """(q, k, v, kwargs of the call) for one named configuration."""
    g = gen("attention", name, config)
    nonneg = name in NONNEGATIVE_DOMAIN
    B, Hq, Hk, L, S, E, Ev = 2, 3, 3, 5, 7, 4, 3
    kw: dict = {}
    if config == "gqa":
        Hq, Hk = 4, 2
        kw["enable_gqa"] = True
    if config == "causal-long-queries":
        L, S = 7, 5

    def rnd(*shape):
        t = torch.randn(*shape, generator=g, dtype=F64)
        return (t.abs() if nonneg else t).to(dtype)

    if config == "2d":
        q, k, v = rnd(L, E), rnd(S, E), rnd(S, Ev)
    elif config == "batch-broadcast":
        q, k, v = rnd(B, Hq, L, E), rnd(1, Hk, S, E), rnd(1, Hk, S, Ev)
    elif config == "heads-broadcast":
        q, k, v = rnd(B, Hq, L, E), rnd(B, 1, S, E), rnd(B, 1, S, Ev)
    else:
        q, k, v = rnd(B, Hq, L, E), rnd(B, Hk, S, E), rnd(B, Hk, S, Ev)
    if config in ("bool-mask", "gqa", "mask-and-causal"):
        shape = (B, Hq, L, S) if config == "gqa" else (B, 1, L, S)
        m = torch.rand(shape, generator=g) > 0.35
        m[..., 0] = True  # every query keeps a key (fully masked rows: their own test)
        kw["attn_mask"] = m
    if config == "key-padding":
        m = torch.ones(B, 1, 1, S, dtype=torch.bool)
        m[0, ..., -3:] = False
        kw["attn_mask"] = m
    if config == "float-mask":
        bias = torch.randn(L, S, generator=g, dtype=F64)
        bias = bias.abs() if nonneg else bias
        bias[1, 2] = bias[3, 0] = float("-inf")
        kw["attn_mask"] = bias.to(dtype)
    if config in ("causal", "causal-long-queries", "mask-and-causal"):
        kw["is_causal"] = True
    if config == "scale":
        kw["scale"] = 0.3
    if grad:
        q, k, v = (t.requires_grad_() for t in (q, k, v))
    return q, k, v, kw


CONFIGS = ["plain", "bool-mask", "key-padding", "float-mask", "causal", "causal-long-queries",
           "mask-and-causal", "gqa", "heads-broadcast", "scale", "2d", "batch-broadcast"]
PATHS = ["default", "blocked-small", "reference"]


@pytest.fixture(params=PATHS)
def path(request, monkeypatch):
    """The default dispatch (torch's SDPA for softmax, the blocked kernel for the rest), the
    blocked kernel split into blocks of at most 8 scores (rows and heads split), and the
    reference backend."""
    if request.param == "blocked-small":
        monkeypatch.setattr(cpu_attention, "BLOCK_ELEMS", 8)
        monkeypatch.setattr(cpu_attention, "MIN_ROWS", 1)
    if request.param == "reference":
        monkeypatch.setenv(kernels.ENV_VAR, "reference")
    return request.param


def _call(q, k, v, kw, name, params, **extra):
    return sa.scaled_dot_product_attention(q, k, v, **kw, mapping=name, **params, **extra)


def _oracle(q, k, v, kw, name, params, **extra):
    return oracle.attention(q, k, v, **kw, mapping=name, **params, **extra)


# ============================================================ 1. oracle agreement
@pytest.mark.parametrize("config", CONFIGS)
@pytest.mark.parametrize("name", NAMES)
def test_every_normalizer_matches_the_oracle(path, name, config):
    params = NEEDED.get(name, {})
    q, k, v, kw = make(name, config)
    out = _call(q, k, v, kw, name, params)
    exp, _ = _oracle(q, k, v, kw, name, params)
    assert_close(out, exp, _tol(params, F64), f"{name} {config} {path}")


@pytest.mark.parametrize("name, params", SETTINGS, ids=_id)
def test_every_parameter_setting_matches_the_oracle(path, name, params):
    q, k, v, kw = make(name, "bool-mask")
    out = _call(q, k, v, kw, name, params)
    exp, _ = _oracle(q, k, v, kw, name, params)
    assert_close(out, exp, _tol(params, F64), f"{name} {params} {path}")


@pytest.mark.parametrize("dtype", [F64, F32], ids=ids)
@pytest.mark.parametrize("config", CONFIGS)
def test_softmax_equals_torch_sdpa_value_and_gradient(path, config, dtype):
    q, k, v, kw = make("softmax", config, dtype, grad=True)
    w = torch.randn(_call(q, k, v, kw, "softmax", {}).shape, generator=gen("w"), dtype=dtype)
    out = _call(q, k, v, kw, "softmax", {})
    got = torch.autograd.grad((out * w).sum(), (q, k, v))
    if kw.get("attn_mask") is not None and kw.get("is_causal"):  # torch's CPU kernels: both
        kw = {**kw, "attn_mask": kw["attn_mask"] & torch.ones(5, 7, dtype=torch.bool).tril(),
              "is_causal": False}
    ref = F.scaled_dot_product_attention(q, k, v, **kw)
    want = torch.autograd.grad((ref * w).sum(), (q, k, v))
    tol = ATTENTION[dtype]
    assert_close(out, ref, tol, f"{config} value")
    for a, e, n in zip(got, want, "qkv", strict=True):
        assert_close(a, e, tol, f"{config} d{n}")


def test_softmax_takes_torch_sdpa_and_the_rest_the_blocked_kernel():
    q = torch.zeros(1, 1, 2, 4)
    assert kernels.kernel_name("attention", q, sdpa=True) == "cpu.attention_sdpa"
    assert kernels.kernel_name("attention", q, sdpa=False) == "cpu.attention"
    for name in ("sparsemax", "entmax15"):
        assert kernels.kernel_name("attention", q, sdpa=False, mapping=name) == \
            "cpu.attention_sparse"
    with kernels.use("reference"):
        assert kernels.kernel_name("attention", q, sdpa=False) == "reference"


# ============================================================ 2. gradients
GRAD_CONFIGS = ["gqa", "mask-and-causal", "float-mask", "causal-long-queries"]


@pytest.mark.parametrize("config", GRAD_CONFIGS)
@pytest.mark.parametrize("name", NAMES)
def test_gradcheck(name, config, monkeypatch):
    """float64 gradcheck of q, k, v (and of the float mask) through the blocked kernel split
    into blocks of a few rows (and through torch's SDPA for softmax)."""
    monkeypatch.setattr(cpu_attention, "BLOCK_ELEMS", 16)
    monkeypatch.setattr(cpu_attention, "MIN_ROWS", 1)
    params = NEEDED.get(name, {})
    q, k, v, kw = make(name, config)
    inputs = [t[:1].clone().requires_grad_() for t in (q, k, v)]
    mask = kw.pop("attn_mask", None)
    if mask is not None and mask.dtype == torch.bool:
        kw["attn_mask"] = mask[:1]
    elif mask is not None:
        inputs.append(mask.clone().requires_grad_())

    def f(q, k, v, bias=None):
        extra = {} if bias is None else {"attn_mask": bias}
        return _call(q, k, v, {**kw, **extra}, name, params)

    assert torch.autograd.gradcheck(f, tuple(inputs), atol=1e-6)


def test_gradcheck_softmax1_sink_tensor():
    q, k, v, kw = make("softmax1", "bool-mask", grad=True)
    sink = torch.tensor([0.3, -0.5, 1.0], dtype=F64, requires_grad=True)
    assert torch.autograd.gradcheck(
        lambda q, k, v, s: _call(q, k, v, kw, "softmax1", {"sink": s}), (q, k, v, sink))
    out = _call(q, k, v, kw, "softmax1", {"sink": sink})
    exp, _ = _oracle(q, k, v, kw, "softmax1", {}, sink=sink.expand(2, 3))
    assert_close(out, exp, ATTENTION[F64], "softmax1 sink tensor")


# ============================================================ 3. fully masked queries
@pytest.mark.parametrize("name", NAMES)
def test_fully_masked_queries_give_zeros_and_zero_gradient(path, name):
    params = NEEDED.get(name, {})
    q, k, v, kw = make(name, "bool-mask", grad=True)
    mask = kw["attn_mask"].clone()
    mask[0, :, 2] = False  # query 2 of batch 0: no key at all
    out, st = _call(q, k, v, {"attn_mask": mask}, name, params, return_stats=True)
    assert not out.isnan().any()
    assert torch.equal(out[0, :, 2], torch.zeros_like(out[0, :, 2]))
    gq, = torch.autograd.grad(out.sum(), q)
    assert not gq.isnan().any() and torch.equal(gq[0, :, 2], torch.zeros_like(gq[0, :, 2]))
    assert torch.equal(st.support[0, :, 2], torch.zeros(3, dtype=F64))
    if st.logsumexp is not None:  # log 0; softmax1: the sink's logit alone
        empty = 0.0 if name == "softmax1" else float("-inf")
        assert (st.logsumexp[0, :, 2] == empty).all()
    if st.threshold is not None:
        assert (st.threshold[0, :, 2] == float("inf")).all()


# ============================================================ 4. statistics
@pytest.mark.parametrize("name", NAMES)
def test_statistics(path, name):
    """support = #(p > 0); softmax's logsumexp is torch's of the scores; a threshold map's
    tau gives back p = [(alpha-1) s - tau]_+^(1/(alpha-1))."""
    params = NEEDED.get(name, {})
    q, k, v, kw = make(name, "mask-and-causal")
    out, st = _call(q, k, v, kw, name, params, return_stats=True)
    exp, p = _oracle(q, k, v, kw, name, params)
    assert_close(out, exp, _tol(params, F64), "value with stats")
    assert torch.equal(st.support, (p > 0).sum(-1).to(F64))
    s = (q @ k.transpose(-1, -2)) / 2
    s = s.masked_fill(~kw["attn_mask"], float("-inf"))
    s = s.masked_fill(~torch.ones(5, 7, dtype=torch.bool).tril(), float("-inf"))
    if name == "softmax":
        assert_close(st.logsumexp, s.logsumexp(-1), ATTENTION[F64], "logsumexp")
    alpha = {"sparsemax": 2.0, "entmax15": 1.5, "entmax": 1.5}.get(name)
    if alpha is not None:
        assert st.threshold is not None and st.logsumexp is None
        back = ((alpha - 1) * s - st.threshold[..., None]).clamp(min=0) ** (1 / (alpha - 1))
        assert_close(back, p, _tol(params, F64), "p from the threshold")


# ============================================================ 5. dropout
def test_softmax_dropout_draws_as_torch_sdpa():
    q, k, v, kw = make("softmax", "bool-mask", F32)
    torch.manual_seed(7)
    ref = F.scaled_dot_product_attention(q, k, v, **kw, dropout_p=0.4)
    for backend in ("", "reference"):
        with kernels.use(backend or "auto"):
            torch.manual_seed(7)
            out = sa.scaled_dot_product_attention(q, k, v, **kw, dropout_p=0.4)
        assert_close(out, ref, ATTENTION[F32], f"dropout {backend or 'default'}")


@pytest.mark.parametrize("name", ["entmax15", "sigmoid", "softmax1", "taylor_softmax"])
def test_blocked_dropout_is_the_counter_hash_mask(name, monkeypatch):
    """The blocked kernel's dropout equals the oracle with the keep mask of
    ``dropout_keep(seed, flat index)``, in value and gradient, whatever the blocking."""
    monkeypatch.setattr(cpu_attention, "BLOCK_ELEMS", 8)
    monkeypatch.setattr(cpu_attention, "MIN_ROWS", 1)
    q, k, v, kw = make(name, "gqa", grad=True)
    p = 0.3
    torch.manual_seed(11)
    seed = torch.randint(0, 1 << 62, (), dtype=torch.int64)
    keep = cpu_attention.dropout_keep(seed, torch.arange(2 * 4 * 5 * 7).view(2, 4, 5, 7), p)
    torch.manual_seed(11)
    out = _call(q, k, v, kw, name, {}, dropout_p=p)
    exp, _ = _oracle(q, k, v, kw, name, {}, keep=keep, dropout_p=p)
    assert_close(out, exp, ATTENTION[F64], "dropout value")
    w = torch.randn(out.shape, generator=gen("w"), dtype=F64)
    got = torch.autograd.grad((out * w).sum(), (q, k, v))
    want = torch.autograd.grad((exp * w).sum(), (q, k, v))
    for a, e in zip(got, want, strict=True):
        assert_close(a, e, ATTENTION[F64], "dropout gradient")


def test_dropout_keeps_the_right_fraction():
    keep = cpu_attention.dropout_keep(torch.tensor(5), torch.arange(200_000), 0.3)
    assert abs(keep.double().mean().item() - 0.7) < 4 * math.sqrt(0.21 / 200_000)


# ============================================================ 6. low precision
@pytest.mark.parametrize("dtype", list(LOW_PRECISION), ids=ids)
@pytest.mark.parametrize("name", NAMES)
def test_low_precision_vs_naive(name, dtype):
    """float16/bfloat16 in, computed in float32: error against float64 <= factor x the
    error of the naive oracle evaluated in that dtype, + atol."""
    params = NEEDED.get(name, {})
    q, k, v, kw = make(name, "mask-and-causal", dtype)
    out = _call(q, k, v, kw, name, params)
    assert out.dtype == dtype
    exact, _ = _oracle(q.double(), k.double(), v.double(), kw, name, params)
    naive, _ = _oracle(q, k, v, kw, name, params)
    factor, atol = LOW_PRECISION[dtype]
    err = (out.double() - exact).abs().max().item()
    err_naive = (naive.double() - exact).abs().max().item()
    assert err <= factor * err_naive + atol, f"{name} {dtype}: {err} vs naive {err_naive}"


# ============================================================ 7. memory
class _LargestTensor(torch.utils._python_dispatch.TorchDispatchMode):
    """Records the largest number of elements of any tensor an op creates."""

    largest = 0

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        out = func(*args, **(kwargs or {}))
        for t in out if isinstance(out, (tuple, list)) else (out,):
            if isinstance(t, torch.Tensor):
                self.largest = max(self.largest, t.numel())
        return out


@pytest.mark.parametrize("name", ["entmax15", "sparsemax", "taylor_softmax", "sigmoid"])
def test_blocked_kernel_never_holds_the_score_matrix(name, monkeypatch):
    """Forward and backward never create a tensor as large as the (L, S) scores of one
    head: at most one block of BLOCK_ELEMS scores (the mapping's row temporaries included;
    BLOCK_FACTOR times that for the sparse kernel, which holds nothing else of that size)."""
    monkeypatch.setattr(cpu_attention, "BLOCK_ELEMS", 2048)
    factor = cpu_sparse.BLOCK_FACTOR if name in ("entmax15", "sparsemax") else 1
    q, k, v = (torch.randn(1, 2, 256, 8, generator=gen("mem", n)).requires_grad_()
               for n in "qkv")
    with _LargestTensor() as mode:
        out = _call(q, k, v, {"is_causal": True}, name, {})
        out.sum().backward()
    assert mode.largest <= 2 * 2048 * factor < 256 * 256, mode.largest


# ============================================================ 8. bad arguments
def _qkv():
    return torch.randn(1, 2, 3, 4), torch.randn(1, 2, 5, 4), torch.randn(1, 2, 5, 6)


BAD = [
    ("query", TypeError, ["query"], lambda q, k, v: (q.long(), k, v), {}),
    ("dtype-mix", TypeError, ["query", "dtype"], lambda q, k, v: (q, k.double(), v), {}),
    ("features", ValueError, ["key", "4"], lambda q, k, v: (q, k[..., :3], v), {}),
    ("value-rows", ValueError, ["value", "5"], lambda q, k, v: (q, k, v[..., :4, :]), {}),
    ("1d", ValueError, ["query", "2 dims"], lambda q, k, v: (q[0, 0, 0], k, v), {}),
    ("heads", ValueError, ["heads", "enable_gqa"],
     lambda q, k, v: (torch.randn(1, 3, 3, 4), k, v), {}),
    ("mask-shape", ValueError, ["attn_mask", "(4, 5)"], None,
     {"attn_mask": torch.ones(4, 5, dtype=torch.bool)}),
    ("mask-dtype", TypeError, ["attn_mask", "int64"], None,
     {"attn_mask": torch.ones(3, 5, dtype=torch.int64)}),
    ("dropout", ValueError, ["dropout_p", "1.5"], None, {"dropout_p": 1.5}),
    ("dropout-type", TypeError, ["dropout_p"], None, {"dropout_p": "0.1"}),
    ("causal", TypeError, ["is_causal"], None, {"is_causal": 1}),
    ("gqa", TypeError, ["enable_gqa"], None, {"enable_gqa": "yes"}),
    ("scale", ValueError, ["scale", "inf"], None, {"scale": float("inf")}),
    ("mapping", ValueError, ["mapping", "'softmaxx'"], None, {"mapping": "softmaxx"}),
    ("ova", ValueError, ["mapping", "'ova_sigmoid'"], None, {"mapping": "ova_sigmoid"}),
    ("param", TypeError, ["entmax15", "'alpha'"], None, {"mapping": "entmax15", "alpha": 1.5}),
    ("param-value", ValueError, ["temperature", "-1.0"], None, {"temperature": -1.0}),
    ("param-tensor", TypeError, ["temperature", "tensor"], None,
     {"temperature": torch.tensor(2.0)}),
    ("bias", ValueError, ["bias", "'log n'"], None, {"mapping": "sigmoid", "bias": "log n"}),
    ("sink-shape", ValueError, ["sink", "(3,)"], None,
     {"mapping": "softmax1", "sink": torch.zeros(3)}),
    ("stats", TypeError, ["return_stats"], None, {"return_stats": 1}),
]


@pytest.mark.parametrize("case", BAD, ids=[b[0] for b in BAD])
def test_bad_arguments(case):
    _, exc, words, change, kw = case
    q, k, v = _qkv()
    if change is not None:
        q, k, v = change(q, k, v)
    expect_raises(exc, words, sa.scaled_dot_product_attention, q, k, v, **kw)


def test_normalize_refuses_negative_scores():
    q, k, v = _qkv()
    expect_raises(ValueError, ["normalize", "x >= 0"], sa.scaled_dot_product_attention, q, k, v,
                  mapping="normalize")
