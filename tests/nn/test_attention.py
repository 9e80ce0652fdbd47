"""``softmaxlab.nn.MultiheadAttention``: with ``mapping="softmax"`` and a torch module's
weights it equals ``torch.nn.MultiheadAttention`` (every constructor option, both layouts,
unbatched input, every mask kind, weights or not, averaged or not); every normalizer agrees
with a naive float64 oracle (projections by hand, then ``tests/oracle/attention.py``), its
weights sum to one per query (zero for a query with no key left, never NaN); gradients flow;
pickle, deepcopy, ``torch.export`` and ``torch.compile(fullgraph=True)``; bad arguments."""

from __future__ import annotations

import copy
import io
import pickle

import pytest
import torch

import softmaxlab.attention as sa
from softmaxlab import nn as snn

from .._helpers import NONNEGATIVE_DOMAIN, assert_close, bisection_error, expect_raises, gen
from ..oracle import attention as oracle
from ..tolerances import ATTENTION, SUM_ATOL, Tol

F64, F32 = torch.float64, torch.float32
E, H, N, L, S = 8, 2, 3, 4, 6
NAMES = sa.normalizer_names()
#: normalizers whose weights sum to one (the registry's; not sigmoid, not softmax1's sink)
NORMALIZED = [n for n in NAMES if n not in ("sigmoid", "softmax1")]
NEEDED = {"sparse_softmax": {"k": 2}}
OPTIONS = {"plain": {}, "kdim-vdim": {"kdim": 5, "vdim": 3}, "no-bias": {"bias": False},
           "bias-kv-zero-attn": {"add_bias_kv": True, "add_zero_attn": True}}


def _pair(options: dict, dtype=F64, **kw):
    """A torch module and ours with the torch module's ``state_dict``."""
    torch.manual_seed(0)
    theirs = torch.nn.MultiheadAttention(E, H, **options, **kw).to(dtype)
    ours = snn.MultiheadAttention(E, H, **options, **kw).to(dtype)
    ours.load_state_dict(theirs.state_dict())
    return theirs, ours


def _inputs(options: dict, name: str, dtype=F64, batch_first=True, nonneg=False):
    g = gen("mha", name)

    def rnd(*shape):
        t = torch.randn(*shape, generator=g, dtype=F64)
        return (t.abs() if nonneg else t).to(dtype)

    q = rnd(N, L, E)
    k, v = rnd(N, S, options.get("kdim", E)), rnd(N, S, options.get("vdim", E))
    if not batch_first:
        q, k, v = (t.transpose(0, 1) for t in (q, k, v))
    return q, k, v


def _masks(kind: str):
    """(key_padding_mask, attn_mask, is_causal) in torch's convention (True = excluded)."""
    g = gen("mha-mask", kind)
    kpm = torch.zeros(N, S, dtype=torch.bool)
    kpm[0, -2:] = True
    bool_mask = torch.rand(L, S, generator=g) > 0.6
    bool_mask[:, 0] = False  # every query keeps a key
    causal = torch.ones(L, S, dtype=torch.bool).triu(1)
    return {
        "none": (None, None, False),
        "key-padding": (kpm, None, False),
        "float-key-padding": (torch.zeros(N, S, dtype=F64).masked_fill(kpm, float("-inf")),
                              None, False),
        "bool-mask": (None, bool_mask, False),
        "float-mask": (None, torch.randn(L, S, generator=g, dtype=F64), False),
        "3d-mask": (None, torch.cat([torch.zeros(N * H, L, 1, dtype=torch.bool),
                                     torch.rand(N * H, L, S - 1, generator=g) > 0.6], -1),
                    False),
        "padding-and-float-mask": (kpm, torch.randn(L, S, generator=g, dtype=F64), False),
        "causal-hint": (None, causal, True),
        "causal-hint-and-padding": (kpm, causal, True),
    }[kind]


MASKS = ["none", "key-padding", "float-key-padding", "bool-mask", "float-mask", "3d-mask",
         "padding-and-float-mask", "causal-hint", "causal-hint-and-padding"]


