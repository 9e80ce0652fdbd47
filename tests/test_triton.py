"""The Triton kernels (``softmaxlab.kernels.triton``) against the library's reference
functions, on CPU under the Triton interpreter.

``TRITON_INTERPRET=1`` must be set before ``triton`` is imported, and this test process may
already hold a real ``triton`` (imported by another test or by doctest collection). So every
check runs in one fresh subprocess (this file run as a script), which writes
``{check: None | failure message}`` as JSON; each test below asserts one check. Under
pytest-xdist the first worker to need the results runs the subprocess and the others wait on
a lock for its file.

Tiny shapes with odd sizes (1, 7, 8, 9, 17, 33, ...) run each op on every kernel path: the
single-block kernels, and (with the thresholds lowered: ``MAX_SINGLE_BLOCK=8``, ``TILE=4``) the
multi-block online path split over several programs per row ("split"), one program per row
("fused") or a persistent grid of programs looping over rows ("persistent"); row lengths at
and across the threshold; ``-inf`` entries, all-excluded rows, NaN rows, masks, temperatures,
other dims. float64 is compared with the float64 reference to 1e-10; float32/float16/bfloat16
by the error against float64 truth, bounded by a small multiple of the error of the naive torch
formula in the same dtype (DESIGN.md §4).

The device checks (``@device_check``) run on a CUDA GPU when one is available, in a subprocess
of their own, at the default thresholds on sizes that take each kernel path; otherwise they run
in the interpreter subprocess, on the small odd shapes with the thresholds lowered. They check
what the interpreter checks leave out (float32 with -inf and NaN rows, bfloat16 on every path,
linear cross-entropy's options in low precision) and, on CUDA, the float64 comparisons too.
"""

from __future__ import annotations

import importlib.util
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

NEG_INF = float("-inf")
NAN = float("nan")
#: Checks: name -> function (filled by the ``@check`` decorator below).
CHECKS: dict = {}
#: Checks that take the device (``"cuda"`` or ``"cpu"``): name -> function.
DEVICE_CHECKS: dict = {}


def check(fn):
    CHECKS[fn.__name__.removeprefix("check_")] = fn
    return fn


def device_check(fn):
    DEVICE_CHECKS[fn.__name__.removeprefix("check_")] = fn
    return fn


# ============================================================ helpers (subprocess only)
def _config(**kw):
    """Set ``softmaxlab.kernels.triton._launch`` (and ``linear_ce``) attributes; returns a
    function that restores them."""
    from softmaxlab.kernels.triton import _launch
    from softmaxlab.kernels.triton import _linear_ce as linear_ce

    mods = {"VOCAB_ALIGN": linear_ce, "TILE_LCE": linear_ce, "TAIL_COLUMNS": linear_ce}
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
    "split": dict(MAX_SINGLE_BLOCK=8, TILE=4, PROGRAMS_PER_SM=4),
    "fused": dict(MAX_SINGLE_BLOCK=8, TILE=4, PROGRAMS_PER_SM=0, PERSISTENT_PROGRAMS_PER_SM=0),
    "persistent": dict(MAX_SINGLE_BLOCK=8, PERSISTENT_TILE=4, PROGRAMS_PER_SM=0,
                       PERSISTENT_PROGRAMS_PER_SM=1),
}


def _run_on_path(path, fn):
    restore = _config(**PATHS[path])
    try:
        return fn()
    finally:
        restore()


def _close(actual, expected, rtol, atol, what):
    """Same shape, same NaN and infinity pattern, |a - e| <= atol + rtol |e| elsewhere."""
    import torch

    assert actual.shape == expected.shape, f"{what}: shape {actual.shape} != {expected.shape}"
    a, e = actual.detach().double(), expected.detach().double()
    assert torch.equal(a.isnan(), e.isnan()), f"{what}: NaN pattern differs"
    inf = a.isinf() | e.isinf()
    assert torch.equal(a[inf], e[inf]), f"{what}: infinities differ"
    fin = ~(inf | a.isnan())
    bad = (a - e).abs() > atol + rtol * e.abs()
    bad &= fin
    if bad.any():
        i = tuple(bad.nonzero()[0].tolist())
        raise AssertionError(f"{what}: at {i} actual {a[i].item()!r} expected {e[i].item()!r}; "
                             f"{int(bad.sum())} of {bad.numel()} off")


