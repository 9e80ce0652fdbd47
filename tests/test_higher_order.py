"""Higher-order gradients are exact or refused, never silently wrong.

For every registered mapping and log form (the registry: a new mapping is covered by being
registered), ``softmax_topk`` and every loss of ``softmaxlab.losses``, on both backends (the
default fast path and ``SOFTMAXLAB_BACKEND=reference``):

* ``torch.autograd.gradgradcheck`` in float64 on small shapes, also with masked (excluded)
  entries, at points where the map is smooth (no support or top-k boundary within the
  finite-difference step: the Jacobian of a sparse map is piecewise smooth);
* ``create_graph=True`` gives a gradient that has a graph, and where a float32 kernel runs
  (the CPU kernels take float32 only) its double backward, a Hessian-vector product, equals
  the float64 reference's as accurately as the reference's own float32 one (the rule of
  ``tests/kernels/test_cpu.py``), with exact zeros at masked entries and no NaN;
* a custom op whose differentiable backward is missing refuses ``create_graph`` with an
  error that says so;
* alpha-entmax's second derivatives in a learned alpha, also at alpha = 1 exactly;
* every loss under ``torch.autocast`` (CPU, bfloat16): a float32 result, as
  ``F.cross_entropy``, with finite gradients in the inputs' dtypes.

The Triton kernels' counterpart is ``tests/kernels/triton/test_higher_order.py``.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass

import pytest
import torch
import torch.nn.functional as F

import softmaxlab as sl
from softmaxlab import kernels
from softmaxlab import losses as L
from softmaxlab._registry import get_mapping, log_mapping_names
from softmaxlab.kernels import ops
from softmaxlab.losses.fenchel_young import fenchel_young_names

from ._helpers import (
    CASES,
    DEFAULT_CASES,
    TENSOR_PARAM_CASES,
    Case,
    assert_close,
    finite_part,
    gen,
    ids,
    random_mask,
    smooth_point,
)
from .tolerances import ORACLE

F32, F64, BF16 = torch.float32, torch.float64, torch.bfloat16
numba_missing = pytest.mark.skipif(
    not kernels.registry.available("numba"), reason="numba is not installed")


@pytest.fixture(params=["", "reference"], ids=["default", "reference"])
def backend(request, monkeypatch):
    monkeypatch.setenv(kernels.ENV_VAR, request.param)
    return request.param


def _cpu_kernel_ops(name: str) -> list[str]:
    """The CPU kernels registered for op ``name`` (a mapping's name names its op) that
    serve calls with an autograd graph (not the forward-only ones, which need the
    ``graph_free`` fact)."""
    return [s.name for s in kernels.kernels(name)
            if s.backend == "cpu" and (s.applies is None or s.applies({}))]


# ================================================================== mappings: float64
@pytest.mark.parametrize("variant", ["last", "masked"])
@pytest.mark.parametrize("case", CASES, ids=ids)
def test_mapping_gradgradcheck(case, variant, backend):
    g = gen("gradgrad", str(case), variant)
    mask = random_mask((2, 5), g, max(2, case.min_size)) if variant == "masked" else None
    x = smooth_point(case, (2, 5), g, mask=mask).requires_grad_()
    assert torch.autograd.gradgradcheck(lambda x: finite_part(case(x, -1, mask=mask)), (x,))


@pytest.mark.parametrize("case, param", TENSOR_PARAM_CASES, ids=ids)
def test_tensor_param_gradgradcheck(case, param, backend):
    """Second derivatives in the logits and a learned per-row parameter together."""
    values = [v for v in (param.default, *param.valid) if param.check(v - 1e-3)]
    t = torch.tensor(values, dtype=F64).unsqueeze(-1).requires_grad_()
    x = smooth_point(case, (len(values), 6), gen("gradgrad-param", str(case), param.name),
                     **{param.name: t.detach()}).requires_grad_()
    assert torch.autograd.gradgradcheck(
        lambda x, t: finite_part(case(x, **{param.name: t})), (x, t))


ENTMAX = get_mapping("entmax")


def test_entmax_alpha_gradgradcheck(backend):
    """Second derivatives in the logits and a learned alpha (away from the exact 1, 2)."""
    case = Case(ENTMAX, ENTMAX.fn)
    alpha = torch.tensor([[1.3], [1.7], [2.5]], dtype=F64)
    x = smooth_point(case, (3, 6), gen("gradgrad-alpha"), alpha=alpha).requires_grad_()
    assert torch.autograd.gradgradcheck(lambda x, a: sl.entmax(x, alpha=a),
                                        (x, alpha.requires_grad_()))


def test_entmax_second_alpha_derivative_at_one():
    """d2<w, p>/dalpha2 at alpha = 1 exactly (softmax; alpha < 1 is outside the domain)
    against the one-sided second difference (2 f0 - 5 f1 + 4 f2 - f3) / h^2 of the forward,
    whose error is O(h^2): it must shrink about 4x when h halves, towards our value (a
    wrong value leaves a plateau), and be small at the smaller step. The forward at
    1 + i h is accurate to ~1e-12 (bisection), ~5e-7 after dividing by h^2."""
    g = gen("alpha2-at-one")
    x = torch.randn(4, 6, generator=g, dtype=F64) * 2
    w = torch.randn(4, 6, generator=g, dtype=F64)
    alpha = torch.ones(4, 1, dtype=F64, requires_grad=True)
    (d1,) = torch.autograd.grad((sl.entmax(x, alpha=alpha) * w).sum(), alpha,
                                create_graph=True)
    (d2,) = torch.autograd.grad(d1.sum(), alpha)
    assert torch.isfinite(d2).all()

    def value(a: float) -> torch.Tensor:
        return (sl.entmax(x, alpha=torch.full((4, 1), a, dtype=F64)) * w).sum(-1, keepdim=True)

    def error(h: float) -> float:
        f0, f1, f2, f3 = (value(1 + i * h) for i in range(4))
        return ((2 * f0 - 5 * f1 + 4 * f2 - f3) / h**2 - d2).abs().max().item()

    coarse, fine = error(5e-3), error(2.5e-3)
    assert 3 < coarse / fine < 5, (coarse, fine)
    assert fine < 1e-3, fine


def test_softmax_topk_gradgradcheck(backend):
    x = torch.randn(3, 7, generator=gen("gradgrad-topk"), dtype=F64).requires_grad_()
    assert torch.autograd.gradgradcheck(lambda x: sl.softmax_topk(x, 2)[0], (x,))
    assert torch.autograd.gradgradcheck(lambda x: sl.softmax_topk(x, 3, dim=0)[0], (x,))


# ================================================================== kernels: float32
def _hvp(fn, x, w, v):
    """Output, the gradient of sum(w * out) with create_graph (it must have a graph) and
    its derivative along v (a Hessian-vector product)."""
    x = x.detach().clone().requires_grad_()
    out = fn(x)
    (grad,) = torch.autograd.grad((finite_part(out) * w).sum(), x, create_graph=True)
    assert grad.requires_grad, "create_graph=True gave a gradient without a graph"
    (hv,) = torch.autograd.grad((grad * v).sum(), x)
    return grad.detach(), hv


def _as_accurate(actual, ref32, exact, what):
    """float32 ``actual`` within the float32 tolerance of the float64 ``exact``, widened by
    twice the float32 reference's own worst error (the rule of tests/kernels/test_cpu.py)."""
    fin = ref32.isfinite() & exact.isfinite()
    ref_err = (ref32.double() - exact).abs()[fin].max().item() if fin.any() else 0.0
    assert_close(actual, exact, ORACLE[F32] + 2 * ref_err, what)


def _compare_double_backward(fn, x, mask, what):
    """The default backend's double backward in float32 against the reference's in
    float64 (and in float32, for its error) on the same values."""
    g = gen("hvp", what)
    out = fn(x)
    w = torch.randn(out.shape, generator=g, dtype=F64)
    v = torch.randn(x.shape, generator=g, dtype=F64)
    grad, hv = _hvp(fn, x, w.float(), v.float())
    with kernels.use("reference"):
        ref_grad, ref_hv = _hvp(fn, x, w.float(), v.float())
        exact_grad, exact_hv = _hvp(fn, x.double(), w, v)
    assert not hv.isnan().any(), f"{what}: NaN in the double backward"
    _as_accurate(grad, ref_grad, exact_grad, f"{what}: create_graph gradient")
    _as_accurate(hv, ref_hv, exact_hv, f"{what}: Hessian-vector product")
    if mask is not None:
        assert (grad[~mask] == 0).all() and (hv[~mask] == 0).all(), (
            f"{what}: masked entries get a gradient")


@numba_missing
@pytest.mark.parametrize("variant", ["plain", "masked"])
@pytest.mark.parametrize("case", DEFAULT_CASES, ids=ids)
def test_kernel_double_backward_equals_reference(case, variant, monkeypatch):
    """float32 on the default backend: the CPU kernel where one is registered (asserted),
    its create_graph path against the float64 reference."""
    monkeypatch.setenv(kernels.ENV_VAR, "")
    g = gen("kernel-hvp", str(case), variant)
    x = case.logits((4, 33), g, F32)
    mask = random_mask(x.shape, g, max(2, case.min_size)) if variant == "masked" else None
    cpu_kernels = _cpu_kernel_ops(case.mapping.name)
    if cpu_kernels:
        assert kernels.kernel_name(case.mapping.name, x) in cpu_kernels
    _compare_double_backward(lambda z: case(z, -1, mask=mask), x, mask, f"{case} {variant}")


@numba_missing
def test_softmax_topk_kernel_double_backward(monkeypatch):
    monkeypatch.setenv(kernels.ENV_VAR, "")
    x = torch.randn(3, 1100, generator=gen("kernel-hvp-topk"), dtype=F64).float() * 3
    x[0, ::5] = float("-inf")
    assert kernels.kernel_name("softmax_topk", x, k=2, n=1100) == "cpu.softmax_topk"
    _compare_double_backward(lambda z: sl.softmax_topk(z, 2)[0], x, None, "softmax_topk")


@numba_missing
def test_custom_op_without_differentiable_backward_refuses_create_graph(monkeypatch):
    """A kernel op with no registered reference vjp: create_graph raises, naming the op and
    the way out; a plain backward is unaffected."""
    monkeypatch.setenv(kernels.ENV_VAR, "")
    monkeypatch.delitem(ops._VJPS, "sparsemax")
    x = torch.randn(3, 9, generator=gen("refuse")).requires_grad_()
    assert kernels.kernel_name("sparsemax", x) == "cpu.sparsemax"
    with pytest.raises(NotImplementedError, match=r"create_graph=True through kernel "
                       r"cpu\.sparsemax.*'sparsemax'.*SOFTMAXLAB_BACKEND=reference"):
        torch.autograd.grad(sl.sparsemax(x)[:, 0].sum(), x, create_graph=True)
    (grad,) = torch.autograd.grad(sl.sparsemax(x)[:, 0].sum(), x)
    assert torch.isfinite(grad).all()


# ================================================================== losses
@dataclass(frozen=True)
class LossCase:
    """One loss call: ``fn(*inputs)`` of the differentiable inputs ``make(dtype)``;
    ``matmul``: hidden-state losses, whose logits come from a matmul (autocast lowers it)."""

    name: str
    loss: str  # the function of softmaxlab.losses it calls
    fn: Callable[..., torch.Tensor]
    make: Callable[[torch.dtype], tuple[torch.Tensor, ...]]
    matmul: bool = False

    def __str__(self) -> str:
        return self.name


N, C, D = 5, 6, 3
T = torch.tensor([0, 3, 1, 5, 2])
T_IGNORED = torch.tensor([0, -100, 1, 5, 2])
W = torch.tensor([0.5, 1.0, 1.5, 2.0, 0.75, 1.25])  # exact in bfloat16
SAMPLES = torch.tensor([1, 2, 4, 5])
EDGES = (torch.tensor([[0, 1, 3], [1, 2, 4]]), torch.tensor([1.0, 2.0, 0.5]))


def _logits(dtype, scale=2.0, key="z"):
    return ((torch.randn(N, C, generator=gen("loss-logits", key), dtype=F64) * scale)
            .to(dtype),)


def _cosine(dtype):
    return ((torch.rand(N, C, generator=gen("loss-cosine"), dtype=F64) * 1.6 - 0.8)
            .to(dtype),)


def _hidden(dtype):
    g = gen("loss-hidden")
    return tuple(t.to(dtype) for t in (torch.randn(N, D, generator=g, dtype=F64),
                                       torch.randn(C, D, generator=g, dtype=F64),
                                       torch.randn(C, generator=g, dtype=F64)))


def _soft_target(dtype):
    """Class probabilities, rounded to bfloat16 (the same values in every dtype)."""
    return torch.rand(N, C, generator=gen("soft"), dtype=F64).softmax(-1).to(BF16).to(dtype)


def _w(x):
    return W.to(x.dtype)


LOSS_CASES = [
    *[LossCase(f"cross_entropy-{m}", "cross_entropy",
               lambda z, m=m: L.cross_entropy(z, T, mapping=m), _logits)
      for m in log_mapping_names()],
    LossCase("cross_entropy-options", "cross_entropy",
             lambda z: L.cross_entropy(z, T_IGNORED, weight=_w(z), label_smoothing=0.1),
             _logits),
    LossCase("cross_entropy-none-taylor", "cross_entropy",
             lambda z: L.cross_entropy(z, T_IGNORED, mapping="taylor_softmax", reduction="none"),
             _logits),
    LossCase("cross_entropy-probs", "cross_entropy",
             lambda z: L.cross_entropy(z, _soft_target(z.dtype), mapping="sigsoftmax"),
             _logits),
    *[LossCase(f"fenchel_young-{m}", "fenchel_young_loss",
               lambda z, m=m: L.fenchel_young_loss(
                   z, T, mapping=m, **({"alpha": 1.3} if m == "entmax" else {})),
               lambda d: _logits(d, scale=0.7))
      for m in fenchel_young_names()],
    LossCase("fenchel_young-options", "fenchel_young_loss",
             lambda z: L.fenchel_young_loss(z, T_IGNORED, mapping="entmax15", weight=_w(z),
                                            label_smoothing=0.2, reduction="sum"),
             lambda d: _logits(d, scale=0.7)),
    LossCase("fenchel_young-probs", "fenchel_young_loss",
             lambda z: L.fenchel_young_loss(z, _soft_target(z.dtype), mapping="sparsemax"),
             lambda d: _logits(d, scale=0.7)),
    LossCase("soft_margin", "soft_margin_loss",
             lambda z: L.soft_margin_loss(z, T_IGNORED, margin=0.5), _logits),
    LossCase("soft_margin-taylor", "soft_margin_loss",
             lambda z: L.soft_margin_loss(z, T, margin=0.5, mapping="taylor_softmax"), _logits),
    LossCase("am_softmax", "am_softmax_loss", lambda c: L.am_softmax_loss(c, T, scale=5.0),
             _cosine),
    LossCase("am_softmax-real", "am_softmax_loss",
             lambda c: L.am_softmax_loss(c, T, scale=5.0, real=True), _cosine),
    LossCase("arcface", "arcface_loss", lambda c: L.arcface_loss(c, T_IGNORED, scale=5.0),
             _cosine),
    LossCase("ensemble_soft_margin", "ensemble_soft_margin_loss",
             lambda a, b: L.ensemble_soft_margin_loss([a, b], T, margin=0.3, diversity=0.5),
             lambda d: _logits(d, key="a") + _logits(d, key="b")),
    LossCase("sparse_softmax", "sparse_softmax_loss",
             lambda z: L.sparse_softmax_loss(z, T, k=3), _logits),
    LossCase("sampled_softmax", "sampled_softmax_loss",
             lambda h, w, b: L.sampled_softmax_loss(h, w, T, bias=b, samples=SAMPLES,
                                                    noise="uniform"), _hidden, matmul=True),
    LossCase("nce", "nce_loss",
             lambda h, w, b: L.nce_loss(h, w, T, bias=b, samples=SAMPLES, noise="uniform"),
             _hidden, matmul=True),
    LossCase("linear_cross_entropy", "linear_cross_entropy",
             lambda h, w, b: L.linear_cross_entropy(h, w, T_IGNORED, bias=b, chunk_size=2,
                                                    label_smoothing=0.1), _hidden, matmul=True),
    LossCase("linear_cross_entropy-none-taylor", "linear_cross_entropy",
             lambda h, w, b: L.linear_cross_entropy(h, w, T, bias=b, chunk_size=2,
                                                    mapping="taylor_softmax", reduction="none"),
             _hidden, matmul=True),
    LossCase("graph_tv_penalty", "graph_tv_penalty",
             lambda p: L.graph_tv_penalty(p, (EDGES[0], EDGES[1].to(p.dtype))),
             lambda d: (torch.rand(N, C, generator=gen("tv"), dtype=F64).to(d),)),
]

#: softmaxlab.losses' exports that are not losses
NOT_LOSSES = {"Noise", "tsallis_entropy", "hsic", "natural_loss"}


def test_every_loss_has_a_case():
    """A new loss of softmaxlab.losses fails here until it is given a case above."""
    losses = {n for n in L.__all__ if n not in NOT_LOSSES}
    assert losses <= {c.loss for c in LOSS_CASES}, losses - {c.loss for c in LOSS_CASES}


def _reduced(out: torch.Tensor) -> torch.Tensor:
    return out if out.dim() == 0 else (out * torch.linspace(0.5, 1.5, out.numel(),
                                                            dtype=out.dtype).view(out.shape)).sum()


@pytest.mark.parametrize("case", LOSS_CASES, ids=str)
def test_loss_gradgradcheck(case, backend):
    inputs = [x.requires_grad_() for x in case.make(F64)]
    assert torch.autograd.gradgradcheck(case.fn, inputs)


@pytest.mark.parametrize("case", LOSS_CASES, ids=str)
def test_loss_double_backward_float32(case, monkeypatch):
    """float32 on the default backend (the CPU kernels: the fused cross-entropy, the score
    and sparse maps, linear_ce's chunk kernel) against the float64 reference: the
    create_graph gradient has a graph, and its derivative along a direction equals the
    reference's."""
    monkeypatch.setenv(kernels.ENV_VAR, "")
    x32 = case.make(F32)
    g = gen("loss-hvp", case.name)
    vs = [torch.randn(x.shape, generator=g, dtype=F64) for x in x32]

    def hvp(xs, dtype):
        xs = [x.detach().to(dtype).requires_grad_() for x in xs]
        grads = torch.autograd.grad(_reduced(case.fn(*xs)), xs, create_graph=True)
        assert all(gr.requires_grad for gr in grads), "a gradient without a graph"
        dot = sum((gr * v.to(dtype)).sum() for gr, v in zip(grads, vs, strict=True))
        hv = torch.autograd.grad(dot, xs)
        return [gr.detach() for gr in grads], list(hv)

    grads, hv = hvp(x32, F32)
    with kernels.use("reference"):
        ref_grads, ref_hv = hvp(x32, F32)
        exact_grads, exact_hv = hvp(x32, F64)
    for i in range(len(x32)):
        assert not hv[i].isnan().any(), f"{case} input {i}: NaN"
        _as_accurate(grads[i], ref_grads[i], exact_grads[i], f"{case} input {i}: gradient")
        _as_accurate(hv[i], ref_hv[i], exact_hv[i], f"{case} input {i}: double backward")


def _naive_under_autocast(case: LossCase, h, w, b) -> torch.Tensor:
    """The hidden-state losses as plain torch ops (F.cross_entropy / softplus of the
    logits ``h @ w.T + b``), to be run under the same autocast: their matmul is what
    autocast lowers, the rest is float32 (cross_entropy's policy)."""
    if case.loss == "linear_cross_entropy":
        z = (h @ w.T).float() + b.float()
        if "taylor" in case.name:
            return L.cross_entropy(z, T, mapping="taylor_softmax", reduction="none")
        return F.cross_entropy(z, T_IGNORED, label_smoothing=0.1)
    log_count = math.log(len(SAMPLES) / C)  # uniform noise: log(S Q(c))
    true = ((h * w[T]).sum(-1) + b[T]).float() - log_count
    sampled = (h @ w[SAMPLES].T + b[SAMPLES]).float() - log_count
    sampled = sampled.masked_fill(SAMPLES[None, :] == T[:, None], float("-inf"))
    if case.loss == "nce_loss":
        return (F.softplus(-true) + F.softplus(sampled).sum(-1)).mean()
    logits = torch.cat([true[:, None], sampled], -1)
    return F.cross_entropy(logits, torch.zeros(N, dtype=torch.long))


@pytest.mark.parametrize("dtype", [BF16, F32], ids=str)
@pytest.mark.parametrize("case", LOSS_CASES, ids=str)
def test_loss_under_autocast(case, dtype, backend):
    """Under torch.autocast (CPU, bfloat16) a loss of bfloat16 or float32 inputs is float32
    (F.cross_entropy's dtype there), with the value of the float32 computation: the float64
    value of the same inputs for the row losses (which run in float32 inside), torch's own
    ops under the same autocast for the hidden-state ones (their matmul lowered); backward
    gives finite gradients in the inputs' dtypes."""
    xs = [x.requires_grad_() for x in case.make(dtype)]
    with torch.autocast("cpu", dtype=BF16):
        out = case.fn(*xs)
        torch_dtype = F.cross_entropy(xs[0].reshape(-1, xs[0].shape[-1]),
                                      torch.zeros(xs[0].numel() // xs[0].shape[-1],
                                                  dtype=torch.long)).dtype
        naive = _naive_under_autocast(case, *xs) if case.matmul else None
    assert out.dtype == torch_dtype == F32, (out.dtype, torch_dtype)
    if naive is None:
        with kernels.use("reference"):
            expected = case.fn(*[x.detach().double() for x in xs])
    else:
        expected = naive
    assert_close(out, expected.to(F32), ORACLE[F32], f"{case} {dtype} under autocast")
    grads = torch.autograd.grad(_reduced(out), xs)
    for x, gr in zip(xs, grads, strict=True):
        assert gr.dtype == x.dtype and torch.isfinite(gr).all(), (gr.dtype, gr)


def test_float64_losses_stay_float64_under_autocast():
    for case in LOSS_CASES:
        with torch.autocast("cpu", dtype=BF16):
            out = case.fn(*case.make(F64))
        assert out.dtype == F64, case.name
