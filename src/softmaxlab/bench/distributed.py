"""Benchmark of the vocabulary-parallel losses: communication per token and time.

``python -m softmaxlab.bench.distributed --out benchmarks/results`` writes
``distributed-cpu-wW.json`` and ``distributed-cpu-wW.md`` (``W`` = ``--world``):

1. **Communication per token** of each scheme, analytical (from the collectives the code
   issues) and counted (:func:`softmaxlab.distributed.count_traffic` on a real gloo run):
   payload bytes per token each rank hands to collectives, and ring "bus" bytes per token
   each rank sends (``2 (W-1)/W`` x payload for an all-reduce). Megatron-LM's scheme
   (``_VocabParallelCrossEntropy``: all-reduces of the max, the target logit and the
   sum of exponentials, one ``[N]`` fp32 tensor each) is re-implemented here from its
   description to be counted the same way, and to measure its label-smoothing error.
2. **Time** of the fused linear cross-entropy (forward + backward, ``reduction="mean"``)
   at ``N x d`` hidden states and a ``V``-row projection: ``W`` gloo processes of one
   thread each (the vocabulary split in ``W``) against one process of ``W`` threads and one
   of one thread (``softmaxlab.losses.linear_cross_entropy``), all on this machine's CPUs.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import tempfile
import time
from datetime import datetime, timezone
from pathlib import Path

import torch
import torch.distributed as dist

from .._text import table
from . import environment

F32 = 4


# ------------------------------------------------------------------ analytical volumes
def analytical(world: int, d: int, steps: dict[str, float], k: int = 10) -> list[dict]:
    """Per-token volumes of each scheme: collectives per call (chunk), payload and bus
    bytes per token. ``steps``: measured mean reductions of the exact thresholds."""
    ar = 2 * (world - 1) / world

    def row(scheme, what, collectives, payload, bus=None, note=""):
        return {"scheme": scheme, "loss": what, "collectives": collectives,
                "payload_bytes_per_token": payload,
                "bus_bytes_per_token": ar * payload if bus is None else bus, "note": note}

    sp, e15 = steps["sparsemax"], steps["entmax15"]
    return [
        row("megatron", "softmax CE", 3, 3 * F32, note="max, target logit, sum exp: 3 x [N] fp32"),
        row("softmaxlab", "softmax CE", 2, 3 * F32, note="max [N]; sum of (sum exp, target) [2N]"),
        row("megatron", "softmax CE + label smoothing", 3, 3 * F32,
            note="no extra collective: the smoothing term is the local shard's (wrong)"),
        row("softmaxlab", "softmax CE + label smoothing", 2, 4 * F32,
            note="+ sum_j w_j (l_j - M) over the whole vocabulary"),
        row("megatron", "linear CE, backward (hidden grad)", 1, d * F32,
            note="ColumnParallelLinear's input-gradient all-reduce, N x d fp32"),
        row("softmaxlab", "linear CE, backward (hidden grad)", 1, d * F32,
            note="the same all-reduce, done in forward with the eager gradients"),
        row("softmaxlab", "sparsemax FY", 2 + sp, 8 + 16 * sp + 3 * F32,
            note=f"max fp64; {sp} Newton steps x (|S|, sum) fp64; loss sums fp32"),
        row("softmaxlab", "entmax15 FY", 2 + e15, 8 + 24 + 32 * (e15 - 1) + 3 * F32,
            note=f"max fp64; {e15} steps x (|S|, sum, sum sq[, check]) fp64; loss sums"),
        row("softmaxlab", f"softmax_topk k={k}", 1, (2 * k + 2) * 8,
            bus=(world - 1) * (2 * k + 2) * 8, note="all-gather of k values, k ids, (max, sum)"),
    ]


# ------------------------------------------------------------------ Megatron's scheme
def megatron_forward(z, target, lo, comm, label_smoothing=0.0):
    """Megatron-LM's vocab-parallel cross-entropy forward as published (three all-reduces;
    label smoothing from the *local* shard: its size K and its mean log-probability)."""
    m = z.amax(-1)
    comm.all_reduce(m, "max")
    z = z - m[:, None]
    owned = (target >= lo) & (target < lo + z.shape[-1])
    local = torch.where(owned, target - lo, 0)
    pred = torch.where(owned, z.gather(-1, local[:, None])[:, 0], 0.0)
    comm.all_reduce(pred)
    e = z.exp()
    s = e.sum(-1)
    comm.all_reduce(s)
    loss = s.log() - pred
    if label_smoothing:
        k = z.shape[-1]  # the partition's vocabulary size
        smoothing = label_smoothing * k / (k - 1)
        mean_log_probs = (e / s[:, None]).log().mean(-1)  # the partition's mean
        loss = (1 - smoothing) * loss - smoothing * mean_log_probs
    return loss


def megatron_single(z, target, label_smoothing):
    """Megatron's own smoothed loss with the whole vocabulary on one rank (TP = 1)."""
    logp = z.log_softmax(-1)
    loss = -logp.gather(-1, target[:, None])[:, 0]
    k = z.shape[-1]
    smoothing = label_smoothing * k / (k - 1)
    return (1 - smoothing) * loss - smoothing * logp.mean(-1)


