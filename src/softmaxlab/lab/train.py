"""One lab run: train a model with one head and one seed, then measure it.

:func:`run` is what every executor calls. It is deterministic for a given seed (seeded
initialisation and data order, one intra-op thread) and never raises for a failing mapping:
a diverged loss or any error is returned as ``status: "failed"`` with the reason.

Metrics (on the test split; ``None`` where undefined):

* ``accuracy`` (top-1), ``nll`` and, for language models, ``perplexity = exp(nll)``: NLL
  needs the log form of the mapping (none for the sparse maps and one-vs-all sigmoids).
* recommendation: ``hr@10`` and ``ndcg@10``; the rank of the target counts every other item
  with a probability >= its own (ties count against the target).
* ``ece`` (15 bins) before and, with the temperature fitted on validation
  (``softmaxlab.calibration.fit_temperature``, mappings with a log form), after temperature
  scaling (``ece_ts``, ``temperature``); ``brier``; ``support`` (mean number of non-zero
  probabilities); for models with attention, ``attention_support`` (mean number of keys
  with non-zero weight per query, over layers and heads).
* cost: ``train_time`` (seconds inside the training steps: forward, loss, backward,
  optimizer step), ``train_time_per_epoch`` (the median over epochs of those seconds),
  ``wall_time`` (the whole run: data, evaluation, calibration included),
  ``inference_time_per_example`` (forward pass and mapping on up to :data:`INFER_BATCHES`
  test batches, the median of :data:`INFER_REPEATS` timed passes), ``peak_memory_mb`` (the
  memory one training step needs: the parameters plus the peak of the tensors allocated
  during a step from a fresh optimizer, i.e. activations, gradients, Adam's state and the
  mapping's own tensors; CPU: counted per tensor by
  :class:`softmaxlab.bench.memory.TensorPeak`, CUDA: the allocator's peak).

Costs are measured fairly: before anything is timed, each run takes one untimed warm-up
step (forward, loss, backward, optimizer step, then an evaluation forward) on a copy of its
model, with the random state saved and restored, so that one-time costs (lazy
initialisation, a kernel's first call: compiling or loading it) are paid there and not by
whichever run comes first in a worker process; the memory of that step is the one
reported, a quantity that does not depend on what ran before in the process.
"""

from __future__ import annotations

import contextlib
import copy
import functools
import math
import statistics
import time
from dataclasses import asdict, dataclass

import torch

from .. import calibration as cal
from ..bench.memory import TensorPeak
from .heads import Head, get_head, parse_attention
from .models import build_model

__all__ = ["RunConfig", "run", "TASK_METRICS"]

#: The metrics recorded for each task; the first one ranks the mappings.
TASK_METRICS = {
    task: (*quality, "ece", "ece_ts", "temperature", "brier", "support",
           *(("attention_support",) if task == "language_model" else ()),
           "train_time_per_epoch", "inference_time_per_example", "peak_memory_mb")
    for task, quality in (("classification", ("accuracy", "nll")),
                          ("language_model", ("perplexity", "accuracy", "nll")),
                          ("recommendation", ("hr@10", "ndcg@10", "nll")))
}
#: Validation rows used to fit the temperature are capped so that rows x classes stays
#: under this many logits (all rows for small vocabularies).
FIT_LOGITS = 20_000_000
N_BINS = 15
TOP_K = 10
#: Output rows per evaluation batch (a language model's window gives one per token).
EVAL_ROWS = 1024
#: Inference time: this many evaluation batches, timed this many times.
INFER_BATCHES, INFER_REPEATS = 4, 5


@dataclass(frozen=True)
class RunConfig:
    """Everything besides the head and the seed that decides a run's numbers."""

    model: str
    #: ``None``: each run's mapping is its output head. A head name (``--attention``): each
    #: run's mapping is the model's attention mapping, and every run's output head is this.
    head: str | None = None
    epochs: int = 60
    lr: float = 3e-3
    batch_size: int = 64
    bptt: int = 35
    device: str = "cpu"

    def as_dict(self) -> dict:
        return asdict(self)


