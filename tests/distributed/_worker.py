"""One spawned rank of the vocabulary-parallel tests: joins a gloo group, runs every case of
``_cases.py`` on its slice of the vocabulary and saves its losses and gradients (and the
results of a few checks: traffic, errors) for the test process to compare.

A case that raises is recorded as its error message (every rank runs the same code, so a
raising case raises on all of them; the group's timeout bounds the rest).
"""

from __future__ import annotations

import os
import socket
import sys
import time
import traceback
from datetime import timedelta
from pathlib import Path
from typing import Any

import torch
import torch.distributed as dist
import torch.multiprocessing as mp

from . import _cases as C

#: the gloo group's timeout: a collective that one rank never joins fails after this
TIMEOUT_S = 60


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def launch(world: int, out_dir: Path, deadline_s: float = 240.0) -> None:
    """Spawn ``world`` ranks running :func:`main`; raise if one fails or the deadline passes.
    The ranks import softmaxlab from the directory this process imported it from."""
    import softmaxlab

    src = str(Path(softmaxlab.__file__).resolve().parents[1])
    old = os.environ.get("PYTHONPATH")
    os.environ["PYTHONPATH"] = os.pathsep.join([src, *([old] if old else [])])
    try:
        ctx = mp.start_processes(main, args=(world, free_port(), str(out_dir), src),
                                 nprocs=world, join=False, start_method="spawn")
        end = time.monotonic() + deadline_s
        while not ctx.join(timeout=2):
            if time.monotonic() > end:
                for p in ctx.processes:
                    if p.is_alive():
                        p.kill()
                raise TimeoutError(f"the {world} gloo ranks did not finish in {deadline_s} s")
    finally:
        if old is None:
            os.environ.pop("PYTHONPATH", None)
        else:
            os.environ["PYTHONPATH"] = old


def main(rank: int, world: int, port: int, out_dir: str, src: str) -> None:
    torch.set_num_threads(1)
    import softmaxlab

    here = str(Path(softmaxlab.__file__).resolve())
    assert here.startswith(src), f"rank {rank} imported softmaxlab from {here}, not {src}"
    dist.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{port}", rank=rank,
                            world_size=world, timeout=timedelta(seconds=TIMEOUT_S))
    try:
        results: dict[str, Any] = {}
        mesh = None
        for case in C.CASES:
            if case.split == "dtensor" and mesh is None:
                from torch.distributed.device_mesh import init_device_mesh

                mesh = init_device_mesh("cpu", (world,))
            try:
                results[case.id] = run_case(case, rank, world, mesh)
            except Exception as e:  # noqa: BLE001 - reported by the test of that case
                results[case.id] = f"{type(e).__name__}: {e}\n{traceback.format_exc()}"
        results["checks"] = checks(rank, world)
        torch.save(results, Path(out_dir) / f"rank{rank}.pt")
    finally:
        dist.destroy_process_group()
    sys.stdout.flush()


def run_case(case: C.Case, rank: int, world: int, mesh) -> dict[str, Any]:
    import softmaxlab.distributed as D

    inp = C.inputs(case)
    kw = C.loss_kwargs(case, inp)
    sizes = C.split_sizes(case, world)
    lo, hi = sum(sizes[:rank]), sum(sizes[:rank + 1])
    t = inp["target"]
    dt = case.split == "dtensor"
    if dt:
        from torch.distributed.tensor import Shard, distribute_tensor
    if case.kind == "linear":
        h = inp["hidden"].clone().requires_grad_()
        if dt:
            w = distribute_tensor(inp["proj"], mesh, [Shard(0)]).requires_grad_()
            b = (distribute_tensor(inp["bias"], mesh, [Shard(0)]).requires_grad_()
                 if "bias" in inp else None)
        else:
            w = inp["proj"][lo:hi].clone().requires_grad_()
            b = inp["bias"][lo:hi].clone().requires_grad_() if "bias" in inp else None
        out = D.linear_cross_entropy(h, w, t, bias=b, mapping=case.mapping, chunk_size=3, **kw)
        (out * C.upstream(out, case)).sum().backward()
        res = {"loss": out.detach(), "hidden": h.grad, "proj": _local(w.grad)}
        if b is not None:
            res["bias"] = _local(b.grad)
        return res
    z_full = inp["logits"]
    if dt:
        z = distribute_tensor(z_full, mesh, [Shard(z_full.dim() - 1)]).requires_grad_()
    else:
        z = z_full[..., lo:hi].clone().requires_grad_()
    if case.kind == "topk":
        p, idx = D.softmax_topk(z, case.x["k"])
        (p * C.upstream(p, case)).sum().backward()
        return {"loss": p.detach(), "index": idx, "logits": _local(z.grad)}
    fn = D.cross_entropy if case.kind == "ce" else D.fenchel_young_loss
    out = fn(z, t, mapping=case.mapping, **kw)
    (out * C.upstream(out, case)).sum().backward()
    return {"loss": out.detach(), "logits": _local(z.grad)}