# ------------------------------------------------------------------ the ranks
def _rank(rank: int, world: int, port: int, cfg: dict, out: str) -> None:
    torch.set_num_threads(1)
    from softmaxlab import distributed as D
    from softmaxlab.distributed._comm import resolve_group
    from softmaxlab.distributed.fenchel_young import entmax_threshold

    dist.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{port}", rank=rank,
                            world_size=world)
    comm = resolve_group(None)
    n, d, v = cfg["n"], cfg["d"], cfg["v"]
    sizes = [v // world + (r < v % world) for r in range(world)]
    lo, hi = sum(sizes[:rank]), sum(sizes[:rank + 1])
    g = torch.Generator().manual_seed(0)
    h = torch.randn(n, d, generator=g) / d**0.5
    w_full = torch.randn(v, d, generator=g)
    t = torch.randint(0, v, (n,), generator=g)
    w = w_full[lo:hi].clone()
    del w_full
    res: dict = {"sizes": sizes}
    # counted traffic per scheme on a slice of rows (volumes per token do not depend on N)
    m_rows = cfg["count_rows"]
    z = h[:m_rows] @ w.T
    tt = t[:m_rows]
    counted = {}
    for name, fn in (
        ("softmax CE", lambda: D.cross_entropy(z, tt)),
        ("softmax CE + label smoothing", lambda: D.cross_entropy(z, tt, label_smoothing=0.1)),
        ("sparsemax FY", lambda: D.fenchel_young_loss(z, tt, mapping="sparsemax")),
        ("entmax15 FY", lambda: D.fenchel_young_loss(z, tt, mapping="entmax15")),
        ("softmax_topk k=10", lambda: D.softmax_topk(z, 10)),
        ("megatron softmax CE", lambda: megatron_forward(z, tt, lo, comm)),
    ):
        with D.count_traffic() as traffic:
            fn()
        # the slice sizes' all-gather is per call, not per token: reported apart
        per_call = sum(c[2] * torch.empty((), dtype=c[1]).element_size()
                       for c in traffic.calls if c[0] == "all_gather" and c[1] == torch.int64)
        counted[name] = {"collectives": traffic.collectives,
                         "payload_bytes_per_token": (traffic.bytes - per_call) / m_rows,
                         "per_call_bytes": per_call,
                         "bus_bytes_per_token": (traffic.bus_bytes(world)
                                                 - per_call * (world - 1)) / m_rows}
    res["counted"] = counted
    # Newton reductions of the batch's threshold (until its slowest row is exact): the
    # collectives of the call less the sizes' gather, the max and the loss's sum
    res["threshold_steps"] = {name: counted[f"{name} FY"]["collectives"] - 3
                              for name in ("sparsemax", "entmax15")}
    res["threshold_steps_per_row"] = {
        name: statistics.mean(entmax_threshold(
            z[i:i + 1].double() * (alpha - 1), alpha, comm)[1] for i in range(32))
        for name, alpha in (("sparsemax", 2.0), ("entmax15", 1.5))}
    # Megatron's label smoothing with the vocabulary split: per-rank losses vs TP = 1
    # ... on these near-uniform logits of a random projection, and on logits with a Zipf
    # prior (a trained LM head's: frequent tokens first, log p ~ -log rank)
    res["smoothing"] = {}
    prior = -torch.arange(1, v + 1, dtype=z.dtype).log()[lo:hi]
    for name, zz in (("random", z), ("zipf", z + prior)):
        ours = D.cross_entropy(zz, tt, label_smoothing=0.1, reduction="none")
        mega = megatron_forward(zz, tt, lo, comm, label_smoothing=0.1)
        res["smoothing"][name] = {"megatron_rank_mean_loss": float(mega.mean()),
                                  "ours_mean_loss": float(ours.mean())}
    # linear CE timing, forward + backward
    h.requires_grad_(True)
    w.requires_grad_(True)
    times, comm_s = [], []
    for i in range(cfg["repeat"] + 1):
        h.grad = w.grad = None
        dist.barrier()
        start = time.perf_counter()
        with D.count_traffic() as traffic:
            loss = D.linear_cross_entropy(h, w, t)
            loss.backward()
        dist.barrier()
        if i:
            times.append(time.perf_counter() - start)
            comm_s.append(traffic.seconds)
        if i == 1:
            per_call = 2 * 8
            res["linear_counted_bytes_per_token"] = (traffic.bytes - per_call) / n
            res["linear_collectives"] = traffic.collectives
    res["linear"] = {"seconds": times, "comm_seconds": comm_s, "loss": loss.item()}
    torch.save(res, Path(out) / f"rank{rank}.pt")
    dist.destroy_process_group()


def _single(cfg: dict, threads: int) -> dict:
    from softmaxlab import losses as L

    before = torch.get_num_threads()
    torch.set_num_threads(threads)
    try:
        n, d, v = cfg["n"], cfg["d"], cfg["v"]
        g = torch.Generator().manual_seed(0)
        h = (torch.randn(n, d, generator=g) / d**0.5).requires_grad_(True)
        w = torch.randn(v, d, generator=g).requires_grad_(True)
        t = torch.randint(0, v, (n,), generator=g)
        times = []
        for i in range(cfg["repeat"] + 1):
            h.grad = w.grad = None
            start = time.perf_counter()
            loss = L.linear_cross_entropy(h, w, t)
            loss.backward()
            if i:
                times.append(time.perf_counter() - start)
        return {"seconds": times, "loss": loss.item(), "threads": threads}
    finally:
        torch.set_num_threads(before)


def run(cfg: dict) -> dict:
    import torch.multiprocessing as mp

    from softmaxlab.distributed._comm import Comm  # noqa: F401  (fail early if absent)

    world = cfg["world"]
    with tempfile.TemporaryDirectory() as tmp:
        import socket

        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            port = s.getsockname()[1]
        mp.start_processes(_rank, args=(world, port, cfg, tmp), nprocs=world,
                           start_method="spawn")
        ranks = [torch.load(Path(tmp) / f"rank{r}.pt", weights_only=False)
                 for r in range(world)]
    r0 = ranks[0]
    dist_times = [max(r["linear"]["seconds"][i] for r in ranks)
                  for i in range(cfg["repeat"])]
    singles = [_single(cfg, threads) for threads in sorted({world, 1}, reverse=True)]
    steps = r0["threshold_steps"]
    return {
        "config": cfg,
        "analytical": analytical(world, cfg["d"], steps),
        "counted": r0["counted"],
        "threshold_steps": steps,
        "threshold_steps_per_row": r0["threshold_steps_per_row"],
        "linear_counted_bytes_per_token": r0["linear_counted_bytes_per_token"],
        "linear_collectives": r0["linear_collectives"],
        "label_smoothing": {name: {
            "megatron_per_rank_mean_loss": [r["smoothing"][name]["megatron_rank_mean_loss"]
                                            for r in ranks],
            "softmaxlab_mean_loss": r0["smoothing"][name]["ours_mean_loss"]}
            for name in ("random", "zipf")},
        "time": {
            f"{world} gloo processes x 1 thread": {
                "median_s": statistics.median(dist_times), "seconds": dist_times,
                "comm_median_s": statistics.median(r0["linear"]["comm_seconds"]),
                "loss": r0["linear"]["loss"]},
            **{f"1 process x {s['threads']} thread{'s' if s['threads'] > 1 else ''}": {
                "median_s": statistics.median(s["seconds"]), "seconds": s["seconds"],
                "loss": s["loss"]} for s in singles},
        },
        "shard_sizes": r0["sizes"],
    }


def _single_reference_smoothing(cfg: dict) -> dict[str, float]:
    """Megatron's smoothed loss with TP = 1 on the counted rows (its own target value)."""
    n, d, v, m = cfg["n"], cfg["d"], cfg["v"], cfg["count_rows"]
    g = torch.Generator().manual_seed(0)
    h = torch.randn(n, d, generator=g) / d**0.5
    w = torch.randn(v, d, generator=g)
    t = torch.randint(0, v, (n,), generator=g)
    z = h[:m] @ w.T
    prior = -torch.arange(1, v + 1, dtype=z.dtype).log()
    return {"random": float(megatron_single(z, t[:m], 0.1).mean()),
            "zipf": float(megatron_single(z + prior, t[:m], 0.1).mean())}


def markdown(res: dict) -> str:
    cfg = res["config"]
    env = res["environment"]
    lines = [f"### softmaxlab.distributed: vocabulary-parallel losses on {cfg['world']} gloo "
             "processes (CPU)", "",
             f"softmaxlab {env['versions']['softmaxlab']} @ {(env['git']['commit'] or '-')[:12]}"
             f"{' (dirty)' if env['git']['dirty'] else ''}, torch {env['versions']['torch']}, "
             f"{env['machine']['cpu']} ({env['machine']['cores']} cores); {res['time_utc']}. "
             f"N={cfg['n']}, d={cfg['d']}, V={cfg['v']} split {res['shard_sizes']}.", "",
             "#### Communication per token (bytes; each rank)", "",
             "Analytical, from the collectives the code issues; `counted` is "
             "`count_traffic` on the gloo run (the per-call all-gather of the slice sizes, "
             f"{res['counted']['softmax CE']['per_call_bytes']} B, left out).", ""]
    rows = []
    for a in res["analytical"]:
        key = ("megatron softmax CE" if a["scheme"] == "megatron" and a["loss"] == "softmax CE"
               else a["loss"] if a["scheme"] == "softmaxlab" else None)
        c = res["counted"].get(key) if key else None
        rows.append([a["scheme"], a["loss"], a["collectives"],
            f"{a['payload_bytes_per_token']:.1f}",
            "-" if c is None else f"{c['payload_bytes_per_token']:.1f}",
            f"{a['bus_bytes_per_token']:.1f}", a["note"]])
    lines.append(table(["scheme", "loss", "collectives", "payload B/token",
                        "counted B/token", "bus B/token", "what"], rows))
    per_row = res["threshold_steps_per_row"]
    lines += ["", f"Exact thresholds: the batch's loop runs until its slowest row is exact "
              f"({res['threshold_steps']['sparsemax']} reductions for sparsemax, "
              f"{res['threshold_steps']['entmax15']} for 1.5-entmax here); one row alone takes "
              f"{per_row['sparsemax']:.1f} and {per_row['entmax15']:.1f} on average."]
    linear = res["linear_counted_bytes_per_token"]
    lines += ["", f"Fused linear CE, whole step: counted {linear:.1f} B/token in "
              f"{res['linear_collectives']} collectives (a max and a sum per chunk of rows, "
              f"the hidden gradient once: 4d = {4 * cfg['d']} B/token).", "",
              "#### Label smoothing 0.1 with the vocabulary split (mean loss of the counted "
              "rows)", "",
              "Megatron's scheme smooths with the local shard's size and mean log-probability: "
              "each rank reports a different loss, none equal to Megatron's own TP=1 value. "
              "softmaxlab's is the same on every rank and equals the single-process "
              "(torch-convention) loss, checked to 1e-10 in the tests.", ""]
    rows = []
    for name, ls in res["label_smoothing"].items():
        per_rank, tp1 = ls["megatron_per_rank_mean_loss"], ls["megatron_tp1_mean_loss"]
        rows.append([name, ", ".join(f"{x:.6f}" for x in per_rank), f"{tp1:.6f}",
                     f"{max(abs(x - tp1) for x in per_rank):.2e}",
                     f"{ls['softmaxlab_mean_loss']:.6f}"])
    lines.append(table(["logits", "Megatron per rank", "Megatron TP=1", "max error",
                        "softmaxlab (every rank)"], rows))
    lines += ["", "#### Time, fused linear cross-entropy forward + backward", ""]
    rows = [[k, f"{v['median_s']:.2f} s", ", ".join(f"{s:.2f}" for s in v["seconds"]),
             f"{v['comm_median_s']:.3f} s" if "comm_median_s" in v else "-",
             f"{v['loss']:.6f}"] for k, v in res["time"].items()]
    lines.append(table(["setup", "median", "runs", "in collectives", "loss"], rows))
    la = res.get("load_average", {})
    lines += ["", "The machine is shared with other jobs (1-minute load average "
              f"{la.get('before', ['?'])[0]:.1f} before, {la.get('after', ['?'])[0]:.1f} after, on "
              f"{env['machine']['cores']} cores): times are medians of the runs listed and "
              "vary by tens of percent between runs. Both setups do the same three matrix "
              "products (2 N d V flops each); the distributed one adds the collectives (the "
              "`in collectives` column includes waiting for the slower rank)."]
    return "\n".join(lines) + "\n"


def main(argv=None) -> int:
    p = argparse.ArgumentParser(prog="python -m softmaxlab.bench.distributed",
                                description=__doc__.split("\n\n")[0])
    p.add_argument("--n", type=int, default=4096)
    p.add_argument("--d", type=int, default=1024)
    p.add_argument("--v", type=int, default=50257)
    p.add_argument("--world", type=int, default=2)
    p.add_argument("--repeat", type=int, default=3)
    p.add_argument("--count-rows", type=int, default=512)
    p.add_argument("--out", default="benchmarks/results")
    a = p.parse_args(argv)
    cfg = {"n": a.n, "d": a.d, "v": a.v, "world": a.world, "repeat": a.repeat,
           "count_rows": min(a.count_rows, a.n)}
    load_before = os.getloadavg()
    res = run(cfg)
    res["load_average"] = {"before": load_before, "after": os.getloadavg()}
    for name, value in _single_reference_smoothing(cfg).items():
        res["label_smoothing"][name]["megatron_tp1_mean_loss"] = value
    res["environment"] = {"machine": environment.machine_info(),
                          "versions": environment.versions(), "git": environment.git_info()}
    res["time_utc"] = datetime.now(timezone.utc).isoformat(timespec="seconds")
    out = Path(a.out)
    out.mkdir(parents=True, exist_ok=True)
    stem = f"distributed-cpu-w{a.world}"
    (out / f"{stem}.json").write_text(json.dumps(res, indent=1, default=str) + "\n")
    (out / f"{stem}.md").write_text(markdown(res))
    print(markdown(res))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
