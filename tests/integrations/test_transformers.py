"""``attn_implementation="softmaxlab"`` in Hugging Face transformers (tiny configs, random
weights, no downloads): the attention function against the float64 oracle (bool, float and
no mask, causal, grouped-query, position bias); softmax models equal ``"eager"``; every
normalizer runs in GPT-2, Llama and BERT; causality (later tokens never reach earlier
positions, also decoding with a cache) and padding; the mapping from ``use_mapping`` or the
config."""

from __future__ import annotations

import math

import pytest
import torch

import softmaxlab.attention as sa

from .._helpers import NONNEGATIVE_DOMAIN, assert_close, expect_raises, gen
from ..oracle import attention as oracle
from ..tolerances import ATTENTION

transformers = pytest.importorskip(
    "transformers", reason="transformers is not installed: pip install 'softmaxlab[transformers]'")
integration = pytest.importorskip("softmaxlab.integrations.transformers")

F64, F32 = torch.float64, torch.float32
V, T = 50, 7
#: normalizers that run on any scores (``normalize`` needs scores >= 0: not a model's)
RUNS = [n for n in sa.normalizer_names() if n not in NONNEGATIVE_DOMAIN]
NEEDED = {"sparse_softmax": {"k": 2}}


def _config(kind: str, **extra):
    if kind == "gpt2":
        return transformers.GPT2Config(n_layer=2, n_head=2, n_embd=16, vocab_size=V,
                                       n_positions=32, bos_token_id=0, eos_token_id=0, **extra)
    if kind == "llama":
        return transformers.LlamaConfig(hidden_size=16, intermediate_size=32,
                                        num_hidden_layers=2, num_attention_heads=4,
                                        num_key_value_heads=2, vocab_size=V,
                                        max_position_embeddings=32, bos_token_id=0,
                                        eos_token_id=0, pad_token_id=0, **extra)
    return transformers.BertConfig(hidden_size=16, num_hidden_layers=2, num_attention_heads=2,
                                   intermediate_size=32, vocab_size=V,
                                   max_position_embeddings=32, pad_token_id=0, **extra)


def _models(kind: str, dtype=F64, baseline: str = "eager", **extra):
    """(``baseline`` model, softmaxlab model) with the same random weights, in eval mode."""
    torch.manual_seed(0)
    eager = transformers.AutoModel.from_config(_config(kind, **extra),
                                               attn_implementation=baseline)
    ours = transformers.AutoModel.from_config(_config(kind, **extra),
                                              attn_implementation="softmaxlab")
    ours.load_state_dict(eager.state_dict())
    return eager.to(dtype).eval(), ours.to(dtype).eval()


def _ids(key: str, batch: int = 2) -> torch.Tensor:
    return torch.randint(1, V, (batch, T), generator=gen("hf-ids", key))


def _hidden(model, ids, **kw) -> torch.Tensor:
    with torch.no_grad():
        return model(ids, **kw).last_hidden_state


# ============================================================ 1. the attention function
class _Layer(torch.nn.Module):
    def __init__(self, is_causal: bool, mapping: str | None = None, params=None):
        super().__init__()
        self.is_causal = is_causal
        self.config = transformers.PretrainedConfig(softmaxlab_mapping=mapping,
                                                    softmaxlab_params=params)


CASES = ["bool-mask", "min-dtype-float-mask", "causal-no-mask", "not-causal-no-mask",
         "one-query-no-mask", "gqa-bool-mask", "position-bias-causal"]


@pytest.mark.parametrize("case", CASES)
@pytest.mark.parametrize("name", RUNS)
def test_attention_function_matches_the_oracle(name, case):
    """(B, H, L, D) in, (B, L, H, D) out, equal to the float64 oracle on the scores
    transformers means (its min-dtype exclusions as -inf, causal top-left)."""
    g = gen("hf-fn", name, case)
    params = NEEDED.get(name, {})
    B, H, Hkv, L, S, D = 2, 4, 4, 5, 5, 3
    if case == "gqa-bool-mask":
        Hkv = 2
    if case == "one-query-no-mask":
        L = 1
    q = torch.randn(B, H, L, D, generator=g, dtype=F64)
    k = torch.randn(B, Hkv, S, D, generator=g, dtype=F64)
    v = torch.randn(B, Hkv, S, D, generator=g, dtype=F64)
    keep = torch.rand(B, 1, L, S, generator=g) > 0.3
    keep[..., 0] = True
    tri = torch.ones(L, S, dtype=torch.bool).tril()
    mask, bias, causal = None, None, case.endswith("causal") or case == "causal-no-mask"
    if case in ("bool-mask", "gqa-bool-mask"):
        mask = keep
    if case == "min-dtype-float-mask":
        mask = torch.zeros(B, 1, L, S, dtype=F64).masked_fill(~keep, torch.finfo(F64).min)
    if case == "position-bias-causal":
        bias = torch.randn(1, H, L, S, generator=g, dtype=F64)
    exp_mask = keep if mask is not None else (tri if causal and L > 1 else None)
    if bias is not None:
        exp_mask = bias.masked_fill(~tri, float("-inf"))
    exp, _ = oracle.attention(q, k, v, attn_mask=exp_mask, scale=0.7, enable_gqa=Hkv < H,
                              mapping=name, **params)
    layer = _Layer(is_causal=causal, mapping=name, params=params)
    out, weights = integration.attention_forward(layer, q, k, v, mask, scaling=0.7,
                                                 position_bias=bias)
    assert weights is None
    assert_close(out, exp.transpose(1, 2), ATTENTION[F64], f"{name} {case}")