class Diverged(RuntimeError):
    """The training loss stopped being finite."""


# --------------------------------------------------------------------------- data


def examples(dataset, split: str, bptt: int) -> tuple[torch.Tensor, torch.Tensor]:
    """(inputs, targets) with one example per row. A language model's token stream is cut
    into non-overlapping windows of ``bptt`` tokens; its targets are the next tokens."""
    s = getattr(dataset, split)
    if dataset.task != "language_model":
        return s.x, s.y
    t = min(bptt, len(s.x) - 1)
    if t < 1:
        raise ValueError(f"dataset {dataset.name!r}: the {split} split has {len(s.x)} tokens, "
                         "too few for next-token prediction")
    n = (len(s.x) - 1) // t
    return s.x[:n * t].view(n, t), s.x[1:n * t + 1].view(n, t)


def batches(inputs, targets, batch_size: int, generator: torch.Generator | None = None):
    """Mini-batches ``(inputs, flat targets)``, shuffled when a generator is given."""
    n = len(inputs)
    order = torch.randperm(n, generator=generator) if generator is not None else None
    for i in range(0, n, batch_size):
        idx = order[i:i + batch_size] if order is not None else slice(i, i + batch_size)
        yield inputs[idx], targets[idx].reshape(-1)


# --------------------------------------------------------------------------- measuring


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def warm_up_step(model, head: Head, dataset, cfg: RunConfig, device: torch.device) -> float:
    """One untimed training step and one evaluation forward on a copy of ``model`` (the
    random state saved and restored: the run's numbers do not change); returns the memory
    of the step in MiB: parameters plus the peak of the tensors allocated during it."""
    x, y = examples(dataset, "train", cfg.bptt)
    xb, yb = next(batches(x, y, cfg.batch_size))
    xb, yb = xb.to(device), yb.to(device)
    devices = [device] if device.type == "cuda" else []
    with torch.random.fork_rng(devices=devices):
        twin = copy.deepcopy(model)
        params = sum(p.numel() * p.element_size() for p in twin.parameters())
        opt = torch.optim.Adam(twin.parameters(), lr=cfg.lr)
        if device.type == "cuda":
            torch.cuda.synchronize(device)
            base = torch.cuda.memory_allocated(device)
            torch.cuda.reset_peak_memory_stats(device)
            peak = contextlib.nullcontext()
        else:
            peak = TensorPeak()
        with peak:
            opt.zero_grad(set_to_none=True)
            head.loss(twin(xb), yb).backward()
            opt.step()
        if device.type == "cuda":
            torch.cuda.synchronize(device)
            step_bytes = torch.cuda.max_memory_allocated(device) - base
        else:
            step_bytes = peak.bytes
        with torch.no_grad():
            twin.eval()
            head.probs(twin(xb))
        del twin, opt
    return (params + max(step_bytes, 0)) / 2**20


