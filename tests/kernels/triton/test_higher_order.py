"""Higher-order gradients through the Triton kernels (``tests/test_higher_order.py`` for the
CPU kernels and the reference): ``torch.autograd.gradgradcheck`` in float64 (the Triton
kernels take float64, so the kernel's forward and its ``create_graph`` backward are what is
checked), on tiny shapes with excluded entries, for every registered mapping run with the
Triton backend forced (those without a Triton kernel of their own normalize with
``triton.softmax``), ``softmax_topk`` and ``linear_cross_entropy``. A coverage test fails
for a Triton kernel op without a case here.

Under the interpreter on CPU (``TRITON_INTERPRET=1``, see conftest.py); about 30 s.
"""

from __future__ import annotations

import os

import pytest

pytest.importorskip("triton", reason="triton is not installed (pip install -e '.[dev]' or "
                    "'.[triton]')")

import torch

import softmaxlab as sl
from softmaxlab import kernels
from softmaxlab.losses import linear_cross_entropy

from ..._helpers import DEFAULT_CASES, finite_part, gen, ids, random_mask, smooth_point

F64 = torch.float64
pytestmark = [
    pytest.mark.filterwarnings("ignore::RuntimeWarning"),
    pytest.mark.skipif(os.environ.get("TRITON_INTERPRET") != "1", reason="CPU tensors need "
                       "the Triton interpreter: run this folder under TRITON_INTERPRET=1"),
]


def _triton_ops() -> set[str]:
    return {s.op for s in kernels.kernels() if s.backend == "triton"}


def test_every_triton_op_is_covered():
    covered = {"softmax", "sparsemax", "softmax_topk", "linear_cross_entropy", "attention"}
    assert _triton_ops() <= covered, _triton_ops() - covered


@pytest.mark.parametrize("case", DEFAULT_CASES, ids=ids)
def test_mapping_gradgradcheck_on_triton(case):
    g = gen("triton-gradgrad", str(case))
    mask = random_mask((2, 7), g, max(2, case.min_size))
    x = smooth_point(case, (2, 7), g, mask=mask)
    with kernels.use("triton"):
        op = case.mapping.name if case.mapping.name in _triton_ops() else "softmax"
        assert kernels.kernel_name(op, x) == f"triton.{op}"
        xg = x.requires_grad_()
        (grad,) = torch.autograd.grad(finite_part(case(xg, -1, mask=mask)).sum(), xg,
                                      create_graph=True)
        assert grad.requires_grad
        assert torch.autograd.gradgradcheck(
            lambda z: finite_part(case(z, -1, mask=mask)), (xg,))


def test_softmax_topk_gradgradcheck_on_triton():
    x = torch.randn(3, 9, generator=gen("triton-topk"), dtype=F64) * 2
    x[0, ::3] = float("-inf")
    with kernels.use("triton"):
        assert kernels.kernel_name("softmax_topk", x, k=2, n=9) == "triton.softmax_topk"
        assert torch.autograd.gradgradcheck(lambda z: sl.softmax_topk(z, 2)[0],
                                            (x.requires_grad_(),))


@pytest.mark.parametrize("reduction", ["mean", "none"])
def test_linear_cross_entropy_gradgradcheck_on_triton(reduction):
    g = gen("triton-lce", reduction)
    h = torch.randn(4, 3, generator=g, dtype=F64)
    w = torch.randn(5, 3, generator=g, dtype=F64)
    b = torch.randn(5, generator=g, dtype=F64)
    t = torch.tensor([0, -100, 4, 2])
    cw = torch.rand(5, generator=g, dtype=F64) + 0.5

    def loss(h, w, b):
        return linear_cross_entropy(h, w, t, bias=b, class_weight=cw, label_smoothing=0.1,
                                    reduction=reduction, temperature=2.0)

    with kernels.use("triton"):
        assert kernels.kernel_name("linear_cross_entropy", h, mapping="softmax",
                                   params={"temperature": 2.0}, dtypes={F64}) == (
            "triton.linear_cross_entropy")
        inputs = [x.requires_grad_() for x in (h, w, b)]
        assert torch.autograd.gradgradcheck(loss, inputs)


def test_attention_double_backward_is_refused_as_on_cpu():
    """The attention custom op has no second-order formula on any kernel (its backward op
    registers no autograd): through ``triton.attention``, as through ``cpu.attention``, a
    ``create_graph`` gradient differentiated again raises; the reference supports it. (Its
    first-order gradients: tests/kernels/triton/test_attention.py.)"""
    import softmaxlab.attention as sa

    q = torch.randn(1, 1, 3, 4, generator=gen("triton-attention-gradgrad"), dtype=F64)
    for backend, name in (("triton", "triton.attention"), ("cpu", "cpu.attention_sparse")):
        with kernels.use(backend):
            assert kernels.kernel_name("attention", q, sdpa=False, mapping="entmax15") == name
            x = q.clone().requires_grad_()
            (g,) = torch.autograd.grad(sa.scaled_dot_product_attention(
                x, x, x, mapping="entmax15").sum(), x, create_graph=True)
            with pytest.raises(RuntimeError, match="no autograd formula"):
                torch.autograd.grad(g.sum(), x)
    with kernels.use("reference"):
        x = q.clone().requires_grad_()
        (g,) = torch.autograd.grad(sa.scaled_dot_product_attention(
            x, x, x, mapping="entmax15").sum(), x, create_graph=True)
        assert torch.autograd.grad(g.sum(), x)[0].shape == x.shape
