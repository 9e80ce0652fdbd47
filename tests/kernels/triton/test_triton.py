"""The Triton kernels (``softmaxlab.kernels.triton``) against the library's reference
functions: on CPU under the Triton interpreter (``TRITON_INTERPRET=1``, set by this folder's
conftest.py where no CUDA device is available), and the device tests natively on CUDA.

Tiny shapes with odd sizes (1, 7, 8, 9, 17, 33, ...) run each op on every kernel path: the
single-block kernels, and (with the thresholds lowered: ``MAX_SINGLE_BLOCK=8``, ``TILE=4``) the
cooperative path (a row's chunks in registers of several programs that meet at a counter,
"coop"), the multi-block online path split over several programs per row ("split"), one
program per row ("fused") or a persistent grid of programs looping over rows
("persistent"); row lengths at and across the threshold; ``-inf`` entries, all-excluded
rows, NaN rows, masks, temperatures, other dims. float64 is compared with the float64
reference to 1e-10; float32/float16/bfloat16 by the error against float64 truth, bounded by a
small multiple of the error of the naive torch formula in the same dtype (DESIGN.md §4).
Tolerances: ``tests/tolerances.py`` (``TRITON*``).

The tests that take the ``device`` fixture run on a CUDA GPU when the interpreter is off, at
the default thresholds on sizes that take each kernel path; under the interpreter they run on
the CPU, on the small odd shapes with the thresholds lowered. They check what the interpreter
tests leave out (float32 with -inf and NaN rows, bfloat16 on every path, linear
cross-entropy's options in low precision) and, on CUDA, the float64 comparisons too. The other
tests need the interpreter (CPU tensors): natively on CUDA they are skipped, and
``make test`` runs this folder under ``TRITON_INTERPRET=1`` as well.
"""

from __future__ import annotations

import os

import pytest

pytest.importorskip("triton", reason="triton is not installed (pip install -e '.[dev]' or "
                    "'.[triton]')")

import torch
import torch.nn.functional as F

import softmaxlab as sl
from softmaxlab import kernels
from softmaxlab.kernels.triton import _launch
from softmaxlab.kernels.triton import _linear_ce as linear_ce
from softmaxlab.losses import linear_cross_entropy
from softmaxlab.online import softmax_topk

from ..._helpers import assert_close
from ...tolerances import (
    BF16,
    F32,
    F64,
    TRITON,
    TRITON_EXTREMES,
    TRITON_LCE,
    TRITON_LOW_EPS,
    TRITON_LOW_FACTOR,
    TRITON_ONE_CLASS,
    TRITON_TOPK,
    Tol,
)

NEG_INF = float("-inf")
NAN = float("nan")
def _on_triton(fn):
    """``fn`` (a public function) with the Triton backend forced for the call: the one front
    end validates and prepares the rows, the Triton kernels run them."""
    def run(*args, **kwargs):
        with kernels.use("triton"):
            return fn(*args, **kwargs)
    return run


KERNELS = {name: _on_triton(fn) for name, fn in (
    ("softmax", sl.softmax), ("log_softmax", sl.log_softmax), ("sparsemax", sl.sparsemax),
    ("softmax_topk", softmax_topk), ("linear_cross_entropy", linear_cross_entropy))}

#: The kernels run on CPU tensors under the interpreter (set by conftest.py before import).
INTERPRET = os.environ.get("TRITON_INTERPRET") == "1"
#: The interpreter evaluates masked lanes too, in numpy (all-NaN and all -inf slices).
pytestmark = pytest.mark.filterwarnings("ignore::RuntimeWarning")
interpreter_only = pytest.mark.skipif(
    not INTERPRET, reason="CPU tensors need the Triton interpreter: run this folder under "
    "TRITON_INTERPRET=1 (make test does)")


def _config(**kw):
    """Set ``softmaxlab.kernels.triton._launch`` (and ``linear_ce``) attributes; returns a
    function that restores them."""
    mods = {"VOCAB_ALIGN": linear_ce, "TILE_LCE": linear_ce, "TAIL_COLUMNS": linear_ce,
            "BORROW_ROWS": linear_ce}
    old = {}
    for k, v in kw.items():
        mod = mods.get(k, _launch)
        name = "TILE" if k == "TILE_LCE" else k
        old[(mod, name)] = getattr(mod, name)
        setattr(mod, name, v)

    def restore():
        for (mod, name), v in old.items():
            setattr(mod, name, v)

    return restore


