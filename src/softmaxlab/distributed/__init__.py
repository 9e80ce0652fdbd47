r"""Vocabulary-parallel losses on ``torch.distributed`` (any backend: gloo, NCCL, ...).

A vocabulary too large for one device is split by classes: rank ``r`` of the group holds the
logits (or the output-projection rows) of its slice of the vocabulary, the ranks' slices in
rank order, any sizes. The functions here take that slice, the replicated targets, and
return the loss of the *whole* vocabulary on every rank, exactly the single-process loss in
value and gradients:

* :func:`cross_entropy` for every normalized mapping with a log form (softmax, Taylor,
  spherical, sigsoftmax, activation-normalize): one max and one sum of 2-3 numbers per row;
* :func:`fenchel_young_loss` for sparsemax, 1.5-entmax (exact thresholds from a few
  reductions) and alpha-entmax (bisection);
* :func:`linear_cross_entropy`, fused with the output projection (``weight_shard``), chunked;
* :func:`softmax_topk` over the shards.

The group defaults to the world; without ``torch.distributed`` initialized, or with a group
of one, each is the single-process function. A ``DTensor`` sharded along the vocabulary
(``Shard(-1)`` logits, ``Shard(0)`` weight) brings its own group and offsets.
:func:`count_traffic` records the tensors handed to collectives (the benchmark's measure).

Example (on every rank of an initialized group)::

    lo, hi = rank * V // world, (rank + 1) * V // world
    loss = softmaxlab.distributed.cross_entropy(logits[:, lo:hi], target)
    loss.backward()  # logits' slice gets its slice of the gradient
"""

from ._comm import Traffic, count_traffic
from .cross_entropy import cross_entropy
from .fenchel_young import fenchel_young_loss
from .linear import linear_cross_entropy
from .topk import softmax_topk

__all__ = ["Traffic", "count_traffic", "cross_entropy", "fenchel_young_loss",
           "linear_cross_entropy", "softmax_topk"]