# ============================================================ 1. equal to torch's module
@pytest.mark.filterwarnings("ignore:Support for mismatched key_padding_mask")
@pytest.mark.parametrize("masks", MASKS)
@pytest.mark.parametrize("option", list(OPTIONS))
@pytest.mark.parametrize("batch_first", [True, False], ids=["batch-first", "seq-first"])
def test_softmax_equals_torch(batch_first, option, masks):
    opts = OPTIONS[option]
    theirs, ours = _pair(opts, batch_first=batch_first)
    q, k, v = _inputs(opts, option, batch_first=batch_first)
    kpm, mask, causal = _masks(masks)
    for need_weights in (True, False):
        for average in (True, False):
            kw = dict(key_padding_mask=kpm, attn_mask=mask, is_causal=causal,
                      need_weights=need_weights, average_attn_weights=average)
            out, w = ours(q, k, v, **kw)
            out0, w0 = theirs(q, k, v, **kw)
            if causal and kpm is None and not need_weights and option == "bias-kv-zero-attn":
                # torch's own two paths differ here: without weights it hands is_causal to
                # SDPA, which hides the appended bias/zero keys from the first queries; its
                # weights path (the attn_mask padded) keeps them visible, as ours does
                out0, _ = theirs(q, k, v, **{**kw, "need_weights": True})
            what = f"{option} {masks} weights={need_weights} average={average}"
            assert_close(out, out0, ATTENTION[F64], what)
            if need_weights:
                assert_close(w, w0, ATTENTION[F64], what)
            else:
                assert w is None and w0 is None


@pytest.mark.parametrize("need_weights", [True, False])
def test_softmax_equals_torch_self_attention_float32_and_unbatched(need_weights):
    theirs, ours = _pair({}, F32, batch_first=True)
    x = torch.randn(N, L, E, generator=gen("mha-self"))
    out, w = ours(x, x, x, need_weights=need_weights)
    out0, w0 = theirs(x, x, x, need_weights=need_weights)
    assert_close(out, out0, ATTENTION[F32], "self-attention")
    x1 = x[0]
    out1, w1 = ours(x1, x1, x1, need_weights=need_weights, average_attn_weights=False)
    out10, w10 = theirs(x1, x1, x1, need_weights=need_weights, average_attn_weights=False)
    assert out1.shape == (L, E)
    assert_close(out1, out10, ATTENTION[F32], "unbatched")
    if need_weights:
        assert_close(w, w0, ATTENTION[F32], "self-attention weights")
        assert w1.shape == (H, L, L)
        assert_close(w1, w10, ATTENTION[F32], "unbatched weights")


def test_same_parameters_and_initialization_as_torch():
    for opts in OPTIONS.values():
        torch.manual_seed(1)
        theirs = torch.nn.MultiheadAttention(E, H, **opts)
        torch.manual_seed(1)
        ours = snn.MultiheadAttention(E, H, **opts, mapping="entmax15")
        assert isinstance(ours, torch.nn.MultiheadAttention)
        a, b = theirs.state_dict(), ours.state_dict()
        assert list(a) == list(b)
        for name in a:
            assert torch.equal(a[name], b[name]), name


# ============================================================ 2. every normalizer
def _naive(mha: snn.MultiheadAttention, q, k, v, keep, name, params):
    """The float64 oracle: projections by hand, then the naive attention (batch first)."""
    w, b = mha.in_proj_weight, mha.in_proj_bias
    hd = E // H

    def heads(x, i):
        y = x @ w[i * E:(i + 1) * E].T + b[i * E:(i + 1) * E]
        return y.view(y.shape[0], y.shape[1], H, hd).transpose(1, 2)

    kw = dict(params)
    sink = kw.pop("sink", 0.0)
    out, p = oracle.attention(heads(q, 0), heads(k, 1), heads(v, 2), attn_mask=keep,
                              mapping=name, sink=sink, **kw)
    out = out.transpose(1, 2).reshape(N, L, E) @ mha.out_proj.weight.T + mha.out_proj.bias
    return out, p


