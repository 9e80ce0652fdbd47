"""Long-row softmax on a CUDA GPU: the library's defaults, the cooperative path in both
passes (with and without prefetching the next row, other chunk sizes), the multi-block paths,
torch.softmax and the copy-bandwidth ceiling, in one short run.

    python benchmarks/gpu_long_rows.py [--out FILE.json]

Per shape (2^27 entries, far larger than L2): a check of every variant against the float64
reference (fresh random rows with -inf entries, a NaN row and an all -inf row), then forward
and backward medians (``triton.testing.do_bench``); GB/s counts one read and one write
forward, two reads and one write backward. The full comparison with peers is ``softmaxlab
bench --suite gpu``; this script is the quick one.
"""

from __future__ import annotations

import argparse
import json
import sys

import torch
import triton.testing

from softmaxlab.kernels.triton import _launch as L
from softmaxlab.kernels.triton import _softmax as S

DEVICE = "cuda"
_COOP = {"COOP_FORWARD": True, "COOP_MIN_ITEMSIZE": 0}
VARIANTS = {"default": {}, "coop": _COOP, "coop prefetch": {**_COOP, "COOP_PREFETCH": True},
            "coop 32768": {**_COOP, "COOP_CHUNK": 32768},
            "coop 32768 prefetch": {**_COOP, "COOP_CHUNK": 32768, "COOP_PREFETCH": True},
            "coop 8192 prefetch": {**_COOP, "COOP_CHUNK": 8192, "COOP_PREFETCH": True},
            "multi-block": {"COOP_PROGRAMS_PER_SM": 0}}
SHAPES = [(torch.float32, n) for n in (32768, 65536, 131072, 262144, 1 << 20)] + [
    (torch.bfloat16, n) for n in (65536, 262144)]


def configured(settings: dict):
    old = {k: getattr(L, k) for k in settings}
    for k, v in settings.items():
        setattr(L, k, v)
    return lambda: [setattr(L, k, v) for k, v in old.items()]


def median_ms(fn) -> float:
    return triton.testing.do_bench(fn, warmup=25, rep=100, return_mode="median")


def check(dtype, n: int) -> float:
    """Largest error of forward and backward vs float64 (relative to 1 + |ref|)."""
    x = torch.randn(64, n, device=DEVICE, dtype=torch.float64) * 3
    x[0, ::7] = float("-inf")
    x[1, n // 2] = float("nan")
    x[2] = float("-inf")
    g = torch.randn_like(x)
    ref = torch.softmax(x.nan_to_num(nan=0.0), -1)
    ref[2] = 0.0
    ref_dx = ref * (g - (g * ref).sum(-1, keepdim=True))
    y = S.softmax_forward(x.to(dtype), 1.0, False).double()
    dx = S.softmax_backward(y.to(dtype), g.to(dtype), 1.0, False).double()
    keep = torch.arange(64, device=DEVICE) != 1
    assert y[1].isnan().all() and not y[keep].isnan().any(), "NaN row"
    err = max(((y - ref).abs() / (1 + ref.abs()))[keep].max().item(),
              ((dx - ref_dx).abs() / (1 + ref_dx.abs()))[keep].max().item())
    return err


def copy_bandwidth(total: int) -> float:
    """GB/s of a device-to-device copy of ``total`` float32 entries (read + write)."""
    a = torch.randn(total, device=DEVICE)
    b = torch.empty_like(a)
    return 2 * a.numel() * 4 / (median_ms(lambda: b.copy_(a)) * 1e6)


def measure(dtype, n: int, total: int, copy: float) -> list[dict]:
    """Checks every variant on rows of ``n``, then times each and torch."""
    x = torch.randn(total // n, n, device=DEVICE, dtype=dtype)
    g = torch.randn_like(x)
    y0 = torch.softmax(x, -1)
    nbytes = x.numel() * x.element_size()

    def run(settings, fn):
        restore = configured(settings)
        try:
            return fn()
        finally:
            restore()

    impls = {"torch": (lambda: torch.softmax(x, -1),
                       lambda: torch._softmax_backward_data(g, y0, -1, x.dtype))}
    for name, settings in VARIANTS.items():
        err = run(settings, lambda: check(dtype, n))
        tol = 1e-5 if dtype == torch.float32 else 2e-2
        assert err <= tol, f"{name} {dtype} n={n}: error {err:.2e} > {tol}"
        impls[name] = (lambda s=settings: run(s, lambda: S.softmax_forward(x, 1.0, False)),
                       lambda s=settings: run(s, lambda: S.softmax_backward(y0, g, 1.0, False)))
    rows = []
    for name, (fwd, bwd) in impls.items():
        f, bk = median_ms(fwd), median_ms(bwd)
        r = {"dtype": str(dtype).split(".")[1], "rows": total // n, "n": n, "impl": name,
             "fwd_ms": f, "bwd_ms": bk, "fwd_pct_copy": 100 * 2 * nbytes / (f * 1e6) / copy,
             "bwd_pct_copy": 100 * 3 * nbytes / (bk * 1e6) / copy}
        rows.append(r)
        print(f"{r['dtype']:8} {r['rows']:6}x{n:<8} {name:16} fwd {f:7.3f} ms "
              f"{r['fwd_pct_copy']:5.1f}%  bwd {bk:7.3f} ms {r['bwd_pct_copy']:5.1f}%", flush=True)
    return rows


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--out", default=None)
    args = ap.parse_args()
    torch.manual_seed(0)
    total = 1 << 27
    copy = copy_bandwidth(total)
    print(f"{torch.cuda.get_device_name(0)}; copy {copy:.0f} GB/s; torch {torch.__version__}, "
          f"triton {triton.__version__}", flush=True)
    rows = [r for dtype, n in SHAPES for r in measure(dtype, n, total, copy)]
    if args.out:
        with open(args.out, "w") as fh:
            json.dump({"device": torch.cuda.get_device_name(0), "copy_GBps": copy,
                       "torch": torch.__version__, "triton": triton.__version__,
                       "paths": dict(L.PATHS), "rows": rows}, fh, indent=1)
    return 0


if __name__ == "__main__":
    sys.exit(main())
