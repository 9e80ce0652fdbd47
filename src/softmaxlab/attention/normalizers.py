r"""The normalizers attention can use: every normalized mapping of the registry, plus
``sigmoid`` (element-wise, with an optional bias such as :math:`-\log n`) and ``softmax1``
(softmax with an attention sink: an extra logit ``sink``, default 0, that takes probability
mass but contributes no value; ``sink=0`` is the "off-by-one" softmax).

A :class:`Normalizer` is bound to its parameters (:meth:`Normalizer.bind`) and then acts on
score rows ``s`` ``(..., n)`` (excluded keys at ``-inf``) in three ways, which every attention
path shares:

* ``forward(s, sink) -> p``: the probabilities (the registry mapping's own function, so the
  attention kernels and the reference compute exactly the mapping the library defines);
* ``backward(dp, p, s, sink) -> (ds, dsink)``: the input gradient from ``p`` (and ``s`` for
  the score mappings), by each family's closed form (a custom op's implementation cannot run
  autograd);
* ``stats(s, p, sink) -> (..., 2)``: the row statistics, ``[logsumexp of the log-scores,
  support size]`` for the one-pass mappings, ``[threshold tau, support size]`` for the
  threshold mappings (``p = [(alpha - 1) s - tau]_+^{1/(alpha - 1)}``); a row with no kept
  key has logsumexp ``-inf``, threshold ``+inf`` and support 0.

Families (``kind``): ``"exp"`` (one pass: ``p = g(s) / sum g(s)`` with a log-score ``l = log
g``; softmax, Taylor, spherical, sigsoftmax, activation_normalize, normalize, softmax1),
``"threshold"`` (sparsemax, entmax15, alpha-entmax, top-k softmax: a per-query threshold,
exact zeros below it) and ``"pointwise"`` (sigmoid).

Example:
    >>> [n.name for n in normalizers()][-2:]
    ['sigmoid', 'softmax1']
    >>> get_normalizer("entmax15").bind({}).kind
    'threshold'
"""

from __future__ import annotations

import json
import math
import numbers
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import torch

from .._constants import NEG_INF
from .._registry import Mapping, Param, mappings
from ..functional._common import safe_where
from ..functional.activations import ACTIVATIONS
from ..functional.spherical import log_spherical_score
from ..functional.taylor import log_taylor

__all__ = ["BoundNormalizer", "Normalizer", "get_normalizer", "normalizer_names", "normalizers"]


def _sigmoid_bias_ok(b: Any) -> bool:
    return b == "-log n" or (not isinstance(b, str) and math.isfinite(b))


SIGMOID_BIAS = Param(
    "bias", 0.0, (numbers.Real, str), _sigmoid_bias_ok,
    "a finite number or '-log n' (minus the log of the number of keys)",
    valid=(-1.0, "-log n"), bad=(float("inf"), float("nan"), "log n"))
SINK = Param(
    "sink", 0.0, (numbers.Real, torch.Tensor),
    lambda v: bool(torch.isfinite(torch.as_tensor(v)).all()),
    "a finite number, or a floating tensor broadcastable to the query's batch and head dims",
    valid=(-2.0, 1.5), bad=(float("inf"), float("nan"), "0"))


@dataclass(frozen=True)
class Normalizer:
    """One normalizer attention can use: a registry mapping (``mapping``) or one of the two
    attention-only ones (``sigmoid``, ``softmax1``)."""

    name: str
    params: tuple[Param, ...]
    summary: str
    mapping: Mapping | None = None

    @property
    def defaults(self) -> dict[str, Any]:
        return {p.name: p.default for p in self.params}

    def validate(self, params: dict[str, Any]) -> dict[str, Any]:
        """``params`` checked against the parameter records (``TypeError`` for an unknown
        name), merged over the defaults."""
        known = {p.name: p for p in self.params}
        for key, value in params.items():
            if key not in known:
                raise TypeError(
                    f"mapping {self.name!r} has no parameter {key!r} "
                    f"(its parameters: {', '.join(sorted(known)) or 'none'})")
            p = known[key]
            if isinstance(value, torch.Tensor) and key != "sink":
                raise TypeError(f"{key} must be a Python number in attention, got a tensor "
                                f"(a learned per-head {key} is not supported)")
            p.validate(value)
        return {**self.defaults, **params}

    def bind(self, params: dict[str, Any], n_keys: int | None = None) -> BoundNormalizer:
        """The normalizer with ``params`` (already validated); ``n_keys`` resolves
        ``sigmoid``'s ``bias='-log n'``."""
        return _bind(self, {**self.defaults, **params}, n_keys)