def _settings():
    for name in NAMES:
        base = dict(NEEDED.get(name, {}))
        yield name, base
        for p in sa.get_normalizer(name).params:
            for value in p.valid:
                if p.name not in base:
                    yield name, {**base, p.name: value}


SETTINGS = list(_settings())


def _nonneg_module(mha):
    with torch.no_grad():
        for t in mha.parameters():
            t.abs_()
    return mha


@pytest.mark.parametrize("name, params", SETTINGS,
                         ids=[f"{n}-{','.join(f'{k}={v}' for k, v in p.items()) or 'defaults'}"
                              for n, p in SETTINGS])
def test_every_normalizer_matches_the_oracle(name, params):
    nonneg = name in NONNEGATIVE_DOMAIN
    torch.manual_seed(2)
    mha = snn.MultiheadAttention(E, H, batch_first=True, mapping=name,
                                 mapping_params=params).double()
    with torch.no_grad():
        mha.in_proj_bias.normal_()
        mha.out_proj.bias.normal_()
    if nonneg:
        _nonneg_module(mha)
    q, k, v = _inputs({}, name, nonneg=nonneg)
    _, mask, _ = _masks("bool-mask")
    kpm = torch.zeros(N, S, dtype=torch.bool)
    kpm[1, -3:] = True
    keep = (~mask)[None, None] & (~kpm)[:, None, None, :]
    exp, p = _naive(mha, q, k, v, keep, name, params)
    tol = ATTENTION[F64] + bisection_error(params, F64)
    out, w = mha(q, k, v, key_padding_mask=kpm, attn_mask=mask, average_attn_weights=False)
    assert_close(out, exp, tol, f"{name} output with weights")
    assert_close(w, p, tol, f"{name} weights")
    out2, none = mha(q, k, v, key_padding_mask=kpm, attn_mask=mask, need_weights=False)
    assert none is None
    assert_close(out2, exp, tol, f"{name} output without weights")


@pytest.mark.parametrize("name", NAMES)
def test_weights_sum_to_one_and_masked_queries_give_zeros(name):
    """A query with every key excluded gets zero weights and output (before the output
    projection's bias), never NaN; every other query's weights sum to one (normalizers)."""
    params = NEEDED.get(name, {})
    nonneg = name in NONNEGATIVE_DOMAIN
    torch.manual_seed(3)
    mha = snn.MultiheadAttention(E, H, batch_first=True, mapping=name, **params).double()
    if nonneg:
        _nonneg_module(mha)
    q, k, v = _inputs({}, name, nonneg=nonneg)
    mask = torch.zeros(L, S, dtype=torch.bool)
    mask[2] = True  # query 2 sees no key
    for need_weights in (True, False):
        out, w = mha(q, k, v, attn_mask=mask, need_weights=need_weights)
        assert not out.isnan().any()
        torch.testing.assert_close(out[:, 2], mha.out_proj.bias.expand(N, E), rtol=0, atol=0)
    _, w = mha(q, k, v, attn_mask=mask, average_attn_weights=False)
    assert not w.isnan().any() and (w >= 0).all()
    assert torch.equal(w[:, :, 2], torch.zeros(N, H, S, dtype=F64))
    if name in NORMALIZED:
        rows = w.sum(-1)[:, :, [0, 1, 3]]
        assert (rows - 1).abs().max().item() <= SUM_ATOL[F64]


@pytest.mark.parametrize("name", ["softmax", "entmax15", "sparsemax", "sigmoid"])
def test_gradients_flow_and_match_the_oracle(name):
    torch.manual_seed(4)
    mha = snn.MultiheadAttention(E, H, batch_first=True, mapping=name).double()
    q, k, v = (t.requires_grad_() for t in _inputs({}, name))
    out, _ = mha(q, k, v, need_weights=False)
    wt = torch.randn(out.shape, generator=gen("mha-w"), dtype=F64)
    params = list(mha.parameters())
    got = torch.autograd.grad((out * wt).sum(), (q, k, v, *params))
    exp, _ = _naive(mha, q, k, v, None, name, {})
    want = torch.autograd.grad((exp * wt).sum(), (q, k, v, *params))
    for a, e in zip(got, want, strict=True):
        assert a.abs().sum() > 0
        assert_close(a, e, ATTENTION[F64], f"{name} gradient")


