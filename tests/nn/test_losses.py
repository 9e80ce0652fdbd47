"""The loss modules of softmaxlab.nn.losses: one thin module per function of
softmaxlab.losses with the same keyword options (DESIGN.md §1, §3: "A module only stores
arguments"), forward equal to the function, tensor options as buffers, a readable repr.
"""

from __future__ import annotations

import copy
import inspect

import pytest
import torch

from softmaxlab import losses as L
from softmaxlab.nn import losses as NL

from .._helpers import gen

F64 = torch.float64


N, C, D = 6, 5, 4


def _x(*key):
    return torch.randn(N, C, generator=gen("x", *key), dtype=F64)


def _t():
    """Targets with one row ignored by the (non-default) ignore_index -1 every case uses."""
    return torch.tensor([0, 4, 2, -1, 1, 2])


def _cos(*key):
    return torch.rand(N, C, generator=gen("cos", *key), dtype=F64) * 1.8 - 0.9


def _hwt(*key):
    g = gen("hwt", *key)
    return (torch.randn(N, D, generator=g, dtype=F64), torch.randn(C, D, generator=g, dtype=F64),
            _t())


def _probs():
    return torch.softmax(_x("probs"), -1)


def _graph(dtype=F64):
    a = torch.zeros(C, C, dtype=dtype)
    a[0, 1], a[1, 2], a[3, 4], a[4, 0] = 1.0, 0.5, 2.0, 0.25
    return a


def _weight(dtype=torch.float32):
    return (torch.rand(C, generator=gen("w"), dtype=F64) + 0.5).to(dtype)


# module, function, non-tensor options for a forward test (every one not its default),
# inputs, tensor option name
CASES = {
    "CrossEntropyLoss": (NL.CrossEntropyLoss, L.cross_entropy,
                         dict(mapping="taylor_softmax", order=4, ignore_index=-1,
                              reduction="sum", label_smoothing=0.1),
                         lambda: (_x("ce"), _t()), "weight"),
    "FenchelYoungLoss": (NL.FenchelYoungLoss, L.fenchel_young_loss,
                         dict(mapping="entmax", alpha=1.25, reduction="none",
                              label_smoothing=0.05, ignore_index=-1),
                         lambda: (_x("fy"), _t()), "weight"),
    "SoftMarginLoss": (NL.SoftMarginLoss, L.soft_margin_loss,
                       dict(margin=0.3, mapping="taylor_softmax", order=2, reduction="sum",
                            label_smoothing=0.1, ignore_index=-1),
                       lambda: (_x("sm"), _t()), "weight"),
    "AMSoftmaxLoss": (NL.AMSoftmaxLoss, L.am_softmax_loss,
                      dict(scale=10.0, margin=0.2, real=True, reduction="none", ignore_index=-1),
                      lambda: (_cos("am"), _t()), "weight"),
    "ArcFaceLoss": (NL.ArcFaceLoss, L.arcface_loss,
                    dict(scale=16.0, margin=0.3, label_smoothing=0.1, reduction="sum",
                         ignore_index=-1),
                    lambda: (_cos("arc"), _t()), "weight"),
    "EnsembleSoftMarginLoss": (NL.EnsembleSoftMarginLoss, L.ensemble_soft_margin_loss,
                               dict(margin=0.2, diversity=0.5, reduction="sum", ignore_index=-1),
                               lambda: ([_x("e1"), _x("e2"), _x("e3")], _t()), "weight"),
    "SparseSoftmaxLoss": (NL.SparseSoftmaxLoss, L.sparse_softmax_loss,
                          dict(k=2, reduction="none", ignore_index=-1),
                          lambda: (_x("ss"), _t()), "weight"),
    "SampledSoftmaxLoss": (NL.SampledSoftmaxLoss, L.sampled_softmax_loss,
                           dict(num_sampled=7, noise="uniform", remove_accidental_hits=False,
                                reduction="sum", ignore_index=-1),
                           lambda: _hwt("samp"), None),
    "NCELoss": (NL.NCELoss, L.nce_loss,
                dict(num_sampled=3, noise=L.Noise.log_uniform(C), reduction="none",
                     remove_accidental_hits=False, ignore_index=-1),
                lambda: _hwt("nce"), None),
    "LinearCrossEntropyLoss": (NL.LinearCrossEntropyLoss, L.linear_cross_entropy,
                               dict(mapping="taylor_softmax", order=2, chunk_size=4,
                                    label_smoothing=0.2, reduction="none", ignore_index=-1),
                               lambda: _hwt("lce"), "class_weight"),
    "GraphTVPenalty": (NL.GraphTVPenalty, L.graph_tv_penalty,
                       dict(weight=0.5, reduction="sum"), lambda: (_probs(),), "graph"),
}


