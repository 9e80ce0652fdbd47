"""The common call's shortcut (``registry.eager``): taken exactly where no graph, transform
or option needs the general path, and equal to it wherever taken."""

from __future__ import annotations

import pytest
import torch

import softmaxlab as sl
from softmaxlab import kernels
from softmaxlab.functional._common import GRAPH_FREE
from softmaxlab.kernels import registry

from ..tolerances import ORACLE

pytest.importorskip("numba", reason="the CPU kernels need numba: pip install 'softmaxlab[cpu]'")
from softmaxlab.kernels.cpu import composite  # (imports numba)

#: public function -> the op whose kernel its common call runs
SHORTCUTS = {
    sl.softmax: "softmax", sl.log_softmax: "softmax",
    sl.taylor_softmax: "taylor_softmax", sl.log_taylor_softmax: "taylor_softmax",
    sl.spherical_softmax: "spherical_softmax", sl.log_spherical_softmax: "spherical_softmax",
    sl.sigsoftmax: "sigsoftmax", sl.log_sigsoftmax: "sigsoftmax",
    sl.sparsemax: "sparsemax", sl.entmax15: "entmax15", sl.entmax: "entmax15",
}


def _x(*shape, dtype=torch.float32):
    x = torch.randn(*shape, dtype=dtype, generator=torch.Generator().manual_seed(0)) * 3
    x.view(-1)[1] = float("-inf")
    return x


@pytest.mark.parametrize("fn", list(SHORTCUTS), ids=lambda f: f.__name__)
@pytest.mark.parametrize("shape", [(3, 7), (2, 3, 5), (4, 1)])
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_the_shortcut_equals_the_general_path(fn, shape, dtype):
    x = _x(*shape, dtype=dtype)
    assert registry.eager(SHORTCUTS[fn], x) is not None or dtype == torch.float64
    fast = fn(x)
    general = fn(x, x.dim() - 1)  # a non-default spelling of dim: the general path
    assert fast.dtype == dtype and fast.shape == x.shape
    torch.testing.assert_close(fast, general, rtol=0, atol=0, equal_nan=True)


def test_a_fully_excluded_row_is_zeros_on_the_shortcut():
    x = torch.full((2, 4), float("-inf"))
    x[1] = torch.arange(4.0)
    assert registry.eager("softmax", x) is not None
    assert sl.softmax(x)[0].eq(0).all() and sl.log_softmax(x)[0].eq(float("-inf")).all()
    assert sl.sparsemax(x)[0].eq(0).all() and sl.entmax15(x)[0].eq(0).all()


@pytest.mark.parametrize("case", ["requires_grad", "float16", "scalar", "empty_row",
                                  "subclass", "reference", "conditional_op"])
def test_the_shortcut_is_not_taken(case):
    x = torch.randn(3, 5)
    op = "softmax"
    if case == "requires_grad":
        x.requires_grad_()
    elif case == "float16":
        x = x.half()
    elif case == "scalar":
        x = x[0, 0]
    elif case == "empty_row":
        x = torch.randn(3, 0)
    elif case == "subclass":
        x = torch.nn.Parameter(x, requires_grad=False)
    elif case == "conditional_op":
        op = "softmax_topk"  # its kernel applies to long rows only: decided per call
    if case == "reference":
        with kernels.use("reference"):
            assert registry.eager(op, x) is None
    else:
        assert registry.eager(op, x) is None


def test_grad_mode_off_takes_the_shortcut_for_a_leaf_that_requires_grad():
    x = torch.randn(3, 5, requires_grad=True)
    with torch.no_grad():
        assert registry.eager("softmax", x) is not None
        p = sl.softmax(x)
    assert not p.requires_grad
    torch.testing.assert_close(p, torch.softmax(x.detach(), -1))


def test_the_shortcut_follows_the_requested_backend(monkeypatch):
    x = torch.randn(3, 5)
    assert registry.eager("softmax", x).name == "cpu.softmax"
    monkeypatch.setenv(registry.ENV_VAR, "reference")
    assert registry.eager("softmax", x) is None
    monkeypatch.setenv(registry.ENV_VAR, "bogus")
    with pytest.raises(ValueError, match="bogus"):
        sl.softmax(x)
    monkeypatch.delenv(registry.ENV_VAR)
    with kernels.use("reference"):
        assert registry.eager("softmax", x) is None
    assert registry.eager("softmax", x).name == "cpu.softmax"


def test_the_shortcut_is_not_taken_inside_transforms_and_traces():
    x = torch.randn(3, 5)
    seen = []

    def probe(t):
        seen.append(registry.eager("softmax", t))
        return sl.softmax(t)

    torch.vmap(probe)(x)
    torch.jit.trace(probe, x, check_trace=False)  # the check reruns probe untraced
    compiled = torch.compile(probe, fullgraph=True, backend="eager")
    torch.testing.assert_close(compiled(x), torch.softmax(x, -1))
    assert seen and all(s is None for s in seen)