def test_dropout_in_training_only_and_weights_after_dropout():
    """Training: each returned weight is 0 or 1 / (1 - p) times the eval weight (torch
    returns the weights after dropout), and some are dropped; eval: no dropout."""
    torch.manual_seed(7)
    mha = snn.MultiheadAttention(E, H, dropout=0.5, batch_first=True, mapping="softmax")
    x = torch.randn(N, L, E, generator=gen("mha-drop"))
    _, w = mha(x, x, x, average_attn_weights=False)
    mha.eval()
    out, w0 = mha(x, x, x, average_attn_weights=False)
    dropped = w == 0
    assert dropped.any() and (~dropped).any()
    assert_close(w[~dropped], 2 * w0[~dropped], ATTENTION[F32], "kept weights scaled by 2")
    out2, _ = mha(x, x, x, need_weights=False)
    assert_close(out, out2, ATTENTION[F32], "eval: no dropout")
    assert_close(w0.sum(-1), torch.ones(N, H, L), Tol(0.0, SUM_ATOL[F32]), "eval weights")


# ============================================================ 3. serialization, export, compile
class Block(torch.nn.Module):
    """Self-attention then a Linear layer; with ``need_weights`` the head-averaged weights
    are added to the output (so that both paths are exercised)."""

    def __init__(self, mapping: str, need_weights: bool = False):
        super().__init__()
        self.attn = snn.MultiheadAttention(E, H, batch_first=True, mapping=mapping)
        self.proj = torch.nn.Linear(E, E)
        self.need_weights = need_weights

    def forward(self, x, kpm):
        out, w = self.attn(x, x, x, key_padding_mask=kpm, need_weights=self.need_weights)
        out = self.proj(out)
        return out if w is None else out + w.sum(-1, keepdim=True) * w[..., :1]


def _block_args():
    kpm = torch.zeros(N, L, dtype=torch.bool)
    kpm[0, -1] = True
    return torch.randn(N, L, E, generator=gen("mha-block")), kpm


@pytest.mark.parametrize("need_weights", [False, True], ids=["no-weights", "weights"])
@pytest.mark.parametrize("mapping", ["softmax", "entmax15"])
def test_pickle_deepcopy_and_export(mapping, need_weights):
    torch.manual_seed(5)
    model = Block(mapping, need_weights)
    args = _block_args()
    model(*args).sum().backward()
    model.eval()
    expected = model(*args)
    for clone in (pickle.loads(pickle.dumps(model)), copy.deepcopy(model)):
        assert clone.attn.mapping == mapping
        torch.testing.assert_close(clone(*args), expected, rtol=0, atol=0)
    program = torch.export.export(model, args)
    buf = io.BytesIO()
    torch.export.save(program, buf)
    buf.seek(0)
    assert_close(torch.export.load(buf).module()(*args), expected, ATTENTION[F32], "export")


@pytest.mark.parametrize("need_weights", [False, True], ids=["no-weights", "weights"])
@pytest.mark.parametrize("mapping", ["softmax", "entmax15"])
def test_compile_fullgraph_equals_eager(mapping, need_weights):
    torch._dynamo.reset()
    torch.manual_seed(6)
    model = Block(mapping, need_weights)
    x, kpm = _block_args()
    compiled = torch.compile(model, fullgraph=True, backend="aot_eager")
    xs = x.clone().requires_grad_()
    y = compiled(xs, kpm)
    (g,) = torch.autograd.grad(y.sum(), xs)
    x0 = x.clone().requires_grad_()
    y0 = model(x0, kpm)
    (g0,) = torch.autograd.grad(y0.sum(), x0)
    assert_close(y, y0, ATTENTION[F32], "compiled value")
    assert_close(g, g0, ATTENTION[F32], "compiled gradient")


