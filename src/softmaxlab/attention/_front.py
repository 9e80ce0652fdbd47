"""The attention front end: argument checks (each error names the argument and its value)
and the canonical layout every attention path computes in.

Canonical layout (``B`` = the broadcast batch dims flattened, ``Hk`` key/value heads, ``G``
query heads per key/value head, ``L`` queries, ``S`` keys):

* ``q`` ``(B, Hk, G*L, E)``: row ``g*L + l`` is query ``l`` of query head ``hk*G + g``
  (torch's GQA: query head ``h`` reads key/value head ``h // G``);
* ``k`` ``(B, Hk, S, E)``, ``v`` ``(B, Hk, S, Ev)``;
* ``mask`` ``None`` or 5-D ``(Bm, Hm, Gm, Lm, Sm)``, each size 1 or the full one (a view of
  the user's mask wherever possible: no ``(L, S)`` copy per head), bool (True = keep) or
  additive float (``-inf`` = excluded);
* ``sink`` (softmax1) ``None`` or ``(Bs, Hs, Gs)``, each size 1 or full.
"""

from __future__ import annotations

import math
import numbers
from dataclasses import dataclass
from typing import Any

import torch

from .._constants import LOW_PRECISION
from .._validation import check_bool, check_input
from .normalizers import BoundNormalizer, get_normalizer


@dataclass
class Call:
    """One attention call in the canonical layout (see the module docstring)."""

    q: torch.Tensor
    k: torch.Tensor
    v: torch.Tensor
    mask: torch.Tensor | None
    sink: torch.Tensor | None
    causal: bool
    L: int
    G: int
    scale: float
    dropout_p: float
    norm: BoundNormalizer
    out_shape: tuple[int, ...]
    dtype: torch.dtype
    params: dict[str, Any]

    @property
    def S(self) -> int:
        return self.k.shape[-2]

    def user_layout(self, t: torch.Tensor) -> torch.Tensor:
        """A canonical ``(B, Hk, G*L, X)`` result in the user's layout and dtype."""
        t = t.reshape(self.out_shape[:-1] + t.shape[-1:])
        return t if t.dtype == self.dtype else t.to(self.dtype)

    def user_rows(self, t: torch.Tensor) -> torch.Tensor:
        """A canonical per-row ``(B, Hk, G*L)`` tensor as ``(*batch, Hq, L)``."""
        return t.reshape(self.out_shape[:-1])


def _check_real(name: str, value: Any) -> float:
    if isinstance(value, bool) or not isinstance(value, numbers.Real):
        raise TypeError(f"{name} must be a real number, got {value!r} ({type(value).__name__})")
    return float(value)


def check_arguments(query, key, value, attn_mask, dropout_p, is_causal, scale, enable_gqa):
    """Types and ranges of torch's SDPA arguments; returns ``(dropout_p, scale)`` as floats
    (``scale`` ``None`` stays ``None``)."""
    for name, t in (("query", query), ("key", key), ("value", value)):
        check_input(t, name)
        if t.dim() < 2:
            raise ValueError(f"{name} must have at least 2 dims (..., length, features), "
                             f"got shape {tuple(t.shape)}")
    if not (query.dtype == key.dtype == value.dtype):
        raise TypeError(f"query, key and value must have one dtype, got {query.dtype}, "
                        f"{key.dtype} and {value.dtype}")
    if not (query.device == key.device == value.device):
        raise ValueError(f"query, key and value must be on one device, got {query.device}, "
                         f"{key.device} and {value.device}")
    if attn_mask is not None:
        if not isinstance(attn_mask, torch.Tensor):
            raise TypeError(f"attn_mask must be a tensor or None, got {type(attn_mask).__name__}")
        if attn_mask.dtype != torch.bool and not attn_mask.is_floating_point():
            raise TypeError(f"attn_mask must be bool (True = attend) or floating (added to the "
                            f"scores), got dtype {attn_mask.dtype}")
    p = _check_real("dropout_p", dropout_p)
    if not 0.0 <= p < 1.0:
        raise ValueError(f"dropout_p must be in [0, 1), got {dropout_p!r}")
    check_bool("is_causal", is_causal)
    check_bool("enable_gqa", enable_gqa)
    if scale is not None:
        s = _check_real("scale", scale)
        if not math.isfinite(s):
            raise ValueError(f"scale must be finite or None, got {scale!r}")
        scale = s
    return p, scale


def _heads(t: torch.Tensor) -> torch.Tensor:
    return t if t.dim() >= 3 else t.unsqueeze(0)


