"""GPU correctness and timing of softmaxlab's Triton kernels (``softmaxlab.kernels.triton``).

Run on a CUDA machine (stdlib + torch; the peers ``liger-kernel`` and ``cut-cross-entropy``
are timed when importable)::

    python benchmarks/gpu_bench.py --out results.json [--commit SHA] [--sections ...]

Sections:

* ``check``: every kernel against the library's reference functions on the GPU: float64
  (to 1e-9), float32 (to 1e-5) and bfloat16 (error vs float64 truth <= 2 x torch's error in
  bfloat16 + 2 eps), on both the single-block and the multi-block paths, with ``-inf``
  entries, empty rows and NaN rows; linear cross-entropy in float64/float32/bfloat16 with
  bias, ignore_index, label smoothing, class weights, every reduction.
* ``copy``: device-to-device copy bandwidth (bytes read + written / time), the ceiling.
* ``softmax``: forward and backward GB/s of the kernels vs ``torch.softmax`` /
  ``torch._softmax_backward_data`` over row lengths 1k..1M (2^27 entries per case), and the
  fraction of the copy bandwidth.
* ``topk``, ``sparsemax``: vs the library's torch implementations.
* ``lce``: linear cross-entropy at Llama-like shapes (N=8192, d=4096, V=128256, bf16):
  forward+backward and forward time, peak memory above the inputs
  (``torch.cuda.max_memory_allocated`` minus the memory before the call, gradients included),
  and the relative error of loss and gradients vs a float32 computation; against naive torch,
  Liger's ``LigerFusedLinearCrossEntropyFunction`` and CCE's ``linear_cross_entropy``.

Times are CUDA-event medians with p20/p80 after warm-up; every case also reports the ratio to
each baseline measured in the same run. Results are printed and written as JSON with device,
versions, commit and time.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import platform
import sys
import time
import traceback
from pathlib import Path

os.environ.setdefault("SOFTMAXLAB_BACKEND", "reference")  # baselines use the torch path
sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "src"))

import torch  # noqa: E402
import torch.nn.functional as F  # noqa: E402

RESULTS: dict = {"cases": [], "checks": [], "errors": []}
OUT_PATH: list = []  # where results are saved after every case


def save() -> None:
    if OUT_PATH:
        Path(OUT_PATH[0]).write_text(json.dumps(RESULTS, indent=1))


# ------------------------------------------------------------------ measurement
def timed(fn, *, warmup: int = 3, budget_s: float = 0.25, max_reps: int = 100,
          setup=None) -> dict:
    """Median, p20, p80 (ms) of ``fn()`` by CUDA events; ``setup()`` (untimed) before each."""
    for _ in range(warmup):
        if setup:
            setup()
        fn()
    torch.cuda.synchronize()
    t0 = time.perf_counter()
    if setup:
        setup()
    fn()
    torch.cuda.synchronize()
    once = time.perf_counter() - t0
    reps = int(max(5, min(max_reps, budget_s / max(once, 1e-6))))
    times = []
    for _ in range(reps):
        if setup:
            setup()
        a, b = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        a.record()
        fn()
        b.record()
        b.synchronize()
        times.append(a.elapsed_time(b))
    times.sort()

    def q(p):
        return times[min(len(times) - 1, int(round(p * (len(times) - 1))))]

    return {"median_ms": q(0.5), "p20_ms": q(0.2), "p80_ms": q(0.8), "reps": reps}


def peak_memory(fn, setup=None) -> float:
    """Peak bytes allocated by ``fn()`` above what was allocated before it (MiB)."""
    if setup:
        setup()
    torch.cuda.synchronize()
    torch.cuda.reset_peak_memory_stats()
    base = torch.cuda.memory_allocated()
    fn()
    torch.cuda.synchronize()
    return (torch.cuda.max_memory_allocated() - base) / 2**20


def case(section: str, name: str, **fields) -> dict:
    row = {"section": section, "case": name, **fields}
    RESULTS["cases"].append(row)
    shown = {k: (round(v, 4) if isinstance(v, float) else v) for k, v in fields.items()
             if k not in ("p20_ms", "p80_ms", "reps")}
    print(f"[{section}] {name}: {shown}", flush=True)
    save()
    return row


def record_check(name: str, ok: bool, detail: str = "") -> None:
    RESULTS["checks"].append({"check": name, "ok": bool(ok), "detail": detail})
    print(f"[check] {'PASS' if ok else 'FAIL'} {name} {detail}", flush=True)


def rel_err(a: torch.Tensor, t: torch.Tensor) -> float:
    """||a - t|| / ||t|| over the entries finite in ``t`` (inf if the patterns differ)."""
    a, t = a.detach().double(), t.detach().double()
    fin = torch.isfinite(t)
    if not torch.equal(torch.isfinite(a), fin) or not torch.equal(a.isnan(), t.isnan()):
        return math.inf
    if not torch.equal(a[torch.isinf(t)], t[torch.isinf(t)]):
        return math.inf
    return ((a - t)[fin].norm() / t[fin].norm().clamp(min=1e-300)).item()


def max_err(a: torch.Tensor, t: torch.Tensor) -> float:
    """max |a - t| / (1 + |t|), same NaN/inf pattern required."""
    a, t = a.detach().double(), t.detach().double()
    if not torch.equal(a.isnan(), t.isnan()) or not torch.equal(a.isinf(), t.isinf()):
        return math.inf
    fin = torch.isfinite(t)
    if not torch.equal(a[~fin & ~t.isnan()], t[~fin & ~t.isnan()]):
        return math.inf
    d = ((a - t).abs() / (1 + t.abs()))[fin]
    return d.max().item() if d.numel() else 0.0


# ------------------------------------------------------------------ correctness
def _special(x: torch.Tensor) -> torch.Tensor:
    """-inf entries in row 0, an all -inf row (last), a NaN in row 1 (3+ rows)."""
    x = x.clone()
    x[0, ::3] = float("-inf")
    if x.shape[0] >= 3:
        x[-1] = float("-inf")
        x[1, x.shape[1] // 2] = float("nan")
    return x


def section_check():
    import softmaxlab as sl
    from softmaxlab.kernels.triton import KERNELS, _launch
    from softmaxlab.losses import linear_cross_entropy as ref_lce
    from softmaxlab.online import softmax_topk as ref_topk

    dev = "cuda"
    ops = {"softmax": sl.softmax, "log_softmax": sl.log_softmax, "sparsemax": sl.sparsemax}
    naive = {"softmax": lambda x: torch.softmax(x, -1),
             "log_softmax": lambda x: torch.log_softmax(x, -1), "sparsemax": sl.sparsemax}
    # (rows, cols): single block; multi split (few rows); multi fused (many rows)
    shapes = [(5, 1), (37, 1000), (9, 32768), (3, 50001), (600, 40000)]
    for op, ref in ops.items():
        fast = KERNELS[op]
        for m, n in shapes:
            if op == "sparsemax" and m * n > 2e6:
                m = max(3, int(2e6 // n))
            g = torch.Generator(device=dev).manual_seed(m * 7919 + n)
            base = torch.randn(m, n, device=dev, dtype=torch.float64, generator=g) * 3
            x64 = _special(base).requires_grad_(True)
            y, yr = fast(x64), ref(x64)
            go = torch.randn(m, n, device=dev, dtype=torch.float64, generator=g)
            fin = torch.isfinite(yr)
            gx = torch.autograd.grad(torch.where(fin, y, 0).mul(go).sum(), x64)[0]
            gr = torch.autograd.grad(torch.where(fin, yr, 0).mul(go).sum(), x64)[0]
            e, eg = max_err(y, yr), max_err(gx, gr)
            record_check(f"{op} f64 {m}x{n}", e < 1e-9 and eg < 1e-9, f"err {e:.2e} grad {eg:.2e}")
            x32 = _special(base).float()
            e = max_err(fast(x32), ref(_special(base)))
            record_check(f"{op} f32 {m}x{n}", e < 1e-5, f"err {e:.2e}")
            xb = base.to(torch.bfloat16).requires_grad_(True)
            xt = xb.detach().double().requires_grad_(True)
            truth, yb, yn = ref(xt), fast(xb), naive[op](xb)
            eb, en = rel_err(yb, truth), rel_err(yn, truth)
            go = go.to(torch.bfloat16)
            gt = torch.autograd.grad(truth, xt, go.double())[0]
            ebg = rel_err(torch.autograd.grad(yb, xb, go)[0], gt)
            eng = rel_err(torch.autograd.grad(yn, xb, go)[0], gt)
            eps = 2 * torch.finfo(torch.bfloat16).eps
            record_check(f"{op} bf16 {m}x{n}", eb <= 2 * en + eps and ebg <= 2 * eng + eps,
                         f"err {eb:.2e} (torch {en:.2e}) grad {ebg:.2e} (torch {eng:.2e})")
    # softmax_topk
    for m, n, k in [(64, 128256, 10), (3, 1000, 1000), (700, 50000, 5)]:
        x = (torch.randn(m, n, device=dev, dtype=torch.float64) * 3).requires_grad_(True)
        (p, i), (pr, ir) = KERNELS["softmax_topk"](x, k), ref_topk(x, k)
        go = torch.randn_like(p)
        gp = torch.autograd.grad(p, x, go)[0]
        gr = torch.autograd.grad(pr, x, go)[0]
        e, eg = max_err(p, pr), max_err(gp, gr)
        record_check(f"softmax_topk f64 {m}x{n} k={k}", e < 1e-9 and eg < 1e-9 and
                     torch.equal(i, ir), f"err {e:.2e} grad {eg:.2e}")
        xf = x.detach().float()
        (p, i), (pr, ir) = KERNELS["softmax_topk"](xf, k), ref_topk(x.detach(), k)
        record_check(f"softmax_topk f32 {m}x{n} k={k}", max_err(p, pr) < 1e-5,
                     f"err {max_err(p, pr):.2e}")
    # linear cross-entropy
    n, d, v = 1000, 256, 5003
    g = torch.Generator(device=dev).manual_seed(0)
    h64 = torch.randn(n, d, device=dev, dtype=torch.float64, generator=g)
    w64 = torch.randn(v, d, device=dev, dtype=torch.float64, generator=g) / d ** 0.5
    b64 = torch.randn(v, device=dev, dtype=torch.float64, generator=g)
    t = torch.randint(0, v, (n,), device=dev, generator=g)
    t[::7] = -100
    cw = torch.rand(v, device=dev, dtype=torch.float64, generator=g) + 0.5
    for kw in (dict(reduction="mean"), dict(reduction="sum", label_smoothing=0.1),
               dict(reduction="none", class_weight=cw), dict(reduction="mean", chunk_size=64),
               dict(reduction="mean", chunk_size=1, label_smoothing=0.2, class_weight=cw)):
        for dtype in (torch.float64, torch.float32, torch.bfloat16):
            ins = [a.to(dtype).requires_grad_(True) for a in (h64, w64, b64)]
            out = KERNELS["linear_cross_entropy"](ins[0], ins[1], t, bias=ins[2], **kw)
            tr = [a.detach().to(dtype).double().requires_grad_(True) for a in (h64, w64, b64)]
            ref = ref_lce(tr[0], tr[1], t, bias=tr[2], **kw)
            go = torch.rand_like(ref) + 0.5
            grads = torch.autograd.grad(out, ins, go.to(out.dtype))
            rgrads = torch.autograd.grad(ref, tr, go)
            errs = [rel_err(out, ref)] + [rel_err(a, r) for a, r in zip(grads, rgrads)]
            tol = {torch.float64: 1e-8, torch.float32: 2e-5, torch.bfloat16: 1e-2}[dtype]
            record_check(f"linear_ce {dtype} {kw.get('reduction')} "
                         f"{ {k: v for k, v in kw.items() if k != 'class_weight'} }"
                         f"{' cw' if 'class_weight' in kw else ''}",
                         max(errs) < tol, "loss/h/w/b rel err " +
                         " ".join(f"{e:.1e}" for e in errs))
    record_check("paths ran", all(_launch.PATHS.get(k) for k in (
        "softmax.single", "softmax.multi.split", "softmax.persistent", "sparsemax.single",
        "sparsemax.streamed", "linear_ce.borrowed")), str(dict(_launch.PATHS)))


# ------------------------------------------------------------------ timing sections
def section_copy():
    x = torch.randn(2**28, device="cuda")  # 1 GiB
    y = torch.empty_like(x)
    t = timed(lambda: y.copy_(x))
    gbs = 2 * x.numel() * 4 / t["median_ms"] / 1e6
    RESULTS["copy_gbps"] = gbs
    case("copy", "d2d 1GiB fp32", **t, gbps=gbs)


def section_softmax():
    from softmaxlab.kernels.triton import _launch
    from softmaxlab.kernels.triton._softmax import softmax_backward, softmax_forward

    copy = RESULTS.get("copy_gbps") or 1.0
    total = 2**27
    grid = [(torch.float32, n) for n in (1024, 4096, 8192, 16384, 32768, 65536, 262144, 1 << 20)]
    grid += [(torch.bfloat16, n) for n in (4096, 32768, 262144)]
    for dtype, n in grid:
        m = total // n
        x = torch.randn(m, n, device="cuda", dtype=dtype)
        nbytes = x.numel() * x.element_size()
        tf = timed(lambda: softmax_forward(x, 1.0, False))
        tt = timed(lambda: torch.softmax(x, -1))
        gbs = 2 * nbytes / tf["median_ms"] / 1e6
        case("softmax", f"fwd {str(dtype)[6:]} {m}x{n}", **tf, gbps=gbs,
             frac_copy=gbs / copy, torch_ms=tt["median_ms"],
             speedup_vs_torch=tt["median_ms"] / tf["median_ms"],
             path="single" if _launch.is_single(n) else "multi",
             config={k: getattr(_launch, k) for k in (
                 "MAX_SINGLE_BLOCK", "TILE", "PROGRAMS_PER_SM", "PERSISTENT_PROGRAMS_PER_SM",
                 "PERSISTENT_TILE", "SINGLE_PER_THREAD", "EVICT_HINTS")})
        y = torch.softmax(x, -1)
        g = torch.randn_like(y)
        tb = timed(lambda: softmax_backward(y, g, 1.0, False))
        tbt = timed(lambda: torch._softmax_backward_data(g, y, -1, x.dtype))
        gbs = 3 * nbytes / tb["median_ms"] / 1e6
        case("softmax", f"bwd {str(dtype)[6:]} {m}x{n}", **tb, gbps=gbs, frac_copy=gbs / copy,
             torch_ms=tbt["median_ms"], speedup_vs_torch=tbt["median_ms"] / tb["median_ms"])
        if dtype == torch.float32 and n in (4096, 65536):
            tl_ = timed(lambda: softmax_forward(x, 1.0, True))
            tlt = timed(lambda: torch.log_softmax(x, -1))
            case("softmax", f"log fwd f32 {m}x{n}", **tl_, gbps=2 * nbytes / tl_["median_ms"] / 1e6,
                 torch_ms=tlt["median_ms"], speedup_vs_torch=tlt["median_ms"] / tl_["median_ms"])
        del x, y, g
    # launch variants (the defaults above are marked in "config")
    variants = {
        "persistent + L2 hints": dict(PERSISTENT_PROGRAMS_PER_SM=1, EVICT_HINTS=True),
        "persistent, no hints": dict(PERSISTENT_PROGRAMS_PER_SM=1, EVICT_HINTS=False),
        "persistent + L2 hints, P=2": dict(PERSISTENT_PROGRAMS_PER_SM=2, EVICT_HINTS=True),
        "persistent + L2 hints, no split above 1 program/SM": dict(
            PERSISTENT_PROGRAMS_PER_SM=1, EVICT_HINTS=True, PROGRAMS_PER_SM=1),
        "no persistent (fused row loop / split)": dict(PERSISTENT_PROGRAMS_PER_SM=0),
    }
    for dtype, n in [(torch.float32, 65536), (torch.float32, 131072), (torch.float32, 262144),
                     (torch.bfloat16, 131072)]:
        x = torch.randn(total // n, n, device="cuda", dtype=dtype)
        y = torch.softmax(x, -1)
        g = torch.randn_like(y)
        nbytes = x.numel() * x.element_size()
        for name, cfg in variants.items():
            old = {k: getattr(_launch, k) for k in cfg}
            for k, v in cfg.items():
                setattr(_launch, k, v)
            try:
                tf = timed(lambda: softmax_forward(x, 1.0, False))
                tb = timed(lambda: softmax_backward(y, g, 1.0, False))
            finally:
                for k, v in old.items():
                    setattr(_launch, k, v)
            case("softmax", f"variant {str(dtype)[6:]} {x.shape[0]}x{n} {name}", **tf,
                 gbps=2 * nbytes / tf["median_ms"] / 1e6,
                 frac_copy=2 * nbytes / tf["median_ms"] / 1e6 / copy, bwd_ms=tb["median_ms"],
                 bwd_frac_copy=3 * nbytes / tb["median_ms"] / 1e6 / copy, config=cfg)
        del x, y, g
    # the single/multi threshold: both paths at the same lengths
    for n in (8192, 16384, 32768, 65536):
        x = torch.randn(total // n, n, device="cuda")
        old = _launch.MAX_SINGLE_BLOCK
        res = {}
        for name, limit in (("single", 1 << 20), ("multi", 1)):
            _launch.MAX_SINGLE_BLOCK = limit
            res[name] = timed(lambda: softmax_forward(x, 1.0, False))["median_ms"]
        _launch.MAX_SINGLE_BLOCK = old
        case("softmax", f"threshold f32 n={n}", single_ms=res["single"], multi_ms=res["multi"])
    # public function, autograd, fwd+bwd
    import softmaxlab.kernels.triton as kt

    x = torch.randn(32768, 4096, device="cuda", requires_grad=True)
    g = torch.randn_like(x)

    def ours():
        torch.autograd.grad(kt.softmax(x), x, g)

    def theirs():
        torch.autograd.grad(torch.softmax(x, -1), x, g)

    to, tt = timed(ours), timed(theirs)
    case("softmax", "public fwd+bwd f32 32768x4096", **to, torch_ms=tt["median_ms"],
         speedup_vs_torch=tt["median_ms"] / to["median_ms"])


def section_topk():
    import softmaxlab.kernels.triton as kt
    from softmaxlab.kernels.triton._softmax import row_stats
    from softmaxlab.online import softmax_topk as ref_topk

    for dtype, (m, n, k) in [(torch.float32, (1024, 128256, 10)),
                             (torch.bfloat16, (4096, 128256, 10)),
                             (torch.float32, (16384, 4096, 5))]:
        x = torch.randn(m, n, device="cuda", dtype=dtype)
        t = timed(lambda: kt.softmax_topk(x, k))
        tr = timed(lambda: ref_topk(x, k))
        tn = timed(lambda: torch.softmax(x.float(), -1).topk(k, -1))
        tk = timed(lambda: x.topk(k, -1))
        ts = timed(lambda: row_stats(x))
        tl = timed(lambda: torch.logsumexp(x.float(), -1))
        case("topk", f"softmax_topk {str(dtype)[6:]} {m}x{n} k={k}", **t,
             reference_ms=tr["median_ms"], softmax_then_topk_ms=tn["median_ms"],
             torch_topk_only_ms=tk["median_ms"], triton_stats_only_ms=ts["median_ms"],
             torch_logsumexp_ms=tl["median_ms"],
             speedup_vs_reference=tr["median_ms"] / t["median_ms"],
             speedup_vs_softmax_topk=tn["median_ms"] / t["median_ms"])


def section_sparsemax():
    import softmaxlab as sl
    from softmaxlab.kernels.triton._sparsemax import sparsemax_backward, sparsemax_forward

    for m, n in [(4096, 1000), (4096, 8192), (1024, 32768), (64, 131072)]:
        x = torch.randn(m, n, device="cuda") * 2
        t = timed(lambda: sparsemax_forward(x))
        tr = timed(lambda: sl.sparsemax(x))
        p = sparsemax_forward(x)
        g = torch.randn_like(p)
        tb = timed(lambda: sparsemax_backward(p, g))
        xr = x.clone().requires_grad_(True)
        pr = sl.sparsemax(xr)
        tbr = timed(lambda: torch.autograd.grad(pr, xr, g, retain_graph=True))
        case("sparsemax", f"f32 {m}x{n}", **t, reference_ms=tr["median_ms"],
             speedup_vs_reference=tr["median_ms"] / t["median_ms"], bwd_ms=tb["median_ms"],
             reference_bwd_ms=tbr["median_ms"],
             gbps=2 * x.numel() * 4 / t["median_ms"] / 1e6)


def section_lce(budgets):
    import softmaxlab.kernels.triton as kt
    from softmaxlab.kernels.triton import _linear_ce as linear_ce

    n, d, v = 8192, 4096, 128256
    dt = torch.bfloat16
    g = torch.Generator(device="cuda").manual_seed(0)
    h = torch.randn(n, d, device="cuda", generator=g).to(dt).requires_grad_(True)
    w = (torch.randn(v, d, device="cuda", generator=g) / d ** 0.5).to(dt).requires_grad_(True)
    t = torch.randint(0, v, (n,), device="cuda", generator=g)
    t[::10] = -100
    impls = {}
    for b in budgets:
        def ours(b=b):
            old = linear_ce.CHUNK_ELEMENTS
            linear_ce.CHUNK_ELEMENTS = b
            try:
                return kt.linear_cross_entropy(h, w, t)
            finally:
                linear_ce.CHUNK_ELEMENTS = old
        impls[f"softmaxlab budget=2^{int(math.log2(b))}"] = ours

    impls["torch naive"] = lambda: F.cross_entropy((h @ w.T).float(), t)
    try:
        from liger_kernel.transformers.functional import liger_fused_linear_cross_entropy

        impls["liger"] = lambda: liger_fused_linear_cross_entropy(h, w, t)
        impls["liger accum fp32"] = lambda: liger_fused_linear_cross_entropy(
            h, w, t, accum_dtype=torch.float32)
    except Exception as e:  # noqa: BLE001
        RESULTS["errors"].append(f"liger import: {e!r}")
    try:
        from cut_cross_entropy import linear_cross_entropy as cce

        impls["cce"] = lambda: cce(h, w, t)
        impls["cce exact (filter_eps=None)"] = lambda: cce(h, w, t, filter_eps=None)
    except Exception as e:  # noqa: BLE001
        RESULTS["errors"].append(f"cce import: {e!r}")

    # float32 truth (full logits; TF32 off)
    torch.backends.cuda.matmul.allow_tf32 = False
    hf, wf = h.detach().float().requires_grad_(True), w.detach().float().requires_grad_(True)
    loss_t = F.cross_entropy(hf @ wf.T, t)
    gh_t, gw_t = torch.autograd.grad(loss_t, (hf, wf))
    loss_t = loss_t.detach()
    del hf, wf
    torch.cuda.empty_cache()

    def clear():
        h.grad = w.grad = None

    rows = {}
    for name, fn in impls.items():
        try:
            def both(fn=fn):
                fn().backward()

            clear()
            loss = fn()
            loss.backward()
            errs = dict(loss_err=abs(loss.double().item() - loss_t.double().item()) /
                        abs(loss_t.item()), gh_err=rel_err(h.grad, gh_t),
                        gw_err=rel_err(w.grad, gw_t))
            clear()
            mem = peak_memory(both, setup=clear)
            clear()
            tfb = timed(both, warmup=2, budget_s=1.0, max_reps=10, setup=clear)
            clear()
            with torch.no_grad():
                tf = timed(fn, warmup=1, budget_s=0.5, max_reps=10)
            rows[name] = case("lce", name, **tfb, fwd_ms=tf["median_ms"], peak_mib=mem, **errs)
        except Exception as e:  # noqa: BLE001
            RESULTS["errors"].append(f"lce {name}: {traceback.format_exc(limit=3)}")
            print(f"[lce] {name} failed: {e!r}", flush=True)
        clear()
        torch.cuda.empty_cache()
    ours = [r for k, r in rows.items() if k.startswith("softmaxlab")]
    for r in ours:
        for k, b in rows.items():
            if not k.startswith("softmaxlab"):
                r[f"time_ratio_vs_{k}"] = r["median_ms"] / b["median_ms"]
                r[f"mem_ratio_vs_{k}"] = r["peak_mib"] / max(b["peak_mib"], 1e-9)
    RESULTS["lce_inputs"] = dict(n=n, d=d, v=v, dtype="bfloat16", ignored_every=10,
                                 input_mib=(h.numel() * 2 + w.numel() * 2) / 2**20)


SECTIONS = {"check": section_check, "copy": section_copy, "softmax": section_softmax,
            "topk": section_topk, "sparsemax": section_sparsemax}


def versions() -> dict:
    out = {"python": platform.python_version(), "torch": torch.__version__,
           "cuda": torch.version.cuda, "device": torch.cuda.get_device_name(),
           "sm_count": torch.cuda.get_device_properties(0).multi_processor_count}
    for mod in ("triton", "liger_kernel", "cut_cross_entropy"):
        try:
            from importlib.metadata import version

            out[mod] = version(mod.replace("_", "-"))
        except Exception:  # noqa: BLE001
            try:
                out[mod] = __import__(mod).__version__
            except Exception:  # noqa: BLE001
                out[mod] = None
    return out


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", default="gpu_bench.json")
    ap.add_argument("--commit", default=os.environ.get("SOFTMAXLAB_COMMIT", "unknown"))
    ap.add_argument("--sections", nargs="*",
                    default=["check", "copy", "softmax", "topk", "sparsemax", "lce"])
    ap.add_argument("--lce-budgets", nargs="*", type=int, default=[1 << 23, 1 << 24, 1 << 25])
    args = ap.parse_args(argv)
    OUT_PATH.append(args.out)
    RESULTS.update(versions=versions(), commit=args.commit,
                   time=time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()))
    print(json.dumps(RESULTS["versions"]), flush=True)
    for s in args.sections:
        t0 = time.perf_counter()
        try:
            section_lce(args.lce_budgets) if s == "lce" else SECTIONS[s]()
        except Exception:  # noqa: BLE001
            RESULTS["errors"].append(f"section {s}: {traceback.format_exc()}")
            print(f"section {s} failed:\n{traceback.format_exc()}", flush=True)
        RESULTS.setdefault("section_s", {})[s] = time.perf_counter() - t0
        save()
    fails = [c["check"] for c in RESULTS["checks"] if not c["ok"]]
    print(f"checks: {len(RESULTS['checks']) - len(fails)} pass, {len(fails)} fail {fails}")
    print(f"errors: {len(RESULTS['errors'])}")
    return 1 if fails or RESULTS["errors"] else 0


if __name__ == "__main__":
    raise SystemExit(main())
