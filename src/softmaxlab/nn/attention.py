r"""``MultiheadAttention``: ``torch.nn.MultiheadAttention`` with any attention normalizer.

.. math:: \mathrm{head}_h = \mathrm{mapping}\Big(\frac{(x_q W^Q_h + b^Q_h)
          (x_k W^K_h + b^K_h)^\top}{\sqrt{d_h}} + \mathrm{mask}\Big)(x_v W^V_h + b^V_h),
          \qquad \mathrm{out} = [\mathrm{head}_1, \dots, \mathrm{head}_H]\, W^O + b^O

A subclass of torch's module: the same constructor arguments, parameters (names, shapes,
initialization; a torch ``state_dict`` loads), forward signature, mask conventions (in
``key_padding_mask`` and a bool ``attn_mask`` ``True`` means *excluded*, a float
``attn_mask`` is added) and returns, plus ``mapping=`` (any name of
:func:`softmaxlab.attention.normalizer_names`) and its parameters. The attention itself is
:func:`softmaxlab.attention.scaled_dot_product_attention` (with ``need_weights=True``, which
needs the weights, the materializing reference).
"""

from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from ..attention import scaled_dot_product_attention
from ..attention._front import prepare
from ..attention.normalizers import get_normalizer
from ..attention.reference import scores, sink_rows

__all__ = ["MultiheadAttention"]


def _keep_or_bias(mask: torch.Tensor | None, name: str, dtype: torch.dtype):
    """torch's mask convention (bool: ``True`` = excluded; float: added) as the SDPA one:
    a bool *keep* mask, or an additive float mask in ``dtype``."""
    if mask is None:
        return None
    if not isinstance(mask, torch.Tensor):
        raise TypeError(f"{name} must be a tensor or None, got {type(mask).__name__}")
    if mask.dtype == torch.bool:
        return ~mask
    if not mask.is_floating_point():
        raise TypeError(f"{name} must be bool (True = excluded) or floating (added to the "
                        f"scores), got dtype {mask.dtype}")
    return mask.to(dtype)


def _combine(a: torch.Tensor | None, b: torch.Tensor | None, dtype: torch.dtype):
    """Two SDPA masks as one (bool and bool: both keep; else the sum of the additive forms)."""
    if a is None or b is None:
        return a if b is None else b
    if a.dtype == torch.bool and b.dtype == torch.bool:
        return a & b

    def bias(m: torch.Tensor) -> torch.Tensor:
        if m.dtype != torch.bool:
            return m
        return torch.zeros(m.shape, dtype=dtype, device=m.device).masked_fill(~m, float("-inf"))

    return bias(a) + bias(b)


def _pad_key(mask: torch.Tensor | None) -> torch.Tensor | None:
    """One more key column, attended (keep ``True``, bias 0)."""
    if mask is None:
        return None
    return F.pad(mask, (0, 1), value=True if mask.dtype == torch.bool else 0.0)


def _keep_off_fused_paths(module: nn.Module, args: tuple) -> None:
    """A no-op forward pre-hook. ``nn.TransformerEncoderLayer``'s inference fast path (eval,
    no grad) runs torch's fused softmax kernel on its ``self_attn``'s weights without calling
    the module, unless the layer holds a module with hooks: this one keeps ``mapping``
    honored there."""


