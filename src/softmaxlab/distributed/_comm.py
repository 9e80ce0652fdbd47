"""Process groups, vocabulary shards and the collectives the distributed losses issue.

Everything that talks to ``torch.distributed`` goes through :class:`Comm`, so that the
tensors handed to collectives can be counted (:func:`count_traffic`: the benchmark's and
the tests' measure of communication volume) and a DTensor input is unwrapped in one place
(:func:`vocab_shard`).
"""

from __future__ import annotations

import contextlib
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

import torch
import torch.distributed as dist

__all__ = ["Comm", "Shard", "Traffic", "count_traffic", "resolve_group", "vocab_shard"]


@dataclass
class Traffic:
    """The collectives issued inside a :func:`count_traffic` block, one
    ``(op, dtype, numel)`` per call; ``numel`` is the input tensor's (for ``all_gather``
    the one tensor each rank contributes), and the wall time spent inside them."""

    calls: list[tuple[str, torch.dtype, int]] = field(default_factory=list)
    seconds: float = 0.0

    @property
    def collectives(self) -> int:
        return len(self.calls)

    @property
    def bytes(self) -> int:
        """Bytes this rank handed to collectives (payload, not the wire traffic)."""
        return sum(n * _itemsize(dtype) for _, dtype, n in self.calls)

    def bus_bytes(self, world: int) -> float:
        """Bytes each rank sends with ring algorithms: ``2 (W - 1) / W`` times the payload
        of an all-reduce, ``W - 1`` times the contribution of an all-gather."""
        total = 0.0
        for op, dtype, n in self.calls:
            size = n * _itemsize(dtype)
            total += size * (world - 1) if op == "all_gather" else 2 * (world - 1) / world * size
        return total


def _itemsize(dtype: torch.dtype) -> int:
    return torch.empty((), dtype=dtype).element_size()


_COUNTERS: list[Traffic] = []


@contextlib.contextmanager
def count_traffic() -> Iterator[Traffic]:
    """Record every collective the distributed losses issue in this process inside the
    block (nested blocks each see all of them).

    Example:
        >>> with count_traffic() as traffic:
        ...     pass
        >>> traffic.bytes, traffic.collectives
        (0, 0)
    """
    traffic = Traffic()
    _COUNTERS.append(traffic)
    try:
        yield traffic
    finally:
        _COUNTERS.remove(traffic)


@contextlib.contextmanager
def _record(op: str, t: torch.Tensor) -> Iterator[None]:
    if not _COUNTERS:
        yield
        return
    start = time.perf_counter()
    yield
    took = time.perf_counter() - start
    for traffic in _COUNTERS:
        traffic.calls.append((op, t.dtype, t.numel()))
        traffic.seconds += took


_OPS = {"sum": dist.ReduceOp.SUM, "max": dist.ReduceOp.MAX, "min": dist.ReduceOp.MIN}


class Comm:
    """The collectives of one process group (of size at least 2)."""

    def __init__(self, group: Any, world: int, rank: int):
        self.group, self.world, self.rank = group, world, rank

    def all_reduce(self, t: torch.Tensor, op: str = "sum") -> torch.Tensor:
        """``t`` reduced over the group (in place; ``t`` must be contiguous)."""
        with _record("all_reduce", t):
            dist.all_reduce(t, op=_OPS[op], group=self.group)
        return t

    def all_gather(self, t: torch.Tensor) -> torch.Tensor:
        """Every rank's ``t`` stacked: ``(world, *t.shape)``."""
        t = t.contiguous()
        out = [torch.empty_like(t) for _ in range(self.world)]
        with _record("all_gather", t):
            dist.all_gather(out, t, group=self.group)
        return torch.stack(out)


def resolve_group(group: Any) -> Comm | None:
    """The :class:`Comm` of ``group`` (``None``: the default group), or ``None`` when the
    call is not distributed: ``torch.distributed`` not initialized, or a group of one."""
    if group is not None and not isinstance(group, dist.ProcessGroup):
        raise TypeError(f"group must be a torch.distributed.ProcessGroup or None, got "
                        f"{type(group).__name__}")
    if not (dist.is_available() and dist.is_initialized()):
        if group is not None:
            raise ValueError("group was given but torch.distributed is not initialized")
        return None
    group = group if group is not None else dist.group.WORLD
    world = dist.get_world_size(group)
    if world == 1:
        return None
    return Comm(group, world, dist.get_rank(group))