def test_options_take_the_general_path_and_still_validate():
    x = torch.randn(3, 5)
    with pytest.raises(TypeError, match="dim"):
        sl.softmax(x, -1.0)
    with pytest.raises(TypeError, match="n_iter"):
        sl.entmax(x, n_iter=2.5)
    torch.testing.assert_close(sl.softmax(x, temperature=2.0), torch.softmax(x / 2, -1))
    torch.testing.assert_close(sl.entmax(x, alpha=1.5), sl.entmax15(x))


def test_cross_entropy_common_call_is_torch_fused_loss_and_falls_back_where_it_must():
    from softmaxlab import losses

    z = torch.randn(6, 5, generator=torch.Generator().manual_seed(1))
    t = torch.tensor([0, 4, 2, 1, 3, 0])
    assert registry.eager("cross_entropy", z, (("mapping", "softmax"), ("params", ()))) is not None
    torch.testing.assert_close(losses.cross_entropy(z, t),
                               torch.nn.functional.cross_entropy(z, t), rtol=0, atol=0)
    torch.testing.assert_close(losses.cross_entropy(z, t),
                               losses.cross_entropy(z, t, reduction="sum") / 6)
    z[2] = float("-inf")  # a row with nothing kept: torch's NaN, the contract's value
    assert torch.isfinite(losses.cross_entropy(z[[0, 1]], t[[0, 1]]))
    assert not torch.isnan(losses.cross_entropy(z, t))
    with pytest.raises(ValueError, match="9"):
        losses.cross_entropy(torch.randn(3, 5), torch.tensor([0, 9, 1]))
    with pytest.raises(ValueError, match="shape"):
        losses.cross_entropy(torch.randn(3, 5), torch.tensor([0, 1]))


@pytest.mark.parametrize(("shape", "k"), [((4, 8), 2), ((3, 2048), 5), ((2, 3, 9), 9)])
def test_softmax_topk_common_call_equals_the_general_path(shape, k):
    x = torch.randn(*shape, generator=torch.Generator().manual_seed(2))
    x.view(-1)[3] = float("-inf")
    p, idx = sl.softmax_topk(x, k)
    p_general, idx_general = sl.softmax_topk(x, k, dim=x.dim() - 1)
    torch.testing.assert_close(p, p_general, rtol=0, atol=0)
    assert torch.equal(idx, idx_general)
    ref = torch.softmax(x.double(), -1).gather(-1, x.topk(k, -1).indices)
    torch.testing.assert_close(p.double(), ref, rtol=1e-5, atol=1e-7)


# ---------------------------------------------------------------- forward-only composites
#: public call -> (op, its forward-only row function called as the common call does)
COMPOSITES = {
    "sparse_softmax(k=3)": (lambda x: sl.sparse_softmax(x, k=3), "sparse_softmax",
                            lambda x: composite.sparse_output(x, 3)),
    "normalize": (sl.normalize, "normalize", composite.normalize_output),
    **{f"{name}({a})": (lambda x, f=fn, a=a: f(x, activation=a), "activation_normalize",
                        lambda x, a=a, log=log: composite.activation_output(x, a, log))
       for a in composite.ACTIVATIONS
       for name, fn, log in (("activation_normalize", sl.activation_normalize, False),
                             ("log_activation_normalize", sl.log_activation_normalize, True))},
}


def _composite_input(name: str, shape, dtype=torch.float32) -> torch.Tensor:
    g = torch.Generator().manual_seed(3)
    x = torch.randn(*shape, generator=g, dtype=torch.float64) * 3
    if name == "normalize":
        x = x.abs()
    x.view(-1)[1] = float("-inf")
    x.view(-1)[-1] = 1e30 if "normalize(" not in name or "relu" in name else 40.0
    return x.to(dtype)


@pytest.mark.parametrize("name", list(COMPOSITES))
@pytest.mark.parametrize("shape", [(4, 8), (2, 3, 5), (5, 1)])
def test_composite_shortcut_equals_the_reference(name, shape):
    """The graph-free small call runs the forward-only kernel (the row function serves it
    and the public call returns exactly its result), equal to the reference and to the
    reference in float64 on the same values within the oracle tolerance."""
    fn, op, row = COMPOSITES[name]
    x = _composite_input(name, shape)
    if "k=3" in name and shape[-1] < 3:
        x = torch.cat([x] * 3, -1)
    assert registry.eager(op, x, GRAPH_FREE).name == f"cpu.{op}"
    assert registry.eager(op, x) is None and kernels.kernel_name(op, x) == "reference"
    fast = row(x)
    assert fast is not None
    out = fn(x)
    torch.testing.assert_close(out, fast, rtol=0, atol=0)
    with kernels.use("reference"):
        ref, ref64 = fn(x), fn(x.double())
    tol = ORACLE[torch.float32]
    torch.testing.assert_close(out, ref, rtol=tol.rtol, atol=tol.atol)
    torch.testing.assert_close(out.double(), ref64, rtol=tol.rtol, atol=tol.atol)


