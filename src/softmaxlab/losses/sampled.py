"""Sampling-based losses for large vocabularies: sampled softmax and NCE."""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F

from .._validation import check_input, check_int
from ..functional._common import compute
from ._common import check_reduction, check_target, loss_dtype, reduce

NEG_INF = float("-inf")


@dataclass(frozen=True)
class Noise:
    """A noise (proposal) distribution over ``n`` classes, held as its probability vector.

    Build with :meth:`uniform`, :meth:`log_uniform` (Zipfian: class ids sorted by
    decreasing frequency, :math:`Q(c) = \\log\\frac{c+2}{c+1} / \\log(n+1)`) or
    :meth:`unigram` (``counts ** power``, normalized).
    """

    probs: torch.Tensor

    @classmethod
    def uniform(cls, n: int) -> Noise:
        return cls(torch.full((_check_n(n),), 1.0 / n, dtype=torch.float64))

    @classmethod
    def log_uniform(cls, n: int) -> Noise:
        c = torch.arange(_check_n(n), dtype=torch.float64)
        return cls(torch.log((c + 2) / (c + 1)) / math.log(n + 1))

    @classmethod
    def unigram(cls, counts: torch.Tensor, power: float = 1.0) -> Noise:
        if not isinstance(counts, torch.Tensor) or counts.is_complex():
            raise TypeError(f"counts must be a real tensor, got {type(counts).__name__}")
        c = counts.double()
        if c.dim() != 1 or bool((c < 0).any()) or not bool((c > 0).any()):
            raise ValueError("counts must be a 1-D tensor of non-negative counts, not all zero")
        w = c.pow(power)
        return cls(w / w.sum())

    @property
    def n_classes(self) -> int:
        return self.probs.shape[0]

    def sample(self, num: int, generator: torch.Generator | None = None) -> torch.Tensor:
        """``num`` class ids drawn with replacement."""
        return torch.multinomial(self.probs, num, replacement=True, generator=generator)

    def log_expected_count(self, classes: torch.Tensor, num: int) -> torch.Tensor:
        """:math:`\\log(S\\,Q(c))`: the log of the expected number of times ``c`` is drawn."""
        return (self.probs.to(classes.device)[classes] * num).log()


def _check_n(n: object) -> int:
    return check_int("n (the number of classes)", n)


NOISES = {"uniform": Noise.uniform, "log_uniform": Noise.log_uniform}


def _candidate_logits(hidden, weight, target, bias, num_sampled, noise, samples,
                      remove_accidental_hits, generator, ignore_index):
    """Corrected logits of the true class ``(N,)`` and of the sampled classes ``(N, S)``,
    with the rows' keep mask; logits are :math:`z - \\log(S Q(c))`."""
    check_input(hidden, "hidden")
    check_input(weight, "weight")
    if hidden.dim() != 2 or weight.dim() != 2 or hidden.shape[1] != weight.shape[1]:
        raise ValueError(
            f"hidden (N, d) and weight (V, d) must agree in d, got {tuple(hidden.shape)} and "
            f"{tuple(weight.shape)}"
        )
    n_classes = weight.shape[0]
    t, keep = check_target(target, hidden.shape[:1], n_classes, ignore_index, "hidden is (N, d)")
    t, keep = t.to(hidden.device), keep.to(hidden.device)
    if bias is not None:
        check_input(bias, "bias")
        if bias.shape != (n_classes,):
            raise ValueError(f"bias must have shape ({n_classes},), got {tuple(bias.shape)}")
    if isinstance(noise, str):
        if noise not in NOISES:
            raise ValueError(f"noise must be one of {list(NOISES)} or a Noise, got {noise!r}")
        noise = NOISES[noise](n_classes)
    if noise.n_classes != n_classes:
        raise ValueError(f"noise has {noise.n_classes} classes, weight has {n_classes}")
    if samples is None:
        samples = noise.sample(check_int("num_sampled", num_sampled), generator).to(hidden.device)
    num = samples.shape[0]
    true = (hidden * weight[t]).sum(-1)
    sampled = hidden @ weight[samples].T
    if bias is not None:
        true, sampled = true + bias[t], sampled + bias[samples]
    # the loss in float32 for half types (also where torch.autocast made the matmul one)
    true, sampled = compute(true), compute(sampled)
    true = true - noise.log_expected_count(t, num).to(true.dtype)
    sampled = sampled - noise.log_expected_count(samples, num).to(sampled.dtype)
    if remove_accidental_hits:
        sampled = sampled.masked_fill(samples[None, :] == t[:, None], NEG_INF)
    return true, sampled, keep


