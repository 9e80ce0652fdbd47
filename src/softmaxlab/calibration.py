r"""Calibration: how far predicted confidences are from observed accuracies, and the fix.

Metrics take probabilities ``probs`` of shape ``(N, C)`` (class dimension last) and integer
labels ``target`` of shape ``(N,)``. The confidence of a row is its largest probability and
its prediction the (first) arg-max; rows need not sum exactly to one, so one-vs-all outputs
(``ova_sigmoid``) are accepted.

Binning uses ``n_bins`` equal-width confidence bins over ``[0, 1]``: bin ``b`` is
``(b/n, (b+1)/n]`` except the first, which is closed, ``[0, 1/n]``. A confidence of exactly
``0.0`` lands in the first bin and exactly ``1.0`` in the last one, so there is no phantom
extra bin and no out-of-range index (torchmetrics#3510, #1646). Sums over bins are
accumulated in float64; results are returned in ``probs``' dtype.

:func:`fit_temperature` / :class:`TemperatureScaler` fit the temperature ``T`` of Guo et
al. (2017) on held-out logits by minimizing the NLL over ``log T`` with L-BFGS, and never
return a ``T`` whose NLL on the fitting data is worse than ``T = 1``.

>>> from softmaxlab.calibration import brier, ece
>>> probs = torch.tensor([[0.9, 0.1], [0.6, 0.4], [0.3, 0.7]])
>>> target = torch.tensor([0, 1, 1])
>>> ece(probs, target, n_bins=3), brier(probs, target)
(tensor(0.3333), tensor(0.3067))

References:
    Naeini, Cooper & Hauskrecht, "Obtaining Well Calibrated Probabilities Using Bayesian
    Binning", AAAI 2015 (ECE, MCE). Guo, Pleiss, Sun & Weinberger, "On Calibration of
    Modern Neural Networks", ICML 2017 (temperature scaling). Brier, "Verification of
    forecasts expressed in terms of probability", Monthly Weather Review 1950.
"""

from __future__ import annotations

import math
import warnings
from dataclasses import dataclass

import torch
from torch import nn

from ._registry import Mapping, get_mapping
from ._validation import check_input, check_int

__all__ = [
    "Reliability",
    "ece",
    "mce",
    "brier",
    "nll",
    "reliability",
    "fit_temperature",
    "TemperatureScaler",
]


# --------------------------------------------------------------------------- validation


def _check_rows(x: object, target: object, name: str) -> tuple[torch.Tensor, torch.Tensor]:
    """Check ``x`` is a floating ``(N, C)`` tensor with ``N >= 1`` and ``target`` integer
    ``(N,)`` with values in ``[0, C)``; return ``x`` and ``target`` as int64 on x's device."""
    x = check_input(x, name)
    if x.dim() != 2:
        raise ValueError(
            f"{name} must be 2-D (N, C) with the class dimension last, got shape {tuple(x.shape)}"
        )
    if not isinstance(target, torch.Tensor):
        raise TypeError(f"target must be a torch.Tensor, got {type(target).__name__}")
    if target.is_floating_point() or target.is_complex() or target.dtype == torch.bool:
        raise TypeError(f"target must be an integer tensor of class indices, got {target.dtype}")
    n, c = x.shape
    if target.dim() != 1 or target.shape[0] != n:
        raise ValueError(
            f"target must have shape ({n},) to match {name} of shape {tuple(x.shape)}, "
            f"got {tuple(target.shape)}"
        )
    if n == 0:
        raise ValueError(f"{name} must have at least one row, got shape {tuple(x.shape)}")
    target = target.to(device=x.device, dtype=torch.int64)
    bad = (target < 0) | (target >= c)
    if bool(bad.any()):
        raise ValueError(f"target must be in [0, {c}), got {int(target[bad][0])}")
    return x, target


def _check_probs(probs: object, target: object) -> tuple[torch.Tensor, torch.Tensor]:
    probs, target = _check_rows(probs, target, "probs")
    bad = ~((probs >= 0) & (probs <= 1))  # NaN is bad too
    if bool(bad.any()):
        raise ValueError(
            f"probs must be probabilities in [0, 1], got {probs.detach()[bad][0].item()}"
        )
    return probs, target


