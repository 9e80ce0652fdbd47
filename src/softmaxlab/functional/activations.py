"""Plain alternatives to softmax: standard normalization, one-vs-all sigmoid, and any
positive activation divided by its sum."""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F

from .._registry import Mapping, Param, register
from .._validation import checks_values
from ._common import (
    GRAPH_FREE,
    along,
    common_call,
    compute,
    excluded_entries,
    log_score_mapping,
    safe_where,
)


def _log_softplus(z: torch.Tensor, _excl: torch.Tensor) -> torch.Tensor:
    # log(log1p(e^z)); below -20 use z - e^z/2 (error ~e^{2z}/5), where softplus underflows.
    low = z < -20
    zl = safe_where(low, z, -21.0)
    zh = safe_where(~low, z, 0.0)
    return torch.where(low, zl - zl.exp() / 2, F.softplus(zh).log())


def _log_arctan(z: torch.Tensor, _excl: torch.Tensor) -> torch.Tensor:
    # arctan z + pi/2, as arctan(-1/z) for z < 0 (no cancellation as z -> -inf).
    neg = z < 0
    zn = safe_where(neg, z, -1.0)
    zp = safe_where(~neg, z, 0.0)
    return torch.where(neg, torch.atan(-zn.reciprocal()), torch.atan(zp) + math.pi / 2).log()


def _log_gaussian(z: torch.Tensor, excl: torch.Tensor) -> torch.Tensor:
    # -z^2 shifted by the row's smallest kept z^2: -(|z| - a)(|z| + a), no overflow at 1e30.
    a = z.abs()
    amin = a.detach().masked_fill(excl, math.inf).amin(-1, keepdim=True)
    amin = amin.masked_fill(amin == math.inf, 0.0)
    return -(a - amin) * (a + amin)


def _log_relu(z: torch.Tensor, _excl: torch.Tensor) -> torch.Tensor:
    return (F.relu(z) + 1e-6).log()


ACTIVATIONS = {
    "softplus": _log_softplus,
    "arctan": _log_arctan,
    "gaussian": _log_gaussian,
    "relu": _log_relu,
}

ACTIVATION = Param(
    "activation",
    "softplus",
    (str,),
    lambda a: a in ACTIVATIONS,
    f"one of {', '.join(map(repr, ACTIVATIONS))}",
    valid=("arctan", "gaussian", "relu"),
    bad=("tanh", "", 1),
)


def activation_log_score(z: torch.Tensor, activation: str = "softplus") -> torch.Tensor:
    """``log a(z)`` element-wise (finite ``z``). The Gaussian's is ``-z^2`` itself, without
    the per-row shift the row function applies against overflow (a row split across devices
    has no common smallest ``|z|``): it is ``-inf`` for ``|z|`` above ~1.8e19 in float32."""
    if activation == "gaussian":
        return -z.square()
    return ACTIVATIONS[activation](z, excluded_entries(z))


def _activation(x, dim, activation, mask, dtype, log):
    out = common_call("activation_normalize", "activation_output", x, dim, mask, dtype,
                      activation, log, facts=GRAPH_FREE)
    if out is not None:
        return out
    ACTIVATION.validate(activation)
    score = ACTIVATIONS[activation]
    return along(x, dim, mask, lambda z: log_score_mapping(z, score, log), dtype)


def activation_normalize(
    x: torch.Tensor,
    dim: int = -1,
    *,
    activation: str = "softplus",
    mask: torch.Tensor | None = None,
    dtype: torch.dtype | None = None,
) -> torch.Tensor:
    r"""A positive activation divided by its sum: :math:`p_i = a(z_i) / \sum_j a(z_j)`.

    ``activation``: ``"softplus"`` :math:`\log(1+e^z)`, ``"arctan"`` :math:`\arctan z + \pi/2`,
    ``"gaussian"`` :math:`e^{-z^2}`, ``"relu"`` :math:`\max(z, 0) + 10^{-6}` — the other
    alternatives the softmax articles list. Shapes, ``dim`` and ``mask`` as in
    :func:`softmaxlab.softmax`.

    Example:
        >>> activation_normalize(torch.tensor([-2.0, 0.0, 0.5]), activation="relu")
        tensor([2.0000e-06, 2.0000e-06, 1.0000e+00])
    """
    return _activation(x, dim, activation, mask, dtype, log=False)


