"""Softmax and log-softmax with temperature and mask, safe on fully masked rows."""

from __future__ import annotations

import torch

from .._constants import NEG_INF
from .._registry import Mapping, positive_real, register
from .._validation import check_broadcast, check_dtype, check_input
from ._common import along, common_call, compute, exp_normalize

TEMPERATURE = positive_real(
    "temperature", 1.0, valid=(0.5, 3.0), bad=(0.0, -1.0, float("inf"), float("nan"), "1")
)


def _softmax(x, dim, temperature, mask, dtype, log):
    TEMPERATURE.validate(temperature)
    if isinstance(temperature, torch.Tensor):
        check_input(x)
        check_broadcast(temperature, x.shape, "temperature")
        out_dtype = x.dtype if dtype is None else check_dtype(dtype)
        z = compute(x.to(out_dtype))
        # -inf / T has an infinite derivative in T: divide only the kept entries
        excluded = torch.isneginf(z)
        z = (z.masked_fill(excluded, 0.0) / temperature.to(z.device)).masked_fill(excluded, NEG_INF)
        return along(z, dim, mask, lambda r: exp_normalize(r, log)).to(out_dtype)
    if temperature != 1.0:
        return along(x, dim, mask, lambda r: exp_normalize(compute(r) / temperature, log), dtype)
    return along(x, dim, mask, _log_softmax_rows if log else _softmax_rows, dtype)


def softmax_log_score(z: torch.Tensor, temperature: float | torch.Tensor = 1.0) -> torch.Tensor:
    """``z / T``: the element-wise log-score of the softmax (finite ``z``)."""
    if not isinstance(temperature, torch.Tensor) and temperature == 1.0:
        return z
    return z / temperature


def _softmax_rows(z: torch.Tensor) -> torch.Tensor:
    return exp_normalize(z, False)


def _log_softmax_rows(z: torch.Tensor) -> torch.Tensor:
    return exp_normalize(z, True)


def softmax(
    x: torch.Tensor,
    dim: int = -1,
    *,
    temperature: float | torch.Tensor = 1.0,
    mask: torch.Tensor | None = None,
    dtype: torch.dtype | None = None,
) -> torch.Tensor:
    r"""Softmax with temperature: :math:`p_i = e^{z_i/T} / \sum_j e^{z_j/T}`.

    Args:
        x: logits, any shape ``(*)``, floating point.
        dim: the dimension that sums to one.
        temperature: ``T > 0`` (float, or a tensor broadcastable to ``x`` for a learned
            or per-row temperature). Large ``T`` blurs, small ``T`` sharpens.
        mask: bool, broadcastable to ``x``, ``True`` = keep. Masked entries and ``-inf``
            logits get probability 0 and zero gradient (as if sliced out); a row with
            nothing kept is all zeros.
        dtype: cast ``x`` to this dtype first (as :func:`torch.softmax`); the result has it.

    Returns:
        Probabilities, same shape and dtype as ``x``.

    Example:
        >>> softmax(torch.tensor([-2.0, 0.0, 0.5]))
        tensor([0.0486, 0.3592, 0.5922])
    """
    if type(temperature) is float and temperature == 1.0:
        out = common_call("softmax", "expnorm_forward", x, dim, mask, dtype, False)
        if out is not None:
            return out
    return _softmax(x, dim, temperature, mask, dtype, log=False)


def log_softmax(
    x: torch.Tensor,
    dim: int = -1,
    *,
    temperature: float | torch.Tensor = 1.0,
    mask: torch.Tensor | None = None,
    dtype: torch.dtype | None = None,
) -> torch.Tensor:
    r"""Log-softmax: :math:`z_i/T - \log\sum_j e^{z_j/T}`; excluded entries give ``-inf``.

    Same arguments as :func:`softmax`. A row with nothing kept is all ``-inf`` with zero
    gradient.

    Example:
        >>> log_softmax(torch.tensor([0.0, 0.0]))
        tensor([-0.6931, -0.6931])
    """
    if type(temperature) is float and temperature == 1.0:
        out = common_call("softmax", "expnorm_forward", x, dim, mask, dtype, True)
        if out is not None:
            return out
    return _softmax(x, dim, temperature, mask, dtype, log=True)



def naive_softmax(x: torch.Tensor, temperature: float = 1.0) -> torch.Tensor:
    """exp(x - max) / sum: the textbook formula, three unfused passes."""
    x = x / temperature if temperature != 1.0 else x
    e = (x - x.amax(-1, keepdim=True)).exp()
    return e / e.sum(-1, keepdim=True)


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
        naive=naive_softmax,
        log_score=softmax_log_score,
    )
)