# ----------------------------------------------------------------------------- binning


@dataclass(frozen=True, eq=False)
class Reliability:
    """Per-bin data of a reliability diagram (see :func:`reliability`).

    Attributes:
        edges: ``(n_bins + 1,)`` bin edges ``0, 1/n, ..., 1``.
        counts: ``(n_bins,)`` int64, rows per bin; they sum to ``N``.
        confidence: ``(n_bins,)`` mean confidence of the rows in each bin, ``0`` when empty.
        accuracy: ``(n_bins,)`` fraction of correct predictions in each bin, ``0`` when empty.
    """

    edges: torch.Tensor
    counts: torch.Tensor
    confidence: torch.Tensor
    accuracy: torch.Tensor

    @property
    def empty(self) -> torch.Tensor:
        """``(n_bins,)`` bool, ``True`` for bins with no rows (their values are placeholders)."""
        return self.counts == 0


def _bin_sums(probs: torch.Tensor, target: torch.Tensor, n_bins: int):
    """Float64 edges, counts, summed confidence and summed correctness per bin."""
    p = probs.to(torch.float64)
    conf = p.amax(dim=-1)
    correct = (p.argmax(dim=-1) == target).to(torch.float64)
    edges = torch.arange(n_bins + 1, dtype=torch.float64, device=p.device) / n_bins
    # right=False: edges[i-1] < conf <= edges[i]; the first bin also takes conf == 0 and
    # conf == 1 (> every inner edge) goes to the last bin: indices are always in range.
    idx = torch.bucketize(conf.detach(), edges[1:-1], right=False)
    counts = torch.bincount(idx, minlength=n_bins)
    zeros = torch.zeros(n_bins, dtype=torch.float64, device=p.device)
    conf_sum = zeros.index_add(0, idx, conf)
    correct_sum = zeros.index_add(0, idx, correct)
    return edges, counts, conf_sum, correct_sum


def reliability(probs: torch.Tensor, target: torch.Tensor, *, n_bins: int = 15) -> Reliability:
    r"""Per-bin counts, mean confidence and accuracy: the data of a reliability diagram.

    .. math::
        \mathrm{conf}_b = \frac{1}{n_b}\sum_{i \in B_b} \max_c p_{ic}, \quad
        \mathrm{acc}_b = \frac{1}{n_b}\sum_{i \in B_b} [\arg\max_c p_{ic} = y_i]

    Bins are ``[0, 1/n], (1/n, 2/n], ..., ((n-1)/n, 1]``. Empty bins have count 0 and
    confidence and accuracy 0 (never NaN); use :attr:`Reliability.empty` to skip them when
    drawing. Plot ``accuracy`` against ``confidence`` (or bars over ``edges``).

    Args:
        probs: ``(N, C)`` probabilities in ``[0, 1]``, floating point.
        target: ``(N,)`` integer labels in ``[0, C)``.
        n_bins: number of equal-width bins, ``>= 1``.

    Returns:
        A :class:`Reliability` with ``edges`` ``(n_bins + 1,)``, ``counts`` ``(n_bins,)``
        (int64) and ``confidence``, ``accuracy`` ``(n_bins,)`` in ``probs``' dtype.

    Example:
        >>> r = reliability(torch.tensor([[0.9, 0.1], [0.6, 0.4], [0.3, 0.7]]),
        ...                 torch.tensor([0, 1, 1]), n_bins=2)
        >>> r.counts, r.confidence, r.accuracy
        (tensor([0, 3]), tensor([0.0000, 0.7333]), tensor([0.0000, 0.6667]))
    """
    probs, target = _check_probs(probs, target)
    n_bins = check_int("n_bins", n_bins)
    edges, counts, conf_sum, correct_sum = _bin_sums(probs, target, n_bins)
    denom = counts.clamp_min(1).to(torch.float64)
    return Reliability(
        edges=edges.to(probs.dtype),
        counts=counts,
        confidence=(conf_sum / denom).to(probs.dtype),
        accuracy=(correct_sum / denom).to(probs.dtype),
    )


