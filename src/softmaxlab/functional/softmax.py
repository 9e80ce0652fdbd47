"""Softmax and log-softmax with temperature and mask, safe on fully masked rows."""

from __future__ import annotations

import torch

from .. import kernels
from .._registry import Mapping, positive_real, register
from ._common import (
    LOW_PRECISION,
    NEG_INF,
    apply_along,
    check_broadcast,
    check_input,
    exp_normalize,
)

TEMPERATURE = positive_real(
    "temperature", 1.0, valid=(0.5, 3.0), bad=(0.0, -1.0, float("inf"), float("nan"), "1")
)


def _softmax(x, dim, temperature, mask, log):
    check_input(x)
    triton = kernels.triton_kernel("log_softmax" if log else "softmax", x)
    if triton is not None:
        return triton(x, dim, temperature=temperature, mask=mask)
    TEMPERATURE.validate(temperature)
    z = x.float() if x.dtype in LOW_PRECISION else x
    if isinstance(temperature, torch.Tensor):
        check_broadcast(temperature, x.shape, "temperature")
        # -inf / T has an infinite derivative in T: divide only kept entries (no NaN grads)
        excluded = torch.isneginf(z)
        z = (z.masked_fill(excluded, 0.0) / temperature.to(z.device)).masked_fill(excluded, NEG_INF)
    elif temperature != 1.0:
        z = z / temperature

    def core(l, excluded):
        return exp_normalize(l if excluded is None else l.masked_fill(excluded, NEG_INF), log)

    return apply_along(z, dim, mask, core).to(x.dtype)


def softmax(
    x: torch.Tensor,
    dim: int = -1,
    *,
    temperature: float | torch.Tensor = 1.0,
    mask: torch.Tensor | None = None,
) -> torch.Tensor:
    r"""Softmax with temperature: :math:`p_i = e^{z_i/T} / \sum_j e^{z_j/T}`.

    Args:
        x: logits, any shape ``(*)``, floating point.
        dim: the dimension that sums to one.
        temperature: ``T > 0`` (float, or a tensor broadcastable to ``x`` for a learned
            or per-row temperature). Large ``T`` blurs, small ``T`` sharpens.
        mask: bool, broadcastable to ``x``, ``True`` = keep. Masked entries and ``-inf``
            logits get probability 0; a row with nothing kept is all zeros.

    Returns:
        Probabilities, same shape and dtype as ``x``.

    Example:
        >>> softmax(torch.tensor([-2.0, 0.0, 0.5]))
        tensor([0.0486, 0.3592, 0.5922])
    """
    return _softmax(x, dim, temperature, mask, log=False)


def log_softmax(
    x: torch.Tensor,
    dim: int = -1,
    *,
    temperature: float | torch.Tensor = 1.0,
    mask: torch.Tensor | None = None,
) -> torch.Tensor:
    r"""Log-softmax: :math:`z_i/T - \log\sum_j e^{z_j/T}`; excluded entries give ``-inf``.

    Same arguments as :func:`softmax`. A row with nothing kept is all ``-inf`` with zero
    gradient.

    Example:
        >>> log_softmax(torch.tensor([0.0, 0.0]))
        tensor([-0.6931, -0.6931])
    """
    return _softmax(x, dim, temperature, mask, log=True)


register(
    Mapping(
        "softmax",
        softmax,
        log_softmax,
        loss="cross_entropy",
        params=(TEMPERATURE,),
        shift_invariant=True,
        summary="exponentials divided by their sum",
        formula="exp(z/T) / sum exp(z/T)",
    )
)
