"""An independent naive attention oracle: materialize every score in the input's dtype,
normalize each row with the mapping oracle of ``references.py``, multiply with the values.

Written from torch's documented semantics of ``F.scaled_dot_product_attention`` (its
"equivalent" Python), not from the library: GQA by ``repeat_interleave`` of key and value,
``is_causal`` as ``tril`` (top-left), a bool mask's False and a float mask's ``-inf`` as
excluded, dropout as a given keep mask scaled by ``1 / (1 - p)``.
"""

from __future__ import annotations

import math

import torch

from .references import REFERENCES

NEG_INF = float("-inf")


def _rows(name: str, s: torch.Tensor, params: dict, sink):
    if name == "sigmoid":
        bias = params.get("bias", 0.0)
        if bias == "-log n":
            bias = -math.log(s.shape[-1])
        return torch.sigmoid(s + bias)
    if name == "softmax1":
        # a sink logit appended to every row, its probability dropped
        col = torch.as_tensor(sink, dtype=s.dtype, device=s.device).expand(*s.shape[:-1], 1)
        return REFERENCES["softmax"](torch.cat([s, col], -1))[..., :-1]
    kw = {k: v for k, v in params.items() if k != "n_iter"}
    return REFERENCES[name](s, **kw)


def attention(query, key, value, attn_mask=None, is_causal=False, scale=None, enable_gqa=False, *,
              mapping="softmax", keep=None, dropout_p=0.0, sink=0.0, **params):
    """``(out, p)``: the output ``(..., Hq, L, Ev)`` and the probabilities ``(..., Hq, L,
    S)`` (before dropout). ``sink``: a number or a tensor ``(..., Hq)`` (softmax1)."""
    q, k, v = query, key, value
    L, S = q.shape[-2], k.shape[-2]
    if enable_gqa or (q.dim() >= 3 and k.shape[-3] != q.shape[-3]):
        g = q.shape[-3] // k.shape[-3]
        k = k.repeat_interleave(g, -3)
        v = v.repeat_interleave(g, -3)
    scale = 1 / math.sqrt(q.shape[-1]) if scale is None else scale
    s = (q @ k.transpose(-2, -1)) * scale
    if attn_mask is not None:
        s = s.masked_fill(~attn_mask, NEG_INF) if attn_mask.dtype == torch.bool \
            else s + attn_mask.to(s.dtype)
    if is_causal:
        s = s.masked_fill(~torch.ones(L, S, dtype=torch.bool, device=s.device).tril(), NEG_INF)
    if isinstance(sink, torch.Tensor):
        sink = sink.to(s.dtype)[..., None, None].expand(*s.shape[:-1], 1)
    p = _rows(mapping, s, params, sink)
    pd = p if keep is None else p * keep / (1 - dropout_p)
    return pd @ v, p
