r"""The reference attention: materializes the ``(L, S)`` scores, then the mapping, then the
product with the values, in plain differentiable torch ops (any dtype, float64 included;
``torch.func`` transforms; ``gradcheck``). It is the path of ``SOFTMAXLAB_BACKEND=reference``
and of eager ``torch.func`` transforms, the weights ``nn.MultiheadAttention`` returns, and
the ground truth of the blocked and Triton kernels.

.. math:: s = \mathrm{scale}\, q k^\top + \mathrm{mask}, \qquad
          o = \mathrm{dropout}(\mathrm{mapping}(s))\, v

Excluded scores (a ``False`` in a bool mask, ``-inf`` in a float mask, above the diagonal
under ``is_causal``) are ``-inf`` before the mapping, which gives them probability 0; a query
with no key left gets a zero output and zero gradient.
"""

from __future__ import annotations

import torch

from .._constants import NEG_INF
from ._front import Call


def sink_rows(call: Call, shape: torch.Size) -> torch.Tensor | None:
    """softmax1's sink per score row, ``(B, Hk, G*L, 1)``."""
    if call.sink is None:
        return None
    B, Hk, R, _ = shape
    s = call.sink[..., None, None].expand(B, Hk, call.G, call.L, 1)
    return s.reshape(B, Hk, R, 1)


def scores(call: Call) -> torch.Tensor:
    """The masked, scaled scores ``(B, Hk, G*L, S)`` (excluded entries ``-inf``)."""
    s = torch.matmul(call.q, call.k.transpose(-1, -2)) * call.scale
    B, Hk, R, S = s.shape
    s5 = s.view(B, Hk, call.G, call.L, S)
    if call.mask is not None:
        if call.mask.dtype == torch.bool:
            s5 = s5.masked_fill(~call.mask, NEG_INF)
        else:
            s5 = s5 + call.mask
    if call.causal:
        i = torch.arange(call.L, device=s.device)
        j = torch.arange(S, device=s.device)
        s5 = s5.masked_fill(j[None, :] > i[:, None], NEG_INF)
    return s5.reshape(B, Hk, R, S)


def reference(call: Call, *, want_stats: bool = False, dropout_mask: torch.Tensor | None = None,
              want_weights: bool = False):
    """``(out (B, Hk, G*L, Ev), stats (B, Hk, G*L, 2) or None, weights or None)``.

    Dropout (``call.dropout_p > 0``) is ``torch.dropout`` of the probabilities, as torch's
    SDPA draws it (same generator, same order), unless ``dropout_mask`` (the entries kept,
    canonical ``(B, Hk, G*L, S)``) is given. ``weights`` are the probabilities before
    dropout.
    """
    s = scores(call)
    sink = sink_rows(call, s.shape)
    p = call.norm.forward(s, sink)
    pd = p
    if call.dropout_p > 0:
        if dropout_mask is None:
            pd = torch.dropout(p, call.dropout_p, True)
        else:
            pd = p * dropout_mask / (1 - call.dropout_p)
    out = torch.matmul(pd, call.v)
    stats = call.norm.stats(s.detach(), p.detach(), None if sink is None else sink.detach()) \
        if want_stats else None
    return out, stats, (p if want_weights else None)
