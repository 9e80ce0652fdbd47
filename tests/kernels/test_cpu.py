"""The CPU fast paths (``softmaxlab.kernels.cpu``) against the reference, and the dispatch.

Every fast path is run through the public function under the default backend (asserting
that the CPU kernel is the one chosen) and compared with the same call under
``SOFTMAXLAB_BACKEND=reference``, values and gradients:

* float32: against the reference in float64 on the same values, with the float32 tolerance
  the mapping tests use for the library itself (``tolerances.ORACLE``);
* float16/bfloat16: against the reference in the same dtype (both compute in float32 and
  round): at most one unit in the last place of the dtype apart.

Grid rationale: sizes 1 and 2, odd sizes, a long odd row; the thresholds of each dispatch
rule (softmax_topk: ``TOPK_MIN_RATIO * k * TOPK_BLOCK`` and ``TOPK_MAX_K``) and of each
kernel's own branches (thread split at ``MIN_ENTRIES_PER_THREAD`` per thread; polynomial
rows above ``safe``; sigsoftmax rows with max above 80; the 1.5-entmax sorted fallback);
masks with fully masked rows, ``-inf`` entries, all-``-inf`` rows, NaN rows, logits of
+-1e30, dims that are not last.
"""

from __future__ import annotations

import os
import subprocess
import sys
import tempfile

import pytest
import torch

import softmaxlab as sl
from softmaxlab import kernels
from softmaxlab.kernels import cpu
from softmaxlab.losses import linear_cross_entropy

from .._helpers import NEG_INF, assert_close, gen
from ..tolerances import ORACLE, ulp

numba_missing = pytest.mark.skipif(
    not kernels.registry.available("numba"), reason="numba is not installed")
F32, F64 = torch.float32, torch.float64
NAN = float("nan")


@pytest.fixture
def backend(monkeypatch):
    """``backend(name)`` sets ``SOFTMAXLAB_BACKEND`` ("" = automatic)."""
    return lambda name: monkeypatch.setenv(kernels.ENV_VAR, name)


@pytest.fixture(params=["openmp", "python-threads"])
def two_threads(request, monkeypatch):
    """Two threads, on torch's OpenMP threads (asserting that no kernel falls back to Python
    threads) or on Python threads (the fallback where OpenMP or a trampoline is missing)."""
    if kernels.registry.available("numba"):
        from softmaxlab.kernels.cpu import _jit

        if request.param == "openmp":
            assert _jit._omp_parallel() is not None, "torch's OpenMP runtime not found"

            one_thread = _jit._pool_launch

            def no_fallback(kernel, arrays, args, scratch, claims, threads):
                if threads > 1:
                    raise AssertionError(f"{kernel} fell back to Python threads")
                one_thread(kernel, arrays, args, scratch, claims, threads)

            monkeypatch.setattr(_jit, "_pool_launch", no_fallback)
        else:
            monkeypatch.setattr(_jit, "_omp_parallel", lambda: None)
    old = torch.get_num_threads()
    torch.set_num_threads(2)
    yield
    torch.set_num_threads(old)


# ------------------------------------------------------------------------ the mappings
#: (op, public function, parameters); op names the kernel (``kernel_name``).
MAPPINGS = [
    ("sparsemax", sl.sparsemax, {}),
    ("entmax15", sl.entmax15, {}),
    ("taylor_softmax", sl.taylor_softmax, {}),
    ("taylor_softmax", sl.taylor_softmax, {"order": 4}),
    ("taylor_softmax", sl.taylor_softmax, {"order": 10}),
    ("taylor_softmax", sl.log_taylor_softmax, {}),
    ("taylor_softmax", sl.log_taylor_softmax, {"order": 4}),
    ("spherical_softmax", sl.spherical_softmax, {}),
    ("spherical_softmax", sl.spherical_softmax, {"eps": 1.0}),
    ("spherical_softmax", sl.log_spherical_softmax, {}),
    ("sigsoftmax", sl.sigsoftmax, {}),
    ("sigsoftmax", sl.log_sigsoftmax, {}),
    ("softmax", sl.softmax, {}),
    ("softmax", sl.softmax, {"temperature": 0.5}),
    ("softmax", sl.log_softmax, {}),
    ("softmax", sl.log_softmax, {"temperature": 3.0}),
]