def _grads(out, inputs, g):
    import torch

    out = out[0] if isinstance(out, tuple) else out
    fin = torch.where(torch.isfinite(out), out, torch.zeros_like(out))
    return torch.autograd.grad((fin * g).sum(), inputs, allow_unused=True)


def _logits(shape, seed, dtype=None, special=True, device="cpu"):
    """Random float64 logits (scale 3) with, when ``special``, some -inf entries and one
    all -inf row (needs >= 3 rows); made on the CPU, returned on ``device``."""
    import torch

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


SHAPES = [(1, 1), (3, 1), (3, 7), (4, 8), (2, 3, 9), (5, 17), (3, 33)]


def _ops():
    import softmaxlab as sl
    from softmaxlab.kernels.triton import KERNELS

    return {"softmax": (KERNELS["softmax"], sl.softmax),
            "log_softmax": (KERNELS["log_softmax"], sl.log_softmax),
            "sparsemax": (KERNELS["sparsemax"], sl.sparsemax)}


def _compare_f64(op, shapes, seed, device="cpu", **kw):
    """Values and gradients of the kernel vs the reference, float64."""
    import torch

    fast, ref = _ops()[op]
    for i, shape in enumerate(shapes):
        x = _logits(shape, seed + i, device=device).requires_grad_(True)
        y, yr = fast(x, **kw), ref(x, **kw)
        _close(y, yr, 1e-10, 1e-12, f"{op}{shape} value")
        g = torch.randn(y.shape, dtype=torch.float64, generator=torch.Generator().manual_seed(i))
        (gx,), (gr,) = _grads(y, (x,), g.to(device)), _grads(yr, (x,), g.to(device))
        _close(gx, gr, 1e-10, 1e-12, f"{op}{shape} grad")


# ============================================================ checks
def _f64_checks(op):
    for path in PATHS:
        def fn(path=path):
            _run_on_path(path, lambda: _compare_f64(op, SHAPES, 10))
        fn.__name__ = f"check_{op}_{path}_f64"
        check(fn)


for _op in ("softmax", "log_softmax"):
    _f64_checks(_op)


@check
def check_sparsemax_single_f64():
    _run_on_path("single", lambda: _compare_f64("sparsemax", SHAPES, 20))


@check
def check_sparsemax_streamed_f64():
    _run_on_path("split", lambda: _compare_f64("sparsemax", SHAPES, 30))


@check
def check_threshold_boundary():
    """Rows of 15, 16, 17 entries with MAX_SINGLE_BLOCK=16: both sides of the dispatch."""
    from softmaxlab.kernels.triton import _launch

    restore = _config(MAX_SINGLE_BLOCK=16, TILE=4)
    try:
        before = dict(_launch.PATHS)
        for op in ("softmax", "log_softmax", "sparsemax"):
            _compare_f64(op, [(3, 15), (3, 16), (3, 17)], 40)
        ran = {k: v - before.get(k, 0) for k, v in _launch.PATHS.items()}
        for key in ("softmax.single", "softmax.multi.split", "sparsemax.single",
                    "sparsemax.streamed"):
            assert ran.get(key, 0) > 0, f"path {key} did not run: {ran}"
    finally:
        restore()


@check
def check_options_f64():
    """Other dims, masks, float and per-row tensor temperatures (their gradient too)."""
    import torch

    ops = _ops()
    for path in ("single", "split"):
        restore = _config(**PATHS[path])
        try:
            x = _logits((4, 3, 9), 50).requires_grad_(True)
            mask = torch.rand(4, 1, 9, generator=torch.Generator().manual_seed(1)) > 0.3
            for op, (fast, ref) in ops.items():
                for kw in ({"dim": 0}, {"dim": -2}, {"mask": mask}):
                    _close(fast(x, **kw), ref(x, **kw), 1e-10, 1e-12, f"{op} {kw}")
                    g = torch.randn(x.shape, dtype=x.dtype)
                    _close(_grads(fast(x, **kw), (x,), g)[0], _grads(ref(x, **kw), (x,), g)[0],
                           1e-10, 1e-12, f"{op} grad {kw}")
            temp = (torch.rand(4, 3, 1, dtype=torch.float64) + 0.5).requires_grad_(True)
            for op in ("softmax", "log_softmax"):
                fast, ref = ops[op]
                for t in (0.7, temp):
                    y, yr = fast(x, temperature=t), ref(x, temperature=t)
                    _close(y, yr, 1e-10, 1e-12, f"{op} T={t}")
                    g = torch.randn(x.shape, dtype=x.dtype)
                    for a, b in zip(_grads(y, (x, temp), g), _grads(yr, (x, temp), g)):
                        if b is not None:
                            _close(a, b, 1e-10, 1e-12, f"{op} grads T")
        finally:
            restore()


