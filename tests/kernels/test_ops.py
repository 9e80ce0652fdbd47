"""The op contract: every mapping, log form and ``softmax_topk`` works where torch code runs.

On both backends (the default fast path, ``SOFTMAXLAB_BACKEND=reference``):

* ``torch.compile(fullgraph=True)`` with zero graph breaks, equal to eager in value and
  gradient (``aot_eager`` traces forward and backward through AOTAutograd without generating
  code, which keeps the file's compile time bounded; a few cases run through inductor, one
  in a fresh process);
* ``torch.func``: ``vmap`` equals a loop, ``grad``/``jacrev`` equal autograd's Jacobian,
  ``jvp`` equals the Jacobian times the tangent;
* the custom ops pass ``torch.library.opcheck`` (schema, fake, autograd, vmap registration);
* masked entries behave exactly as if sliced out, in value and gradient;
* ``dtype=`` as torch's softmax.

Grid: one case per registered function (its defaults), shapes (3, 7) (odd, several rows).
"""

from __future__ import annotations

import os
import subprocess
import sys

import pytest
import torch
import torch._dynamo

import softmaxlab as sl
from softmaxlab import kernels
from softmaxlab.kernels import ops

from .._helpers import FUNCTIONS, Case, assert_close, gen, ids
from ..tolerances import ORACLE

F32, F64 = torch.float32, torch.float64
BACKENDS = ["", "reference"]
DEFAULT_CASES = [Case(m, f) for m, f in FUNCTIONS]


def topk_case(x, dim=-1):
    return sl.softmax_topk(x, 2, dim=dim)[0]


#: (id, function of (x, dim)) for every mapping, log form and softmax_topk
CALLS = [(str(c), c) for c in DEFAULT_CASES] + [("softmax_topk", topk_case)]


@pytest.fixture(params=BACKENDS, ids=["default", "reference"])
def backend(request, monkeypatch):
    monkeypatch.setenv(kernels.ENV_VAR, request.param)
    return request.param


def _logits(name: str, dtype=F32, shape=(3, 7)) -> torch.Tensor:
    x = torch.randn(shape, generator=gen("ops", name), dtype=F64) * 2
    return (x.abs() + 0.1 if name.startswith("normalize") else x).to(dtype)


def _value_and_grad(fn, x, w):
    x = x.clone().requires_grad_()
    y = fn(x, -1)
    (g,) = torch.autograd.grad((y.masked_fill(torch.isinf(y), 0) * w).sum(), x)
    return y.detach(), g


@pytest.mark.parametrize("name, fn", CALLS, ids=[n for n, _ in CALLS])
def test_compile_fullgraph_has_no_graph_break_and_equals_eager(backend, name, fn):
    torch._dynamo.reset()
    x = _logits(name)
    w = torch.randn(x.shape[:-1] + ((2,) if name == "softmax_topk" else x.shape[-1:]),
                    generator=gen("w", name))
    assert torch._dynamo.explain(fn)(x, -1).graph_break_count == 0
    compiled = torch.compile(fn, fullgraph=True, backend="aot_eager")
    y, g = _value_and_grad(compiled, x, w)
    y0, g0 = _value_and_grad(fn, x, w)
    assert_close(y, y0, ORACLE[F32], f"{name} compiled value")
    assert_close(g, g0, ORACLE[F32], f"{name} compiled gradient")


@pytest.mark.parametrize("fn", [sl.log_softmax, sl.sparsemax, sl.taylor_softmax],
                         ids=lambda f: f.__name__)
def test_inductor_compiles_the_custom_ops(backend, fn):
    torch._dynamo.reset()
    x = _logits(fn.__name__, shape=(5, 9))
    compiled = torch.compile(fn, fullgraph=True)
    w = torch.randn(x.shape, generator=gen("w"))
    y, g = _value_and_grad(compiled, x, w)
    y0, g0 = _value_and_grad(fn, x, w)
    assert_close(y, y0, ORACLE[F32], "value")
    assert_close(g, g0, ORACLE[F32], "gradient")


FRESH = """
import torch, softmaxlab as sl
x = torch.randn(4, 6, requires_grad=True)
f = torch.compile(lambda x: sl.sparsemax(x) + sl.softmax(x, temperature=2.0), fullgraph=True)
y = f(x)
y.sum().backward()
torch.testing.assert_close(y, sl.sparsemax(x) + sl.softmax(x, temperature=2.0))
print("ok")
"""


@pytest.mark.parametrize("name", BACKENDS, ids=["default", "reference"])
def test_compile_as_the_first_call_of_a_fresh_process(name):
    env = {**os.environ, kernels.ENV_VAR: name}
    done = subprocess.run([sys.executable, "-c", FRESH], capture_output=True, text=True,
                          timeout=300, check=False, env=env)
    assert done.returncode == 0 and done.stdout.strip() == "ok", done.stderr[-3000:]