def _expnorm_vjp(dp: torch.Tensor, p: torch.Tensor) -> torch.Tensor:
    """``p * (dp - <p, dp>)``: the softmax Jacobian (symmetric) times ``dp``."""
    return p * (dp - (p * dp).sum(-1, keepdim=True))


def _support(p: torch.Tensor) -> torch.Tensor:
    return (p > 0).sum(-1).to(p.dtype)


def _logsumexp(l: torch.Tensor) -> torch.Tensor:
    """Row logsumexp with ``-inf`` for rows with nothing kept (no NaN)."""
    m = l.amax(-1, keepdim=True)
    m = m.masked_fill(m == NEG_INF, 0.0)
    return ((l - m).exp().sum(-1).log() + m.squeeze(-1))


@dataclass(frozen=True)
class BoundNormalizer:
    """A :class:`Normalizer` with its parameters; see the module docstring for the three
    operations. ``key`` is a canonical text form (the custom ops' argument)."""

    name: str
    kind: str
    params: dict[str, Any]
    forward_fn: Callable[..., torch.Tensor]
    backward_fn: Callable[..., tuple[torch.Tensor, torch.Tensor | None]]
    stats_fn: Callable[..., torch.Tensor]
    uses_scores: bool = False  # whether backward needs the scores s (else p is enough)
    has_sink: bool = False
    key: str = field(default="", compare=False)

    def forward(self, s: torch.Tensor, sink: torch.Tensor | None = None) -> torch.Tensor:
        return self.forward_fn(s, sink)

    def backward(self, dp: torch.Tensor, p: torch.Tensor, s: torch.Tensor,
                 sink: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor | None]:
        return self.backward_fn(dp, p, s, sink)

    def stats(self, s: torch.Tensor, p: torch.Tensor,
              sink: torch.Tensor | None = None) -> torch.Tensor:
        return self.stats_fn(s, p, sink)


# ------------------------------------------------------------ derivatives of log-scores
def _d_log_taylor(s: torch.Tensor, order: int) -> torch.Tensor:
    r""":math:`f_{n-1}(s) / f_n(s)`, the derivative of :func:`log_taylor`: Horner for
    :math:`|s| < 1`, else :math:`(n/s) T_{n-1}(1/s) / T_n(1/s)` with
    :math:`T_k(u) = \sum_{j \le k} \frac{k!}{(k-j)!} u^j` (no overflow at 1e30)."""
    small = s.abs() < 1
    zs = safe_where(small, s, 0.0)
    fn = torch.full_like(s, 1.0 / math.factorial(order))
    fn1 = torch.full_like(s, 1.0 / math.factorial(order - 1))
    for i in range(order - 1, -1, -1):
        fn = fn * zs + 1.0 / math.factorial(i)
    for i in range(order - 2, -1, -1):
        fn1 = fn1 * zs + 1.0 / math.factorial(i)
    zb = safe_where(~small, s, 1.0)
    u = zb.reciprocal()

    def tail(k: int) -> torch.Tensor:
        t = torch.full_like(s, float(math.factorial(k)))
        for j in range(k - 1, -1, -1):
            t = t * u + math.factorial(k) / math.factorial(k - j)
        return t

    return torch.where(small, fn1 / fn, order * u * tail(order - 1) / tail(order))


def _d_log_spherical(s: torch.Tensor, eps: float) -> torch.Tensor:
    small = s.abs() < 1
    zs = safe_where(small, s, 0.0)
    zb = safe_where(~small, s, 1.0)
    return torch.where(small, 2 * zs / (zs * zs + eps), 2 / (zb + eps / zb))


def _d_log_activation(s: torch.Tensor, activation: str) -> torch.Tensor:
    if activation == "softplus":
        low = s < -20
        sl_, sh = safe_where(low, s, -21.0), safe_where(~low, s, 0.0)
        return torch.where(low, 1 - sl_.exp() / 2,
                           torch.sigmoid(sh) / torch.nn.functional.softplus(sh))
    if activation == "arctan":
        neg = s < 0
        sn, sp = safe_where(neg, s, -1.0), safe_where(~neg, s, 0.0)
        a = torch.where(neg, torch.atan(-sn.reciprocal()), torch.atan(sp) + math.pi / 2)
        return 1 / (a * (1 + s * s))
    if activation == "gaussian":
        return -2 * s
    return (s > 0).to(s.dtype) / (torch.relu(s) + 1e-6)