def ece(probs: torch.Tensor, target: torch.Tensor, *, n_bins: int = 15) -> torch.Tensor:
    r"""Expected calibration error: bin-weighted mean gap between accuracy and confidence.

    .. math:: \mathrm{ECE} = \sum_b \frac{n_b}{N}\,\lvert \mathrm{acc}_b - \mathrm{conf}_b \rvert

    over ``n_bins`` equal-width confidence bins (see :func:`reliability` for the bins;
    confidence ``0.0`` and ``1.0`` fall in the first and last bin).

    Args:
        probs: ``(N, C)`` probabilities in ``[0, 1]``, floating point (rows need not sum
            to one; the confidence is the row maximum).
        target: ``(N,)`` integer labels in ``[0, C)``.
        n_bins: number of bins, ``>= 1`` (15 is the usual choice, Guo et al. 2017).

    Returns:
        A scalar tensor in ``probs``' dtype, in ``[0, 1]``.

    Example:
        >>> ece(torch.tensor([[0.9, 0.1], [0.6, 0.4], [0.3, 0.7]]),
        ...     torch.tensor([0, 1, 1]), n_bins=3)
        tensor(0.3333)
    """
    probs, target = _check_probs(probs, target)
    n_bins = check_int("n_bins", n_bins)
    _, _, conf_sum, correct_sum = _bin_sums(probs, target, n_bins)
    return ((correct_sum - conf_sum).abs().sum() / probs.shape[0]).to(probs.dtype)


def mce(probs: torch.Tensor, target: torch.Tensor, *, n_bins: int = 15) -> torch.Tensor:
    r"""Maximum calibration error: the largest accuracy-confidence gap of a non-empty bin.

    .. math:: \mathrm{MCE} = \max_{b:\, n_b > 0} \lvert \mathrm{acc}_b - \mathrm{conf}_b \rvert

    Arguments, bins and return value as in :func:`ece`.

    Example:
        >>> mce(torch.tensor([[0.9, 0.1], [0.6, 0.4], [0.3, 0.7]]),
        ...     torch.tensor([0, 1, 1]), n_bins=3)
        tensor(0.6000)
    """
    probs, target = _check_probs(probs, target)
    n_bins = check_int("n_bins", n_bins)
    _, counts, conf_sum, correct_sum = _bin_sums(probs, target, n_bins)
    full = counts > 0
    gap = (correct_sum[full] - conf_sum[full]).abs() / counts[full]
    return gap.max().to(probs.dtype)


