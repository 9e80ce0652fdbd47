"""Every loss of softmaxlab.losses under ``torch.compile(fullgraph=True)``: no graph break
(``torch._dynamo.explain``), and the compiled loss equals eager in value and gradient.

The mapping is ``softmax`` (``sparsemax`` for Fenchel-Young) with
``SOFTMAXLAB_BACKEND=reference``. Value checks (a target id out of range, a cosine outside
[-1, 1], negative graph weights) run in eager mode only; the last tests check that they
still raise there. The equality runs through the ``aot_eager`` backend, which traces the
forward and the backward graphs (AOTAutograd) without code generation; one case also runs
through the default inductor backend. Shapes are tiny to keep compile time low.
"""

from __future__ import annotations

import pytest
import torch

import softmaxlab as sl
from softmaxlab import losses as L
from softmaxlab.losses._common import checks_values

F64 = torch.float64
#: raised inside torch's own tracing machinery, not by softmaxlab
pytestmark = pytest.mark.filterwarnings(
    "ignore:`torch.jit.script_method` is deprecated:DeprecationWarning")


@pytest.fixture(autouse=True)
def _reference_backend_fresh_dynamo(monkeypatch):
    monkeypatch.setenv("SOFTMAXLAB_BACKEND", "reference")
    torch._dynamo.reset()
    yield
    torch._dynamo.reset()


def _gen():
    return torch.Generator().manual_seed(1234)


def _z(*shape, scale=2.0):
    return torch.randn(*shape, generator=_gen(), dtype=F64) * scale


def _cosine(n=4, c=5):
    return torch.rand(n, c, generator=_gen(), dtype=F64) * 1.8 - 0.9


T = torch.tensor([0, 1, 4, 2])
T_IGNORED = torch.tensor([0, -100, 4, 2])
W = torch.tensor([0.5, 1.0, 1.5, 2.0, 0.7], dtype=F64)
EDGES = (torch.tensor([[0, 1, 3], [1, 2, 4]]), torch.tensor([1.0, 2.0, 0.5], dtype=F64))
SAMPLES = torch.tensor([0, 2, 3])


def _probs():
    return torch.rand(4, 5, generator=_gen(), dtype=F64).softmax(-1)


#: name -> (loss of the differentiable inputs, the inputs)
CASES = {
    "cross_entropy-index": (
        lambda z: L.cross_entropy(z, T_IGNORED, weight=W, label_smoothing=0.1),
        lambda: (_z(4, 5),)),
    "cross_entropy-index-none-NCd": (
        lambda z: L.cross_entropy(z, torch.tensor([[0, 1], [4, -100]]), reduction="none"),
        lambda: (_z(2, 5, 2),)),
    "cross_entropy-probs": (
        lambda z, y: L.cross_entropy(z, y, weight=W, label_smoothing=0.1),
        lambda: (_z(4, 5), _probs())),
    "fenchel_young-index": (
        lambda z: L.fenchel_young_loss(z, T_IGNORED, mapping="sparsemax", weight=W),
        lambda: (_z(4, 5),)),
    "fenchel_young-probs": (
        lambda z, y: L.fenchel_young_loss(z, y, mapping="sparsemax", reduction="sum"),
        lambda: (_z(4, 5), _probs())),
    "soft_margin": (
        lambda z: L.soft_margin_loss(z, T_IGNORED, margin=0.5, weight=W), lambda: (_z(4, 5),)),
    "am_softmax": (lambda c: L.am_softmax_loss(c, T, scale=10.0), lambda: (_cosine(),)),
    "am_softmax-real": (
        lambda c: L.am_softmax_loss(c, T, scale=10.0, real=True), lambda: (_cosine(),)),
    "arcface": (lambda c: L.arcface_loss(c, T_IGNORED, scale=10.0), lambda: (_cosine(),)),
    "sparse_softmax": (lambda z: L.sparse_softmax_loss(z, T, k=2), lambda: (_z(4, 5),)),
    "ensemble_soft_margin": (
        lambda a, b: L.ensemble_soft_margin_loss([a, b], T_IGNORED, margin=0.3, diversity=0.5),
        lambda: (_z(4, 5), _z(4, 5, scale=1.0).flip(0))),
    "nce": (lambda h, w: L.nce_loss(h, w, T, samples=SAMPLES, noise="uniform"),
            lambda: (_z(4, 3), _z(5, 3))),
    "sampled_softmax": (
        lambda h, w: L.sampled_softmax_loss(h, w, T, samples=SAMPLES),
        lambda: (_z(4, 3), _z(5, 3))),
    "linear_cross_entropy": (
        lambda h, w: L.linear_cross_entropy(h, w, T_IGNORED, chunk_size=3, label_smoothing=0.1),
        lambda: (_z(4, 3), _z(5, 3))),
    "linear_cross_entropy-none": (
        lambda h, w: L.linear_cross_entropy(h, w, T, chunk_size=3, reduction="none"),
        lambda: (_z(4, 3), _z(5, 3))),
    "graph_tv_penalty": (lambda p: L.graph_tv_penalty(p, EDGES, weight=0.3), lambda: (_probs(),)),
}


