"""Graph total-variation regularizer for output distributions (Graphmax)."""

from __future__ import annotations

import torch

from .._validation import check_input, check_real, checks_values
from ..functional._common import compute
from ._common import check_reduction, loss_dtype


def _edges(graph, n: int, like: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(source ids, target ids, edge weights) from a dense/sparse adjacency or an edge list."""
    if isinstance(graph, tuple):
        if len(graph) != 2:
            raise ValueError("graph as a tuple must be (edge_index (2, E), edge_weight (E,))")
        index, weight = graph
        if index.dim() != 2 or index.shape[0] != 2 or weight.shape != index.shape[1:]:
            raise ValueError(
                f"edge_index must be (2, E) and edge_weight (E,), got {tuple(index.shape)} and "
                f"{tuple(weight.shape)}"
            )
    elif isinstance(graph, torch.Tensor):
        if graph.shape != (n, n):
            raise ValueError(f"graph adjacency must be ({n}, {n}), got {tuple(graph.shape)}")
        if graph.is_sparse:
            g = graph.coalesce()
            index, weight = g.indices(), g.values()
        else:
            index = graph.nonzero().T
            weight = graph[index[0], index[1]]
    else:
        raise TypeError(f"graph must be an adjacency tensor or (edge_index, edge_weight), got "
                        f"{type(graph).__name__}")
    if checks_values():  # value checks: eager mode only (no graph break under compile)
        if index.numel() and (int(index.min()) < 0 or int(index.max()) >= n):
            raise ValueError(f"graph node ids must be in [0, {n})")
        if bool((weight < 0).any()):
            raise ValueError("graph edge weights must be >= 0")
    return index[0].to(like.device), index[1].to(like.device), weight.to(like.device, like.dtype)


def graph_tv_penalty(
    probs: torch.Tensor,
    graph: torch.Tensor | tuple[torch.Tensor, torch.Tensor],
    *,
    weight: float = 1.0,
    reduction: str = "mean",
) -> torch.Tensor:
    r"""Graph total variation of output distributions (Graphmax; Liu et al. 2021).

    .. math:: \Omega(p) = \lambda \sum_{(i,j) \in E} w_{ij} \, |p_i - p_j|

    Added to a training loss, it pulls the probabilities of related classes (e.g. words that
    co-occur) together. Each edge counts once as given (a symmetric adjacency counts both
    directions).

    Args:
        probs: ``(*, V)`` probabilities (class dimension last).
        graph: ``(V, V)`` adjacency (dense or sparse COO) of weights :math:`w_{ij} \ge 0`, or
            ``(edge_index (2, E), edge_weight (E,))``.
        weight: :math:`\lambda \ge 0`.
        reduction: over the rows of ``probs``: ``"mean"``, ``"sum"`` or ``"none"`` (``(*)``).

    Under ``torch.compile`` pass the edge list (``edge_index = A.nonzero().T``, computed
    once outside): a dense adjacency needs ``nonzero`` (a data-dependent shape, a graph
    break) and dynamo does not trace sparse tensors. The checks of node ids and weights
    run in eager mode only.

    Example:
        >>> p = torch.tensor([[0.7, 0.2, 0.1]])
        >>> graph_tv_penalty(p, (torch.tensor([[0], [1]]), torch.tensor([2.0])))
        tensor(1.)
    """
    check_input(probs, "probs")
    lam = check_real("weight", weight, low=0.0)
    reduction = check_reduction(reduction)
    if probs.dim() < 1:
        raise ValueError("probs must have a class dimension")
    p = compute(probs)  # float32 for half types
    src, dst, w = _edges(graph, p.shape[-1], p)
    per_row = lam * ((p[..., src] - p[..., dst]).abs() * w).sum(-1)
    if reduction != "none":
        per_row = per_row.sum() if reduction == "sum" else per_row.mean()
    return per_row.to(loss_dtype(probs))
