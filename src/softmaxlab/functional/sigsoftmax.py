"""Sigsoftmax: exponential times sigmoid, normalized (breaks the softmax bottleneck)."""

from __future__ import annotations

import torch
import torch.nn.functional as F

from .._registry import Mapping, register
from ..kernels import ops
from ._common import (
    along,
    common_call,
    log_score_mapping,
    normalized,
    recomputed_vjp,
    score_mapping,
)


def _log_sigsoftmax_score(z: torch.Tensor, _excluded: torch.Tensor) -> torch.Tensor:
    return z + F.logsigmoid(z)


def sigsoftmax_log_score(z: torch.Tensor) -> torch.Tensor:
    """``z + log sigmoid(z)``: the element-wise log-score of sigsoftmax."""
    return z + F.logsigmoid(z)


def _sigsoftmax_rows(z: torch.Tensor, _coef: tuple[float, ...], log: bool) -> torch.Tensor:
    """The reference rows of the score kernel's call (no coefficients)."""
    return log_score_mapping(z, _log_sigsoftmax_score, log)


ops.register_vjp("sigsoftmax", recomputed_vjp(_sigsoftmax_rows))


def _sigsoftmax(x, dim, mask, dtype, log):
    out = common_call("sigsoftmax", "score_output", x, dim, mask, dtype, None, log)
    if out is not None:
        return out
    def reference(z):
        return _sigsoftmax_rows(z, (), log)

    return along(x, dim, mask, lambda z: score_mapping("sigsoftmax", z, (), log, reference),
                 dtype)


def sigsoftmax(
    x: torch.Tensor, dim: int = -1, *, mask: torch.Tensor | None = None,
    dtype: torch.dtype | None = None,
) -> torch.Tensor:
    r"""Sigsoftmax (Kanai et al. 2018).

    .. math:: p_i = e^{z_i}\sigma(z_i) / \sum_j e^{z_j}\sigma(z_j)

    computed in log space as :math:`z + \log\sigma(z)`. Not shift-invariant. Shapes,
    ``dim`` and ``mask`` as in :func:`softmaxlab.softmax`.

    Example:
        >>> sigsoftmax(torch.tensor([-2.0, 0.0, 0.5]))
        tensor([0.0105, 0.3242, 0.6654])
    """
    return _sigsoftmax(x, dim, mask, dtype, log=False)


def log_sigsoftmax(
    x: torch.Tensor, dim: int = -1, *, mask: torch.Tensor | None = None,
    dtype: torch.dtype | None = None,
) -> torch.Tensor:
    r"""Log of :func:`sigsoftmax`:
    :math:`z_i + \log\sigma(z_i) - \mathrm{lse}_j(z_j + \log\sigma(z_j))`."""
    return _sigsoftmax(x, dim, mask, dtype, log=True)



def naive_sigsoftmax(x: torch.Tensor) -> torch.Tensor:
    return normalized((x - x.amax(-1, keepdim=True)).exp() * torch.sigmoid(x))


register(
    Mapping(
        "sigsoftmax",
        sigsoftmax,
        log_sigsoftmax,
        loss="cross_entropy",
        summary="exp(z) * sigmoid(z), normalized",
        formula="e^z sigmoid(z) / sum e^z sigmoid(z)",
        naive=naive_sigsoftmax,
        log_score=sigsoftmax_log_score,
    )
)
