"""torch's own ``F.scaled_dot_product_attention`` as the softmax attention kernel of both
backends (its CPU flash kernel; on CUDA, flash / memory-efficient / cuDNN): the library's
``mapping="softmax"`` attention takes it wherever its semantics are the library's (no
statistics asked for, no sink)."""

from __future__ import annotations

import torch
import torch.nn.functional as F


def sdpa_forward(query: torch.Tensor, key: torch.Tensor, value: torch.Tensor,
                 attn_mask: torch.Tensor | None, dropout_p: float, is_causal: bool,
                 scale: float, enable_gqa: bool) -> torch.Tensor:
    return F.scaled_dot_product_attention(query, key, value, attn_mask=attn_mask,
                                          dropout_p=dropout_p, is_causal=is_causal,
                                          scale=scale, enable_gqa=enable_gqa)