def test_every_loss_module_is_covered():
    found = {name for name, obj in vars(NL).items()
             if inspect.isclass(obj) and issubclass(obj, NL.LossModule)
             and obj is not NL.LossModule}
    assert found == set(CASES), f"untested modules: {found - set(CASES)}; " \
                                f"missing: {set(CASES) - found}"


def _params(fn, kinds):
    return {p.name: p.default for p in inspect.signature(fn).parameters.values()
            if p.kind in kinds}


@pytest.mark.parametrize("name", list(CASES))
def test_init_signature_matches_function(name):
    module, fn, *_ = CASES[name]
    kw = (inspect.Parameter.KEYWORD_ONLY,)
    expected = _params(fn, kw)
    got = _params(module.__init__, kw)
    differ = {k: (got[k], expected[k]) for k in set(got) & set(expected) if got[k] != expected[k]}
    assert got == expected, (
        f"{name}.__init__ keyword options differ from {fn.__name__}: missing "
        f"{sorted(set(expected) - set(got))}, extra {sorted(set(got) - set(expected))}, "
        f"different defaults {differ}")
    var_kw = (inspect.Parameter.VAR_KEYWORD,)
    assert bool(_params(module.__init__, var_kw)) == bool(_params(fn, var_kw)), \
        f"{name}: **mapping_params present in one but not the other"
    positional = [p for p in inspect.signature(module.__init__).parameters.values()
                  if p.kind in (p.POSITIONAL_ONLY, p.POSITIONAL_OR_KEYWORD) and p.name != "self"]
    if name == "GraphTVPenalty":
        assert [p.name for p in positional] == ["graph"]
        assert positional[0].default is inspect.Parameter.empty
    else:
        assert positional == [], f"{name} takes positional options {positional}"


def _call_options(name, tensor_value):
    _, _, options, _, tensor_opt = CASES[name]
    opts = dict(options)
    if tensor_opt and tensor_opt != "graph":
        opts[tensor_opt] = tensor_value
    return opts


def _forward_pair(name, tensor_value):
    """(module output, function output) on the same inputs; gradient pairs too."""
    module_cls, fn, _, make_inputs, _tensor_opt = CASES[name]
    opts = _call_options(name, tensor_value)
    if name == "GraphTVPenalty":
        module = module_cls(tensor_value, **opts)
        fn_opts = dict(opts)
        fn_args_extra = (tensor_value,)
    else:
        module = module_cls(**opts)
        fn_opts, fn_args_extra = opts, ()
    results = []
    for call in (lambda *a: module(*a), lambda *a: fn(*a[:1], *fn_args_extra, *a[1:], **fn_opts)):
        inputs = make_inputs()
        leaves = []
        args = []
        for a in inputs:
            if isinstance(a, list):
                a = [z.clone().requires_grad_() for z in a]
                leaves += a
            elif a.is_floating_point():
                a = a.clone().requires_grad_()
                leaves.append(a)
            args.append(a)
        torch.manual_seed(1234)  # the sampled losses draw from the global generator
        out = call(*args)
        out.sum().backward()
        results.append((out.detach(), [x.grad for x in leaves]))
    return module, results


@pytest.mark.parametrize("name", list(CASES))
def test_forward_equals_function(name):
    tensor_opt = CASES[name][4]
    value = _graph() if tensor_opt == "graph" else (_weight(F64) if tensor_opt else None)
    _, ((out_m, g_m), (out_f, g_f)) = _forward_pair(name, value)
    assert out_m.shape == out_f.shape
    assert torch.equal(out_m, out_f), (out_m, out_f)
    assert len(g_m) == len(g_f)
    for a, b in zip(g_m, g_f, strict=True):
        assert torch.equal(a, b)
    if tensor_opt and tensor_opt != "graph":
        # the tensor option is really used: without it the result differs
        _, ((plain, _), _) = _forward_pair(name, None)
        assert not torch.equal(plain, out_m)


TENSOR_CASES = [n for n in CASES if CASES[n][4]]