@contextlib.contextmanager
def single_thread():
    """One intra-op thread (deterministic and fair on a shared machine), restored after."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(before)


def _eval_batch(targets: torch.Tensor) -> int:
    return max(1, EVAL_ROWS // targets[0].numel())


@torch.no_grad()
def evaluate(model, head: Head, inputs, targets, device: torch.device,
             temperature: float | None = None, full: bool = True) -> dict:
    """Metrics of the module docstring, aggregated over batches; with a fitted
    ``temperature`` also ``ece_ts`` and the reliability data after scaling. ``full=False``
    (the per-epoch learning curves) computes accuracy, NLL/perplexity and HR/NDCG only."""
    model.eval()
    n = correct = 0
    sums = {"nll": 0.0, "brier": 0.0, "support": 0.0, "hr": 0.0, "ndcg": 0.0}
    attention = [0, 0] if full and hasattr(model, "attention_support") else None
    rel = {t: torch.zeros(3, N_BINS, dtype=torch.float64) for t in ("raw", "ts")}
    for x, y in batches(inputs, targets, _eval_batch(targets)):
        x, y = x.to(device), y.to(device)
        out = model(x)
        p = head.probs(out)
        n += len(y)
        correct += int((p.argmax(-1) == y).sum())
        if head.has_log:
            sums["nll"] -= float(head.log_probs(out).gather(1, y[:, None]).sum())
        py = p.gather(1, y[:, None])
        rank = (p >= py).sum(-1) - 1  # items other than the target at least as probable
        hit = rank < TOP_K
        sums["hr"] += float(hit.sum())
        sums["ndcg"] += float((hit / torch.log2(rank.double() + 2)).sum())
        if not full:
            continue
        sums["brier"] += float(cal.brier(p, y)) * len(y)
        sums["support"] += float((p > 0).sum())
        if attention is not None:
            keys, queries = model.attention_support(x)
            attention[0] += keys
            attention[1] += queries
        scaled = {"raw": p}
        if temperature is not None:
            scaled["ts"] = head.probs(out, temperature)
        for key, q in scaled.items():
            r = cal.reliability(q.float(), y, n_bins=N_BINS)
            c = r.counts.double().cpu()
            rel[key] += torch.stack([c, c * r.confidence.double().cpu(),
                                     c * r.accuracy.double().cpu()])
    model.train()
    nll = sums["nll"] / n if head.has_log else None
    metrics = {
        "accuracy": correct / n,
        "nll": nll,
        "perplexity": math.exp(min(nll, 700.0)) if nll is not None else None,
        "hr@10": sums["hr"] / n,
        "ndcg@10": sums["ndcg"] / n,
    }
    if not full:
        return metrics
    ece = {k: float((v[2] - v[1]).abs().sum() / n) for k, v in rel.items()}
    return {
        **metrics,
        "ece": ece["raw"],
        "ece_ts": ece["ts"] if temperature is not None else None,
        "brier": sums["brier"] / n,
        "support": sums["support"] / n,
        "attention_support": attention[0] / attention[1] if attention else None,
        "inference_time_per_example": inference_time(model, head, inputs, targets, device),
        "reliability": {k: {"counts": v[0].tolist(),
                            "confidence": (v[1] / v[0].clamp(min=1)).tolist(),
                            "accuracy": (v[2] / v[0].clamp(min=1)).tolist()}
                        for k, v in rel.items() if k == "raw" or temperature is not None},
    }


@torch.no_grad()
def inference_time(model, head: Head, inputs, targets, device: torch.device) -> float:
    """Seconds per example of the forward pass and the mapping: the first
    :data:`INFER_BATCHES` evaluation batches, timed :data:`INFER_REPEATS` times after one
    untimed pass; the median (a burst of load on a shared machine moves one repetition,
    not the result)."""
    model.eval()
    chunk = [(x.to(device), len(y)) for (x, y), _ in zip(
        batches(inputs, targets, _eval_batch(targets)), range(INFER_BATCHES), strict=False)]
    n = sum(k for _, k in chunk)
    times = []
    for rep in range(INFER_REPEATS + 1):
        _sync(device)
        t0 = time.perf_counter()
        for x, _ in chunk:
            head.probs(model(x))
        _sync(device)
        if rep:
            times.append(time.perf_counter() - t0)
    model.train()
    return statistics.median(times) / n


@torch.no_grad()
def fit_temperature(model, head: Head, inputs, targets, device: torch.device,
                    n_classes: int) -> float | None:
    """Temperature fitted on (at most ``FIT_LOGITS / n_classes``) validation rows, or
    ``None`` when the mapping has no log form."""
    if not head.has_log:
        return None
    model.eval()
    cap = max(1, FIT_LOGITS // n_classes)
    outs, ys = [], []
    for x, y in batches(inputs, targets, _eval_batch(targets)):
        outs.append(head.logits(model(x.to(device))))
        ys.append(y.to(device))
        if sum(len(o) for o in outs) >= cap:
            break
    model.train()
    logits, y = torch.cat(outs)[:cap], torch.cat(ys)[:cap]
    params = head.kwargs
    if "temperature" in params:  # softmax:temperature=T0 predicts softmax(z / (t * T0))
        logits = logits / params.pop("temperature")
    return cal.fit_temperature(logits, y, mapping=head.mapping, **params)


# --------------------------------------------------------------------------- one run


def _train(model, head: Head, dataset, cfg: RunConfig, seed: int, device: torch.device,
           on_epoch=None):
    """Train in place; returns (seconds inside the training steps of each epoch, learning
    curve). ``on_epoch(epoch, curve)`` is called after each epoch with the curve so far."""
    x, y = examples(dataset, "train", cfg.bptt)
    vx, vy = examples(dataset, "val", cfg.bptt)
    opt = torch.optim.Adam(model.parameters(), lr=cfg.lr)
    order = torch.Generator().manual_seed(seed)
    primary = TASK_METRICS[dataset.task][0]
    curve: dict[str, list] = {"train_loss": [], f"val_{primary}": []}
    epoch_times = []
    for epoch in range(1, cfg.epochs + 1):
        total, steps, step_time = 0.0, 0, 0.0
        for xb, yb in batches(x, y, cfg.batch_size, order):
            xb, yb = xb.to(device), yb.to(device)
            _sync(device)
            t0 = time.perf_counter()
            opt.zero_grad(set_to_none=True)
            loss = head.loss(model(xb), yb)
            loss.backward()
            opt.step()
            _sync(device)
            step_time += time.perf_counter() - t0
            value = loss.item()
            if not math.isfinite(value):
                raise Diverged(f"training loss is {value} at epoch {epoch}, step {steps + 1}")
            total, steps = total + value, steps + 1
        epoch_times.append(step_time)
        curve["train_loss"].append(total / steps)
        curve[f"val_{primary}"].append(evaluate(model, head, vx, vy, device, full=False)[primary])
        if on_epoch is not None:
            on_epoch(epoch, curve)
    return epoch_times, curve


@functools.cache
def warm_up() -> None:
    """Pay the process's one-time costs (the first optimizer imports ``torch._dynamo``,
    about a second) before any run is timed."""
    torch.optim.Adam([torch.zeros(1, requires_grad=True)])


def run(dataset, head_name: str, seed: int, cfg: RunConfig, on_epoch=None) -> dict:
    """Train and measure ``head_name`` with ``seed``: one results.jsonl record.
    ``on_epoch(epoch, curve)`` is called after each training epoch (progress; ``curve``:
    the training loss and the validation metric of each epoch so far)."""
    warm_up()
    record = {"mapping": head_name, "seed": seed}
    start = time.perf_counter()
    try:
        attention = None
        if cfg.head is not None:  # head_name names the attention
            attention = parse_attention(head_name)[0][1:]
            head_name = cfg.head
        head = get_head(head_name)
        if head.skip:
            raise ValueError(f"{head_name} cannot train a classifier: {head.skip}")
        device = torch.device(cfg.device)
        with single_thread():
            torch.manual_seed(seed)
            model = build_model(cfg.model, dataset, head.cosine, attention).to(device)
            peak = warm_up_step(model, head, dataset, cfg, device)
            epoch_times, curve = _train(model, head, dataset, cfg, seed, device, on_epoch)
            vx, vy = examples(dataset, "val", cfg.bptt)
            t = fit_temperature(model, head, vx, vy, device, dataset.n_classes)
            tx, ty = examples(dataset, "test", cfg.bptt)
            metrics = evaluate(model, head, tx, ty, device, t)
            reliability = metrics.pop("reliability")
    except Exception as e:  # noqa: BLE001 - a failing mapping is a result, not a crash
        return {**record, "status": "failed", "reason": f"{type(e).__name__}: {e}"}
    wall = time.perf_counter() - start
    metrics.update(temperature=t, train_time_per_epoch=statistics.median(epoch_times),
                   peak_memory_mb=peak)
    metrics = {k: metrics[k] for k in TASK_METRICS[dataset.task]}
    metrics.update(train_time=sum(epoch_times), wall_time=wall)
    return {**record, "status": "ok", "metrics": metrics, "curve": curve,
            "reliability": reliability}
