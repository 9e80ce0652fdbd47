"""Spherical softmax: squares (plus eps) divided by their sum."""

from __future__ import annotations

import torch

from .._registry import Mapping, positive_real, register
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

EPS = positive_real("eps", 0.01, tensor=False, valid=(1e-4, 1.0), bad=(0.0, -0.01, "0.01"))


def log_spherical_score(z: torch.Tensor, eps: float) -> torch.Tensor:
    r""":math:`\log(z^2 + \epsilon)`, as :math:`2\log|z| + \log(1 + \epsilon/z^2)` for
    :math:`|z| \ge 1` so that logits of 1e30 do not overflow."""
    small = z.abs() < 1
    zs = safe_where(small, z, 0.0)
    zb = safe_where(~small, z, 1.0)
    big = 2 * zb.abs().log() + torch.log1p(eps / zb.square())
    return torch.where(small, (zs.square() + eps).log(), big)


def spherical_log_score(z: torch.Tensor, eps: float = 0.01) -> torch.Tensor:
    """The element-wise log-score of the spherical softmax (:func:`log_spherical_score`)."""
    return log_spherical_score(z, eps)


def _spherical_rows(z: torch.Tensor, coef: tuple[float, ...], log: bool) -> torch.Tensor:
    """The reference rows of the score kernel's call (``coef = (eps, 0, 1)``)."""
    return log_score_mapping(z, lambda s, _: log_spherical_score(s, coef[0]), log)


ops.register_vjp("spherical_softmax", recomputed_vjp(_spherical_rows))


def _spherical(x, dim, eps, mask, dtype, log):
    EPS.validate(eps)
    coef = (float(eps), 0.0, 1.0)  # z^2 + eps
    out = common_call("spherical_softmax", "score_output", x, dim, mask, dtype, coef, log)
    if out is not None:
        return out

    def reference(z):
        return _spherical_rows(z, coef, log)

    return along(x, dim, mask,
                 lambda z: score_mapping("spherical_softmax", z, coef, log, reference), dtype)


def spherical_softmax(
    x: torch.Tensor, dim: int = -1, *, eps: float = 0.01, mask: torch.Tensor | None = None,
    dtype: torch.dtype | None = None,
) -> torch.Tensor:
    r"""Spherical softmax (Vincent et al. 2015; de Brébisson & Vincent 2016).

    .. math:: p_i = (z_i^2 + \epsilon) / \sum_j (z_j^2 + \epsilon)

    Symmetric in the sign of each logit; ``eps > 0`` keeps it defined at ``z = 0``.
    Shapes, ``dim`` and ``mask`` as in :func:`softmaxlab.softmax`.

    Example:
        >>> spherical_softmax(torch.tensor([-2.0, 0.0, 0.5]))
        tensor([0.9369, 0.0023, 0.0607])
    """
    return _spherical(x, dim, eps, mask, dtype, log=False)


def log_spherical_softmax(
    x: torch.Tensor, dim: int = -1, *, eps: float = 0.01, mask: torch.Tensor | None = None,
    dtype: torch.dtype | None = None,
) -> torch.Tensor:
    r"""Log of :func:`spherical_softmax`:
    :math:`\log(z_i^2+\epsilon) - \log\sum_j(z_j^2+\epsilon)`."""
    return _spherical(x, dim, eps, mask, dtype, log=True)



def naive_spherical(x: torch.Tensor, eps: float = 0.01) -> torch.Tensor:
    return normalized(x * x + eps)


register(
    Mapping(
        "spherical_softmax",
        spherical_softmax,
        log_spherical_softmax,
        loss="cross_entropy",
        params=(EPS,),
        summary="squared logits plus eps, normalized",
        formula="(z^2 + eps) / sum (z^2 + eps)",
        naive=naive_spherical,
        log_score=spherical_log_score,
    )
)