#: Path name -> launch settings (the single path uses the defaults).
PATHS = {
    "single": {},
    "coop": dict(MAX_SINGLE_BLOCK=8, TILE=4, COOP_CHUNK=4, COOP_PROGRAMS_PER_SM=4,
                 COOP_FORWARD=True, COOP_MIN_ITEMSIZE=0),
    "split": dict(MAX_SINGLE_BLOCK=8, TILE=4, PROGRAMS_PER_SM=4, COOP_PROGRAMS_PER_SM=0),
    "fused": dict(MAX_SINGLE_BLOCK=8, TILE=4, PROGRAMS_PER_SM=0, PERSISTENT_PROGRAMS_PER_SM=0,
                  COOP_PROGRAMS_PER_SM=0),
    "persistent": dict(MAX_SINGLE_BLOCK=8, PERSISTENT_TILE=4, PROGRAMS_PER_SM=0,
                       PERSISTENT_PROGRAMS_PER_SM=1, COOP_PROGRAMS_PER_SM=0),
}


def _run_on_path(path, fn):
    restore = _config(**PATHS[path])
    try:
        return fn()
    finally:
        restore()


def _grads(out, inputs, g):
    out = out[0] if isinstance(out, tuple) else out
    fin = torch.where(torch.isfinite(out), out, torch.zeros_like(out))
    return torch.autograd.grad((fin * g).sum(), inputs, allow_unused=True)


