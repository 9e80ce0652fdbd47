r"""The online softmax normalizer (Milakov & Gimelshein 2018) as a public, mergeable value.

A row's normalizer is the pair (running max ``m``, sum ``d`` of ``exp(x - m)``). Built from
any chunk of the row, two states merge associatively:

.. math:: (m, d) \oplus (m', d') = (M,\ d\,e^{m - M} + d'\,e^{m' - M}), \quad M = \max(m, m')

so a huge row can be streamed in chunks, split across devices, and normalized after one pass;
``logsumexp = m + log d``. ``softmax_topk`` uses it to return the top-k probabilities without
materializing the softmax.
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import reduce

import torch

from . import kernels
from ._constants import NEG_INF
from ._validation import check_dim, check_input, check_int, check_k
from .functional._common import compute, exp_normalize, recomputed_vjp
from .kernels import ops
from .kernels.registry import eager

__all__ = ["OnlineState", "online_logsumexp", "softmax_topk"]


@dataclass(frozen=True)
class OnlineState:
    """Running ``max`` and ``sum`` of ``exp(x - max)`` per row (shape: the batch shape).

    A row with no entry yet (or only ``-inf``) has ``max = -inf, sum = 0``.

    Example:
        >>> x = torch.tensor([[1.0, 2.0, 3.0, 4.0]])
        >>> s = OnlineState.from_chunk(x[:, :1]).merge(OnlineState.from_chunk(x[:, 1:]))
        >>> torch.allclose(s.logsumexp(), x.logsumexp(-1))
        True
    """

    max: torch.Tensor
    sum: torch.Tensor

    @classmethod
    def empty(cls, shape: tuple[int, ...] | torch.Size, *, dtype=torch.float32, device=None):
        """The identity of :meth:`merge`."""
        return cls(torch.full(tuple(shape), NEG_INF, dtype=dtype, device=device),
                   torch.zeros(tuple(shape), dtype=dtype, device=device))

    @classmethod
    def from_chunk(cls, x: torch.Tensor, dim: int = -1) -> OnlineState:
        """The state of the entries of ``x`` along ``dim`` (computed in float32 or better)."""
        check_input(x)
        d = check_dim(x, dim)
        x = compute(x)
        if x.shape[d] == 0:
            shape = x.shape[:d] + x.shape[d + 1:]
            return cls.empty(shape, dtype=x.dtype, device=x.device)
        m = x.amax(d)
        safe = m.masked_fill(m == NEG_INF, 0.0)
        return cls(m, (x - safe.unsqueeze(d)).exp().sum(d))

    def merge(self, other: OnlineState) -> OnlineState:
        """Combine two states of disjoint parts of the same rows (associative, commutative)."""
        m = torch.maximum(self.max, other.max)
        safe = m.masked_fill(m == NEG_INF, 0.0)
        return OnlineState(m, self.sum * (self.max - safe).exp()
                           + other.sum * (other.max - safe).exp())

    def logsumexp(self) -> torch.Tensor:
        """``log sum exp`` of every entry seen (``-inf`` for an empty row)."""
        return self.max + self.sum.log()

    def probabilities(self, x: torch.Tensor, dim: int = -1) -> torch.Tensor:
        """Softmax probabilities ``exp(x - max) / sum`` of entries ``x`` of the rows this state
        has seen (0 in rows with no finite entry; exact also for logits near 1e30)."""
        d = check_dim(x, dim)
        m, s = self.max.unsqueeze(d), self.sum.unsqueeze(d)
        p = (x - m.masked_fill(m == NEG_INF, 0.0)).exp() / s.masked_fill(s == 0, 1.0)
        return p.to(x.dtype)


def online_logsumexp(x: torch.Tensor, dim: int = -1, *, chunk_size: int = 65536) -> torch.Tensor:
    """``logsumexp`` along ``dim`` by merging the states of chunks of ``chunk_size`` entries.

    Example:
        >>> x = torch.randn(3, 1000)
        >>> torch.allclose(online_logsumexp(x, chunk_size=64), x.logsumexp(-1))
        True
    """
    check_input(x)
    d = check_dim(x, dim)
    chunk_size = check_int("chunk_size", chunk_size)
    states = [OnlineState.from_chunk(c, d) for c in x.split(chunk_size, d)] or [
        OnlineState.from_chunk(x, d)]
    return reduce(OnlineState.merge, states).logsumexp().to(x.dtype)


def _topk_rows(x: torch.Tensor, idx: torch.Tensor) -> torch.Tensor:
    """The safe softmax of rows ``x`` at the entries ``idx``."""
    return exp_normalize(compute(x), False).gather(-1, idx)


# the top-k kernels' backward under create_graph=True (see kernels/ops.py)
ops.register_vjp("softmax_topk", recomputed_vjp(_topk_rows))


def _common_call(x: torch.Tensor, k: int) -> tuple[torch.Tensor, torch.Tensor] | None:
    """The top-k of a graph-free call along the last dim with a valid ``k`` straight from
    its kernel (the block search, or for short rows the softmax kernel at the top-k
    logits), decided in cached lookups; ``None`` for the general path."""
    spec = eager("softmax_topk", x, (("k", k), ("n", x.shape[-1])))
    if spec is not None:
        p, idx, _ = ops.row_function(spec.name, "topk_forward")(x.contiguous(), k)
        return p, idx
    fast = eager("softmax", x)
    if fast is None:
        return None
    idx = x.topk(k, dim=-1).indices
    return ops.row_function(fast.name, "expnorm_forward")(x, False).gather(-1, idx), idx


def softmax_topk(x: torch.Tensor, k: int, *, dim: int = -1) -> tuple[torch.Tensor, torch.Tensor]:
    r"""The ``k`` largest softmax probabilities along ``dim`` and their indices.

    Equal to ``softmax(x, dim).topk(k, dim)`` (largest first; the indices are those of the
    k largest logits, also where probabilities underflow to equal zeros), normalized over
    the whole row. Differentiable. On CPU, long rows take the one-read block search of
    :mod:`softmaxlab.kernels.cpu.topk` (the top-k logits and the row's online normalizer
    give :math:`p_i = e^{x_i - m} / d` without materializing the softmax); other rows the
    safe softmax gathered at the top-k logits.

    Example:
        >>> p, i = softmax_topk(torch.tensor([1.0, 3.0, 2.0]), 2)
        >>> i
        tensor([1, 2])
    """
    if dim == -1 and type(k) is int and type(x) is torch.Tensor and 0 < k <= x.shape[-1:].numel():
        found = _common_call(x, k)
        if found is not None:
            return found
    check_input(x)
    d = check_dim(x, dim)
    check_k(x, d, k)
    if x.dim() == 0:
        p, idx = softmax_topk(x.reshape(1), k)
        return p.reshape(()), idx.reshape(())
    last = d == x.dim() - 1
    rows = x if last else x.movedim(d, -1)
    spec = kernels.select("softmax_topk", rows, k=k, n=rows.shape[-1])
    if spec is not None:
        p, idx = ops.softmax_topk(rows if spec.low_precision else compute(rows), k, spec.name)
    else:  # rows too short for the block search: the (safe) softmax at the top-k logits
        z = compute(rows)
        idx = z.topk(k, dim=-1).indices
        fast = eager("softmax", z)  # a call that needs no graph: the kernel itself
        p = (_topk_rows(z, idx) if fast is None else
             ops.row_function(fast.name, "expnorm_forward")(z, False).gather(-1, idx))
    if p.dtype != x.dtype:
        p = p.to(x.dtype)
    return (p, idx) if last else (p.movedim(-1, d), idx.movedim(-1, d))