def mapping_id(m) -> str:
    return m[1].__name__ + "".join(f"-{k}={v}" for k, v in m[2].items())


def logits(kind: str, shape, g: torch.Generator) -> torch.Tensor:
    """float64 logits of one kind (rows along the last dim)."""
    x = torch.randn(shape, generator=g, dtype=F64)
    if kind == "normal":
        return x * 3
    if kind == "flat":  # dense sparsemax/entmax supports, many candidates
        return x * 0.01
    if kind == "large":  # sigsoftmax max > 80, Taylor-10 rows above `safe`
        return x * 500
    x = x * 3
    rows = x.view(-1, shape[-1])
    if kind == "specials":  # -inf entries, an all -inf row, a NaN row
        rows[0, ::3] = NEG_INF
        rows[1 % len(rows)] = NEG_INF
        rows[-1, shape[-1] // 2] = NAN
    elif kind == "extreme":  # +-1e30 (the exact polynomial path)
        rows[0, 0], rows[-1, -1] = 1e30, -1e30
        rows[len(rows) // 2, :: max(1, shape[-1] // 3)] = 1e30
    return x


def run(fn, x: torch.Tensor, dim: int, kw: dict, up: torch.Tensor, mask=None):
    """Output and input gradient for the upstream gradient ``up``."""
    xx = x.detach().clone().requires_grad_()
    out = fn(xx, dim, mask=mask, **kw)
    (grad,) = torch.autograd.grad(out, xx, up.to(out.dtype))
    return out.detach(), grad


def reference_error(ref: torch.Tensor, exact: torch.Tensor) -> float:
    """Largest error of the reference in float32 against float64 (finite entries)."""
    both = ref.isfinite() & exact.isfinite()
    return (ref.double() - exact).abs()[both].max().item() if both.any() else 0.0


def assert_as_accurate(out, ref, exact, what: str):
    """float32 ``out`` agrees with the float64 ``exact`` as the library's float32 tolerance
    asks, widened by twice the float32 reference's own worst error (cancellation such as
    ``g - p * sum(g)`` over long rows is the float32 arithmetic's, not the kernel's)."""
    assert_close(out, exact, ORACLE[F32] + 2 * reference_error(ref, exact), what)


def compare(mapping, x: torch.Tensor, dim: int, backend, mask=None):
    """The fast path (which must be chosen) against the reference, values and gradients."""
    op, fn, kw = mapping
    what = f"{fn.__name__} {tuple(x.shape)} dim={dim}"
    backend("")
    # a finite loss: no upstream gradient at -inf (excluded) or NaN outputs
    finite = fn(x, dim, mask=mask, **kw).isfinite()
    up = torch.randn(x.shape, generator=gen("up", op, tuple(x.shape)), dtype=F64) * finite
    assert kernels.kernel_name(op, x) == f"cpu.{op}"
    out, grad = run(fn, x, dim, kw, up, mask)
    backend("reference")
    assert kernels.kernel_name(op, x) == "reference"
    ref, ref_grad = run(fn, x, dim, kw, up, mask)
    if x.dtype == F32:
        exact, exact_grad = run(fn, x.double(), dim, kw, up, mask)
        assert_as_accurate(out, ref, exact, f"{what}: values")
        assert_as_accurate(grad, ref_grad, exact_grad, f"{what}: gradients")
    else:
        assert_close(out, ref, ulp(x.dtype), f"{what}: values")
        assert_close(grad, ref_grad, ulp(x.dtype), f"{what}: gradients")


@numba_missing
@pytest.mark.parametrize("kind", ["normal", "flat", "large", "specials", "extreme"])
@pytest.mark.parametrize("shape", [(1, 1), (3, 2), (5, 7), (2, 1000), (2, 32771)], ids=str)
@pytest.mark.parametrize("mapping", MAPPINGS, ids=mapping_id)
def test_mapping_matches_reference(mapping, shape, kind, backend):
    x = logits(kind, shape, gen("map", mapping_id(mapping), shape, kind))
    compare(mapping, x.float(), -1, backend)


@numba_missing
@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16], ids=str)
@pytest.mark.parametrize("mapping", MAPPINGS, ids=mapping_id)
def test_mapping_low_precision(mapping, dtype, backend):
    x = logits("normal", (6, 37), gen("low", mapping_id(mapping), dtype))
    compare(mapping, x.to(dtype), -1, backend)


