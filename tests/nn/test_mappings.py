"""softmaxlab.nn: one module per registered function (same signature, same result,
parameters registered) and the Maxout layer."""

from __future__ import annotations

import pytest
import torch
from torch import nn
from torch.func import functional_call

from softmaxlab.nn import MappingModule, Maxout, module_for

from .._helpers import (
    BAD_PARAMS,
    CASES,
    DEFAULT_CASES,
    FUNCTIONS,
    TENSOR_PARAM_CASES,
    Case,
    expect_raises,
    expected_error,
    finite_part,
    gen,
    ids,
    random_mask,
    signature_params,
)

F64 = torch.float64


def build(case: Case, dim: int = -1) -> MappingModule:
    return module_for(case.fn)(dim, **case.kwargs)


@pytest.mark.parametrize("mapping, fn", FUNCTIONS, ids=ids)
def test_module_signature_matches_functional(mapping, fn):
    """__init__(dim=-1, *, <params>): the functional's signature less x, mask and dtype (the
    per-call arguments of forward)."""
    cls = module_for(fn)
    assert issubclass(cls, MappingModule) and cls.function is fn
    want = [(p.name, p.kind, p.default) for p in signature_params(fn)
            if p.name not in ("x", "mask", "dtype")]
    got = [(p.name, p.kind, p.default) for p in signature_params(cls.__init__)[1:]]
    assert got == want


@pytest.mark.parametrize("masked", [False, True])
@pytest.mark.parametrize("dim", [-1, 1])
@pytest.mark.parametrize("case", CASES, ids=ids)
def test_module_forward_equals_functional(case, dim, masked):
    g = gen("module", str(case), dim, masked)
    x = case.logits((2, 4, 5), g)
    mask = random_mask(x.shape, g, max(1, case.min_size), dim) if masked else None
    mod = build(case, dim)
    expected = case(x, dim, mask=mask)
    assert torch.equal(mod(x, mask), expected)
    assert torch.equal(mod(x, mask=mask), expected)
    if mask is None:
        assert torch.equal(mod(x), expected)


@pytest.mark.parametrize("case", CASES, ids=ids)
def test_module_extra_repr(case):
    text = repr(build(case, 1))
    for shown in ["dim=1", *(f"{k}={v!r}" for k, v in case.kwargs.items())]:
        assert shown in text, f"{shown!r} missing from {text!r}"


@pytest.mark.parametrize("case, param", TENSOR_PARAM_CASES, ids=ids)
def test_learned_param_is_registered_and_trained(case, param):
    """A parameter given as nn.Parameter (entmax alpha, softmax temperature) is one of the
    module's parameters and gets a (finite, non-zero) gradient."""
    g = gen("learned", str(case), param.name)
    value = nn.Parameter(torch.tensor(float(param.default), dtype=F64))
    mod = module_for(case.fn)(-1, **{param.name: value})
    assert any(p is value for p in mod.parameters())
    assert dict(mod.named_parameters())[param.name] is value
    x = case.logits((3, 6), g)
    (finite_part(mod(x)) * torch.randn(3, 6, generator=g, dtype=F64)).sum().backward()
    assert value.grad is not None and torch.isfinite(value.grad) and value.grad != 0
    assert "dim=-1" in repr(mod)


@pytest.mark.parametrize("case, param, value", BAD_PARAMS, ids=ids)
def test_bad_param_raises_at_construction(case, param, value):
    expect_raises(expected_error(param, value), [param.name], module_for(case.fn),
                  -1, **{param.name: value})


@pytest.mark.parametrize("case", DEFAULT_CASES, ids=ids)
def test_bad_dim_raises_at_construction(case):
    for dim in (1.0, "0", None, True):
        expect_raises(TypeError, ["dim"], module_for(case.fn), dim, **case.kwargs)


def test_module_for_unknown():
    expect_raises(ValueError, ["sum"], module_for, torch.sum)


# ------------------------------------------------------------------ Maxout
def manual_maxout(layer: Maxout, x: torch.Tensor) -> torch.Tensor:
    """max_j (x W_oj + b_oj), piece j of unit o being row o * pieces + j of the linear."""
    w, b = layer.linear.weight, layer.linear.bias
    units = []
    for o in range(layer.out_features):
        rows = range(o * layer.pieces, (o + 1) * layer.pieces)
        pieces = [x @ w[r] + (b[r] if b is not None else 0) for r in rows]
        units.append(torch.stack(pieces, -1).amax(-1))
    return torch.stack(units, -1)


@pytest.mark.parametrize("bias", [True, False])
@pytest.mark.parametrize("pieces", [1, 3])
@pytest.mark.parametrize("shape", [(4,), (5, 4), (2, 3, 4)], ids=ids)
def test_maxout_matches_manual(shape, pieces, bias):
    torch.manual_seed(0)
    layer = Maxout(4, 3, pieces=pieces, bias=bias).double()
    x = torch.randn(shape, generator=gen("maxout", shape), dtype=F64)
    out = layer(x)
    assert out.shape == (*shape[:-1], 3)
    torch.testing.assert_close(out, manual_maxout(layer, x), rtol=1e-12, atol=1e-12)
    assert "pieces=" + str(pieces) in repr(layer)


def test_maxout_gradcheck():
    torch.manual_seed(0)
    layer = Maxout(4, 3, pieces=2).double()
    x = torch.randn(5, 4, generator=gen("maxout-grad"), dtype=F64, requires_grad=True)
    w = layer.linear.weight.detach().clone().requires_grad_()
    b = layer.linear.bias.detach().clone().requires_grad_()

    def f(x, w, b):
        return functional_call(layer, {"linear.weight": w, "linear.bias": b}, (x,))

    assert torch.autograd.gradcheck(f, (x, w, b))


@pytest.mark.parametrize("kwargs, exc, name", [
    (dict(in_features=0), ValueError, "in_features"),
    (dict(in_features=2.0), TypeError, "in_features"),
    (dict(in_features=True), TypeError, "in_features"),
    (dict(out_features=-1), ValueError, "out_features"),
    (dict(out_features="3"), TypeError, "out_features"),
    (dict(pieces=0), ValueError, "pieces"),
    (dict(pieces=1.5), TypeError, "pieces"),
], ids=ids)
def test_maxout_bad_args(kwargs, exc, name):
    expect_raises(exc, [name], Maxout, **{"in_features": 4, "out_features": 3, **kwargs})
