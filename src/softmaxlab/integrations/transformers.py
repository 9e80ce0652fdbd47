r"""Hugging Face transformers: ``attn_implementation="softmaxlab"`` runs a model's attention
through :func:`softmaxlab.attention.scaled_dot_product_attention` with any mapping.

Importing this module (or calling :func:`register`) registers the attention function and
the mask builder (transformers' boolean SDPA masks, ``True`` = attend) under the name
``"softmaxlab"``; without the mask builder transformers would build no causal or padding
mask at all for an unknown implementation. The mapping is, first found:

1. the innermost :func:`softmaxlab.attention.use_mapping` block;
2. the model config's ``softmaxlab_mapping`` (and ``softmaxlab_params``, a dict);
3. ``"softmax"``.

Per layer, with ``s = scaling\, q k^\top`` over ``(B, H, L, S)``:
``out = dropout(mapping(s + mask)) v``, returned as ``(B, L, H, D)`` (and ``None``
weights). Causality: a boolean or float mask from transformers already holds it; with no
mask, ``is_causal`` (the keyword, else ``module.is_causal``) applies for more than one
query, top-left aligned as in transformers' own SDPA path. In a float mask, entries at or
below half the dtype's minimum (transformers' "excluded" value) count as ``-inf``, so that
mappings that are not monotone in the score (Taylor, spherical) still exclude them.
``position_bias`` (T5-style) is added to the scores.

Needs ``pip install 'softmaxlab[transformers]'``.

Example:
    >>> import transformers
    >>> from softmaxlab.integrations.transformers import register
    >>> register()
    >>> cfg = transformers.GPT2Config(n_layer=1, n_head=2, n_embd=8, vocab_size=11,
    ...                               softmaxlab_mapping="entmax15")
    >>> model = transformers.AutoModel.from_config(cfg, attn_implementation="softmaxlab")
    >>> model(torch.tensor([[1, 2, 3]])).last_hidden_state.shape
    torch.Size([1, 3, 8])
"""

from __future__ import annotations

from typing import Any

import torch

from ..attention import scaled_dot_product_attention
from ..attention._context import current_mapping

__all__ = ["NAME", "attention_forward", "mapping_of", "register"]

#: The ``attn_implementation`` name.
NAME = "softmaxlab"


def mapping_of(module: torch.nn.Module) -> tuple[str, dict[str, Any]]:
    """``(mapping, params)`` for one attention layer: the :func:`use_mapping` block, else
    the layer's ``config.softmaxlab_mapping`` / ``softmaxlab_params``, else softmax."""
    ctx = current_mapping()
    if ctx is not None:
        return ctx
    config = getattr(module, "config", None)
    mapping = getattr(config, "softmaxlab_mapping", None) or "softmax"
    params = getattr(config, "softmaxlab_params", None) or {}
    if not isinstance(params, dict):
        raise TypeError(f"config.softmaxlab_params must be a dict, got "
                        f"{type(params).__name__}")
    return mapping, params


def _additive(mask: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
    """A float mask with transformers' "minimum of the dtype" exclusions as ``-inf``."""
    m = mask.to(dtype)
    return m.masked_fill(m <= torch.finfo(m.dtype).min / 2, float("-inf"))


def attention_forward(module: torch.nn.Module, query: torch.Tensor, key: torch.Tensor,
                      value: torch.Tensor, attention_mask: torch.Tensor | None,
                      dropout: float = 0.0, scaling: float | None = None,
                      is_causal: bool | None = None, position_bias: torch.Tensor | None = None,
                      **kwargs: Any) -> tuple[torch.Tensor, None]:
    """transformers' attention function: ``query (B, H, L, D)``, ``key``/``value``
    ``(B, Hkv, S, D)`` (grouped-query when ``Hkv < H``), ``attention_mask`` bool (``True`` =
    attend) or additive float, broadcastable to ``(B, H, L, S)``, or ``None``. Returns
    ``(attn_output (B, L, H, D), None)``."""
    if kwargs.get("softcap") is not None:
        raise ValueError(f"softcap is not supported by the softmaxlab attention, got "
                         f"softcap={kwargs['softcap']!r}")
    if kwargs.get("s_aux") is not None:
        raise ValueError("s_aux (learned attention sinks) is not supported by the softmaxlab "
                         "attention integration; softmaxlab.attention's mapping 'softmax1' "
                         "takes a sink")
    mapping, params = mapping_of(module)
    L = query.shape[2]
    causal = is_causal if is_causal is not None else getattr(module, "is_causal", True)
    causal = bool(causal) and L > 1 and attention_mask is None
    mask = attention_mask
    if mask is not None and mask.dtype != torch.bool:
        mask = _additive(mask, query.dtype)
    if position_bias is not None:
        bias = position_bias.to(query.dtype)
        if causal:
            tri = torch.ones(L, key.shape[2], dtype=torch.bool, device=query.device).tril()
            bias = bias.masked_fill(~tri, float("-inf"))
            causal = False
        if mask is None:
            mask = bias
        elif mask.dtype == torch.bool:
            mask = bias.masked_fill(~mask, float("-inf"))
        else:
            mask = bias + mask
    out = scaled_dot_product_attention(
        query, key, value, mask, dropout, causal, scaling, key.shape[1] != query.shape[1],
        mapping=mapping, **params)
    return out.transpose(1, 2).contiguous(), None


def register() -> None:
    """Register :func:`attention_forward` and transformers' boolean SDPA mask builder as
    ``attn_implementation="softmaxlab"`` (idempotent)."""
    from transformers import AttentionInterface
    from transformers.masking_utils import AttentionMaskInterface, sdpa_mask

    AttentionInterface.register(NAME, attention_forward)
    AttentionMaskInterface.register(NAME, sdpa_mask)


register()