def brier(probs: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    r"""Brier score: mean over rows of the squared distance to the one-hot label.

    .. math:: \mathrm{Brier} = \frac{1}{N}\sum_i \sum_c (p_{ic} - [y_i = c])^2

    Ranges over ``[0, 2]`` for normalized rows (0 is a confident correct prediction).

    Args:
        probs: ``(N, C)`` probabilities in ``[0, 1]``, floating point.
        target: ``(N,)`` integer labels in ``[0, C)``.

    Returns:
        A scalar tensor in ``probs``' dtype.

    Example:
        >>> brier(torch.tensor([[0.9, 0.1], [0.6, 0.4], [0.3, 0.7]]), torch.tensor([0, 1, 1]))
        tensor(0.3067)
    """
    probs, target = _check_probs(probs, target)
    p = probs.to(torch.float64)
    onehot = torch.zeros_like(p).scatter_(1, target[:, None], 1.0)
    return (p - onehot).square().sum(dim=-1).mean().to(probs.dtype)


def nll(probs: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    r"""Negative log-likelihood of the labels: :math:`-\frac{1}{N}\sum_i \log p_{i y_i}`.

    ``p`` is clamped from below at the smallest positive normal number of its dtype
    (``torch.finfo(probs.dtype).tiny``) before the log, so a label given probability 0 (which
    sparse mappings such as sparsemax do produce) costs a finite but huge amount: about 87.3
    in float32, 708.4 in float64, 9.7 in float16. For training, use the log form of the
    mapping (``softmaxlab.losses.cross_entropy``) instead.

    Args:
        probs: ``(N, C)`` probabilities in ``[0, 1]``, floating point.
        target: ``(N,)`` integer labels in ``[0, C)``.

    Returns:
        A scalar tensor in ``probs``' dtype.

    Example:
        >>> nll(torch.tensor([[0.5, 0.5], [0.0, 1.0]]), torch.tensor([0, 1]))
        tensor(0.3466)
    """
    probs, target = _check_probs(probs, target)
    p = probs.gather(1, target[:, None]).squeeze(1).clamp_min(torch.finfo(probs.dtype).tiny)
    return -p.to(torch.float64).log().mean().to(probs.dtype)


# ------------------------------------------------------------------ temperature scaling


_LOG_T_BOUND = 30.0  # the fit searches T in [e^-30, e^30], about [1e-13, 1e13]


def _scaled_log_probs(m: Mapping, params: dict):
    """``(z, log T) -> log mapping(z / T)``: through the mapping's own ``temperature``
    parameter when it has one that takes tensors, else by dividing the logits."""
    log_fn = m.log_fn
    assert log_fn is not None, f"{m.name} has no log form"
    names = {p.name for p in m.params}
    if "temperature" in names and torch.Tensor in m.param("temperature").types:
        return lambda z, log_t: log_fn(z, temperature=log_t.exp(), **params)
    return lambda z, log_t: log_fn(z / log_t.exp(), **params)


def fit_temperature(
    logits: torch.Tensor,
    target: torch.Tensor,
    *,
    mapping: str | Mapping = "softmax",
    max_iter: int = 100,
    **mapping_params,
) -> float:
    r"""Fit the temperature ``T > 0`` that minimizes the NLL of ``mapping(logits / T)``.

    .. math:: T^\star = \arg\min_{T>0}\; -\frac{1}{N}\sum_i \log f(z_i / T)_{y_i}

    Temperature scaling (Guo et al. 2017): fit on held-out (validation) logits, then use
    ``mapping(logits / T)`` at test time. It rescales confidences without changing the
    arg-max, so accuracy is unchanged.

    The mapping needs a log form (``Mapping.log_fn``) for the NLL; a mapping with a
    ``temperature`` parameter (softmax) gets ``T`` through it, any other mapping gets
    ``logits / T``. The fit optimizes ``log T`` (unconstrained) with L-BFGS and a strong
    Wolfe line search in float64 on detached logits, starting from ``T = 1``. If the fitted
    ``T`` does not lower the NLL on ``logits`` below its value at ``T = 1`` (or is not
    finite), ``1.0`` is returned: the result is never worse than no scaling on the fitting
    data. On perfectly separable data the NLL keeps falling as ``T -> 0`` (and when every
    prediction is wrong, as ``T -> inf``); the fit then stops where the gradient vanishes,
    at a tiny (huge) ``T`` (the search is bounded to ``T`` in ``[e^-30, e^30]``).

    Args:
        logits: ``(N, C)`` logits (not probabilities: a ``UserWarning`` is given when every
            row is non-negative and sums to one), floating point; ``-inf`` excludes an entry.
        target: ``(N,)`` integer labels in ``[0, C)``.
        mapping: name (or ``Mapping`` record) of a registered mapping with a log form
            (``softmaxlab.mappings()``).
        max_iter: L-BFGS iterations, ``>= 1``.
        **mapping_params: further parameters of the mapping (e.g. ``order`` for
            ``taylor_softmax``); ``temperature`` is what is fitted and cannot be given.

    Returns:
        The temperature, a Python float ``> 0``.

    Example:
        >>> g = torch.Generator().manual_seed(0)
        >>> z = torch.randn(2000, 5, generator=g) * 2
        >>> y = torch.multinomial(torch.softmax(z, -1), 1, generator=g).squeeze(1)
        >>> round(fit_temperature(3 * z, y), 1)  # overconfident logits: T is about 3
        3.1
    """
    logits, target = _check_rows(logits, target, "logits")
    max_iter = check_int("max_iter", max_iter)
    m = get_mapping(mapping) if not isinstance(mapping, Mapping) else mapping
    if m.log_fn is None or not m.normalized:
        raise ValueError(
            f"mapping {m.name!r} has no log form, so its NLL cannot be minimized; "
            "fit_temperature needs a mapping with a log_fn (e.g. 'softmax', 'taylor_softmax')"
        )
    if "temperature" in mapping_params:
        raise ValueError(
            f"temperature is what fit_temperature fits; do not pass it, got "
            f"temperature={mapping_params['temperature']!r}"
        )
    known = {p.name for p in m.params} | {"mask"}
    for key, value in mapping_params.items():
        if key not in known:
            raise TypeError(
                f"mapping {m.name!r} has no parameter {key!r}; its parameters: "
                f"{', '.join(sorted(known))}"
            )
        if key != "mask":
            m.param(key).validate(value)
    z = logits.detach().to(torch.float64)
    bad = torch.isnan(z) | torch.isposinf(z)
    if bool(bad.any()):
        raise ValueError(f"logits must be finite or -inf, got {z[bad][0].item()}")
    if z.shape[1] > 1 and bool(
        ((z >= 0).all(dim=-1) & ((z.sum(dim=-1) - 1).abs() <= 1e-5)).all()
    ):
        warnings.warn(
            "fit_temperature got logits whose rows are all non-negative and sum to one: "
            "these look like probabilities; pass the logits (pre-mapping scores) instead",
            UserWarning,
            stacklevel=2,
        )
    log_probs = _scaled_log_probs(m, mapping_params)
    rows = torch.arange(z.shape[0], device=z.device)

    def objective(log_t: torch.Tensor) -> torch.Tensor:
        # the clamp keeps line-search probes away from T = 0 and T = inf
        log_t = log_t.clamp(-_LOG_T_BOUND, _LOG_T_BOUND)
        return -log_probs(z, log_t)[rows, target].mean()

    with torch.no_grad():
        base = objective(torch.zeros((), dtype=torch.float64, device=z.device))
    if not bool(torch.isfinite(base)):
        raise ValueError(
            f"the NLL of {m.name!r} at T=1 is {base.item()} (not finite): some target has "
            "probability 0 (a -inf logit or masked entry), so no temperature can be fitted"
        )

    log_t = torch.zeros((), dtype=torch.float64, device=z.device, requires_grad=True)
    opt = torch.optim.LBFGS(
        [log_t],
        lr=1.0,
        max_iter=max_iter,
        tolerance_grad=1e-10,
        tolerance_change=1e-12,
        line_search_fn="strong_wolfe",
    )

    def closure() -> torch.Tensor:
        opt.zero_grad()
        loss = objective(log_t)
        loss.backward()
        return loss

    with torch.enable_grad():
        opt.step(closure)
    fitted = log_t.detach().clamp(-_LOG_T_BOUND, _LOG_T_BOUND)
    with torch.no_grad():
        loss = objective(fitted)
    t = math.exp(fitted.item())
    if not (math.isfinite(t) and t > 0 and bool(torch.isfinite(loss)) and loss < base):
        return 1.0
    return t


class TemperatureScaler(nn.Module):
    r"""Temperature scaling as a module: ``forward(z) = z / T`` with a fitted ``T > 0``.

    .. math:: T = \exp(\texttt{log\_temperature})

    Holds ``log_temperature`` as an ``nn.Parameter`` (initialized at 0, i.e. ``T = 1``) so
    ``T`` stays positive under any optimizer. :meth:`fit` sets it with
    :func:`fit_temperature` (see there for the method and its guarantee).

    Shape:
        - Input: ``(*, C)`` logits.
        - Output: same shape and dtype.

    Example:
        >>> scaler = TemperatureScaler()
        >>> scaler
        TemperatureScaler(temperature=1.0)
        >>> scaler(torch.tensor([2.0, -4.0]))
        tensor([ 2., -4.], grad_fn=<DivBackward0>)
    """

    def __init__(self) -> None:
        super().__init__()
        self.log_temperature = nn.Parameter(torch.zeros(()))

    @property
    def temperature(self) -> torch.Tensor:
        """``T = exp(log_temperature)``, a 0-d tensor (differentiable)."""
        return self.log_temperature.exp()

    def forward(self, logits: torch.Tensor) -> torch.Tensor:
        check_input(logits, "logits")
        return logits / self.temperature

    def fit(self, logits: torch.Tensor, target: torch.Tensor, **kwargs) -> TemperatureScaler:
        """Set ``T`` to :func:`fit_temperature` ``(logits, target, **kwargs)``; returns self."""
        t = fit_temperature(logits, target, **kwargs)
        with torch.no_grad():
            self.log_temperature.fill_(math.log(t))
        return self

    def extra_repr(self) -> str:
        return f"temperature={float(f'{self.temperature.item():.4g}')!r}"