@pytest.mark.parametrize("name", list(COMPOSITES))
def test_composite_rows_with_nothing_kept_or_nan(name):
    fn, _, row = COMPOSITES[name]
    x = _composite_input(name, (3, 6))
    x[0] = float("-inf")
    x[1, 2] = float("nan")
    fast = row(x)
    if name == "normalize":  # NaN: declined, the general path answers
        assert fast is None
        x[1, 2] = 1.0
        fast = row(x)
    with kernels.use("reference"):
        ref = fn(x)
    torch.testing.assert_close(fast, ref, rtol=1e-5, atol=4e-6, equal_nan=True)
    torch.testing.assert_close(fn(x), ref, rtol=1e-5, atol=4e-6, equal_nan=True)
    empty = 0.0 if not name.startswith("log_") else float("-inf")
    assert fast[0].eq(empty).all()


@pytest.mark.parametrize("case", ["tie", "inf", "large_k", "bool_k"])
def test_sparse_softmax_shortcut_declines_where_the_reference_decides(case):
    x = torch.tensor([[3.0, 1.0, 2.0, 1.0], [0.0, 1.0, 2.0, 3.0]])
    k = 2
    if case == "tie":  # the 2nd largest of row 0 has a twin: torch.topk breaks the tie
        x[0] = torch.tensor([3.0, 2.0, 2.0, 1.0])
    elif case == "inf":
        x[1, 0] = float("inf")
    elif case == "large_k":
        x, k = torch.randn(2, 40), composite.MAX_K + 1
    else:
        k = True
    assert composite.sparse_output(x, k) is None
    if case == "bool_k":
        with pytest.raises(TypeError, match="k"):
            sl.sparse_softmax(x, k=k)
        return
    general = sl.sparse_softmax(x, k=k, dim=1)  # the general path, spelled out
    torch.testing.assert_close(sl.sparse_softmax(x, k=k), general, rtol=0, atol=0,
                               equal_nan=True)


def test_sparse_softmax_shortcut_serves_ties_inside_the_top_k():
    x = torch.tensor([[3.0, 3.0, 2.0, 1.0], [1.0, 1.0, 1.0, 1.0]])
    fast = composite.sparse_output(x, 2)
    assert fast is None  # row 1: four equal values, the 2nd has twins
    fast = composite.sparse_output(x[:1].contiguous(), 2)
    torch.testing.assert_close(fast, torch.tensor([[0.5, 0.5, 0.0, 0.0]]), rtol=0, atol=0)


def test_composite_shortcuts_still_validate():
    x = torch.rand(3, 5)
    with pytest.raises(ValueError, match="k must be <= the size"):
        sl.sparse_softmax(x, k=6)
    with pytest.raises(ValueError, match="k"):
        sl.sparse_softmax(x, k=0)
    with pytest.raises(ValueError, match="activation"):
        sl.activation_normalize(x, activation="tanh")
    x[1, 2] = -0.5
    assert composite.normalize_output(x) is None
    with pytest.raises(ValueError, match=r"-0\.5"):
        sl.normalize(x)
    x[1, 2] = float("inf")
    assert composite.normalize_output(x) is None
    torch.testing.assert_close(sl.normalize(x), sl.normalize(x, dim=1), rtol=0, atol=0,
                               equal_nan=True)


@pytest.mark.parametrize("name", list(COMPOSITES))
def test_composite_calls_with_a_graph_take_the_reference(name):
    fn, op, _ = COMPOSITES[name]
    x = _composite_input(name, (3, 6)).requires_grad_()
    assert registry.eager(op, x, GRAPH_FREE) is None
    out = fn(x)
    assert out.requires_grad
    out.masked_fill(~torch.isfinite(out), 0).sum().backward()
    assert torch.isfinite(x.grad).all()


@pytest.mark.parametrize("log", [False, True])
def test_softplus_shortcut_across_its_branches(log):
    """The branch-free log-softplus (log1p from log, ``z - e^z / 2`` below -20) against the
    float64 reference, on logits that cross every branch point (-20, 0, 20) and underflow."""
    x = torch.linspace(-60, 60, 97).reshape(1, 97)
    x = torch.cat([x, x[:, :40] - 30.0, x[:, 30:60]], -1)  # rows mixing tiny and large scores
    fast = composite.activation_output(x, "softplus", log)
    assert fast is not None
    fn = sl.log_activation_normalize if log else sl.activation_normalize
    with kernels.use("reference"):
        ref64 = fn(x.double())
    tol = ORACLE[torch.float32]
    torch.testing.assert_close(fast.double(), ref64, rtol=tol.rtol, atol=tol.atol)
    z = torch.tensor([[-25.0, -20.5, -19.5, -5.0]])  # one row of small scores: relative error
    p = composite.activation_output(z, "softplus", False).double()
    with kernels.use("reference"):
        torch.testing.assert_close(p, sl.activation_normalize(z.double()), rtol=tol.rtol, atol=0)