def _reduce_rows(loss: torch.Tensor, keep: torch.Tensor, reduction: str) -> torch.Tensor:
    """``reduction`` of per-row losses ``(N,)``, the rows not in ``keep`` counting nowhere."""
    zero = torch.zeros((), dtype=loss.dtype, device=loss.device)
    return reduce(torch.where(keep, loss, zero), keep.to(loss.dtype), keep.shape, reduction)


def sampled_softmax_loss(
    hidden: torch.Tensor,
    weight: torch.Tensor,
    target: torch.Tensor,
    *,
    num_sampled: int = 64,
    bias: torch.Tensor | None = None,
    noise: str | Noise = "log_uniform",
    samples: torch.Tensor | None = None,
    remove_accidental_hits: bool = True,
    generator: torch.Generator | None = None,
    ignore_index: int = -100,
    reduction: str = "mean",
) -> torch.Tensor:
    r"""Sampled softmax (Jean et al. 2015): cross-entropy over the target and S sampled
    classes, with the proposal correction.

    .. math:: \ell = -\log \frac{e^{\tilde z_y}}{e^{\tilde z_y} + \sum_{s \in S} e^{\tilde z_s}},
              \quad \tilde z_c = h^\top w_c + b_c - \log(S\,Q(c))

    Classes ``samples`` (drawn once per call from ``noise``, shared by the batch, with
    replacement) that equal a row's target are removed from that row. An estimate of the
    full softmax cross-entropy (up to a constant) whose cost is ``O(N S d)``, not ``O(N V d)``.

    Args:
        hidden: ``(N, d)``. weight: ``(V, d)`` output embeddings. target: ``(N,)``.
        noise: ``"log_uniform"`` (Zipfian ids), ``"uniform"`` or a :class:`Noise`
            (e.g. ``Noise.unigram(counts)``). samples: fixed sampled ids ``(S,)``.

    Example:
        >>> h = torch.zeros(1, 2); w = torch.zeros(4, 2)
        >>> sampled_softmax_loss(h, w, torch.tensor([1]), noise="uniform",
        ...                      samples=torch.tensor([0, 2, 3]))
        tensor(1.3863)
    """
    reduction = check_reduction(reduction)
    true, sampled, keep = _candidate_logits(hidden, weight, target, bias, num_sampled, noise,
                                            samples, remove_accidental_hits, generator,
                                            ignore_index)
    loss = torch.cat([true[:, None], sampled], -1).logsumexp(-1) - true
    return _reduce_rows(loss, keep, reduction).to(loss_dtype(hidden))


def nce_loss(
    hidden: torch.Tensor,
    weight: torch.Tensor,
    target: torch.Tensor,
    *,
    num_sampled: int = 64,
    bias: torch.Tensor | None = None,
    noise: str | Noise = "log_uniform",
    samples: torch.Tensor | None = None,
    remove_accidental_hits: bool = True,
    generator: torch.Generator | None = None,
    ignore_index: int = -100,
    reduction: str = "mean",
) -> torch.Tensor:
    r"""Noise-contrastive estimation (Gutmann & Hyvärinen 2010; Mnih & Teh 2012).

    .. math:: \ell = -\log\sigma(\tilde z_y) - \sum_{s\in S}\log\big(1 - \sigma(\tilde z_s)\big),
              \quad \tilde z_c = h^\top w_c + b_c - \log(S\,Q(c))

    Logistic regression of data against S noise samples; at the optimum the scores are
    self-normalized log-probabilities. Arguments as :func:`sampled_softmax_loss`.

    Example:
        >>> h = torch.zeros(1, 2); w = torch.zeros(4, 2)
        >>> nce_loss(h, w, torch.tensor([1]), noise="uniform", samples=torch.tensor([0, 2]))
        tensor(2.6027)
    """
    reduction = check_reduction(reduction)
    true, sampled, keep = _candidate_logits(hidden, weight, target, bias, num_sampled, noise,
                                            samples, remove_accidental_hits, generator,
                                            ignore_index)
    loss = F.softplus(-true) + F.softplus(sampled).sum(-1)
    return _reduce_rows(loss, keep, reduction).to(loss_dtype(hidden))