@check
def check_nan_rows():
    """A NaN makes its whole row NaN and leaves the other rows alone, on every path."""
    import torch

    for path in PATHS:
        restore = _config(**PATHS[path])
        try:
            x = _logits((4, 11), 60)
            x[2, 5] = NAN
            for op, (fast, ref) in _ops().items():
                y = fast(x)
                assert y[2].isnan().all(), f"{op}/{path}: NaN row not all NaN"
                assert not y[[0, 1, 3]].isnan().any(), f"{op}/{path}: NaN leaked"
                _close(y, ref(x), 1e-10, 1e-12, f"{op}/{path} NaN rows")
        finally:
            restore()


@check
def check_extremes():
    """Logits of +-1e30 in float32; all -inf rows give 0 / -inf and zero gradient."""
    import torch

    x = torch.tensor([[1e30, -1e30, 0.0, 1e30], [-1e30, -1e30, -1e30, -1e30]])
    for path in PATHS:
        restore = _config(**PATHS[path])
        try:
            for op, (fast, ref) in _ops().items():
                _close(fast(x), ref(x), 1e-6, 1e-7, f"{op}/{path} +-1e30")
                z = torch.full((2, 10), NEG_INF, requires_grad=True)
                y = fast(z)
                empty = NEG_INF if op == "log_softmax" else 0.0
                assert (y == empty).all(), f"{op}/{path}: all -inf row gives {y}"
                (gz,) = _grads(y, (z,), torch.ones_like(y))
                assert (gz == 0).all(), f"{op}/{path}: all -inf row grad {gz}"
        finally:
            restore()


def _naive(op, x):
    import torch

    import softmaxlab as sl

    return {"softmax": lambda: torch.softmax(x, -1),
            "log_softmax": lambda: torch.log_softmax(x, -1),
            "sparsemax": lambda: sl.sparsemax(x)}[op]()


def _err(a, truth):
    """max |a - truth| / max |truth| over finite entries."""
    import torch

    a, t = a.detach().double(), truth.detach().double()
    fin = torch.isfinite(t)
    assert torch.equal(torch.isfinite(a), fin), "finite pattern differs"
    return ((a - t)[fin].abs().max() / t[fin].abs().max().clamp(min=1e-30)).item()


def _compare_low_precision(op, x64, dtype, what):
    """Values and gradients of the kernel in ``dtype``: error vs float64 truth <= 2 x the
    naive torch formula's error in the same dtype + 2 eps."""
    import torch

    fast, ref = _ops()[op]
    x = x64.to(dtype).requires_grad_(True)
    xt = x.detach().double().requires_grad_(True)
    truth, y, naive = ref(xt), fast(x), _naive(op, x)
    assert y.dtype == dtype
    eps = torch.finfo(dtype).eps
    e, en = _err(y, truth), _err(naive, truth)
    assert e <= 2 * en + 2 * eps, f"{what}: value error {e} vs {en}"
    g = torch.randn(x.shape, dtype=torch.float64, device=x.device)
    gt = _grads(truth, (xt,), g)[0]
    ek = _err(_grads(y, (x,), g.to(dtype))[0], gt)
    en = _err(_grads(naive, (x,), g.to(dtype))[0], gt)
    assert ek <= 2 * en + 2 * eps, f"{what}: grad error {ek} vs {en}"


