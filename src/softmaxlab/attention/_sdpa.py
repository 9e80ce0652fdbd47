"""The public attention function and its statistics record."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch

from .. import kernels
from .._constants import LOW_PRECISION, NEG_INF
from .._validation import check_bool
from ._front import Call, prepare
from .reference import reference

__all__ = ["AttentionStats", "scaled_dot_product_attention"]


@dataclass(frozen=True)
class AttentionStats:
    """Row statistics of an attention call, each ``(*batch, Hq, L)``:

    * ``support``: keys with non-zero probability (float; 0 for a query with no key left);
    * ``logsumexp``: for the one-pass mappings, ``log sum_j g(s_j)`` of the log-scores
      ``log g`` (softmax: ``logsumexp(s / T)``, torch flash attention's statistic;
      softmax1: with the sink; normalize: ``log sum s``); ``-inf`` with no key left
      (softmax1: the sink);
    * ``threshold``: for sparsemax / entmax15 / alpha-entmax, the ``tau`` of
      ``p = [(alpha - 1) s - tau]_+^{1/(alpha - 1)}``; ``+inf`` with no key left. Top-k
      softmax gives ``logsumexp`` over its top k.
    """

    kind: str
    support: torch.Tensor
    logsumexp: torch.Tensor | None = None
    threshold: torch.Tensor | None = None


def _stats(call: Call, stats: torch.Tensor) -> AttentionStats:
    first = call.user_rows(stats[..., 0])
    support = call.user_rows(stats[..., 1])
    kind = call.norm.kind
    threshold_maps = ("sparsemax", "entmax15", "entmax")
    if call.norm.name in threshold_maps:
        return AttentionStats(kind, support, threshold=first)
    if kind == "pointwise":
        return AttentionStats(kind, support)
    return AttentionStats(kind, support, logsumexp=first)


def _sdpa_mask(call: Call, attn_mask: torch.Tensor | None, is_causal: bool, L: int, S: int,
               dtype: torch.dtype) -> tuple[torch.Tensor | None, bool]:
    """The mask and ``is_causal`` torch's SDPA gets: float masks in the compute dtype; a
    mask together with ``is_causal`` combined into one mask (torch's CPU kernels apply both;
    some of its CUDA kernels refuse the pair)."""
    if attn_mask is None:
        return None, is_causal
    m = attn_mask if attn_mask.dtype == torch.bool else attn_mask.to(dtype)
    if is_causal:
        tri = torch.ones(L, S, dtype=torch.bool, device=m.device).tril()
        m = m & tri if m.dtype == torch.bool else m.masked_fill(~tri, NEG_INF)
    return m, False


def scaled_dot_product_attention(
    query: torch.Tensor,
    key: torch.Tensor,
    value: torch.Tensor,
    attn_mask: torch.Tensor | None = None,
    dropout_p: float = 0.0,
    is_causal: bool = False,
    scale: float | None = None,
    enable_gqa: bool = False,
    *,
    mapping: str = "softmax",
    return_stats: bool = False,
    **mapping_params: Any,
):
    r"""Attention with any normalizer, torch's signature and semantics:

    .. math:: \mathrm{out} = \mathrm{dropout}\big(\mathrm{mapping}(\mathrm{scale}\;
              Q K^\top + \mathrm{mask})\big)\, V

    Args:
        query: ``(*batch, Hq, L, E)`` (or ``(L, E)``); key: ``(*batch, Hk, S, E)``;
            value: ``(*batch, Hk, S, Ev)``; batch dims broadcast.
        attn_mask: bool (``True`` = attend) or float (added to the scores; ``-inf``
            excludes), broadcastable to ``(*batch, Hq, L, S)``.
        dropout_p: dropout on the probabilities (after normalization), in ``[0, 1)``.
        is_causal: query ``i`` sees keys ``j <= i`` (top-left aligned, as torch); together
            with ``attn_mask`` both apply.
        scale: default ``1 / sqrt(E)``.
        enable_gqa: grouped-query attention, ``Hk`` dividing ``Hq`` (query head ``h`` reads
            key/value head ``h // (Hq / Hk)``).
        mapping: any name of :func:`softmaxlab.attention.normalizers` (the registry's
            normalized mappings, ``"sigmoid"`` with ``bias`` (a number or ``"-log n"``),
            ``"softmax1"`` with ``sink`` (a number or a tensor broadcastable to
            ``(*batch, Hq)``, learnable)); ``**mapping_params`` are its parameters.
        return_stats: also return an :class:`AttentionStats`.

    Returns:
        ``(*batch, Hq, L, Ev)`` in the query's dtype (float16/bfloat16 computed in float32),
        and the statistics when ``return_stats``. A query with no key left gives zeros
        (and zero gradient), never NaN.

    ``mapping="softmax"`` runs torch's own SDPA (equal to it) unless statistics are asked
    for; every other mapping, on CPU, runs the blocked kernel (exact; memory O(L E) beside
    one block of scores), on CUDA the Triton kernels where they apply (softmax with
    statistics, softmax1, sparsemax, entmax15, sigmoid), else the reference.

    Example:
        >>> q = k = v = torch.eye(3)[None, None]
        >>> scaled_dot_product_attention(q, k, v, mapping="sparsemax", scale=4.0)[0, 0]
        tensor([[1., 0., 0.],
                [0., 1., 0.],
                [0., 0., 1.]])
        >>> out, st = scaled_dot_product_attention(q, k, v, mapping="entmax15",
        ...                                        return_stats=True)
        >>> st.support[0, 0]
        tensor([3., 3., 3.])
    """
    check_bool("return_stats", return_stats)
    call = prepare(query, key, value, attn_mask, dropout_p, is_causal, scale, enable_gqa,
                   mapping, mapping_params)
    sdpa = call.norm.name == "softmax" and not return_stats and call.sink is None
    spec = kernels.select("attention", call.q, sdpa=sdpa, mapping=call.norm.name,
                          dropout=call.dropout_p > 0, sink=call.sink is not None)
    if spec is None:
        out, stats, _ = reference(call, want_stats=return_stats)
        out = call.user_layout(out)
        return (out, _stats(call, stats)) if return_stats else out
    if spec.name.endswith("attention_sdpa"):
        return _torch_sdpa(call, spec.name, query, key, value, attn_mask, is_causal)
    from ._ops import attention_op

    seed = None
    if call.dropout_p > 0:
        seed = torch.randint(0, 1 << 62, (), dtype=torch.int64, device=call.q.device)
    out, stats = attention_op(call.q, call.k, call.v, call.mask, call.sink, seed, call.causal,
                              call.L, call.scale, call.dropout_p, call.norm.name, call.norm.key,
                              return_stats, spec.name)
    out = call.user_layout(out)
    return (out, _stats(call, stats)) if return_stats else out


def _torch_sdpa(call: Call, kernel: str, query, key, value, attn_mask, is_causal):
    cdt = call.q.dtype
    q, k, v = (t if t.dtype not in LOW_PRECISION else t.to(cdt) for t in (query, key, value))
    mask, causal = _sdpa_mask(call, attn_mask, is_causal, call.L, call.S, cdt)
    scale = call.scale / float(call.params.get("temperature", 1.0))
    out = kernels.ops.row_function(kernel, "sdpa_forward")(
        q, k, v, mask, call.dropout_p, causal, scale, call.G > 1)
    return out if out.dtype == call.dtype else out.to(call.dtype)