def _local(g):
    return g.to_local() if hasattr(g, "to_local") else g


def _error(fn) -> str:
    try:
        fn()
    except (ValueError, TypeError) as e:
        return f"{type(e).__name__}: {e}"
    return "no error"


def checks(rank: int, world: int) -> dict[str, Any]:
    """Traffic of the collectives, errors raised consistently on every rank, dtypes."""
    import softmaxlab.distributed as D
    from softmaxlab.distributed._comm import resolve_group
    from softmaxlab.distributed.fenchel_young import entmax_threshold

    out: dict[str, Any] = {}
    n, v_local = 16, 5
    g = torch.Generator().manual_seed(rank)
    z = torch.randn(n, v_local, generator=g)
    t = torch.randint(0, v_local * world, (n,), generator=torch.Generator().manual_seed(0))
    for name, kw in (("ce", {}), ("ce-smooth", {"label_smoothing": 0.1}),
                     ("fy-sparsemax", {"mapping": "sparsemax"})):
        fn = D.fenchel_young_loss if name.startswith("fy") else D.cross_entropy
        with D.count_traffic() as traffic:
            fn(z, t, **kw)
        out[f"traffic-{name}"] = traffic.calls
    h = torch.randn(n, 8, generator=torch.Generator().manual_seed(1), requires_grad=True)
    w = torch.randn(v_local, 8, generator=g, requires_grad=True)
    with D.count_traffic() as traffic:
        D.linear_cross_entropy(h, w, t, chunk_size=8).backward()
    out["traffic-linear"] = traffic.calls
    with D.count_traffic() as traffic:
        D.softmax_topk(z, 3)
    out["traffic-topk"] = traffic.calls
    # exact thresholds: Newton steps on wide and narrow rows
    a = torch.randn(4, 100, generator=g, dtype=torch.float64)
    comm = resolve_group(None)
    out["steps"] = {f"{alpha}-{scale}": entmax_threshold(a * scale * (alpha - 1), alpha, comm)[1]
                    for alpha in (2.0, 1.5) for scale in (0.01, 1.0, 10.0)}
    # errors: the same on every rank, no hang
    out["error-rows"] = _error(lambda: D.cross_entropy(torch.randn(3 + rank, 4), t[:3 + rank]))
    out["error-target"] = _error(lambda: D.cross_entropy(z, torch.full((n,), v_local * world)))
    out["error-weight"] = _error(lambda: D.cross_entropy(z, t, weight=torch.ones(v_local)))
    out["error-k"] = _error(lambda: D.softmax_topk(z, v_local * world + 1))
    out["error-mapping"] = _error(lambda: D.cross_entropy(z, t, mapping="sparsemax"))
    out["error-param"] = _error(lambda: D.cross_entropy(z, t, mapping="taylor_softmax", order=3))
    # dtypes: float32 and bfloat16 in, same dtype out
    out["dtype-f32"] = D.cross_entropy(z, t).dtype
    out["dtype-bf16"] = D.cross_entropy(z.bfloat16(), t).dtype
    out["f32-vs-f64"] = (D.cross_entropy(z, t).double()
                         - D.cross_entropy(z.double(), t)).abs().item()
    return out