@check
def check_low_precision():
    """float32/float16/bfloat16 values and gradients: error vs float64 truth <= 2 x the
    naive torch formula's error in the same dtype + 2 eps."""
    import torch

    for path in ("single", "split"):
        restore = _config(**PATHS[path])
        try:
            for op in _ops():
                for dtype in (torch.float32, torch.float16, torch.bfloat16):
                    _compare_low_precision(op, _logits((4, 21), 70, special=False), dtype,
                                           f"{op}/{path}/{dtype}")
        finally:
            restore()


@check
def check_gradcheck():
    """torch.autograd.gradcheck (float64) of every op on a tiny input, both paths."""
    import torch

    from softmaxlab.kernels.triton import KERNELS

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


@check
def check_softmax_topk():
    """Top-k probabilities, indices and gradients vs softmaxlab.online.softmax_topk, with
    -inf entries, all -inf rows, k = 1 and k = n, other dims, bfloat16."""
    import torch

    from softmaxlab.kernels.triton import KERNELS
    from softmaxlab.online import softmax_topk

    fast = KERNELS["softmax_topk"]
    for path in ("single", "split", "fused"):
        restore = _config(**PATHS[path])
        try:
            for i, (shape, k, dim) in enumerate([((1, 1), 1, -1), ((3, 7), 3, -1),
                                                 ((4, 17), 17, -1), ((5, 9, 2), 4, 1)]):
                x = _logits(shape, 80 + i).requires_grad_(True)
                (p, idx), (pr, ir) = fast(x, k, dim=dim), softmax_topk(x, k, dim=dim)
                _close(p, pr, 1e-10, 1e-12, f"topk{shape} values")
                assert torch.equal(idx[pr > 0], ir[pr > 0]), f"topk{shape} indices"
                g = torch.randn(p.shape, dtype=torch.float64)
                _close(_grads(p, (x,), g)[0], _grads(pr, (x,), g)[0], 1e-10, 1e-12,
                       f"topk{shape} grad")
            xb = _logits((6, 37), 90, special=False).to(torch.bfloat16)
            (p, idx), (pr, ir) = fast(xb, 5), softmax_topk(xb.double(), 5)
            assert p.dtype == torch.bfloat16 and torch.equal(idx, ir)
            _close(p, pr, 8e-3, 1e-6, "topk bf16")
        finally:
            restore()


def _lce_inputs(n, v, d, dtype, seed, bias=True, device="cpu"):
    import torch

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
    import torch

    cw = torch.rand(13, dtype=torch.float64, generator=torch.Generator().manual_seed(3)) + 0.5
    plans = [({}, {}), ({"chunk_size": 2}, {"VOCAB_ALIGN": 4, "TILE_LCE": 4}),
             ({"chunk_size": 1}, {"TILE_LCE": 4})]
    opts = [dict(reduction="mean"), dict(reduction="sum", label_smoothing=0.2),
            dict(reduction="none", class_weight=cw), dict(reduction="mean", class_weight=cw,
                                                          label_smoothing=0.1, temperature=1.7)]
    return [(dict(**o, **p), s) for p, s in plans for o in opts]


@check
def check_linear_cross_entropy_f64():
    """Loss and gradients (hidden, weight, bias) vs softmaxlab.losses.linear_cross_entropy in
    float64, over chunk plans x reductions x label smoothing x class weights x temperature."""
    import torch

    from softmaxlab.kernels.triton import KERNELS
    from softmaxlab.kernels.triton import _linear_ce as linear_ce
    from softmaxlab.losses import linear_cross_entropy

    fast = KERNELS["linear_cross_entropy"]
    for i, (kw, settings) in enumerate(_lce_cases()):
        restore = _config(**settings)
        try:
            for bias in (True, False):
                h, w, b, t = _lce_inputs(9, 13, 5, torch.float64, i, bias)
                out, ref = fast(h, w, t, bias=b, **kw), linear_cross_entropy(h, w, t, bias=b, **kw)
                _close(out, ref, 1e-10, 1e-12, f"lce {kw} loss")
                g = torch.randn(out.shape, dtype=torch.float64)
                ins = (h, w) + ((b,) if bias else ())
                for a, r in zip(torch.autograd.grad(out, ins, g), torch.autograd.grad(ref, ins, g)):
                    _close(a, r, 1e-10, 1e-12, f"lce {kw} grad")
        finally:
            restore()
    r, vc = linear_ce.plan(9, 13, 13)
    assert (r, vc) == (1, 13), (r, vc)


