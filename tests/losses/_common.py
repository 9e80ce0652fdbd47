"""Shared inputs of the loss tests: batches in torch's layout (``C``, ``NC``, ``NCd...``) with
ignored targets, class weights, upstream gradients, the option grid of the row losses and the
linear cross-entropy inputs."""

from __future__ import annotations

import torch

from .._helpers import gen

F64 = torch.float64
REDUCTIONS = ("none", "mean", "sum")
LOW_DTYPES = (torch.float16, torch.bfloat16)


def upstream(out: torch.Tensor, g: torch.Generator) -> torch.Tensor:
    """A random upstream gradient (per row for reduction='none', a scalar otherwise)."""
    if out.dim() == 0:
        return torch.tensor(0.7, dtype=out.dtype)
    return torch.randn(out.shape, generator=g, dtype=F64).to(out.dtype)


def grad_of(fn, *inputs, up=None):
    """Value of fn(*inputs) and the gradients of sum(up * value) w.r.t. each input."""
    leaves = [x.detach().clone().requires_grad_(True) for x in inputs]
    out = fn(*leaves)
    u = up if up is not None else torch.ones_like(out)
    (out * u).sum().backward()
    return out.detach(), [x.grad if x.grad is not None else torch.zeros_like(x) for x in leaves]


# ------------------------------------------------------------------ batches in torch's layout
LAYOUTS = {"C": (5,), "NC": (7, 5), "NCdd": (3, 5, 2, 3)}


def make_batch(layout: str, ignore: str, *key):
    """Float64 logits, targets (some ignored per ``ignore``) and the ignore_index."""
    g = gen("batch", layout, ignore, *key)
    shape = LAYOUTS[layout]
    c = shape[0] if len(shape) == 1 else shape[1]
    x = torch.randn(shape, generator=g, dtype=F64) * 2
    tshape = () if len(shape) == 1 else shape[:1] + shape[2:]
    t = torch.randint(0, c, tshape, generator=g)
    ii = -100
    if ignore == "custom2":
        ii = 2  # a valid class id used as ignore_index
    if ignore in ("neg100", "custom2"):
        if t.dim() == 0:
            t = torch.tensor(ii)
        else:
            flat = t.reshape(-1)
            flat[flat == 2] = 1
            idx = torch.randperm(flat.numel(), generator=g)[: max(1, flat.numel() // 3)]
            flat[idx] = ii
            assert (flat != ii).any() and (flat == ii).any()
    return x, t, ii, c


def class_weight(c, *key):
    return torch.rand(c, generator=gen("w", c, *key), dtype=F64) + 0.5


def rows_to_layout(rows: torch.Tensor, shape) -> torch.Tensor:
    """Inverse of R.to_rows for a gradient ``(M, C)``."""
    if len(shape) == 1:
        return rows[0]
    moved = (shape[0], *shape[2:], shape[1])
    return rows.reshape(moved).movedim(-1, 1)


CE_CONFIGS = [  # (weighted, ignore, label_smoothing, reduction)
    (False, "none", 0.0, "mean"),
    (True, "neg100", 0.1, "mean"),
    (True, "custom2", 0.3, "sum"),
    (False, "neg100", 1.0, "none"),
    (True, "custom2", 0.0, "none"),
]


def _mid_ids(v):
    if isinstance(v, tuple) and len(v) == 2 and isinstance(v[1], dict):
        return v[0] + "".join(f"-{k}={x}" for k, x in v[1].items())
    return None


# ------------------------------------------------------------------ linear_cross_entropy inputs
N_L, V_L, D_L = 37, 23, 6


def lce_inputs(*key, dtype=F64, batch=(N_L,)):
    g = gen("lce", *key)
    h = torch.randn(*batch, D_L, generator=g, dtype=F64)
    w = torch.randn(V_L, D_L, generator=g, dtype=F64) * 0.6
    b = torch.randn(V_L, generator=g, dtype=F64)
    t = torch.randint(0, V_L, batch, generator=g)
    return h.to(dtype), w.to(dtype), b.to(dtype), t
