"""Attention with any normalizer: :func:`scaled_dot_product_attention` (torch's signature and
semantics, plus ``mapping=``), its statistics, and the normalizers it takes.

* :mod:`.normalizers`: the registry's normalized mappings, ``sigmoid`` and ``softmax1``;
* :mod:`.reference`: the materializing reference (ground truth, ``torch.func``);
* :func:`use_mapping`: the mapping of a block of code, for callers that take it from the
  context (``softmaxlab.integrations.transformers``);
* the kernels: torch's own SDPA for softmax, the blocked CPU kernel
  (:mod:`softmaxlab.kernels.cpu.attention`) and the Triton kernels, as the custom op
  ``torch.ops.softmaxlab.attention`` (:mod:`._ops`).

Example:
    >>> import softmaxlab.attention as sa
    >>> q = torch.randn(2, 4, 5, 8)
    >>> sa.scaled_dot_product_attention(q, q, q, mapping="entmax15", is_causal=True).shape
    torch.Size([2, 4, 5, 8])
"""

from . import normalizers, reference
from ._context import current_mapping, use_mapping
from ._sdpa import AttentionStats, scaled_dot_product_attention
from .normalizers import get_normalizer, normalizer_names

__all__ = ["AttentionStats", "current_mapping", "get_normalizer", "normalizer_names",
           "normalizers", "reference", "scaled_dot_product_attention", "use_mapping"]