@numba_missing
@pytest.mark.parametrize("dim", [0, 1])
@pytest.mark.parametrize("mapping", MAPPINGS, ids=mapping_id)
def test_mapping_other_dims_and_masks(mapping, dim, backend):
    """A dim that is not last, with a mask that empties one row along it."""
    g = gen("dims", mapping_id(mapping), dim)
    x = logits("normal", (9, 11, 4), g).float()
    mask = torch.rand(x.shape, generator=g) > 0.3
    row = [0, 0, 0]
    row[dim] = slice(None)
    mask[tuple(row)] = False
    compare(mapping, x, dim, backend)
    compare(mapping, x, dim, backend, mask=mask)


@numba_missing
@pytest.mark.parametrize("mapping", MAPPINGS, ids=mapping_id)
def test_mapping_split_over_threads(mapping, backend, two_threads):
    """Enough entries for two threads (rows split unevenly: 67 rows)."""
    from softmaxlab.kernels.cpu import _jit

    shape = (67, 2 * _jit.MIN_ENTRIES_PER_THREAD // 67 + 1)
    compare(mapping, logits("specials", shape, gen("threads", mapping_id(mapping))).float(),
            -1, backend)


@numba_missing
@pytest.mark.parametrize("fn", [sl.sigsoftmax, sl.log_sigsoftmax], ids=lambda f: f.__name__)
def test_sigsoftmax_row_regimes(fn, backend):
    """Rows whose max is <= 0 (alpha = 1), in (0, 70] (sigma from u), in (70, 80] and above
    80 (sigma and the log-score from z itself), each with entries far enough below the max
    that u underflows while sigma(z) does not."""
    from softmaxlab.kernels.cpu import scores

    x = torch.randn(6, 301, generator=gen("sig-regimes"), dtype=F64) * 4
    for row, top in enumerate((-50.0, 0.0, 30.0, scores.SIG_U_SAFE, 75.0, 200.0)):
        x[row] += top - x[row].max()
        x[row, :40] = torch.linspace(-20, 20, 40, dtype=F64)
    compare(("sigsoftmax", fn, {}), x.float(), -1, backend)


@numba_missing
def test_launch_frames_trampolines_and_fallback(tmp_path, monkeypatch):
    """Kernel arguments travel to the OpenMP trampoline as int64 words; trampolines are
    written to the cache directory; one that cannot be built leaves the work to Python
    threads, with the same result."""
    import numpy as np

    from softmaxlab.kernels.cpu import _jit

    a = np.zeros((2, 3), np.float32)
    values = (a, 2.5, True, 7, np.dtype(np.int64))
    assert [_jit._kind(v) for v in values] == ["af2", "f", "b", "i", f"s{np.dtype(np.int64).char}"]
    assert _jit._frame(values, [0]) == [a.ctypes.data, 2, 3, 4612811918334230528, 1, 7, 1]
    with pytest.raises(TypeError, match="str has no frame form"):
        _jit._kind("x")
    with pytest.raises(ValueError, match="C-contiguous"):
        _jit._kind(np.zeros((3, 2), np.float32).T)

    x = torch.randn(67, 2 * _jit.MIN_ENTRIES_PER_THREAD // 67 + 1)
    expect = sl.taylor_softmax(x)  # one thread
    monkeypatch.setenv("SOFTMAXLAB_CACHE_DIR", str(tmp_path))
    monkeypatch.setattr(_jit, "_TRAMPOLINES", {})
    old = torch.get_num_threads()
    torch.set_num_threads(2)
    try:
        torch.testing.assert_close(sl.taylor_softmax(x), expect, rtol=0, atol=0)
        assert len(list((tmp_path / "trampolines").glob("t_*.py"))) == 1
        assert all(_jit._TRAMPOLINES.values())
        (tmp_path / "file").write_text("")  # a cache that cannot be made: the temporary
        monkeypatch.setenv("SOFTMAXLAB_CACHE_DIR", str(tmp_path / "file" / "cache"))  # dir
        monkeypatch.setattr(tempfile, "tempdir", str(tmp_path / "tmp"))
        assert _jit._write_once("t.py", "x = 1\n") == tmp_path / "tmp" / (
            f"softmaxlab-{os.getuid()}") / "trampolines" / "t.py"
        monkeypatch.setattr(_jit, "_TRAMPOLINES", {})
        monkeypatch.setattr(_jit, "_build_trampoline", lambda *args: 1 / 0)
        with pytest.warns(RuntimeWarning, match="runs on Python threads.*ZeroDivisionError"):
            torch.testing.assert_close(sl.taylor_softmax(x), expect, rtol=0, atol=0)
        assert list(_jit._TRAMPOLINES.values()) == [None]
    finally:
        torch.set_num_threads(old)


@numba_missing
def test_entmax15_sorted_fallback(backend, monkeypatch):
    """With no Newton step allowed, every row takes the exact sorted fallback."""
    from softmaxlab.kernels.cpu import sparse

    monkeypatch.setattr(sparse, "MAX_NEWTON", 0)
    for kind in ("normal", "flat", "specials", "extreme"):
        compare(MAPPINGS[1], logits(kind, (4, 301), gen("fallback", kind)).float(), -1,
                backend)


@numba_missing
def test_sparse_support_boundary_ties(backend):
    """Entries tied at the top and rows that are constant (support = the whole row)."""
    x = torch.tensor([[1.0, 1.0, 1.0, 1.0], [2.0, 2.0, 0.0, -1.0], [0.5, 0.5, 0.5, -3.0]])
    for mapping in MAPPINGS[:2]:
        compare(mapping, x, -1, backend)


@pytest.mark.parametrize("name", ["", "reference"])
def test_log_softmax_gradient_at_neg_inf_logits_is_that_of_the_sliced_row(backend, name):
    """An upstream gradient at a -inf log-probability neither reaches its -inf logit nor the
    kept entries: on every backend the gradient is that of the row with the -inf entry
    sliced out (0 in rows with nothing kept)."""
    backend(name)
    x = torch.tensor([[0.0, NEG_INF, 1.0], [NEG_INF, NEG_INF, NEG_INF]], requires_grad=True)
    up = torch.tensor([[0.5, 3.0, -1.0], [1.0, 2.0, 3.0]])
    (got,) = torch.autograd.grad(sl.log_softmax(x), x, up)
    kept = x.detach()[0, [0, 2]].requires_grad_()
    (want,) = torch.autograd.grad(torch.log_softmax(kept, -1), kept, up[0, [0, 2]])
    assert got[0, 1] == 0 and (got[1] == 0).all()
    torch.testing.assert_close(got[0, [0, 2]], want)


def test_softmax_torch_path_equals_torch_bitwise(backend):
    """Where torch's own kernels serve the softmax (float64; float32 without numba), the
    result is bit-identical to torch's on ordinary rows."""
    backend("")
    x = torch.randn(33, 517, generator=gen("bitwise"), dtype=F64)
    assert kernels.kernel_name("softmax", x) == "cpu.softmax_torch"
    assert torch.equal(sl.softmax(x), torch.softmax(x, -1))
    assert torch.equal(sl.log_softmax(x), torch.log_softmax(x, -1))


@pytest.mark.parametrize("log", [False, True], ids=["softmax", "log_softmax"])
@pytest.mark.parametrize("dtype", [F32, F64], ids=str)
def test_softmax_double_backward(log, dtype, backend):
    """Second derivatives through the fast softmax equal the reference's."""
    fn = sl.log_softmax if log else sl.softmax
    x = torch.randn(4, 9, generator=gen("dd", log), dtype=dtype)
    x[1, 3] = NEG_INF
    w = torch.randn(4, 9, generator=gen("dd-w", log), dtype=dtype)

    def hessian_vector(name):
        backend(name)
        xx = x.clone().requires_grad_()
        out = fn(xx)
        (g,) = torch.autograd.grad((torch.where(out.isfinite(), out, 0) * w).sum(), xx,
                                   create_graph=True)
        (h,) = torch.autograd.grad((g * w).sum(), xx)
        return g.detach(), h

    fast, ref = hessian_vector(""), hessian_vector("reference")
    for a, e in zip(fast, ref, strict=True):
        assert_close(a, e, ORACLE[dtype])
    if dtype == F64:
        backend("")
        assert torch.autograd.gradgradcheck(fn, torch.randn(3, 5, dtype=F64, requires_grad=True))


# ------------------------------------------------------------------------ softmax_topk
def topk_case(n: int, k: int, kind: str, g: torch.Generator, rows: int = 3) -> torch.Tensor:
    x = torch.randn(rows, n, generator=g, dtype=F64) * 2
    if kind == "clustered":  # the whole top-k inside one block
        x[:, 5:5 + k] += 20
    elif kind == "ties":  # the k largest are equal, spread over blocks
        x[:, :: n // k] = 20.0
    elif kind == "specials":
        x[0, : n // 2] = NEG_INF
        x[1 % rows] = NEG_INF
        x[-1, 3] = NAN
    elif kind == "extreme":
        x[0, 0], x[-1, -1], x[-1, 1] = 1e30, -1e30, 1e30
    return x


def check_topk(x: torch.Tensor, k: int, dim: int, backend, expect: str, ties: bool = False):
    """Against the reference; with ``ties`` the order of equal entries may differ, so the
    upstream gradient is the same for every output."""
    backend("")
    assert kernels.kernel_name("softmax_topk", x, k=k, n=x.shape[dim]) == expect
    up = torch.ones(k, dtype=F64) if ties else torch.randn(k, generator=gen("up-topk", k),
                                                           dtype=F64)

    def run_topk(z):
        zz = z.detach().clone().requires_grad_()
        p, idx = sl.softmax_topk(zz, k, dim=dim)
        upstream = up.to(p.dtype).expand_as(p.movedim(dim, -1)).movedim(-1, dim)
        (grad,) = torch.autograd.grad(p, zz, upstream)
        return p.detach(), idx, grad

    p, idx, grad = run_topk(x)
    backend("reference")
    ref, exp_idx, ref_grad = run_topk(x)
    if x.dtype == F32:
        exact, _, exact_grad = run_topk(x.double())
        assert_as_accurate(p, ref, exact, "probabilities")
        assert_as_accurate(grad, ref_grad, exact_grad, "gradients")
    else:  # half types: float32 results rounded to them; float64: torch's softmax kernel
        # (short rows) against the reference formula, the comparison ORACLE describes
        tol = ORACLE[F64] if x.dtype == F64 else ulp(x.dtype)
        assert_close(p, ref, tol, "probabilities")
        assert_close(grad, ref_grad, tol, "gradients")
    finite_rows = ~x.isnan().any(dim, keepdim=True)
    # indices may differ on ties: they must point at the same values
    vals = torch.where(finite_rows, x.gather(dim, idx), 0)
    assert torch.equal(vals, torch.where(finite_rows, x.gather(dim, exp_idx), 0))


@numba_missing
@pytest.mark.parametrize("kind", ["normal", "clustered", "ties", "specials", "extreme"])
@pytest.mark.parametrize("k", [1, 3, cpu.TOPK_MAX_K])
def test_softmax_topk_at_thresholds(k, kind, backend):
    """Rows just below, at and above the length from which the block search is used, and
    one that ends in a partial block."""
    least = cpu.TOPK_MIN_RATIO * k * cpu.TOPK_BLOCK
    for n, expect in ((least - 1, "reference"), (least, "cpu.softmax_topk"),
                      (least + 1, "cpu.softmax_topk"),
                      (least + cpu.TOPK_BLOCK // 2 + 3, "cpu.softmax_topk")):
        check_topk(topk_case(n, k, kind, gen("topk", n, k, kind)).float(), k, -1, backend,
                   expect, ties=kind == "ties")


@numba_missing
def test_softmax_topk_dispatch_and_layouts(backend, two_threads):
    n = 2 * cpu.TOPK_MIN_RATIO * 5 * cpu.TOPK_BLOCK + 7
    x = topk_case(n, 5, "normal", gen("topk-layout"), rows=40)
    check_topk(x.float(), 5, -1, backend, "cpu.softmax_topk")  # split over two threads
    check_topk(x.float().T.contiguous(), 5, 0, backend, "cpu.softmax_topk")
    check_topk(x.float().reshape(2, 20, -1), 5, -1, backend, "cpu.softmax_topk")
    for dtype in (torch.float16, torch.bfloat16):
        check_topk(x[:3].to(dtype), 5, -1, backend, "cpu.softmax_topk")
    check_topk(x[:3], 5, -1, backend, "reference")  # float64
    k = cpu.TOPK_MAX_K + 1
    wide = topk_case(cpu.TOPK_MIN_RATIO * k * cpu.TOPK_BLOCK, k, "normal", gen("k+1"))
    check_topk(wide.float(), k, -1, backend, "reference")


# ------------------------------------------------------------------ linear cross-entropy
LCE_OPTIONS = [  # (ignore rows, class weights, label smoothing, bias)
    (False, False, 0.0, False),
    (True, False, 0.0, True),
    (True, True, 0.1, False),
    (False, False, 0.25, True),
    (True, True, 0.0, True),
]


@pytest.mark.parametrize("reduction", ["mean", "sum", "none"])
@pytest.mark.parametrize("chunk", [1, 7, 64, None])
@pytest.mark.parametrize("options", LCE_OPTIONS, ids=str)
def test_linear_cross_entropy_softmax_path(options, chunk, reduction, backend):
    ignore, weighted, smoothing, bias = options
    g = gen("lce", options, chunk, reduction)
    n, v, d = 45, 29, 6
    h = torch.randn(n, d, generator=g)
    w = torch.randn(v, d, generator=g) * 0.7
    b = torch.randn(v, generator=g) if bias else None
    t = torch.randint(0, v, (n,), generator=g)
    if ignore:
        t[::4] = -100
    cw = torch.rand(v, generator=g) + 0.5 if weighted else None
    up = torch.randn(n, generator=g)

    def run_lce(name, dtype):
        backend(name)
        params = [p.to(dtype).requires_grad_() for p in (h, w, b) if p is not None]
        out = linear_cross_entropy(params[0], params[1], t, bias=params[2] if bias else None,
                                   class_weight=cw, label_smoothing=smoothing,
                                   reduction=reduction, chunk_size=chunk)
        grads = torch.autograd.grad(out, params, up.to(out.dtype) if out.dim() else None)
        return out.detach(), grads

    backend("")
    assert kernels.kernel_name("linear_cross_entropy", h, mapping="softmax",
                               params=()) == "cpu.linear_ce_softmax"
    out, grads = run_lce("", F32)
    exp, exp_grads = run_lce("reference", F64)
    assert_close(out, exp, ORACLE[F32], "loss")
    for a, e in zip(grads, exp_grads, strict=True):
        assert_close(a, e, ORACLE[F32], "gradient")
    low, low_grads = run_lce("", torch.bfloat16)
    ref_low, ref_low_grads = run_lce("reference", torch.bfloat16)
    assert_close(low, ref_low, ulp(torch.bfloat16), "bfloat16 loss")
    for a, e in zip(low_grads, ref_low_grads, strict=True):
        assert_close(a, e, ulp(torch.bfloat16) + 1e-3, "bfloat16 gradient")


# ------------------------------------------------------------------------ dispatch
@numba_missing
def test_every_branch_of_the_dispatch(backend):
    x32, x64, x16 = torch.randn(2, 5), torch.randn(2, 5, dtype=F64), torch.randn(2, 5).half()
    backend("")
    for op in ("sparsemax", "entmax15", "taylor_softmax", "spherical_softmax", "sigsoftmax"):
        assert kernels.kernel_name(op, x32) == kernels.kernel_name(op, x16) == f"cpu.{op}"
        assert kernels.kernel_name(op, x64) == "reference"  # float64: the reference
    assert kernels.kernel_name("softmax", x32) == kernels.kernel_name("softmax", x16) == (
        "cpu.softmax")
    assert kernels.kernel_name("softmax", x64) == "cpu.softmax_torch"  # torch's kernels
    assert kernels.kernel_name("entmax", x32) == "reference"  # no CPU kernel for this op
    lce = {"mapping": "softmax", "params": ()}
    assert kernels.kernel_name("linear_cross_entropy", x32, **lce) == "cpu.linear_ce_softmax"
    assert kernels.kernel_name("linear_cross_entropy", x64, **lce) == "reference"
    assert kernels.kernel_name("linear_cross_entropy", x32, mapping="taylor_softmax",
                               params=()) == "reference"
    assert kernels.kernel_name("linear_cross_entropy", x32, mapping="softmax",
                               params=(("temperature", 2.0),)) == "reference"
    backend("reference")
    for op in ("softmax", "sparsemax", "linear_cross_entropy"):
        assert kernels.kernel_name(op, x32, **lce) == "reference"
    backend("cpu")
    assert kernels.kernel_name("sparsemax", x32) == "cpu.sparsemax"
    assert kernels.kernel_name("sparsemax", x64) == "reference"


def test_backend_variable_is_checked(backend, monkeypatch):
    monkeypatch.delenv("TRITON_INTERPRET", raising=False)  # set where the Triton tests ran
    x = torch.randn(3)
    backend("gpu")
    with pytest.raises(ValueError, match="'auto', 'reference', 'cpu', 'triton'"):
        sl.softmax(x)
    backend("triton")
    with pytest.raises(ValueError, match="cuda"):
        sl.softmax(x)
    backend("auto")
    assert kernels.backend(x) == "cpu"
    assert kernels.backend(torch.empty(3, device="meta")) == "reference"
    backend("cpu")
    with pytest.raises(ValueError, match="cpu"):
        kernels.backend(torch.empty(3, device="meta"))


def test_triton_plugs_in(monkeypatch):
    """A tensor routed to the Triton backend runs the registered kernel's row functions (the
    rows already prepared by the one front end); ops without one fall back to the
    reference."""
    calls = []

    class FakeTritonSoftmax:
        @staticmethod
        def expnorm_forward(l, log):
            calls.append((tuple(l.shape), log))
            return torch.zeros_like(l)

    monkeypatch.setattr(kernels.registry, "_backend", lambda x, requested: "triton")
    monkeypatch.setitem(kernels.registry._MODULES, "triton.softmax", FakeTritonSoftmax)
    # the common call's cache of choices, which would keep this test's: a fresh one, restored
    monkeypatch.setattr(kernels.registry, "_EAGER", {})
    x = torch.randn(2, 3)
    assert torch.equal(sl.softmax(x, 0, temperature=2.0), torch.zeros(2, 3))
    assert calls == [((3, 2), False)]  # dim 0 moved last
    assert kernels.kernel_name("softmax", x) == "triton.softmax"
    assert kernels.kernel_name("entmax15", x) == "reference"
    torch.testing.assert_close(sl.entmax15(x), sl.entmax15(x.double()).float())


NO_NUMBA = """
import sys
sys.modules["numba"] = None  # as if numba were not installed
import torch, softmaxlab as sl
from softmaxlab import kernels
x = torch.randn(4, 6000)
for op in ("sparsemax", "entmax15", "sigsoftmax"):
    assert kernels.kernel_name(op, x) == "reference", op
assert kernels.kernel_name("softmax_topk", x, k=3, n=6000) == "reference"
assert kernels.kernel_name("softmax", x) == "cpu.softmax_torch"
y = torch.randn(3, 5, requires_grad=True)
y.data[1] = float("-inf")
assert torch.equal(sl.softmax(y)[1], torch.zeros(5))
sl.log_softmax(y).exp().sum().backward()
sl.sparsemax(y)
sl.softmax_topk(x, 3)
import os
os.environ["SOFTMAXLAB_BACKEND"] = "cpu"
try:
    sl.sparsemax(y)
except ImportError as e:
    assert "softmaxlab[cpu]" in str(e), e
else:
    raise AssertionError("forced cpu without numba must raise")
print("ok")
"""


def test_without_numba_everything_falls_back():
    env = {**os.environ, kernels.ENV_VAR: ""}
    done = subprocess.run([sys.executable, "-c", NO_NUMBA], capture_output=True, text=True,
                          timeout=120, check=False, env=env)
    assert done.returncode == 0 and done.stdout.strip() == "ok", done.stderr
