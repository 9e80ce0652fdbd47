"""The cases of the vocabulary-parallel tests, their inputs and their single-process results.

A case is one loss call: a kind (``ce``, ``fy``, ``linear``, ``topk``), a mapping with one
parameter setting (iterated from the registry), an option set (weights, ignore_index, label
smoothing, reduction, every row ignored, a 3-D batch) and a vocabulary split per world size
(odd ones, an empty shard among them). The spawned ranks (``_worker.py``) and the test
process build the same float64 inputs from the case; the test compares the ranks' losses and
gradients with the single-process loss of the whole vocabulary.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import torch

import softmaxlab as sl
from softmaxlab import losses as L
from softmaxlab.losses.fenchel_young import fenchel_young_names

from .._helpers import gen, settings

F64 = torch.float64
IGNORE = -100

#: option sets: reduction, class weights, label smoothing, some rows ignored, every row
#: ignored, a (2, 3, V) batch with the vocabulary last
OPTIONS: dict[str, dict[str, Any]] = {
    "mean": {"reduction": "mean"},
    "weighted-smooth-ignore": {"reduction": "mean", "weight": True, "label_smoothing": 0.1,
                               "ignore": True},
    "sum-smooth": {"reduction": "sum", "label_smoothing": 0.25, "ignore": True},
    "none-weighted-3d": {"reduction": "none", "weight": True, "ignore": True, "batch": (2, 3)},
    "all-ignored": {"reduction": "mean", "weight": True, "label_smoothing": 0.1,
                    "all_ignored": True},
}

#: vocabulary splits by world size: uneven, and with an empty shard
SPLITS = {
    "odd": {2: (4, 7), 3: (5, 2, 4)},
    "empty": {2: (11, 0), 3: (7, 0, 4)},
}
VOCAB = 11


@dataclass(frozen=True)
class Case:
    kind: str  # ce | fy | linear | topk
    mapping: str
    params: tuple[tuple[str, Any], ...] = ()
    options: str = "mean"
    split: str = "odd"
    extra: tuple[tuple[str, Any], ...] = field(default=())

    @property
    def id(self) -> str:
        p = ",".join(f"{k}={v}" for k, v in self.params)
        x = ",".join(f"{k}={v}" for k, v in self.extra)
        return "-".join(s for s in (self.kind, self.mapping, p, self.options, self.split, x) if s)

    @property
    def opts(self) -> dict[str, Any]:
        return OPTIONS[self.options]

    def sizes(self, world: int) -> tuple[int, ...]:
        return SPLITS[self.split][world]

    @property
    def kw(self) -> dict[str, Any]:
        return dict(self.params)

    @property
    def x(self) -> dict[str, Any]:
        return dict(self.extra)


def _log_mappings():
    return [m for m in sl.mappings() if m.log_fn is not None and m.normalized]


def ce_cases() -> list[Case]:
    """Every mapping with a log form x its settings x every option set."""
    out = []
    for m in _log_mappings():
        for s in settings(m):
            for o in OPTIONS:
                out.append(Case("ce", m.name, s, o, "empty" if o == "mean" else "odd"))
    return out


def fy_cases() -> list[Case]:
    """Every Fenchel-Young mapping x its alpha settings x every option set, plus wide
    supports (many Newton steps) and ties at the threshold."""
    out = []
    for name in fenchel_young_names():
        m = sl.get_mapping(name)
        alphas = [s for s in settings(m) if not s or s[0][0] == "alpha"]
        for s in alphas:
            for o in OPTIONS:
                out.append(Case("fy", name, s, o, "empty" if o == "mean" else "odd"))
    for name in ("sparsemax", "entmax15"):
        out.append(Case("fy", name, (), "mean", "odd", (("data", "wide"),)))
        out.append(Case("fy", name, (), "mean", "odd", (("data", "ties"),)))
    return out


def linear_cases() -> list[Case]:
    out = []
    for name, s in (("softmax", ()), ("softmax", (("temperature", 0.5),)),
                    ("taylor_softmax", ()), ("sigsoftmax", ())):
        for o in ("mean", "weighted-smooth-ignore", "none-weighted-3d", "all-ignored"):
            out.append(Case("linear", name, s, o, "odd", (("bias", o != "mean"),)))
    out.append(Case("linear", "softmax", (), "sum-smooth", "empty",
                    (("bias", True), ("reduce_hidden_grad", False))))
    return out


def topk_cases() -> list[Case]:
    return [Case("topk", "softmax", (), "mean", "odd", (("k", 3),)),
            Case("topk", "softmax", (), "mean", "empty", (("k", 5),)),
            Case("topk", "softmax", (), "none-weighted-3d", "odd", (("k", 11),))]


def dtensor_cases() -> list[Case]:
    """The same losses with DTensor inputs (torch.chunk's split of the vocabulary)."""
    return [Case("ce", "softmax", (), "weighted-smooth-ignore", "dtensor"),
            Case("ce", "taylor_softmax", (), "none-weighted-3d", "dtensor"),
            Case("fy", "entmax15", (), "sum-smooth", "dtensor"),
            Case("linear", "softmax", (), "weighted-smooth-ignore", "dtensor",
                 (("bias", True),)),
            Case("topk", "softmax", (), "mean", "dtensor", (("k", 4),))]


CASES: list[Case] = ce_cases() + fy_cases() + linear_cases() + topk_cases() + dtensor_cases()


def dtensor_sizes(world: int, vocab: int = VOCAB) -> tuple[int, ...]:
    """torch.chunk's split (DTensor's Shard placement)."""
    return tuple(c.numel() for c in torch.arange(vocab).chunk(world)) + (0,) * (
        world - len(torch.arange(vocab).chunk(world)))


def sizes(case: Case, world: int) -> tuple[int, ...]:
    return dtensor_sizes(world) if case.split == "dtensor" else case.sizes(world)


# ------------------------------------------------------------------ inputs
HIDDEN = 4


def inputs(case: Case) -> dict[str, Any]:
    """Float64 inputs of the whole vocabulary (the same in every process)."""
    g = gen("distributed", case.id)
    o = case.opts
    batch = o.get("batch", (7,))
    n = torch.Size(batch).numel()
    t = torch.randint(0, VOCAB, batch, generator=g)
    if o.get("ignore"):
        flat = t.reshape(-1)
        flat[::3] = IGNORE
    if o.get("all_ignored"):
        t = torch.full(batch, IGNORE)
    out: dict[str, Any] = {"target": t}
    if o.get("weight"):
        out["weight"] = torch.rand(VOCAB, generator=g, dtype=F64) + 0.5
    if case.kind == "linear":
        out["hidden"] = torch.randn(*batch, HIDDEN, generator=g, dtype=F64)
        out["proj"] = torch.randn(VOCAB, HIDDEN, generator=g, dtype=F64)
        if case.x.get("bias"):
            out["bias"] = torch.randn(VOCAB, generator=g, dtype=F64)
    else:
        data = case.x.get("data")
        if data == "wide":  # near-uniform rows: supports of most of the vocabulary
            z = torch.randn(n, 300, generator=g, dtype=F64) * 0.002
            out["target"] = torch.randint(0, 300, (n,), generator=g)
        elif data == "ties":  # repeated values, entries exactly at sparsemax's threshold
            z = torch.tensor([[1.0, 1.0, 0.0, 0.0, -1.0, 0.5, 0.5, 1.0, -3.0, 0.0, 1.0]] * n,
                             dtype=F64)
            z[1] = torch.tensor([2.0, 1.0, 1.0, 0.0, 0.0, 0.0, 0.0, 2.0, 1.0, 1.0, 0.0])
        else:
            z = torch.randn(*batch, VOCAB, generator=g, dtype=F64) * 2
        out["logits"] = z
    return out


def vocab(case: Case) -> int:
    return 300 if case.x.get("data") == "wide" else VOCAB


def split_sizes(case: Case, world: int) -> tuple[int, ...]:
    """The vocabulary sizes of the ranks (the wide data scales the odd split)."""
    s = sizes(case, world)
    if vocab(case) != VOCAB:
        v = vocab(case)
        s = tuple(v * x // VOCAB for x in s[:-1])
        s = (*s, v - sum(s))
    return s


def loss_kwargs(case: Case, inp: dict[str, Any]) -> dict[str, Any]:
    o = case.opts
    kw: dict[str, Any] = {"reduction": o["reduction"], "ignore_index": IGNORE, **case.kw}
    if o.get("label_smoothing"):
        kw["label_smoothing"] = o["label_smoothing"]
    if "weight" in inp:
        kw["class_weight" if case.kind == "linear" else "weight"] = inp["weight"]
    if case.kind == "linear" and "reduce_hidden_grad" in case.x:
        kw["reduce_hidden_grad"] = case.x["reduce_hidden_grad"]
    return kw


def upstream(out: torch.Tensor, case: Case) -> torch.Tensor:
    """The gradient that flows into the loss (random per row for ``reduction='none'``)."""
    if out.dim() == 0:
        return torch.tensor(0.7, dtype=out.dtype)
    return torch.randn(out.shape, generator=gen("upstream", case.id), dtype=out.dtype)


# ------------------------------------------------------------------ single process
def single(case: Case) -> dict[str, torch.Tensor]:
    """The single-process loss and gradients of the whole vocabulary."""
    inp = inputs(case)
    kw = loss_kwargs(case, inp)
    kw.pop("reduce_hidden_grad", None)
    t = inp["target"]
    if case.kind == "linear":
        h = inp["hidden"].clone().requires_grad_()
        w = inp["proj"].clone().requires_grad_()
        b = inp["bias"].clone().requires_grad_() if "bias" in inp else None
        out = L.linear_cross_entropy(h, w, t, bias=b, mapping=case.mapping, chunk_size=3, **kw)
        (out * upstream(out, case)).sum().backward()
        grads = {"hidden": h.grad, "proj": w.grad}
        if b is not None:
            grads["bias"] = b.grad
        return {"loss": out.detach(), **grads}
    z = inp["logits"].clone().requires_grad_()
    if case.kind == "topk":
        p, idx = sl.softmax_topk(z, case.x["k"])
        (p * upstream(p, case)).sum().backward()
        return {"loss": p.detach(), "index": idx, "logits": z.grad}
    rows = z.reshape(-1, z.shape[-1])
    fn = L.cross_entropy if case.kind == "ce" else L.fenchel_young_loss
    out = fn(rows, t.reshape(-1), mapping=case.mapping, **kw)
    if kw["reduction"] == "none":
        out = out.reshape(t.shape)
    (out * upstream(out, case)).sum().backward()
    return {"loss": out.detach(), "logits": z.grad}