def test_is_causal_keyword_overrides_the_module():
    g = gen("hf-causal-kw")
    q, k, v = (torch.randn(1, 2, 4, 3, generator=g, dtype=F64) for _ in range(3))
    layer = _Layer(is_causal=True, mapping="entmax15")
    out, _ = integration.attention_forward(layer, q, k, v, None, is_causal=False)
    exp, _ = oracle.attention(q, k, v, mapping="entmax15")
    assert_close(out, exp.transpose(1, 2), ATTENTION[F64], "is_causal=False")


def test_bad_arguments_raise_naming_them():
    q = torch.randn(1, 2, 4, 3)
    layer = _Layer(is_causal=False)
    expect_raises(ValueError, ["softcap", "30.0"], integration.attention_forward, layer, q, q,
                  q, None, softcap=30.0)
    expect_raises(ValueError, ["s_aux"], integration.attention_forward, layer, q, q, q, None,
                  s_aux=torch.zeros(2))
    layer.config.softmaxlab_params = [("alpha", 1.2)]
    expect_raises(TypeError, ["softmaxlab_params", "list"], integration.attention_forward,
                  layer, q, q, q, None)
    layer.config.softmaxlab_params, layer.config.softmaxlab_mapping = None, "softmaxx"
    expect_raises(ValueError, ["mapping", "'softmaxx'"], integration.attention_forward, layer,
                  q, q, q, None)


# ============================================================ 2. softmax equals eager
@pytest.mark.parametrize("dtype, baseline", [(F64, "sdpa"), (F32, "eager")],
                         ids=["float64-vs-sdpa", "float32-vs-eager"])
@pytest.mark.parametrize("kind", ["gpt2", "llama", "bert"])
def test_softmax_equals_eager_and_sdpa(kind, dtype, baseline):
    """Equal hidden states with no mask and with a padding mask (left padding for the
    decoders, right for BERT); a decoder's padded positions see no key and are not
    compared. float64 against ``"sdpa"``: Llama's eager path computes its softmax in
    float32 whatever the model's dtype."""
    eager, ours = _models(kind, dtype, baseline)
    ids = _ids(kind)
    assert_close(_hidden(ours, ids), _hidden(eager, ids), ATTENTION[dtype], f"{kind} no mask")
    pad = torch.ones(2, T, dtype=torch.long)
    if kind == "bert":
        pad[1, -3:] = 0
        real = torch.ones(2, T, dtype=torch.bool)
    else:
        pad[1, :3] = 0
        real = pad.bool()
    got, want = _hidden(ours, ids, attention_mask=pad), _hidden(eager, ids, attention_mask=pad)
    assert_close(got[real], want[real], ATTENTION[dtype], f"{kind} padding")
    assert not got.isnan().any()


# ============================================================ 3. every normalizer runs
@pytest.mark.parametrize("name", RUNS)
@pytest.mark.parametrize("kind", ["gpt2", "llama", "bert"])
def test_every_normalizer_runs_and_trains(kind, name):
    _, ours = _models(kind, F32)
    ours.train()
    ids = _ids(kind)
    with sa.use_mapping(name, **NEEDED.get(name, {})):
        h = ours(ids).last_hidden_state
        h.square().mean().backward()
    assert h.isfinite().all()
    grads = [p.grad for p in ours.parameters() if p.grad is not None]
    assert grads and all(g.isfinite().all() for g in grads)


# ============================================================ 4. causality and padding
@pytest.mark.parametrize("name", ["softmax", "entmax15", "sparsemax", "taylor_softmax"])
@pytest.mark.parametrize("kind", ["gpt2", "llama"])
def test_later_tokens_never_change_earlier_positions(kind, name):
    _, ours = _models(kind, F64)
    ids = _ids(kind)
    other = ids.clone()
    other[:, 4] = (ids[:, 4] % (V - 1)) + 1
    with sa.use_mapping(name):
        a, b = _hidden(ours, ids), _hidden(ours, other)
        pad = torch.ones(2, T, dtype=torch.long)
        pad[0, :2] = 0
        c, d = _hidden(ours, ids, attention_mask=pad), _hidden(ours, other, attention_mask=pad)
    assert_close(a[:, :4], b[:, :4], ATTENTION[F64], f"{kind} {name} earlier positions")
    assert (a[:, 4:] - b[:, 4:]).abs().amax() > 1e-6, "the change must reach later positions"
    assert_close(c[:, :4], d[:, :4], ATTENTION[F64], f"{kind} {name} earlier, padded")


