"""Sparse (top-k) softmax: softmax over the k largest logits, zero elsewhere."""

from __future__ import annotations

import torch

from .._registry import Mapping, Param, register
from .._validation import check_dim, check_input
from ._common import GRAPH_FREE, along, common_call, compute, exp_normalize

K = Param("k", 1, (int,), lambda k: k >= 1, "an integer >= 1 (and <= the size of dim)",
          valid=(2, 3), bad=(0, -1, 2.0))


def _check_k(x: torch.Tensor, dim: int, k: object) -> None:
    check_input(x)
    valid_k: int = K.validate(k)
    n = x.shape[check_dim(x, dim)] if x.dim() else 1
    if valid_k > n:
        raise ValueError(f"k must be <= the size of dim {dim} ({n}), got k={k}")


def sparse_softmax(
    x: torch.Tensor, dim: int = -1, *, k: int = 1, mask: torch.Tensor | None = None,
    dtype: torch.dtype | None = None,
) -> torch.Tensor:
    r"""Sparse-softmax (Sun et al. 2021): softmax restricted to the k largest logits.

    .. math:: p_i = \frac{e^{z_i}}{\sum_{j \in \mathrm{top}_k(z)} e^{z_j}}
              \ \text{for } i \in \mathrm{top}_k(z), \quad p_i = 0 \text{ otherwise}

    Only the top-k logits receive gradient. Ties at the k-th value are broken by
    ``torch.topk``. Shift-invariant. Shapes, ``dim`` and ``mask`` as in
    :func:`softmaxlab.softmax`; masked entries are never chosen while kept ones remain.

    Example:
        >>> sparse_softmax(torch.tensor([-2.0, 0.0, 0.5]), k=2)
        tensor([0.0000, 0.3775, 0.6225])
    """
    out = common_call("sparse_softmax", "sparse_output", x, dim, mask, dtype, k,
                      facts=GRAPH_FREE)
    if out is not None:
        return out
    _check_k(x, dim, k)

    def core(z):
        z = compute(z)
        top, idx = z.topk(k, dim=-1)  # NaN counts as the largest value: it is always in top
        out = torch.zeros_like(z).scatter(-1, idx, exp_normalize(top, False))
        return out.masked_fill(top.isnan().any(-1, keepdim=True), float("nan"))

    return along(x, dim, mask, core, dtype)


register(
    Mapping(
        "sparse_softmax",
        sparse_softmax,
        None,
        loss="sparse_softmax_loss",
        params=(K,),
        sparse=True,
        shift_invariant=True,
        summary="softmax over the k largest logits",
        formula="exp(z_i) / sum_{top-k} exp(z_j) on the top k, 0 elsewhere",
    )
)
