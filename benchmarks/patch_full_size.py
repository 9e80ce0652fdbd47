"""Issue 12 at its own size: GPT-2 d=256, 4 layers, V=50257, batch 8 x 512; a training step
of softmaxlab.patch(loss="softmax") (fused linear CE) against the unpatched model: peak of the
step's tensors (TensorPeak) and the median of 3 interleaved steps. Prints JSON. About 3 min on
2 CPU cores; notes: benchmarks/results/bench-cpu-patch-notes.md."""
import json
import statistics
import time

import torch
import transformers

from softmaxlab.bench.baselines import patch_impls
from softmaxlab.bench.memory import TensorPeak

torch.manual_seed(0)
B, N, D, LAYERS, V = 8, 512, 256, 4, 50257
cfg = transformers.GPT2Config(n_embd=D, n_layer=LAYERS, n_head=4, vocab_size=V, n_positions=N,
                              resid_pdrop=0.0, embd_pdrop=0.0, attn_pdrop=0.0, bos_token_id=0,
                              eos_token_id=0)
model = transformers.GPT2LMHeadModel(cfg).train()
ids = torch.randint(0, V, (B, N))
params = tuple(model.parameters())
impls = {i.name: i.resolve() for i in patch_impls(loss="softmax")}
def step(fn):
    loss = fn(model, ids)
    return loss, torch.autograd.grad(loss, params)
out = {}
for name, fn in impls.items():
    step(fn)
    with TensorPeak() as peak:
        loss, g = step(fn)
    out[name] = {"loss": float(loss.detach()), "peak_mib": peak.bytes / 2**20, "times": []}
    del g
for _ in range(3):  # interleaved
    for name, fn in impls.items():
        t0 = time.perf_counter()
        step(fn)
        out[name]["times"].append(time.perf_counter() - t0)
for v in out.values():
    v["median_s"] = statistics.median(v["times"])
out["ratio"] = {"memory": out["softmaxlab"]["peak_mib"] / out["unpatched"]["peak_mib"],
                "time": out["softmaxlab"]["median_s"] / out["unpatched"]["median_s"]}
print(json.dumps(out, indent=1))