def prepare(query, key, value, attn_mask, dropout_p, is_causal, scale, enable_gqa,
            mapping, params: dict[str, Any]) -> Call:
    """Check every argument and build the canonical :class:`Call`."""
    p, scale = check_arguments(query, key, value, attn_mask, dropout_p, is_causal, scale,
                               enable_gqa)
    norm_record = get_normalizer(mapping)
    params = norm_record.validate(params)
    E, S = query.shape[-1], key.shape[-2]
    if key.shape[-1] != E:
        raise ValueError(f"key must have the query's feature size {E} in its last dim, got "
                         f"key of shape {tuple(key.shape)}")
    if value.shape[-2] != S:
        raise ValueError(f"value must have as many rows as key ({S}) in dim -2, got value of "
                         f"shape {tuple(value.shape)}")
    if isinstance(params.get("k"), int) and params["k"] > S:
        raise ValueError(f"k must be <= the number of keys ({S}), got k={params['k']}")
    q, k, v = _heads(query), _heads(key), _heads(value)
    Hq, L = q.shape[-3], q.shape[-2]
    Hk = k.shape[-3]
    if v.shape[-3] != Hk:
        raise ValueError(f"key and value must have the same number of heads, got "
                         f"{Hk} and {v.shape[-3]}")
    if Hq != Hk:
        if Hq % Hk or not (enable_gqa or Hk == 1):
            raise ValueError(
                f"query has {Hq} heads and key/value {Hk}: they must be equal, or (with "
                f"enable_gqa=True) {Hk} must divide {Hq}")
    G = Hq // Hk
    try:
        batch = torch.broadcast_shapes(q.shape[:-3], k.shape[:-3], v.shape[:-3])
    except RuntimeError:
        raise ValueError(f"the batch dims of query {tuple(query.shape)}, key "
                         f"{tuple(key.shape)} and value {tuple(value.shape)} do not "
                         "broadcast") from None
    B = math.prod(batch)
    dtype = query.dtype
    cdt = torch.float32 if dtype in LOW_PRECISION else dtype

    def canon(t: torch.Tensor, heads: int, rows: int) -> torch.Tensor:
        if t.shape[:-3] != batch:
            t = t.expand(*batch, *t.shape[-3:])
        return t.reshape(B, heads, rows, t.shape[-1]).to(cdt)

    qc = canon(q, Hk, G * L)
    kc, vc = canon(k, Hk, S), canon(v, Hk, S)
    full = (*batch, Hq, L, S)
    mask = None if attn_mask is None else _canon_mask(attn_mask, full, batch, Hk, G, cdt)
    sink = None
    if norm_record.name == "softmax1":
        sink = _canon_sink(params["sink"], batch, Hq, Hk, G, cdt, q.device)
    norm = norm_record.bind({k_: v_ for k_, v_ in params.items() if k_ != "sink"}, n_keys=S)
    scale = 1.0 / math.sqrt(E) if scale is None else scale
    if max(query.dim(), key.dim(), value.dim()) >= 3:
        out_shape: tuple[int, ...] = (*batch, Hq, L, value.shape[-1])
    else:
        out_shape = (L, value.shape[-1])
    return Call(qc, kc, vc, mask, sink, bool(is_causal), L, G, scale, p, norm, out_shape,
                dtype, params)


def _canon_mask(mask: torch.Tensor, full: tuple[int, ...], batch, Hk: int, G: int,
                cdt: torch.dtype) -> torch.Tensor:
    try:
        ok = torch.broadcast_shapes(mask.shape, full) == torch.Size(full)
    except RuntimeError:
        ok = False
    if not ok:
        raise ValueError(f"attn_mask of shape {tuple(mask.shape)} does not broadcast to the "
                         f"scores' shape {full}")
    m = mask if mask.dtype == torch.bool else mask.to(cdt)
    m = m.reshape((1,) * (len(full) - m.dim()) + tuple(m.shape))
    nb = len(batch)
    mb = m.shape[:nb]
    if all(s == 1 for s in mb):
        m = m.reshape(1, *m.shape[nb:])
    else:
        m = m.expand(*batch, *m.shape[nb:]).reshape(-1, *m.shape[nb:])
    Hm, Lm, Sm = m.shape[1:]
    if Hm == 1:
        return m.reshape(m.shape[0], 1, 1, Lm, Sm)
    return m.reshape(m.shape[0], Hk, G, Lm, Sm)


def _canon_sink(sink: Any, batch, Hq: int, Hk: int, G: int, cdt: torch.dtype,
                device: torch.device) -> torch.Tensor:
    """softmax1's sink as ``(Bs, Hs, Gs)`` (each 1 or full)."""
    if not isinstance(sink, torch.Tensor):
        return torch.full((1, 1, 1), float(sink), dtype=cdt, device=device)
    full = (*batch, Hq)
    try:
        ok = torch.broadcast_shapes(sink.shape, full) == torch.Size(full)
    except RuntimeError:
        ok = False
    if not ok:
        raise ValueError(f"sink of shape {tuple(sink.shape)} does not broadcast to the query's "
                         f"batch and head dims {full}")
    s = sink.to(device=device, dtype=cdt)
    s = s.reshape((1,) * (len(full) - s.dim()) + tuple(s.shape))
    nb = len(batch)
    if all(d == 1 for d in s.shape[:nb]):
        s = s.reshape(1, s.shape[-1])
    else:
        s = s.expand(*batch, s.shape[-1]).reshape(-1, s.shape[-1])
    if s.shape[-1] == 1:
        return s.reshape(s.shape[0], 1, 1)
    return s.reshape(s.shape[0], Hk, G)