@dataclass(frozen=True)
class Shard:
    """This rank's slice ``[lo, lo + size)`` of a vocabulary of ``vocab`` classes, the
    largest slice of any rank (``max_size``) and the group's :class:`Comm`."""

    comm: Comm
    lo: int
    size: int
    vocab: int
    max_size: int

    @property
    def hi(self) -> int:
        return self.lo + self.size


def _is_dtensor(x: object) -> bool:
    try:
        from torch.distributed.tensor import DTensor
    except ImportError:  # pragma: no cover - torch without DTensor
        return False
    return isinstance(x, DTensor)


def local(x: Any, name: str) -> Any:
    """A replicated DTensor argument (hidden states, targets, weights) as its local tensor;
    anything else unchanged."""
    if not _is_dtensor(x):
        return x
    from torch.distributed.tensor import Replicate

    if not all(isinstance(p, Replicate) for p in x.placements):
        raise ValueError(f"{name} must be replicated (placements all Replicate()), got "
                         f"placements {tuple(x.placements)}")
    return x.to_local()


def vocab_shard(x: torch.Tensor, name: str, group: Any, dim: int, rows: int,
                ) -> tuple[torch.Tensor, Shard | None]:
    """The local tensor of the vocabulary-sharded argument ``x`` (its vocabulary along
    ``dim``) and this rank's :class:`Shard`, or ``(x, None)`` when the call is not
    distributed.

    A ``DTensor`` sharded along ``dim`` on one mesh dimension (``Shard(dim)``, every other
    mesh dimension ``Replicate()``) gives its local tensor (differentiable: the gradient
    returns as a DTensor) and that mesh dimension's group; its offsets come from its
    layout, no communication. A plain tensor is this rank's slice in rank order: one
    all-gather of the slice sizes (any split, empty slices too) finds the offsets and
    checks that every rank has the same ``rows`` rows.
    """
    if _is_dtensor(x):
        from torch.distributed.tensor import Replicate
        from torch.distributed.tensor import Shard as ShardPlacement
        from torch.distributed.tensor._utils import compute_local_shape_and_global_offset

        dx: Any = x  # a DTensor
        d = dim % dx.dim()
        vocab_dims = [i for i, p in enumerate(dx.placements)
                      if isinstance(p, ShardPlacement) and p.dim % dx.dim() == d]
        others_ok = all(isinstance(p, Replicate) for i, p in enumerate(dx.placements)
                        if i not in vocab_dims)
        if len(vocab_dims) != 1 or not others_ok:
            raise ValueError(
                f"{name} must be a DTensor sharded along its vocabulary dimension {dim} on one "
                f"mesh dimension (Shard({d}), Replicate() elsewhere), got placements "
                f"{tuple(dx.placements)}")
        mesh = dx.device_mesh
        mesh_dim = vocab_dims[0]
        dgroup = mesh.get_group(mesh_dim)
        if group is not None and dist.get_process_group_ranks(group) != \
                dist.get_process_group_ranks(dgroup):
            raise ValueError(f"group does not match the mesh group of the DTensor {name}")
        shape, offset = compute_local_shape_and_global_offset(dx.shape, mesh, dx.placements)
        vocab = dx.shape[d]
        world = mesh.size(mesh_dim)
        loc = dx.to_local()
        if world == 1:
            return loc, None
        comm = Comm(dgroup, world, mesh.get_local_rank(mesh_dim))
        size = shape[d]
        lo = offset[d] if size else vocab  # torch reports offset 0 for an empty chunk
        max_size = -(-vocab // world)  # DTensor shards as torch.chunk
        return loc, Shard(comm, lo, size, vocab, max_size)
    found = resolve_group(group)
    if found is None:
        return x, None
    comm = found
    size = x.shape[dim]
    mine = torch.tensor([size, rows], dtype=torch.int64)
    everyone = comm.all_gather(mine)
    sizes, all_rows = everyone[:, 0].tolist(), everyone[:, 1].tolist()
    if len(set(all_rows)) != 1:
        raise ValueError(
            f"every rank must pass the same rows of {name}; rows per rank: {all_rows}")
    return x, Shard(comm, sum(sizes[:comm.rank]), size, sum(sizes), max(sizes))