def test_inside_a_transformer_encoder_layer_in_inference():
    """torch's encoder-layer fast path (eval, no grad) would run fused softmax on the
    weights; the layer must call our module instead, as in training mode."""
    torch.manual_seed(8)
    layer = torch.nn.TransformerEncoderLayer(E, H, 16, dropout=0.0, batch_first=True).eval()
    ours = snn.MultiheadAttention(E, H, batch_first=True, mapping="sparsemax")
    ours.load_state_dict(layer.self_attn.state_dict())
    x = torch.randn(N, L, E, generator=gen("mha-layer"))
    softmax_out = layer(x)
    layer.self_attn = ours
    with torch.no_grad():
        fast = layer(x)
    slow = layer(x)
    assert_close(fast, slow, ATTENTION[F32], "no-grad inference = autograd path")
    assert (fast - softmax_out).abs().amax() > 1e-4, "sparsemax, not torch's softmax"


def test_extra_repr_names_the_mapping():
    text = repr(snn.MultiheadAttention(E, H, mapping="entmax", alpha=1.25))
    assert "mapping='entmax'" in text and "alpha=1.25" in text


# ============================================================ 4. bad arguments
x3 = torch.randn(N, L, E)


def _case_id(o) -> str:
    """A test id that is the same in every xdist worker: tensors by shape and dtype, not by
    their (random) values."""
    if isinstance(o, type):
        return o.__name__
    if isinstance(o, dict):
        o = {k: (f"tensor{tuple(v.shape)}:{v.dtype}" if isinstance(v, torch.Tensor) else v)
             for k, v in o.items()}
    return repr(o)[:60]


@pytest.mark.parametrize("build, call, exc, words", [
    (dict(mapping="softmaxx"), None, ValueError, ["mapping", "'softmaxx'"]),
    (dict(mapping="entmax", alpha=0.5), None, ValueError, ["alpha", "0.5"]),
    (dict(mapping="softmax", beta=1.0), None, TypeError, ["'beta'"]),
    (dict(embed_dim=7), None, ValueError, ["embed_dim", "7"]),
    (dict(num_heads=0), None, ValueError, ["num_heads", "0"]),
    (dict(dropout=1.0), None, ValueError, ["dropout", "1.0"]),
    (dict(mapping="sigmoid", bias=-1.0), None, TypeError, ["bias", "-1.0", "mapping_params"]),
    (dict(mapping="entmax", alpha=1.2, mapping_params={"alpha": 1.3}), None, TypeError,
     ["'alpha'", "twice"]),
    (dict(mapping_params=[("alpha", 1.2)]), None, TypeError, ["mapping_params", "list"]),
    ({}, dict(query=x3.long()), TypeError, ["query", "int64"]),
    ({}, dict(query=x3[..., :5]), ValueError, ["query", "8"]),
    ({}, dict(key=x3[0]), ValueError, ["query, key and value", "3-D"]),
    ({}, dict(key_padding_mask=torch.zeros(N, L + 1, dtype=torch.bool)), ValueError,
     ["key_padding_mask", "(3, 4)", "(3, 5)"]),
    ({}, dict(key_padding_mask=torch.zeros(N, L, dtype=torch.int32)), TypeError,
     ["key_padding_mask", "int32"]),
    ({}, dict(attn_mask=torch.zeros(L, L + 1, dtype=torch.bool)), ValueError,
     ["attn_mask", "(4, 5)"]),
    ({}, dict(attn_mask=[[0.0]]), TypeError, ["attn_mask", "list"]),
    ({}, dict(need_weights=1), TypeError, ["need_weights", "1"]),
    ({}, dict(is_causal="yes"), TypeError, ["is_causal", "'yes'"]),
], ids=lambda o: _case_id(o))
def test_bad_arguments_raise_naming_them(build, call, exc, words):
    kw = {"embed_dim": E, "num_heads": 4, "batch_first": True, **build}
    if call is None:
        expect_raises(exc, words, snn.MultiheadAttention, **kw)
        return
    mha = snn.MultiheadAttention(**kw)
    expect_raises(exc, words, mha, **{"query": x3, "key": x3, "value": x3, **call})