class MultiheadAttention(nn.MultiheadAttention):
    """Drop-in ``torch.nn.MultiheadAttention`` whose attention is ``mapping``.

    Args: torch's (``embed_dim, num_heads, dropout, bias, add_bias_kv, add_zero_attn, kdim,
    vdim, batch_first, device, dtype``), then ``mapping`` (default ``"softmax"``: torch's
    module, up to rounding) and the mapping's parameters, as keywords (``alpha=1.6`` for
    ``"entmax"``) or in ``mapping_params`` (needed for ``"sigmoid"``'s ``bias``, whose name
    is torch's projection-bias flag: ``mapping_params={"bias": "-log n"}``).

    ``forward(query, key, value, key_padding_mask=None, need_weights=True, attn_mask=None,
    average_attn_weights=True, is_causal=False)``: query ``(N, L, E)`` (``batch_first``) or
    ``(L, N, E)`` or unbatched ``(L, E)``; key/value ``(N, S, kdim/vdim)`` likewise;
    ``key_padding_mask`` ``(N, S)``; ``attn_mask`` ``(L, S)`` or ``(N*H, L, S)``. Returns
    ``(output shaped like query, weights (N, L, S) averaged over heads or (N, H, L, S), or
    None)``; the weights are the probabilities after dropout, as torch's. Unlike torch,
    ``is_causal=True`` applies the causal mask itself (together with ``attn_mask`` if given,
    which torch takes as a hint that it is the causal mask; the keys ``add_bias_kv`` and
    ``add_zero_attn`` append stay visible to every query, as in torch's weights path), and a
    query with every key excluded gets zero weights and output instead of NaN.

    Example:
        >>> mha = MultiheadAttention(8, 2, batch_first=True, mapping="sparsemax")
        >>> x = torch.randn(3, 5, 8)
        >>> out, w = mha(x, x, x)
        >>> out.shape, w.shape
        (torch.Size([3, 5, 8]), torch.Size([3, 5, 5]))
        >>> torch.allclose(w.sum(-1), torch.ones(3, 5))
        True
    """

    def __init__(self, embed_dim: int, num_heads: int, dropout: float = 0.0, bias: bool = True,
                 add_bias_kv: bool = False, add_zero_attn: bool = False, kdim: int | None = None,
                 vdim: int | None = None, batch_first: bool = False, device=None, dtype=None,
                 *, mapping: str = "softmax", mapping_params: dict[str, Any] | None = None,
                 **params: Any):
        for name, value in (("embed_dim", embed_dim), ("num_heads", num_heads),
                            ("kdim", kdim), ("vdim", vdim)):
            if value is None and name in ("kdim", "vdim"):
                continue
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ValueError(f"{name} must be a positive int, got {value!r}")
        if embed_dim % num_heads:
            raise ValueError(f"embed_dim must be divisible by num_heads ({num_heads}), got "
                             f"embed_dim={embed_dim}")
        if isinstance(dropout, bool) or not isinstance(dropout, (int, float)) \
                or not 0.0 <= dropout < 1.0:
            raise ValueError(f"dropout must be a number in [0, 1), got {dropout!r}")
        for name, flag in (("bias", bias), ("add_bias_kv", add_bias_kv),
                           ("add_zero_attn", add_zero_attn), ("batch_first", batch_first)):
            if not isinstance(flag, bool):
                raise TypeError(f"{name} must be a bool, got {flag!r} (a mapping parameter "
                                f"of that name goes in mapping_params)")
        if mapping_params is None:
            mapping_params = {}
        if not isinstance(mapping_params, dict):
            raise TypeError(f"mapping_params must be a dict or None, got "
                            f"{type(mapping_params).__name__}")
        both = sorted(set(mapping_params) & set(params))
        if both:
            raise TypeError(f"mapping parameter(s) {both} given twice (keyword and "
                            f"mapping_params)")
        mapping_params = {**mapping_params, **params}
        get_normalizer(mapping).validate(mapping_params)
        super().__init__(embed_dim, num_heads, dropout, bias, add_bias_kv, add_zero_attn, kdim,
                         vdim, batch_first, device, dtype)
        self.mapping = mapping
        self.mapping_params = dict(mapping_params)
        self.register_forward_pre_hook(_keep_off_fused_paths)

    def extra_repr(self) -> str:
        params = "".join(f", {k}={v!r}" for k, v in self.mapping_params.items())
        return (f"embed_dim={self.embed_dim}, num_heads={self.num_heads}, "
                f"batch_first={self.batch_first}, mapping={self.mapping!r}{params}")

    def _project(self, query, key, value):
        """The in-projections ``(q, k, v)``, each ``(N, len, E)``."""
        E = self.embed_dim
        b = self.in_proj_bias
        bq, bk, bv = (None, None, None) if b is None else b.chunk(3)
        if self._qkv_same_embed_dim:
            w = self.in_proj_weight
            if query is key and key is value:
                return F.linear(query, w, b).chunk(3, dim=-1)
            wq, wk, wv = w[:E], w[E:2 * E], w[2 * E:]
        else:
            wq, wk, wv = self.q_proj_weight, self.k_proj_weight, self.v_proj_weight
        return F.linear(query, wq, bq), F.linear(key, wk, bk), F.linear(value, wv, bv)

    def forward(self, query: torch.Tensor, key: torch.Tensor, value: torch.Tensor,
                key_padding_mask: torch.Tensor | None = None, need_weights: bool = True,
                attn_mask: torch.Tensor | None = None, average_attn_weights: bool = True,
                is_causal: bool = False) -> tuple[torch.Tensor, torch.Tensor | None]:
        for name, flag in (("need_weights", need_weights), ("is_causal", is_causal),
                           ("average_attn_weights", average_attn_weights)):
            if not isinstance(flag, bool):
                raise TypeError(f"{name} must be a bool, got {flag!r}")
        for name, t in (("query", query), ("key", key), ("value", value)):
            if not isinstance(t, torch.Tensor) or not t.is_floating_point():
                raise TypeError(f"{name} must be a floating tensor, got "
                                f"{getattr(t, 'dtype', type(t).__name__)}")
        batched = query.dim() == 3
        if query.dim() not in (2, 3) or key.dim() != query.dim() or value.dim() != query.dim():
            raise ValueError(f"query, key and value must all be 3-D (batched) or 2-D, got "
                             f"shapes {tuple(query.shape)}, {tuple(key.shape)} and "
                             f"{tuple(value.shape)}")
        dt = query.dtype
        kpm = _keep_or_bias(key_padding_mask, "key_padding_mask", dt)
        if not batched:
            query, key, value = query.unsqueeze(0), key.unsqueeze(0), value.unsqueeze(0)
            if kpm is not None:
                kpm = kpm.unsqueeze(0)
        elif not self.batch_first:
            query, key, value = (t.transpose(0, 1) for t in (query, key, value))
        N, L, E = query.shape
        S, H = key.shape[1], self.num_heads
        for name, t, size in (("query", query, self.embed_dim), ("key", key, self.kdim),
                              ("value", value, self.vdim)):
            if t.shape[-1] != size:
                raise ValueError(f"{name} must have {size} features in its last dim, got shape "
                                 f"{tuple(t.shape)}")
        if key.shape[:2] != value.shape[:2] or key.shape[0] != N:
            raise ValueError(f"key and value must share the query's batch ({N}) and one "
                             f"length, got shapes {tuple(key.shape)} and {tuple(value.shape)}")
        if kpm is not None and kpm.shape != (N, S):
            raise ValueError(f"key_padding_mask must have shape {(N, S) if batched else (S,)}, "
                             f"got {tuple(kpm.shape[1:] if not batched else kpm.shape)}")
        mask = _keep_or_bias(attn_mask, "attn_mask", dt)
        if mask is not None:
            given = tuple(mask.shape)
            if given == (L, S):
                mask = mask[None, None]
            elif given == (N * H, L, S):
                mask = mask.view(N, H, L, S)
            else:
                raise ValueError(f"attn_mask must have shape {(L, S)} or {(N * H, L, S)}, got "
                                 f"{given}")
        if is_causal and (self.bias_k is not None or self.add_zero_attn):
            # causal over the given keys; the appended bias and zero keys stay attended
            causal = torch.ones(L, S, dtype=torch.bool, device=query.device).tril()
            mask, is_causal = _combine(mask, causal[None, None], dt), False
        q, k, v = self._project(query, key, value)
        if self.bias_k is not None and self.bias_v is not None:
            k = torch.cat([k, self.bias_k.expand(N, 1, E)], dim=1)
            v = torch.cat([v, self.bias_v.expand(N, 1, E)], dim=1)
            mask, kpm = _pad_key(mask), _pad_key(kpm)
        hd = E // H
        q, k, v = (t.view(N, t.shape[1], H, hd).transpose(1, 2) for t in (q, k, v))
        if self.add_zero_attn:
            zeros = torch.zeros(N, H, 1, hd, dtype=k.dtype, device=k.device)
            k, v = torch.cat([k, zeros], dim=2), torch.cat([v, zeros], dim=2)
            mask, kpm = _pad_key(mask), _pad_key(kpm)
        if kpm is not None:
            kpm = kpm[:, None, None, :]
        mask = _combine(mask, kpm, dt)
        p = self.dropout if self.training else 0.0
        weights = None
        if need_weights:
            call = prepare(q, k, v, mask, 0.0, is_causal, None, False, self.mapping,
                           self.mapping_params)
            s = scores(call)
            w = call.norm.forward(s, sink_rows(call, s.shape))
            if p > 0:
                w = F.dropout(w, p)
            out = call.user_layout(torch.matmul(w, call.v))
            weights = call.user_layout(w)
            if average_attn_weights:
                weights = weights.mean(dim=1)
            if not batched:
                weights = weights.squeeze(0)
        else:
            out = scaled_dot_product_attention(q, k, v, mask, p, is_causal,
                                               mapping=self.mapping, **self.mapping_params)
        out = self.out_proj(out.transpose(1, 2).reshape(N, L, E))
        if not batched:
            out = out.squeeze(0)
        elif not self.batch_first:
            out = out.transpose(0, 1)
        return out, weights