@check
def check_linear_cross_entropy_low_precision():
    """bfloat16/float16/float32 (3-D hidden): loss and gradient errors vs float64 truth within
    2 x those of the naive F.cross_entropy(hidden @ weight.T + bias) in the same dtype + 2 eps."""
    import torch
    import torch.nn.functional as F

    from softmaxlab.kernels.triton import KERNELS

    fast = KERNELS["linear_cross_entropy"]
    from softmaxlab.kernels.triton import _launch

    before = _launch.PATHS["linear_ce.borrowed"]
    cases = [((12, 13, 16), {}, {}), ((12, 13, 16), {"VOCAB_ALIGN": 4, "TILE_LCE": 4},
                                      {"chunk_size": 2}),
             ((4, 37, 6), {"VOCAB_ALIGN": 4, "TILE_LCE": 4}, {"chunk_size": 2}),
             ((4, 37, 6), {"VOCAB_ALIGN": 4, "TILE_LCE": 4}, {"chunk_size": 1})]
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
                assert e <= 2 * en + 2 * eps, f"lce {dtype}: loss error {e} vs naive {en}"
                gt = torch.autograd.grad(truth, x64)
                for name, a, n_, tr in zip("hwb", torch.autograd.grad(out, ins),
                                           torch.autograd.grad(naive, ins), gt):
                    e, en = _err(a, tr), _err(n_, tr)
                    assert e <= 2 * en + 2 * eps, f"lce {dtype} grad {name}: {e} vs naive {en}"
            finally:
                restore()
    # (4, 37, 6) in fp16/bf16: grad_h accumulated inside the unwritten rows of grad_W
    assert _launch.PATHS["linear_ce.borrowed"] - before == 4, dict(_launch.PATHS)


@check
def check_linear_cross_entropy_edge_cases():
    """Every row ignored gives 0 and zero gradients; one class; no grad for weight; bad
    arguments raise; other mappings raise NotImplementedError."""
    import torch

    from softmaxlab.kernels.triton import KERNELS
    from softmaxlab.losses import linear_cross_entropy

    fast = KERNELS["linear_cross_entropy"]
    h, w, b, t = _lce_inputs(5, 7, 3, torch.float64, 9)
    out = fast(h, w, torch.full((5,), -100), bias=b)
    assert out.item() == 0.0
    assert all((g == 0).all() for g in torch.autograd.grad(out, (h, w, b)))
    h1, w1, _, _ = _lce_inputs(4, 1, 3, torch.float64, 10, bias=False)
    t1 = torch.zeros(4, dtype=torch.long)
    _close(fast(h1, w1, t1), linear_cross_entropy(h1, w1, t1), 1e-12, 1e-12, "V=1")
    wd = w.detach()
    (gh,) = torch.autograd.grad(fast(h, wd, t), (h,))
    (ghr,) = torch.autograd.grad(linear_cross_entropy(h, wd, t), (h,))
    _close(gh, ghr, 1e-10, 1e-12, "weight without grad")
    for bad, exc in (({"reduction": "avg"}, ValueError), ({"label_smoothing": 2.0}, ValueError),
                     ({"mapping": "sparsemax"}, NotImplementedError)):
        try:
            fast(h, w, t, **bad)
        except exc:
            continue
        raise AssertionError(f"{bad} did not raise {exc.__name__}")
    try:
        fast(h, w, torch.full((5,), 7))
    except ValueError as e:
        assert "target" in str(e)
    else:
        raise AssertionError("target out of range did not raise")


@check
def check_every_path_ran():
    """Every kernel path was exercised by the checks above (runs last)."""
    from softmaxlab.kernels.triton import _launch

    want = ["softmax.single", "softmax.multi.split", "softmax.multi.fused", "softmax_bwd.single",
            "softmax_bwd.multi.split", "softmax_bwd.multi.fused", "softmax.persistent",
            "softmax_bwd.persistent", "sparsemax.single", "sparsemax.streamed",
            "sparsemax_bwd.single", "sparsemax_bwd.streamed", "linear_ce.stats", "linear_ce.grad",
            "linear_ce.borrowed"]
    missing = [k for k in want if not _launch.PATHS.get(k)]
    assert not missing, f"paths never run: {missing}; ran: {dict(_launch.PATHS)}"


