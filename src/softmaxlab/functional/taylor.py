"""Taylor softmax: the exponential replaced by its even-order Taylor polynomial."""

from __future__ import annotations

import math

import torch

from .._registry import Mapping, Param, register
from ..kernels import ops
from ._common import (
    along,
    common_call,
    log_score_mapping,
    normalized,
    recomputed_vjp,
    safe_where,
    score_mapping,
)

ORDER = Param(
    "order",
    2,
    (int,),
    lambda n: n >= 2 and n % 2 == 0,
    "an even integer >= 2",
    valid=(4, 10),
    bad=(0, 1, 3, -2, 2.0, "2"),
)


def log_taylor(z: torch.Tensor, order: int) -> torch.Tensor:
    r""":math:`\log f_n(z)`, :math:`f_n(z) = \sum_{i\le n} z^i/i!`, accurate for any finite z.

    For :math:`|z| < 1` the polynomial is evaluated by Horner's rule; for :math:`|z| \ge 1`
    as :math:`n\log|z| - \log n! + \log \sum_{j\le n} \frac{n!}{(n-j)!} z^{-j}`, which cannot
    overflow (logits of 1e30 give the exact limit).
    """
    small = z.abs() < 1
    zs = safe_where(small, z, 0.0)
    poly = torch.full_like(z, 1.0 / math.factorial(order))
    for i in range(order - 1, -1, -1):
        poly = poly * zs + 1.0 / math.factorial(i)
    zb = safe_where(~small, z, 1.0)
    u = zb.reciprocal()
    tail = torch.full_like(z, float(math.factorial(order)))  # coefficient of u^order
    for j in range(order - 1, -1, -1):
        tail = tail * u + math.factorial(order) / math.factorial(order - j)
    big = order * zb.abs().log() - math.lgamma(order + 1) + tail.log()
    return torch.where(small, poly.log(), big)


def taylor_log_score(z: torch.Tensor, order: int = 2) -> torch.Tensor:
    r""":math:`\log f_n(z)`: the element-wise log-score of the Taylor softmax."""
    return log_taylor(z, order)


_COEFFICIENTS: dict[int, tuple[float, ...]] = {}


def _coefficients(order: int) -> tuple[float, ...]:
    """``1/k!`` for ``k = 0..order`` (cached in a plain dict, which Dynamo traces; it warns
    about ``functools.lru_cache``)."""
    coef = _COEFFICIENTS.get(order)
    if coef is None:
        coef = _COEFFICIENTS[order] = tuple(1 / math.factorial(k) for k in range(order + 1))
    return coef


def _taylor_rows(z: torch.Tensor, coef: tuple[float, ...], log: bool) -> torch.Tensor:
    """The reference rows of the score kernel's call (``coef``: the Taylor coefficients)."""
    order = len(coef) - 1
    return log_score_mapping(z, lambda s, _: log_taylor(s, order), log)


ops.register_vjp("taylor_softmax", recomputed_vjp(_taylor_rows))
_ORDER2 = _coefficients(2)


def _taylor(x, dim, order, mask, dtype, log):
    if type(order) is int and order == 2:  # the default: valid, coefficients known
        coef = _ORDER2
    else:
        coef = _coefficients(ORDER.validate(order))
    out = common_call("taylor_softmax", "score_output", x, dim, mask, dtype, coef, log)
    if out is not None:
        return out

    def reference(z):
        return _taylor_rows(z, coef, log)

    return along(x, dim, mask, lambda z: score_mapping("taylor_softmax", z, coef, log, reference),
                 dtype)


def taylor_softmax(
    x: torch.Tensor, dim: int = -1, *, order: int = 2, mask: torch.Tensor | None = None,
    dtype: torch.dtype | None = None,
) -> torch.Tensor:
    r"""Taylor softmax (de Brébisson & Vincent 2016; Banerjee et al. 2020).

    .. math:: p_i = f_n(z_i) / \sum_j f_n(z_j), \quad f_n(z) = \sum_{k=0}^{n} z^k / k!

    ``f_n`` is positive for even ``n``, so ``order`` must be even and >= 2. Not shift-
    invariant; heavier tails than softmax. Shapes, ``dim`` and ``mask`` as in
    :func:`softmaxlab.softmax`.

    Example:
        >>> taylor_softmax(torch.tensor([-2.0, 0.0, 0.5]))
        tensor([0.2759, 0.2759, 0.4483])
    """
    return _taylor(x, dim, order, mask, dtype, log=False)


def log_taylor_softmax(
    x: torch.Tensor, dim: int = -1, *, order: int = 2, mask: torch.Tensor | None = None,
    dtype: torch.dtype | None = None,
) -> torch.Tensor:
    r"""Log of :func:`taylor_softmax`: :math:`\log f_n(z_i) - \log\sum_j f_n(z_j)`."""
    return _taylor(x, dim, order, mask, dtype, log=True)



def naive_taylor(x: torch.Tensor, order: int = 2) -> torch.Tensor:
    f = torch.ones_like(x)
    term = torch.ones_like(x)
    for i in range(1, order + 1):
        term = term * x / i
        f = f + term
    return normalized(f)


register(
    Mapping(
        "taylor_softmax",
        taylor_softmax,
        log_taylor_softmax,
        loss="cross_entropy",
        params=(ORDER,),
        summary="even-order Taylor polynomial of exp, normalized",
        formula="f_n(z) / sum f_n(z), f_n(z) = sum_{k<=n} z^k/k!",
        naive=naive_taylor,
        log_score=taylor_log_score,
    )
)