@pytest.mark.parametrize("name, fn", CALLS, ids=[n for n, _ in CALLS])
def test_func_transforms(backend, name, fn):
    """vmap = loop; grad and jacrev = autograd's Jacobian; jvp = Jacobian @ tangent."""
    x = _logits(name, F64, (3, 6))
    looped = torch.stack([fn(r, -1) for r in x])
    assert_close(torch.func.vmap(lambda r: fn(r, -1))(x), looped, ORACLE[F64], f"{name} vmap")
    row = x[1]
    jac = torch.autograd.functional.jacobian(lambda r: fn(r, -1), row)
    finite = torch.isfinite(fn(row, -1))
    jac = torch.where(finite[:, None], jac, 0.0)
    assert_close(torch.func.jacrev(lambda r: fn(r, -1))(row).masked_fill(~finite[:, None], 0),
                 jac, ORACLE[F64], f"{name} jacrev")
    assert_close(torch.func.grad(lambda r: fn(r, -1)[0])(row), jac[0], ORACLE[F64],
                 f"{name} grad")
    v = torch.randn(row.shape, generator=gen("tangent", name), dtype=F64)
    _, tangent = torch.func.jvp(lambda r: fn(r, -1), (row,), (v,))
    assert_close(tangent.masked_fill(~finite, 0), jac @ v, ORACLE[F64], f"{name} jvp")


def test_vmap_of_grad(backend):
    x = _logits("vmap-grad", F64, (4, 5))
    per_row = torch.func.vmap(torch.func.grad(lambda r: sl.log_sigsoftmax(r)[0]))(x)
    loop = torch.stack([torch.autograd.grad(sl.log_sigsoftmax(r)[0], r)[0]
                        for r in x.clone().requires_grad_()])
    assert_close(per_row, loop, ORACLE[F64], "vmap(grad)")


def _row(shape=(3, 6), dtype=F32):
    return torch.randn(shape, generator=gen("opcheck", shape), dtype=dtype)


OPCHECKS = [  # (custom op, sample args) for each family's forward and backward op
    (ops.expnorm_op, lambda: (_row(), False, "cpu.softmax")),
    (ops.expnorm_op, lambda: (_row(), True, "cpu.softmax")),
    (ops.expnorm_op, lambda: (_row(dtype=F64), True, "cpu.softmax_torch")),
    (ops.score_op, lambda: (_row(), [1.0, 1.0, 0.5], False, "cpu.taylor_softmax")),
    (ops.score_op, lambda: (_row(), [], True, "cpu.sigsoftmax")),
    (ops.sparse_op, lambda: (_row(), 2.0, "cpu.sparsemax")),
    (ops.sparse_op, lambda: (_row(), 1.5, "cpu.entmax15")),
    (ops.topk_op, lambda: (_row((3, 4000)), 3, "cpu.softmax_topk")),
]


@pytest.mark.filterwarnings("ignore:`torch.jit")  # opcheck's own use of TorchScript
@pytest.mark.skipif(not kernels.registry.available("numba"), reason="numba is not installed")
@pytest.mark.parametrize("op, args", OPCHECKS, ids=[f"{o._name}-{i}" for i, (o, _) in
                                                    enumerate(OPCHECKS)])
def test_custom_ops_pass_opcheck(op, args):
    a = list(args())
    a[0] = a[0].requires_grad_()
    # test_aot_dispatch_dynamic would differentiate the backward op too: covered for expnorm
    torch.library.opcheck(op, tuple(a), test_utils=(
        "test_schema", "test_autograd_registration", "test_faketensor",
        "test_aot_dispatch_static"))
    batched = torch.stack([a[0].detach(), a[0].detach() * 2])
    out = torch.func.vmap(lambda r: _first(op(r, *a[1:])))(batched)
    torch.testing.assert_close(out, torch.stack([_first(op(r, *a[1:])) for r in batched]))


def _first(out):
    return out if isinstance(out, torch.Tensor) else out[0]


@pytest.mark.parametrize("case", DEFAULT_CASES, ids=ids)
def test_masked_entries_are_sliced_out_in_value_and_gradient(backend, case):
    """A masked entry: output 0 (log: -inf), gradient 0, and it neither changes the kept
    entries' values nor their gradients, whatever upstream gradient it receives."""
    if case.min_size > 5:
        pytest.skip("needs more kept entries")
    g = gen("sliced", str(case))
    x = case.logits((3, 8), g, F32)
    keep = torch.tensor([True, False, True, True, False, True, True, True])
    up = torch.randn(3, 8, generator=g)
    xm = x.clone().requires_grad_()
    out = case(xm, -1, mask=keep)
    (grad,) = torch.autograd.grad(out, xm, up)
    xs = x[:, keep].clone().requires_grad_()
    sliced = case(xs, -1)
    (grad_s,) = torch.autograd.grad(sliced, xs, up[:, keep])
    assert (out[:, ~keep] == case.excluded).all()
    assert (grad[:, ~keep] == 0).all(), f"{case}: gradient at masked entries {grad[:, ~keep]}"
    assert_close(out[:, keep], sliced, ORACLE[F32], f"{case} value")
    assert_close(grad[:, keep], grad_s, ORACLE[F32], f"{case} gradient")


@pytest.mark.parametrize("case", DEFAULT_CASES, ids=ids)
@pytest.mark.parametrize("dtype", [F64, torch.bfloat16])
def test_dtype_argument_casts_first(case, dtype):
    x = case.logits((2, 6), gen("dtype", str(case)), F32)
    out = case(x, -1, dtype=dtype)
    assert out.dtype == dtype
    assert torch.equal(out, case(x.to(dtype), -1))


def test_softmax_dtype_equals_torch():
    x = torch.randn(4, 9, dtype=F32)
    for fn, ref in ((sl.softmax, torch.softmax), (sl.log_softmax, torch.log_softmax)):
        torch.testing.assert_close(fn(x, 1, dtype=F64), ref(x, 1, dtype=F64))
    with pytest.raises(TypeError, match="dtype"):
        sl.softmax(x, dtype=torch.int64)
    with pytest.raises(TypeError, match="dtype"):
        sl.softmax(x, dtype="float64")