# ============================================================ device checks
def _row_plans(device):
    """(launch settings, shapes) that take every row path on ``device``: on CUDA the default
    thresholds on one block, rows split over programs (few rows longer than one block) and
    the persistent grid (many such rows); on CPU the lowered thresholds of PATHS."""
    if device == "cuda":
        return [({}, [(5, 1), (37, 1000), (9, 32768), (3, 50001), (600, 40000)])]
    return [(PATHS[path], SHAPES) for path in PATHS]


@device_check
def check_rows_every_dtype(device):
    """softmax, log_softmax, sparsemax on every path: float32 with -inf entries, an all -inf
    row and a NaN row within 1e-5 (1 + |ref|) of the float64 reference; bfloat16 values and
    gradients (error vs float64 truth <= 2 x torch's + 2 eps); on CUDA also float64 values
    and gradients (on CPU: the path checks above)."""
    import torch

    from softmaxlab.kernels.triton import _launch

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
                    _close(fast(x.float()), ref(x), 1e-5, 1e-5, f"{op}{shape} float32 {settings}")
                    _compare_low_precision(op, _logits(shape, 120 + i, special=False,
                                                       device=device),
                                           torch.bfloat16, f"{op}{shape} bfloat16 {settings}")
        finally:
            restore()
    ran = {k: v - before.get(k, 0) for k, v in _launch.PATHS.items()}
    for key in ("softmax.single", "softmax.multi.split", "softmax.persistent",
                "sparsemax.single", "sparsemax.streamed"):
        assert ran.get(key, 0) > 0, f"path {key} did not run: {ran}"


@device_check
def check_softmax_topk_float32(device):
    """softmax_topk in float32 within 1e-5 (1 + |ref|) of softmaxlab.online.softmax_topk in
    float64, k = 1..n; on CUDA also float64 values, indices and gradients (on CPU:
    check_softmax_topk)."""
    import torch

    from softmaxlab.kernels.triton import KERNELS
    from softmaxlab.online import softmax_topk

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
                _close(p, pr, 1e-5, 1e-5, f"topk {m}x{n} k={k} float32")
                if device == "cuda":
                    (p, idx) = fast(x, k)
                    _close(p, pr, 1e-10, 1e-12, f"topk {m}x{n} k={k} values")
                    assert torch.equal(idx, ir), f"topk {m}x{n} k={k} indices"
                    g = torch.randn_like(p)
                    _close(_grads(p, (x,), g)[0], _grads(pr, (x,), g)[0], 1e-10, 1e-12,
                           f"topk {m}x{n} k={k} grad")
        finally:
            restore()


@device_check
def check_linear_cross_entropy_options(device):
    """linear_cross_entropy with bias and ignored targets in float32 and bfloat16 (and float64
    on CUDA; on CPU: check_linear_cross_entropy_f64), for mean; sum + label smoothing; none +
    class weights; vocabulary chunks; row blocks + smoothing + class weights: loss and the
    three gradients vs the reference on the same (rounded) inputs in float64, error <= 2e-5
    (float32), 1e-2 (bfloat16), 1e-8 (float64). The grad_h accumulator borrowed from grad_W
    and the grad_W rows whose logits live in grad_W ran."""
    import torch

    from softmaxlab.kernels.triton import KERNELS, _launch
    from softmaxlab.losses import linear_cross_entropy

    fast = KERNELS["linear_cross_entropy"]
    if device == "cuda":
        (n, v, d), settings, chunks = (1000, 5003, 256), {}, (64, 1)
        dtypes = (torch.float64, torch.float32, torch.bfloat16)
    else:  # chunk_size=1: 37 // 7 columns per chunk < VOCAB_ALIGN, so rows are blocked
        (n, v, d), chunks = (7, 37, 6), (2, 1)
        settings = {"VOCAB_ALIGN": 8, "TILE_LCE": 4, "TAIL_COLUMNS": 1}
        dtypes = (torch.float32, torch.bfloat16)
    tol = {torch.float64: 1e-8, torch.float32: 2e-5, torch.bfloat16: 1e-2}
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
                _close(out, ref, tol[dtype], tol[dtype], f"{what} loss")
                for name, a, r in zip("hwb", torch.autograd.grad(out, (h, w, b), g.to(dtype)),
                                      torch.autograd.grad(ref, x64, g)):
                    e = _err(a, r)
                    assert e <= tol[dtype], f"{what} grad {name}: error {e}"
    finally:
        restore()
    ran = {k: v - before.get(k, 0) for k, v in _launch.PATHS.items()}
    assert ran.get("linear_ce.borrowed") and ran.get("linear_ce.carved"), ran