def _logits(shape, seed, dtype=None, special=True, device="cpu"):
    """Random float64 logits (scale 3) with, when ``special``, some -inf entries and one
    all -inf row (needs >= 3 rows); made on the CPU, returned on ``device``."""
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(shape, generator=g, dtype=torch.float64) * 3
    if special and x.dim() >= 2 and x.numel() > 1:
        rows = x.reshape(-1, x.shape[-1])
        rows[0, :: max(2, x.shape[-1] // 3)] = NEG_INF
        if rows.shape[0] >= 3:
            rows[-1] = NEG_INF
        if rows.shape[0] >= 4 and x.shape[-1] > 1:
            rows[1, 0] = rows[1, 1] = NEG_INF
    return x.to(device, dtype or x.dtype)


#: Node ids of the tests of this module that ran in this process (see test_every_path_ran).
RAN: set[str] = set()


@pytest.fixture(autouse=True)
def _record(request):
    yield
    RAN.add(request.node.nodeid)


SHAPES = [(1, 1), (3, 1), (3, 7), (4, 8), (2, 3, 9), (5, 17), (3, 33)]


def _ops():
    return {"softmax": (KERNELS["softmax"], sl.softmax),
            "log_softmax": (KERNELS["log_softmax"], sl.log_softmax),
            "sparsemax": (KERNELS["sparsemax"], sl.sparsemax)}


def _compare_f64(op, shapes, seed, device="cpu", **kw):
    """Values and gradients of the kernel vs the reference, float64."""
    fast, ref = _ops()[op]
    for i, shape in enumerate(shapes):
        x = _logits(shape, seed + i, device=device).requires_grad_(True)
        y, yr = fast(x, **kw), ref(x, **kw)
        assert_close(y, yr, TRITON[F64], f"{op}{shape} value")
        g = torch.randn(y.shape, dtype=torch.float64, generator=torch.Generator().manual_seed(i))
        (gx,), (gr,) = _grads(y, (x,), g.to(device)), _grads(yr, (x,), g.to(device))
        assert_close(gx, gr, TRITON[F64], f"{op}{shape} grad")


# ============================================================ interpreter tests
@interpreter_only
@pytest.mark.parametrize("path", list(PATHS))
@pytest.mark.parametrize("op", ["softmax", "log_softmax"])
def test_rows_f64(op, path):
    _run_on_path(path, lambda: _compare_f64(op, SHAPES, 10))


@interpreter_only
def test_sparsemax_single_f64():
    _run_on_path("single", lambda: _compare_f64("sparsemax", SHAPES, 20))


@interpreter_only
def test_sparsemax_streamed_f64():
    _run_on_path("split", lambda: _compare_f64("sparsemax", SHAPES, 30))


def test_coop_plan():
    """The cooperative plan: the backward of float32/float64 rows only (the defaults the H200
    run chose), never more programs than ``COOP_PROGRAMS_PER_SM`` per SM, chunks of at most
    ``COOP_CHUNK`` covering the row, and no plan when one row needs more programs than that."""
    sms = _launch.sm_count(torch.device("cpu"))
    for dtype in (torch.float32, torch.float64):
        x = torch.empty(0, dtype=dtype)
        p = _launch.coop(1000, 3 * _launch.COOP_CHUNK - 5, x, backward=True)
        assert p is not None and p.n_chunks == 3 and p.chunk == _launch.COOP_CHUNK
        assert p.grid[0] % 3 == 0 and p.grid[0] <= _launch.COOP_PROGRAMS_PER_SM * sms
        assert p.block_c == 4 and p.chunk * p.n_chunks >= 3 * _launch.COOP_CHUNK - 5
        assert _launch.coop(1000, 3 * _launch.COOP_CHUNK, x, backward=False) is None
        groups = min(2, _launch.COOP_PROGRAMS_PER_SM * sms // 3)  # rows at a time
        assert _launch.coop(2, 3 * _launch.COOP_CHUNK, x, backward=True).grid == (3 * groups,)
        too_long = (_launch.COOP_PROGRAMS_PER_SM * sms + 1) * _launch.COOP_CHUNK
        assert _launch.coop(1, too_long, x, backward=True) is None
    assert _launch.coop(1000, 3 * _launch.COOP_CHUNK, torch.empty(0, dtype=torch.bfloat16),
                        backward=True) is None
    restore = _config(COOP_FORWARD=True, COOP_MIN_ITEMSIZE=0, COOP_PROGRAMS_PER_SM=2)
    try:
        x = torch.empty(0, dtype=torch.bfloat16)
        p = _launch.coop(1000, 2 * _launch.COOP_CHUNK, x, backward=False)
        assert p is not None and p.grid == (2 * sms,) and p.spin == 0  # CPU: interpreter, no wait
    finally:
        restore()


@interpreter_only
def test_threshold_boundary():
    """Rows of 15, 16, 17 entries with MAX_SINGLE_BLOCK=16: both sides of the dispatch, with
    the cooperative path on (chunks of 4, with and without prefetching the next row) and off."""
    for coop, prefetch, long_path in ((4, True, "softmax.coop"), (4, False, "softmax.coop"),
                                      (0, True, "softmax.multi.split")):
        restore = _config(MAX_SINGLE_BLOCK=16, TILE=4, COOP_CHUNK=4, COOP_PROGRAMS_PER_SM=coop,
                          COOP_PREFETCH=prefetch, COOP_FORWARD=True)
        try:
            before = dict(_launch.PATHS)
            for op in ("softmax", "log_softmax", "sparsemax"):
                _compare_f64(op, [(3, 15), (3, 16), (3, 17)], 40)
            ran = {k: v - before.get(k, 0) for k, v in _launch.PATHS.items()}
            for key in ("softmax.single", long_path, "sparsemax.single", "sparsemax.streamed"):
                assert ran.get(key, 0) > 0, f"path {key} did not run: {ran}"
        finally:
            restore()


@interpreter_only
def test_options_f64():
    """Other dims, masks, float and per-row tensor temperatures (their gradient too)."""
    ops = _ops()
    for path in ("single", "split"):
        restore = _config(**PATHS[path])
        try:
            x = _logits((4, 3, 9), 50).requires_grad_(True)
            mask = torch.rand(4, 1, 9, generator=torch.Generator().manual_seed(1)) > 0.3
            for op, (fast, ref) in ops.items():
                for kw in ({"dim": 0}, {"dim": -2}, {"mask": mask}):
                    assert_close(fast(x, **kw), ref(x, **kw), TRITON[F64], f"{op} {kw}")
                    g = torch.randn(x.shape, dtype=x.dtype)
                    assert_close(_grads(fast(x, **kw), (x,), g)[0],
                                 _grads(ref(x, **kw), (x,), g)[0], TRITON[F64],
                                 f"{op} grad {kw}")
            temp = (torch.rand(4, 3, 1, dtype=torch.float64) + 0.5).requires_grad_(True)
            for op in ("softmax", "log_softmax"):
                fast, ref = ops[op]
                for t in (0.7, temp):
                    y, yr = fast(x, temperature=t), ref(x, temperature=t)
                    assert_close(y, yr, TRITON[F64], f"{op} T={t}")
                    g = torch.randn(x.shape, dtype=x.dtype)
                    for a, b in zip(_grads(y, (x, temp), g), _grads(yr, (x, temp), g), strict=True):
                        if b is not None:
                            assert_close(a, b, TRITON[F64], f"{op} grads T")
        finally:
            restore()


@interpreter_only
def test_nan_rows():
    """A NaN makes its whole row NaN and leaves the other rows alone, on every path."""
    for path in PATHS:
        restore = _config(**PATHS[path])
        try:
            x = _logits((4, 11), 60)
            x[2, 5] = NAN
            for op, (fast, ref) in _ops().items():
                y = fast(x)
                assert y[2].isnan().all(), f"{op}/{path}: NaN row not all NaN"
                assert not y[[0, 1, 3]].isnan().any(), f"{op}/{path}: NaN leaked"
                assert_close(y, ref(x), TRITON[F64], f"{op}/{path} NaN rows")
        finally:
            restore()


@interpreter_only
def test_extremes():
    """Logits of +-1e30 in float32; all -inf rows give 0 / -inf and zero gradient."""
    x = torch.tensor([[1e30, -1e30, 0.0, 1e30], [-1e30, -1e30, -1e30, -1e30]])
    for path in PATHS:
        restore = _config(**PATHS[path])
        try:
            for op, (fast, ref) in _ops().items():
                assert_close(fast(x), ref(x), TRITON_EXTREMES[F32], f"{op}/{path} +-1e30")
                z = torch.full((2, 10), NEG_INF, requires_grad=True)
                y = fast(z)
                empty = NEG_INF if op == "log_softmax" else 0.0
                assert (y == empty).all(), f"{op}/{path}: all -inf row gives {y}"
                (gz,) = _grads(y, (z,), torch.ones_like(y))
                assert (gz == 0).all(), f"{op}/{path}: all -inf row grad {gz}"
        finally:
            restore()


def _naive(op, x):
    return {"softmax": lambda: torch.softmax(x, -1),
            "log_softmax": lambda: torch.log_softmax(x, -1),
            "sparsemax": lambda: sl.sparsemax(x)}[op]()


def _err(a, truth):
    """max |a - truth| / max |truth| over finite entries."""
    a, t = a.detach().double(), truth.detach().double()
    fin = torch.isfinite(t)
    assert torch.equal(torch.isfinite(a), fin), "finite pattern differs"
    return ((a - t)[fin].abs().max() / t[fin].abs().max().clamp(min=1e-30)).item()


def _compare_low_precision(op, x64, dtype, what):
    """Values and gradients of the kernel in ``dtype``: error vs float64 truth <= 2 x the
    naive torch formula's error in the same dtype + 2 eps."""
    fast, ref = _ops()[op]
    x = x64.to(dtype).requires_grad_(True)
    xt = x.detach().double().requires_grad_(True)
    truth, y, naive = ref(xt), fast(x), _naive(op, x)
    assert y.dtype == dtype
    eps = torch.finfo(dtype).eps
    e, en = _err(y, truth), _err(naive, truth)
    assert e <= TRITON_LOW_FACTOR * en + TRITON_LOW_EPS * eps, f"{what}: value error {e} vs {en}"
    g = torch.randn(x.shape, dtype=torch.float64, device=x.device)
    gt = _grads(truth, (xt,), g)[0]
    ek = _err(_grads(y, (x,), g.to(dtype))[0], gt)
    en = _err(_grads(naive, (x,), g.to(dtype))[0], gt)
    assert ek <= TRITON_LOW_FACTOR * en + TRITON_LOW_EPS * eps, f"{what}: grad error {ek} vs {en}"


@interpreter_only
def test_low_precision():
    """float32/float16/bfloat16 values and gradients: error vs float64 truth <= 2 x the
    naive torch formula's error in the same dtype + 2 eps."""
    for path in ("single", "split"):
        restore = _config(**PATHS[path])
        try:
            for op in _ops():
                for dtype in (torch.float32, torch.float16, torch.bfloat16):
                    _compare_low_precision(op, _logits((4, 21), 70, special=False), dtype,
                                           f"{op}/{path}/{dtype}")
        finally:
            restore()


@interpreter_only
def test_gradcheck():
    """torch.autograd.gradcheck (float64) of every op on a tiny input, both paths."""
    for path in ("single", "split"):
        restore = _config(**PATHS[path])
        try:
            x = (torch.randn(2, 9, dtype=torch.float64) * 2).requires_grad_(True)
            kw = dict(eps=1e-6, atol=1e-7, fast_mode=True)
            for name in ("softmax", "log_softmax", "sparsemax"):
                assert torch.autograd.gradcheck(KERNELS[name], (x,), **kw), name
            assert torch.autograd.gradcheck(lambda z: KERNELS["softmax_topk"](z, 3)[0], (x,), **kw)
        finally:
            restore()


@interpreter_only
def test_softmax_topk():
    """Top-k probabilities, indices and gradients vs softmaxlab.online.softmax_topk, with
    -inf entries, all -inf rows, k = 1 and k = n, other dims, bfloat16."""
    fast = KERNELS["softmax_topk"]
    for path in ("single", "split", "fused"):
        restore = _config(**PATHS[path])
        try:
            for i, (shape, k, dim) in enumerate([((1, 1), 1, -1), ((3, 7), 3, -1),
                                                 ((4, 17), 17, -1), ((5, 9, 2), 4, 1)]):
                x = _logits(shape, 80 + i).requires_grad_(True)
                (p, idx), (pr, ir) = fast(x, k, dim=dim), softmax_topk(x, k, dim=dim)
                assert_close(p, pr, TRITON[F64], f"topk{shape} values")
                assert torch.equal(idx[pr > 0], ir[pr > 0]), f"topk{shape} indices"
                g = torch.randn(p.shape, dtype=torch.float64)
                assert_close(_grads(p, (x,), g)[0], _grads(pr, (x,), g)[0], TRITON[F64],
                             f"topk{shape} grad")
            xb = _logits((6, 37), 90, special=False).to(torch.bfloat16)
            (p, idx), (pr, ir) = fast(xb, 5), softmax_topk(xb.double(), 5)
            assert p.dtype == torch.bfloat16 and torch.equal(idx, ir)
            assert_close(p.double(), pr, TRITON_TOPK[BF16], "topk bf16")
        finally:
            restore()


def _lce_inputs(n, v, d, dtype, seed, bias=True, device="cpu"):
    g = torch.Generator().manual_seed(seed)
    h = torch.randn(n, d, generator=g, dtype=torch.float64).to(device, dtype).requires_grad_(True)
    w = (torch.randn(v, d, generator=g, dtype=torch.float64) / d ** 0.5).to(device, dtype)
    w.requires_grad_(True)
    b = torch.randn(v, generator=g, dtype=torch.float64).to(device, dtype).requires_grad_(True) \
        if bias else None
    t = torch.randint(0, v, (n,), generator=g).to(device)
    t[::4] = -100
    return h, w, b, t


def _lce_cases():
    """(kwargs, launch settings): one chunk; vocabulary chunks of 4 over all rows; single-row
    blocks (chunk_size=1)."""
    cw = torch.rand(13, dtype=torch.float64, generator=torch.Generator().manual_seed(3)) + 0.5
    plans = [({}, {}), ({"chunk_size": 2}, {"VOCAB_ALIGN": 4, "TILE_LCE": 4}),
             ({"chunk_size": 1}, {"TILE_LCE": 4})]
    opts = [dict(reduction="mean"), dict(reduction="sum", label_smoothing=0.2),
            dict(reduction="none", class_weight=cw), dict(reduction="mean", class_weight=cw,
                                                          label_smoothing=0.1, temperature=1.7)]
    return [(dict(**o, **p), s) for p, s in plans for o in opts]


@interpreter_only
def test_linear_cross_entropy_f64():
    """Loss and gradients (hidden, weight, bias) vs softmaxlab.losses.linear_cross_entropy in
    float64, over chunk plans x reductions x label smoothing x class weights x temperature."""
    fast = KERNELS["linear_cross_entropy"]
    for i, (kw, settings) in enumerate(_lce_cases()):
        restore = _config(**settings)
        try:
            for bias in (True, False):
                h, w, b, t = _lce_inputs(9, 13, 5, torch.float64, i, bias)
                out, ref = fast(h, w, t, bias=b, **kw), linear_cross_entropy(h, w, t, bias=b, **kw)
                assert_close(out, ref, TRITON[F64], f"lce {kw} loss")
                g = torch.randn(out.shape, dtype=torch.float64)
                ins = (h, w) + ((b,) if bias else ())
                for a, r in zip(torch.autograd.grad(out, ins, g), torch.autograd.grad(ref, ins, g),
                                strict=True):
                    assert_close(a, r, TRITON[F64], f"lce {kw} grad")
        finally:
            restore()
    r, vc = linear_ce.plan(9, 13, 13)
    assert (r, vc) == (1, 13), (r, vc)


@interpreter_only
def test_linear_cross_entropy_low_precision():
    """bfloat16/float16/float32 (3-D hidden): loss and gradient errors vs float64 truth within
    2 x those of the naive F.cross_entropy(hidden @ weight.T + bias) in the same dtype + 2 eps."""
    fast = KERNELS["linear_cross_entropy"]
    before = _launch.PATHS["linear_ce.borrowed"]
    cases = [((12, 13, 16), {}, {}), ((12, 13, 16), {"VOCAB_ALIGN": 4, "TILE_LCE": 4},
                                      {"chunk_size": 2}),
             ((4, 37, 6), {"VOCAB_ALIGN": 4, "TILE_LCE": 4}, {"chunk_size": 2}),
             ((4, 37, 6), {"VOCAB_ALIGN": 4, "TILE_LCE": 4}, {"chunk_size": 1}),
             ((4, 37, 6), {"VOCAB_ALIGN": 4, "TILE_LCE": 4, "BORROW_ROWS": False},
              {"chunk_size": 1})]
    for dtype in (torch.float32, torch.float16, torch.bfloat16):
        for (n, v, d), settings, kw in cases:
            restore = _config(**settings)
            try:
                h, w, b, t = _lce_inputs(n, v, d, dtype, 5)
                h3, t3 = h.reshape(2, n // 2, d), t.reshape(2, n // 2)
                ins = (h, w, b)
                x64 = [a.detach().double().requires_grad_(True) for a in ins]
                truth = F.cross_entropy(x64[0] @ x64[1].T + x64[2], t)
                naive = F.cross_entropy((h @ w.T + b).float(), t)
                out = fast(h3, w, t3, bias=b, **kw)
                assert out.dtype == dtype
                eps = torch.finfo(dtype).eps
                e, en = _err(out, truth), _err(naive, truth)
                assert e <= TRITON_LOW_FACTOR * en + TRITON_LOW_EPS * eps, (
                    f"lce {dtype}: loss error {e} vs naive {en}")
                gt = torch.autograd.grad(truth, x64)
                for name, a, n_, tr in zip("hwb", torch.autograd.grad(out, ins),
                                           torch.autograd.grad(naive, ins), gt, strict=True):
                    e, en = _err(a, tr), _err(n_, tr)
                    assert e <= TRITON_LOW_FACTOR * en + TRITON_LOW_EPS * eps, (
                        f"lce {dtype} grad {name}: {e} vs naive {en}")
            finally:
                restore()
    # (4, 37, 6) in fp16/bf16: grad_h accumulated inside the unwritten rows of grad_W (not
    # with BORROW_ROWS off)
    assert _launch.PATHS["linear_ce.borrowed"] - before == 4, dict(_launch.PATHS)


@interpreter_only
def test_linear_cross_entropy_edge_cases():
    """Every row ignored gives 0 and zero gradients; one class; no grad for weight; bad
    arguments raise (once, in the one front end); a mapping the kernel lacks runs the
    reference."""
    fast = KERNELS["linear_cross_entropy"]
    h, w, b, t = _lce_inputs(5, 7, 3, torch.float64, 9)
    out = fast(h, w, torch.full((5,), -100), bias=b)
    assert out.item() == 0.0
    assert all((g == 0).all() for g in torch.autograd.grad(out, (h, w, b)))
    h1, w1, _, _ = _lce_inputs(4, 1, 3, torch.float64, 10, bias=False)
    t1 = torch.zeros(4, dtype=torch.long)
    assert_close(fast(h1, w1, t1), linear_cross_entropy(h1, w1, t1), TRITON_ONE_CLASS[F64],
                 "V=1")
    wd = w.detach()
    (gh,) = torch.autograd.grad(fast(h, wd, t), (h,))
    (ghr,) = torch.autograd.grad(linear_cross_entropy(h, wd, t), (h,))
    assert_close(gh, ghr, TRITON[F64], "weight without grad")
    for bad, exc in (({"reduction": "avg"}, ValueError), ({"label_smoothing": 2.0}, ValueError),
                     ({"mapping": "sparsemax"}, ValueError)):
        try:
            fast(h, w, t, **bad)
        except exc:
            continue
        raise AssertionError(f"{bad} did not raise {exc.__name__}")
    with kernels.use("triton"):
        assert kernels.kernel_name("linear_cross_entropy", h, mapping="taylor_softmax",
                                   params={}, dtypes={F64}) == "reference"
    assert_close(fast(h, w, t, mapping="taylor_softmax"),
                 linear_cross_entropy(h, w, t, mapping="taylor_softmax"), TRITON[F64], "taylor")
    try:
        fast(h, w, torch.full((5,), 7))
    except ValueError as e:
        assert "target" in str(e)
    else:
        raise AssertionError("target out of range did not raise")


@interpreter_only
def test_every_path_ran(request):
    """Every kernel path was exercised by the tests above. They run before this one in the
    same process, except under ``-k`` or pytest-xdist: the ones that did not run here run
    now (they take no fixtures), so the claim holds for the tests, not the selection."""
    here = [item for item in request.session.items
            if getattr(item, "module", None) is request.module
            and item.function is not test_every_path_ran
            and "device" not in item.fixturenames]
    for item in here:
        if item.nodeid not in RAN:
            params = item.callspec.params if hasattr(item, "callspec") else {}
            item.function(**params)
    want = ["softmax.single", "softmax.coop", "softmax_bwd.coop", "softmax.multi.split",
            "softmax.multi.fused", "softmax_bwd.single",
            "softmax_bwd.multi.split", "softmax_bwd.multi.fused", "softmax.persistent",
            "softmax_bwd.persistent", "sparsemax.single", "sparsemax.streamed",
            "sparsemax_bwd.single", "sparsemax_bwd.streamed", "linear_ce.stats", "linear_ce.grad",
            "linear_ce.borrowed"]
    missing = [k for k in want if not _launch.PATHS.get(k)]
    assert not missing, f"paths never run: {missing}; ran: {dict(_launch.PATHS)}"


# ============================================================ device tests (CUDA or interpreter)
def _row_plans(device):
    """(launch settings, shapes) that take every row path on ``device``: on CUDA the default
    thresholds on one block and on the cooperative path (rows longer than one block: few,
    many, and too long for the SMs to hold one row at once, which falls back to the split),
    then with the cooperative path off rows split over programs (few rows) and the persistent
    grid (many rows); on CPU the lowered thresholds of PATHS."""
    if device == "cuda":
        coop = {"COOP_FORWARD": True, "COOP_MIN_ITEMSIZE": 0}
        return [({}, [(5, 1), (37, 1000), (9, 32768), (3, 50001), (600, 40000)]),
                ({**coop}, [(3, 50001), (600, 40000), (2, 1 << 22)]),
                ({**coop, "COOP_PREFETCH": True}, [(3, 50001), (600, 40000)]),
                ({**coop, "COOP_CHUNK": 8192, "COOP_PROGRAMS_PER_SM": 2}, [(300, 70001)]),
                ({"COOP_PROGRAMS_PER_SM": 0}, [(3, 50001), (600, 40000)])]
    return [(PATHS[path], SHAPES) for path in PATHS]


def test_rows_every_dtype(device):
    """softmax, log_softmax, sparsemax on every path: float32 with -inf entries, an all -inf
    row and a NaN row within 1e-5 (1 + |ref|) of the float64 reference; bfloat16 values and
    gradients (error vs float64 truth <= 2 x torch's + 2 eps); on CUDA also float64 values
    and gradients (on CPU: the path checks above)."""
    before = dict(_launch.PATHS)
    for settings, shapes in _row_plans(device):
        restore = _config(**settings)
        try:
            for op, (fast, ref) in _ops().items():
                if device == "cuda":
                    _compare_f64(op, shapes, 100, device)
                for i, shape in enumerate(shapes):
                    x = _logits(shape, 110 + i, device=device)
                    rows = x.reshape(-1, shape[-1])
                    if rows.shape[0] >= 3:
                        rows[1, shape[-1] // 2] = NAN
                    assert_close(fast(x.float()).double(), ref(x), TRITON[F32],
                                 f"{op}{shape} float32 {settings}")
                    _compare_low_precision(op, _logits(shape, 120 + i, special=False,
                                                       device=device),
                                           torch.bfloat16, f"{op}{shape} bfloat16 {settings}")
        finally:
            restore()
    ran = {k: v - before.get(k, 0) for k, v in _launch.PATHS.items()}
    for key in ("softmax.single", "softmax.coop", "softmax.multi.split", "softmax.persistent",
                "sparsemax.single", "sparsemax.streamed"):
        assert ran.get(key, 0) > 0, f"path {key} did not run: {ran}"


def test_softmax_topk_float32(device):
    """softmax_topk in float32 within 1e-5 (1 + |ref|) of softmaxlab.online.softmax_topk in
    float64, k = 1..n; on CUDA also float64 values, indices and gradients (on CPU:
    test_softmax_topk)."""
    fast = KERNELS["softmax_topk"]
    if device == "cuda":
        plans = [({}, [(64, 128256, 10), (3, 1000, 1000), (700, 50000, 5)])]
    else:
        plans = [(PATHS[p], [(1, 1, 1), (3, 7, 3), (4, 17, 17), (5, 33, 5)])
                 for p in ("single", "split", "fused")]
    for settings, cases in plans:
        restore = _config(**settings)
        try:
            for i, (m, n, k) in enumerate(cases):
                x = _logits((m, n), 130 + i, special=False, device=device).requires_grad_(True)
                (p, idx), (pr, ir) = fast(x.detach().float(), k), softmax_topk(x, k)
                assert_close(p.double(), pr, TRITON[F32], f"topk {m}x{n} k={k} float32")
                if device == "cuda":
                    (p, idx) = fast(x, k)
                    assert_close(p, pr, TRITON[F64], f"topk {m}x{n} k={k} values")
                    assert torch.equal(idx, ir), f"topk {m}x{n} k={k} indices"
                    g = torch.randn_like(p)
                    assert_close(_grads(p, (x,), g)[0], _grads(pr, (x,), g)[0], TRITON[F64],
                                 f"topk {m}x{n} k={k} grad")
        finally:
            restore()


def test_linear_cross_entropy_options(device):
    """linear_cross_entropy with bias and ignored targets in float32 and bfloat16 (and float64
    on CUDA; on CPU: test_linear_cross_entropy_f64), for mean; sum + label smoothing; none +
    class weights; vocabulary chunks; row blocks + smoothing + class weights: loss and the
    three gradients vs the reference on the same (rounded) inputs in float64, error <= 2e-5
    (float32), 1e-2 (bfloat16), 1e-8 (float64). The grad_h accumulator borrowed from grad_W
    and the grad_W rows whose logits live in grad_W ran."""
    fast = KERNELS["linear_cross_entropy"]
    if device == "cuda":
        (n, v, d), settings, chunks = (1000, 5003, 256), {}, (64, 1)
        dtypes = (torch.float64, torch.float32, torch.bfloat16)
    else:  # chunk_size=1: 37 // 7 columns per chunk < VOCAB_ALIGN, so rows are blocked
        (n, v, d), chunks = (7, 37, 6), (2, 1)
        settings = {"VOCAB_ALIGN": 8, "TILE_LCE": 4, "TAIL_COLUMNS": 1}
        dtypes = (torch.float32, torch.bfloat16)
    tol = TRITON_LCE
    cw = (torch.rand(v, dtype=torch.float64, generator=torch.Generator().manual_seed(4))
          + 0.5).to(device)
    options = [{"reduction": "mean"}, {"reduction": "sum", "label_smoothing": 0.1},
               {"reduction": "none", "class_weight": cw},
               {"reduction": "mean", "chunk_size": chunks[0]},
               {"reduction": "mean", "chunk_size": chunks[1], "label_smoothing": 0.2,
                "class_weight": cw}]
    before = dict(_launch.PATHS)
    restore = _config(**settings)
    try:
        for i, kw in enumerate(options):
            for dtype in dtypes:
                h, w, b, t = _lce_inputs(n, v, d, dtype, 140 + i, device=device)
                out = fast(h, w, t, bias=b, **kw)
                x64 = [a.detach().double().requires_grad_(True) for a in (h, w, b)]
                ref = linear_cross_entropy(*x64[:2], t, bias=x64[2], **kw)
                g = torch.rand_like(ref) + 0.5
                what = f"lce {dtype} {({k: a for k, a in kw.items() if k != 'class_weight'})}"
                assert_close(out.double(), ref, Tol(tol[dtype], tol[dtype]), f"{what} loss")
                for name, a, r in zip("hwb", torch.autograd.grad(out, (h, w, b), g.to(dtype)),
                                      torch.autograd.grad(ref, x64, g), strict=True):
                    e = _err(a, r)
                    assert e <= tol[dtype], f"{what} grad {name}: error {e}"
    finally:
        restore()
    ran = {k: v - before.get(k, 0) for k, v in _launch.PATHS.items()}
    assert ran.get("linear_ce.borrowed") and ran.get("linear_ce.carved"), ran