def log_activation_normalize(
    x: torch.Tensor,
    dim: int = -1,
    *,
    activation: str = "softplus",
    mask: torch.Tensor | None = None,
    dtype: torch.dtype | None = None,
) -> torch.Tensor:
    r"""Log of :func:`activation_normalize`: :math:`\log a(z_i) - \log\sum_j a(z_j)`."""
    return _activation(x, dim, activation, mask, dtype, log=True)


def _normalize_core(z: torch.Tensor) -> torch.Tensor:
    z = compute(z)
    kept = z.masked_fill(excluded_entries(z), 0.0)
    if checks_values() and bool((kept < 0).any()):
        bad = kept[kept < 0][0].item()
        raise ValueError(f"normalize needs x >= 0 (outside mask and -inf), got a value {bad}")
    m = kept.detach().amax(-1, keepdim=True)
    m = m.masked_fill((m == 0) | ~torch.isfinite(m), 1.0)
    scaled = kept / m
    s = scaled.sum(-1, keepdim=True)
    nonempty = s != 0
    return scaled / s.masked_fill(~nonempty, 1.0) * nonempty


def normalize(x: torch.Tensor, dim: int = -1, *, mask: torch.Tensor | None = None,
              dtype: torch.dtype | None = None) -> torch.Tensor:
    r"""Standard normalization: :math:`p_i = z_i / \sum_j z_j` for :math:`z \ge 0`.

    Scale-invariant, unlike softmax: ``[1, 2]`` and ``[10, 20]`` give the same ``[1/3, 2/3]``.
    A negative kept entry raises ``ValueError``; a row that sums to zero gives zeros.
    Shapes, ``dim`` and ``mask`` as in :func:`softmaxlab.softmax`.

    Example:
        >>> normalize(torch.tensor([1.0, 2.0]))
        tensor([0.3333, 0.6667])
    """
    out = common_call("normalize", "normalize_output", x, dim, mask, dtype, facts=GRAPH_FREE)
    return along(x, dim, mask, _normalize_core, dtype) if out is None else out


def ova_sigmoid(x: torch.Tensor, dim: int = -1, *, mask: torch.Tensor | None = None,
                dtype: torch.dtype | None = None) -> torch.Tensor:
    r"""One-vs-all sigmoid, element-wise: :math:`p_i = \sigma(z_i) = 1/(1+e^{-z_i})`.

    Each class is an independent yes/no; the outputs do not sum to one. ``dim`` is accepted
    (and validated) for a uniform signature; masked entries give 0 (and zero gradient).

    Example:
        >>> ova_sigmoid(torch.tensor([-2.0, 0.0, 0.5]))
        tensor([0.1192, 0.5000, 0.6225])
    """

    return along(x, dim, mask, lambda z: torch.sigmoid(compute(z)), dtype)


register(
    Mapping(
        "normalize",
        normalize,
        None,
        loss=None,
        scale_invariant=True,
        summary="z / sum z for z >= 0 (standard normalization)",
        formula="z / sum z",
    )
)
register(
    Mapping(
        "ova_sigmoid",
        ova_sigmoid,
        None,
        loss="binary_cross_entropy",
        normalized=False,
        summary="independent sigmoid per class (one-vs-all)",
        formula="1 / (1 + e^-z)",
    )
)
register(
    Mapping(
        "activation_normalize",
        activation_normalize,
        log_activation_normalize,
        loss="cross_entropy",
        params=(ACTIVATION,),
        summary="a positive activation divided by its sum",
        formula="a(z) / sum a(z)",
        log_score=activation_log_score,
    )
)