# ============================================================ the subprocess
def _run_all(out_path: str, device: str) -> None:
    """On ``"cpu"``: every check under the interpreter, and the device checks on the CPU when
    no CUDA device is available; on ``"cuda"``: the device checks on the GPU."""
    if device == "cpu":
        os.environ["TRITON_INTERPRET"] = "1"
    import traceback
    import warnings

    import numpy as np

    np.seterr(all="ignore")  # the interpreter evaluates log(0), inf - inf in masked lanes
    warnings.simplefilter("ignore")
    import torch

    torch.set_num_threads(1)
    torch.manual_seed(0)
    results = {}

    def run(checks, *args):
        for name, fn in checks.items():
            try:
                fn(*args)
                results[name] = None
            except Exception:  # noqa: BLE001 (reported per check)
                results[name] = traceback.format_exc(limit=6)

    if device == "cpu":
        run(CHECKS)
    if device == "cuda" or not torch.cuda.is_available():
        os.environ["SOFTMAXLAB_BACKEND"] = "reference"  # the public functions: the reference
        run(DEVICE_CHECKS, device)
    Path(out_path).write_text(json.dumps(results))


if __name__ == "__main__":
    sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "src"))
    _run_all(sys.argv[1], sys.argv[2])
    raise SystemExit(0)


# ============================================================ the tests
HAVE_TRITON = importlib.util.find_spec("triton") is not None
pytestmark = pytest.mark.skipif(
    not HAVE_TRITON, reason="triton is not installed (pip install -e '.[dev]' or '.[triton]')")


def _results(tmp_path_factory, device: str) -> dict:
    """Run the checks of ``device`` once per session in a subprocess (shared by xdist
    workers through a file lock)."""
    import fcntl

    root = tmp_path_factory.getbasetemp()
    if os.environ.get("PYTEST_XDIST_WORKER"):
        root = root.parent
    out, lock = root / f"triton_checks_{device}.json", root / f"triton_checks_{device}.lock"
    with open(lock, "w") as fh:
        fcntl.flock(fh, fcntl.LOCK_EX)
        if not out.exists():
            env = {k: v for k, v in os.environ.items()
                   if not k.startswith("PYTEST") and k != "TRITON_INTERPRET"}
            proc = subprocess.run([sys.executable, __file__, str(out), device], env=env,
                                  capture_output=True, text=True, timeout=900)
            if proc.returncode or not out.exists():
                pytest.fail(f"{device} subprocess failed ({proc.returncode}):\n"
                            f"{proc.stdout[-3000:]}\n{proc.stderr[-3000:]}")
    return json.loads(out.read_text())


@pytest.fixture(scope="session")
def interpreter_results(tmp_path_factory):
    return _results(tmp_path_factory, "cpu")


@pytest.fixture(scope="session")
def device_results(tmp_path_factory):
    """The device checks' results: on CUDA when available, else under the interpreter."""
    import torch

    return _results(tmp_path_factory, "cuda" if torch.cuda.is_available() else "cpu")


@pytest.mark.parametrize("name", list(CHECKS))
def test_triton_kernel(interpreter_results, name):
    failure = interpreter_results.get(name, "check did not run")
    assert failure is None, f"{name}: {CHECKS[name].__doc__ or ''}\n{failure}"


@pytest.mark.parametrize("name", list(DEVICE_CHECKS))
def test_triton_kernel_on_device(device_results, name):
    failure = device_results.get(name, "check did not run")
    assert failure is None, f"{name}: {DEVICE_CHECKS[name].__doc__ or ''}\n{failure}"