@pytest.mark.parametrize("name", TENSOR_CASES)
def test_tensor_options_are_buffers_and_follow_dtype(name):
    module_cls, fn, _, make_inputs, tensor_opt = CASES[name]
    value = _graph(torch.float32) if tensor_opt == "graph" else _weight(torch.float32)
    opts = _call_options(name, value)
    module = module_cls(value, **opts) if name == "GraphTVPenalty" else module_cls(**opts)
    bufs = dict(module.named_buffers())
    keys = [k for k, v in bufs.items() if v is not None and k.endswith(tensor_opt)]
    assert len(keys) == 1, f"{tensor_opt} is not one buffer: {list(bufs)}"
    key = keys[0]
    assert key in module.state_dict() and torch.equal(module.state_dict()[key], value)
    assert len(list(module.parameters())) == 0
    half = copy.deepcopy(module).to(torch.float16)
    assert dict(half.named_buffers())[key].dtype == torch.float16
    assert dict(module.named_buffers())[key].dtype == torch.float32
    module.double()
    assert dict(module.named_buffers())[key].dtype == F64
    # after .double() the module computes what the function computes with a float64 option
    inputs = make_inputs()
    fn_opts = dict(opts)
    if name == "GraphTVPenalty":
        expected = fn(inputs[0], value.double(), **fn_opts)
    else:
        fn_opts[tensor_opt] = value.double()
        expected = fn(*inputs, **fn_opts)
    assert torch.equal(module(*inputs), expected)
    # state_dict round trip into a module built with another tensor
    other_value = value.double() * 0 + 1 if tensor_opt != "graph" else value.double() * 2
    other_opts = _call_options(name, other_value)
    other = (module_cls(other_value, **other_opts) if name == "GraphTVPenalty"
             else module_cls(**other_opts))
    assert not torch.equal(other(*inputs), expected)
    other.load_state_dict(module.state_dict())
    assert torch.equal(other(*inputs), expected)


@pytest.mark.parametrize("name", list(CASES))
def test_repr_shows_options(name):
    module_cls, _, options, _, tensor_opt = CASES[name]
    value = _graph() if tensor_opt == "graph" else (_weight() if tensor_opt else None)
    opts = _call_options(name, value)
    module = module_cls(value, **opts) if name == "GraphTVPenalty" else module_cls(**opts)
    text = repr(module)
    assert text.startswith(name + "(")
    for k, v in options.items():
        if isinstance(v, L.Noise):
            assert f"{k}=" in text, (k, text)
        else:
            assert f"{k}={v!r}" in text, (k, v, text)
    if tensor_opt and tensor_opt != "graph":
        assert tensor_opt in text, text


def test_graph_tv_module_sparse_adjacency():
    a = _graph()
    p = _probs()
    module = NL.GraphTVPenalty(a.to_sparse(), weight=2.0, reduction="none")
    assert torch.equal(module(p), L.graph_tv_penalty(p, a, weight=2.0, reduction="none"))
    module.float()
    assert module.graph.dtype == torch.float32 and module.graph.is_sparse
    assert torch.allclose(module(p.float()), L.graph_tv_penalty(p.float(), a.float(), weight=2.0,
                                                                 reduction="none"))


def test_module_defaults_equal_function_defaults_in_use():
    """Built with no options, a module computes the function with its defaults."""
    x, t = _x("defaults"), _t().masked_fill(_t() == -1, -100)
    cos = _cos("defaults")
    h, w, _ = _hwt("defaults")
    tt = t
    assert torch.equal(NL.CrossEntropyLoss()(x, t), L.cross_entropy(x, t))
    assert torch.equal(NL.FenchelYoungLoss()(x, t), L.fenchel_young_loss(x, t))
    assert torch.equal(NL.AMSoftmaxLoss()(cos, t), L.am_softmax_loss(cos, t))
    assert torch.equal(NL.ArcFaceLoss()(cos, t), L.arcface_loss(cos, t))
    assert torch.equal(NL.LinearCrossEntropyLoss()(h, w, tt), L.linear_cross_entropy(h, w, tt))
    p = _probs()
    assert torch.equal(NL.GraphTVPenalty(_graph())(p), L.graph_tv_penalty(p, _graph()))
    with pytest.raises(TypeError):
        NL.SoftMarginLoss()  # margin has no default, as in the function
    with pytest.raises(TypeError):
        NL.SparseSoftmaxLoss()  # k has no default
