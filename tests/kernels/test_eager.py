"""The common call's shortcut (``registry.eager``): taken exactly where no graph, transform
or option needs the general path, and equal to it wherever taken."""

from __future__ import annotations

import pytest
import torch

import softmaxlab as sl
from softmaxlab import kernels
from softmaxlab.kernels import registry

pytest.importorskip("numba", reason="the CPU kernels need numba: pip install 'softmaxlab[cpu]'")

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