def _value_and_grads(fn, inputs):
    """fn(*inputs) and the gradients of sum(up * value) (up != 1, so a compiled backward
    really scales its incoming gradient)."""
    leaves = [x.detach().clone().requires_grad_(True) for x in inputs]
    out = fn(*leaves)
    up = torch.linspace(0.3, 1.7, out.numel(), dtype=out.dtype).reshape(out.shape)
    (out * up).sum().backward()
    return out.detach(), [x.grad for x in leaves]


def _check_compiled(fn, inputs, backend, tol):
    explained = torch._dynamo.explain(fn)(*inputs)
    assert explained.graph_break_count == 0, explained.break_reasons
    torch._dynamo.reset()
    eager, g_eager = _value_and_grads(fn, inputs)
    compiled, g_compiled = _value_and_grads(torch.compile(fn, fullgraph=True, backend=backend),
                                            inputs)
    torch.testing.assert_close(compiled, eager, **tol)
    for a, b in zip(g_compiled, g_eager, strict=True):
        torch.testing.assert_close(a, b, **tol)


@pytest.mark.parametrize("name", list(CASES))
def test_loss_compiles_without_graph_break_and_equals_eager(name):
    fn, inputs = CASES[name]
    _check_compiled(fn, inputs(), "aot_eager", dict(rtol=1e-12, atol=1e-13))


@pytest.mark.parametrize("mapping", [m.name for m in sl.mappings()
                                     if m.log_fn is not None and m.normalized])
def test_cross_entropy_every_log_mapping_compiles(mapping):
    def fn(z, y):
        return (L.cross_entropy(z, T_IGNORED, mapping=mapping, label_smoothing=0.1)
                + L.cross_entropy(z, y, mapping=mapping, weight=W))

    _check_compiled(fn, (_z(4, 5) + 0.1, _probs()), "aot_eager", dict(rtol=1e-12, atol=1e-13))


def test_fenchel_young_entmax_bisection_compiles():
    def fn(z):
        return L.fenchel_young_loss(z, T_IGNORED, mapping="entmax", alpha=1.5, weight=W)

    _check_compiled(fn, (_z(4, 5),), "aot_eager", dict(rtol=1e-12, atol=1e-13))


def test_cross_entropy_with_inductor():
    def fn(z, y):
        return L.cross_entropy(z, y, label_smoothing=0.1) + L.cross_entropy(z, T_IGNORED, weight=W)

    _check_compiled(fn, (_z(4, 5), _probs()), "inductor", dict(rtol=1e-10, atol=1e-12))


def test_value_checks_are_eager_only():
    assert checks_values()
    f = torch.compile(lambda x: x + 1 if checks_values() else x - 1, fullgraph=True,
                      backend="aot_eager")
    assert f(torch.zeros(1)).item() == -1.0
    assert checks_values()


def test_value_checks_still_raise_in_eager():
    with pytest.raises(ValueError, match="target values"):
        L.cross_entropy(_z(4, 5), torch.tensor([0, 1, 5, 2]))
    with pytest.raises(ValueError, match="cosine"):
        L.am_softmax_loss(_cosine() * 2, T)
    with pytest.raises(ValueError, match="cosine"):
        L.arcface_loss(_cosine() * 2, T)
    with pytest.raises(ValueError, match="edge weights"):
        L.graph_tv_penalty(_probs(), (EDGES[0], -EDGES[1]))
    with pytest.raises(ValueError, match="node ids"):
        L.graph_tv_penalty(_probs(), (EDGES[0] + 2, EDGES[1]))
    with pytest.raises(ValueError, match="target values"):
        L.linear_cross_entropy(_z(4, 3), _z(5, 3), torch.tensor([0, 1, 7, 2]))


def test_hsic_keep_mask_equals_the_kept_rows():
    a, b = _z(6, 3), _z(6, 4, scale=1.0).flip(0)
    keep = torch.tensor([True, False, True, True, False, True])
    torch.testing.assert_close(L.hsic(a, b, keep), L.hsic(a[keep], b[keep]), rtol=1e-12,
                               atol=1e-14)
    one = torch.tensor([True] + [False] * 5)
    assert L.hsic(a, b, one).item() == 0.0  # a single kept row: no dependence, no NaN