def _score_parts(name: str, params: dict[str, Any]):
    """(log-score l(s), its derivative l'(s)) of a registry score mapping."""
    if name == "softmax":
        t = float(params["temperature"])
        return (lambda s: s / t), (lambda s: torch.full_like(s, 1 / t))
    if name == "taylor_softmax":
        n = params["order"]
        return (lambda s: log_taylor(s, n)), (lambda s: _d_log_taylor(s, n))
    if name == "spherical_softmax":
        e = params["eps"]
        return (lambda s: log_spherical_score(s, e)), (lambda s: _d_log_spherical(s, e))
    if name == "sigsoftmax":
        return (lambda s: s + torch.nn.functional.logsigmoid(s)), (lambda s: 2 - torch.sigmoid(s))
    if name == "activation_normalize":
        a = params["activation"]
        return ((lambda s: ACTIVATIONS[a](s, torch.zeros_like(s, dtype=torch.bool))),
                (lambda s: _d_log_activation(s, a)))
    raise KeyError(name)


# ------------------------------------------------------------------------ binding
@torch.compiler.assume_constant_result
def _key(params: dict[str, Any]) -> str:
    """The parameters (less ``sink``) as canonical JSON, the custom ops' argument (a
    constant to ``torch.compile``, which cannot trace the JSON encoder)."""
    return json.dumps({k: v for k, v in params.items() if k != "sink"}, sort_keys=True)


def _bind(norm: Normalizer, params: dict[str, Any], n_keys: int | None) -> BoundNormalizer:
    key = _key(params)
    name = norm.name
    if name == "entmax":
        alpha = float(params["alpha"])
        if alpha == 1.0:
            return get_normalizer("softmax").bind({}, n_keys)
        if alpha == 2.0:
            return get_normalizer("sparsemax").bind({}, n_keys)
    if name == "sigmoid":
        bias = params["bias"]
        if bias == "-log n":
            if n_keys is None:
                raise ValueError("bias='-log n' needs the number of keys")
            bias = -math.log(max(n_keys, 1))
        return _pointwise(float(bias), _key({"bias": float(bias)}))
    if name == "softmax1":
        return _softmax1(key)
    m = norm.mapping
    assert m is not None
    fn = m.fn
    kw = dict(params)

    def forward(s, sink=None):
        return fn(s, -1, **kw)

    if name in ("sparsemax", "entmax15", "entmax"):
        alpha = {"sparsemax": 2.0, "entmax15": 1.5}.get(name) or float(params["alpha"])
        return _threshold(name, alpha, forward, kw, key)
    if name == "sparse_softmax":
        k = kw["k"]

        def forward_topk(s, sink=None):  # a causal block sees fewer keys: the rest are -inf
            return fn(s, -1, k=min(k, s.shape[-1]))

        return BoundNormalizer(
            name, "threshold", kw, forward_topk,
            lambda dp, p, s, sink: (_expnorm_vjp(dp, p), None),
            _topk_stats, key=key)
    if name == "normalize":
        return BoundNormalizer(name, "exp", kw, forward, _normalize_backward, _normalize_stats,
                               uses_scores=True, key=key)
    log_score, d_log_score = _score_parts(name, params)

    def backward(dp, p, s, sink=None):
        kept = s.masked_fill(torch.isneginf(s), 0.0)
        return _expnorm_vjp(dp, p) * d_log_score(kept), None

    def stats(s, p, sink=None):
        excl = torch.isneginf(s)
        l = log_score(s.masked_fill(excl, 0.0)).masked_fill(excl, NEG_INF)
        return torch.stack([_logsumexp(l), _support(p)], -1)

    uses = name != "softmax"
    return BoundNormalizer(name, "exp", kw, forward, backward, stats, uses_scores=uses, key=key)


def _threshold(name: str, alpha: float, forward, kw, key) -> BoundNormalizer:
    am1 = alpha - 1

    def backward(dp, p, s, sink=None):
        gppr = torch.where(p > 0, p.pow(2 - alpha), 0.0) if alpha != 2 else (p > 0).to(p.dtype)
        total = gppr.sum(-1, keepdim=True)
        q = (gppr * dp).sum(-1, keepdim=True) / total.masked_fill(total == 0, 1.0)
        return gppr * (dp - q), None

    def stats(s, p, sink=None):
        m = s.amax(-1)
        pmax = p.amax(-1)
        tau = am1 * m - pmax.pow(am1)
        support = _support(p)
        return torch.stack([tau.masked_fill(support == 0, math.inf), support], -1)

    return BoundNormalizer(name, "threshold", kw, forward, backward, stats, key=key)