@pytest.mark.parametrize("name", ["softmax", "entmax15"])
@pytest.mark.parametrize("kind", ["gpt2", "llama"])
def test_decoding_with_a_cache_equals_the_full_forward(kind, name):
    """Prefill 5 tokens, then feed 2 one at a time with the cache (one query: no mask):
    each step's hidden state equals the full sequence's at that position."""
    _, ours = _models(kind, F64)
    ids = _ids(kind)
    with sa.use_mapping(name), torch.no_grad():
        full = ours(ids).last_hidden_state
        out = ours(ids[:, :5], use_cache=True)
        cache = out.past_key_values
        for t in (5, 6):
            out = ours(ids[:, t:t + 1], cache=cache, use_cache=True)
            cache = out.past_key_values
            assert_close(out.last_hidden_state[:, 0], full[:, t], ATTENTION[F64],
                         f"{kind} {name} step {t}")


@pytest.mark.parametrize("name", ["softmax", "entmax15", "sparsemax"])
def test_bert_padding_is_respected(name):
    """Changing a padded token changes no real position's output; BERT is bidirectional
    (changing a real token changes every position)."""
    _, ours = _models("bert", F64)
    ids = _ids("bert")
    pad = torch.ones(2, T, dtype=torch.long)
    pad[:, -2:] = 0
    other = ids.clone()
    other[:, -1] = (ids[:, -1] % (V - 1)) + 1
    real = ids.clone()
    real[:, -3] = (ids[:, -3] % (V - 1)) + 1
    with sa.use_mapping(name):
        a = _hidden(ours, ids, attention_mask=pad)
        b = _hidden(ours, other, attention_mask=pad)
        c = _hidden(ours, real, attention_mask=pad)
    assert_close(a[:, :-2], b[:, :-2], ATTENTION[F64], f"{name} padded token changed")
    assert ((a[:, :-3] - c[:, :-3]).abs().amax(-1) > 1e-6).all(), "bidirectional"


# ============================================================ 5. choosing the mapping
def test_mapping_from_config_and_the_context_wins():
    _, plain = _models("llama", F64)
    _, configured = _models("llama", F64, softmaxlab_mapping="entmax",
                            softmaxlab_params={"alpha": 1.25})
    ids = _ids("cfg")
    h_cfg = _hidden(configured, ids)
    with sa.use_mapping("entmax", alpha=1.25):
        h_ctx = _hidden(plain, ids)
    assert_close(h_cfg, h_ctx, ATTENTION[F64], "config = context")
    assert (h_cfg - _hidden(plain, ids)).abs().amax() > 1e-6
    with sa.use_mapping("softmax"):
        assert_close(_hidden(configured, ids), _hidden(plain, ids), ATTENTION[F64],
                     "context over config")


def test_the_mapping_is_saved_with_the_config(tmp_path):
    _, ours = _models("gpt2", F32, softmaxlab_mapping="sparsemax")
    ours.save_pretrained(tmp_path)
    loaded = transformers.AutoModel.from_pretrained(tmp_path, attn_implementation="softmaxlab")
    assert loaded.config.softmaxlab_mapping == "sparsemax"
    ids = _ids("save")
    assert_close(_hidden(loaded.eval(), ids), _hidden(ours, ids), ATTENTION[F32], "reloaded")


def test_scale_default_is_one_over_sqrt_d():
    g = gen("hf-scale")
    q, k, v = (torch.randn(1, 2, 3, 4, generator=g, dtype=F64) for _ in range(3))
    out, _ = integration.attention_forward(_Layer(False), q, k, v, None)
    exp, _ = oracle.attention(q, k, v, scale=1 / math.sqrt(4))
    assert_close(out, exp.transpose(1, 2), ATTENTION[F64], "default scale")


@pytest.mark.parametrize("kind", ["gpt2", "llama"])
def test_compiled_model_equals_eager_and_follows_the_context(kind):
    """``torch.compile(fullgraph=True)`` of a model (mapping from the config) equals eager;
    inside ``use_mapping`` it recompiles for the new mapping, and back outside."""
    torch._dynamo.reset()
    _, ours = _models(kind, F32, softmaxlab_mapping="entmax15")
    ids = _ids(kind)
    compiled = torch.compile(ours, fullgraph=True, backend="aot_eager")
    assert_close(_hidden(compiled, ids), _hidden(ours, ids), ATTENTION[F32], "config mapping")
    with sa.use_mapping("sparsemax"):
        sparse = _hidden(ours, ids)
        assert_close(_hidden(compiled, ids), sparse, ATTENTION[F32], "context mapping")
    assert (sparse - _hidden(ours, ids)).abs().amax() > 1e-6
    assert_close(_hidden(compiled, ids), _hidden(ours, ids), ATTENTION[F32], "back outside")