def _topk_stats(s, p, sink=None):
    l = s.masked_fill(p == 0, NEG_INF)
    return torch.stack([_logsumexp(l), _support(p)], -1)


def _normalize_total(s: torch.Tensor) -> torch.Tensor:
    return s.masked_fill(torch.isneginf(s), 0.0).sum(-1, keepdim=True)


def _normalize_backward(dp, p, s, sink=None):
    z = _normalize_total(s)
    kept = ~torch.isneginf(s) & (z > 0)
    ds = (dp - (p * dp).sum(-1, keepdim=True)) / z.masked_fill(z == 0, 1.0)
    return ds.masked_fill(~kept, 0.0), None


def _normalize_stats(s, p, sink=None):
    return torch.stack([_normalize_total(s).squeeze(-1).log(), _support(p)], -1)


def _pointwise(bias: float, key: str) -> BoundNormalizer:
    def forward(s, sink=None):
        return torch.sigmoid(s + bias)

    def backward(dp, p, s, sink=None):
        return dp * p * (1 - p), None

    def stats(s, p, sink=None):
        return torch.stack([torch.full_like(s[..., 0], math.nan), _support(p)], -1)

    return BoundNormalizer("sigmoid", "pointwise", {"bias": bias}, forward, backward, stats,
                           key=key)


def _sink_max(s: torch.Tensor, sink: torch.Tensor) -> torch.Tensor:
    return torch.maximum(s.amax(-1, keepdim=True), sink)


def _softmax1_forward(s, sink):
    m = _sink_max(s, sink).detach()
    e = (s - m).exp()
    return e / (e.sum(-1, keepdim=True) + (sink - m).exp())


def _softmax1_backward(dp, p, s, sink):
    delta = (p * dp).sum(-1, keepdim=True)
    p_sink = (1 - p.sum(-1, keepdim=True)).clamp(min=0)
    return p * (dp - delta), -p_sink * delta


def _softmax1_stats(s, p, sink):
    m = _sink_max(s, sink)
    lse = ((s - m).exp().sum(-1, keepdim=True) + (sink - m).exp()).log() + m
    return torch.stack([lse.squeeze(-1), _support(p)], -1)


def _softmax1(key: str) -> BoundNormalizer:
    return BoundNormalizer("softmax1", "exp", {}, _softmax1_forward, _softmax1_backward,
                           _softmax1_stats, has_sink=True, key=key)


# ------------------------------------------------------------------------- the table
_EXTRA = (
    Normalizer("sigmoid", (SIGMOID_BIAS,),
               "sigmoid(s + bias) element-wise, not normalized (bias '-log n': FlashSigmoid)"),
    Normalizer("softmax1", (SINK,),
               "softmax with an attention sink: exp(s) / (exp(sink) + sum exp(s))"),
)
_TABLE: dict[str, Normalizer] = {}


def normalizers() -> tuple[Normalizer, ...]:
    """Every normalizer attention can use: the registry's normalized mappings (in registry
    order), then ``sigmoid`` and ``softmax1``."""
    if not _TABLE:
        for m in mappings():
            if m.normalized:
                _TABLE[m.name] = Normalizer(m.name, m.params, m.summary, m)
        for n in _EXTRA:
            _TABLE[n.name] = n
    return tuple(_TABLE.values())


def normalizer_names() -> list[str]:
    return [n.name for n in normalizers()]


def get_normalizer(name: object) -> Normalizer:
    """The normalizer called ``name``; ``ValueError`` listing the valid names otherwise."""
    normalizers()
    n = _TABLE.get(name) if isinstance(name, str) else None
    if n is None:
        raise ValueError(f"mapping must be one of {', '.join(map(repr, _TABLE))} for attention, "
                         f"got {name!r}")
    return n


def bound_from_key(name: str, key: str) -> BoundNormalizer:
    """The bound normalizer a custom op names by ``(name, key)``."""
    return _BOUND_CACHE.get((name, key)) or _bound_from_key(name, key)


_BOUND_CACHE: dict[tuple[str, str], BoundNormalizer] = {}


def _bound_from_key(name: str, key: str) -> BoundNormalizer:
    params = json.loads(key)
    if name == "sigmoid":
        b = _pointwise(float(params["bias"]), key)
    else:
        b = get_normalizer(name).bind(params)
    _BOUND_CACHE[name, key] = b
    return b
