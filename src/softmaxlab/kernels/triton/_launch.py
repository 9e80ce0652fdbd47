"""Launch planning shared by the Triton kernels: row layout, block sizes, path choice.

A row of ``n`` entries is processed either

* by the **single-block** path: the whole row (or several short rows) in registers, one
  read and one write per entry, when ``n <= MAX_SINGLE_BLOCK``; or
* by the **cooperative** path, for rows longer than that: ``n_chunks`` programs share a
  row, each keeps one chunk of it in registers, publishes the chunk's partial state,
  waits (a bounded spin on a per-row counter) until the row's other programs have done
  the same, merges the states and writes its chunk: one read and one write per entry, as
  for short rows. The grid is at most ``COOP_PROGRAMS_PER_SM`` programs per SM, so that a
  row's programs run at the same time; a program whose partners do not arrive within
  ``COOP_SPIN`` polls computes the row's state itself (a second read), so the result is
  right whatever the scheduling. By default only the backward of float32/float64 rows
  takes it (``COOP_FORWARD``, ``COOP_BACKWARD``, ``COOP_MIN_ITEMSIZE``: where an H200 run
  measured it faster); or
* by the **multi-block** (online) path: the row is cut into ``n_chunks`` spans of whole
  ``TILE``-sized tiles, each program reduces its span to a partial ``(max, sum)`` state
  (Milakov & Gimelshein 2018), and the states are merged before the output is written
  ("split", when there are too few rows to fill the GPU); or, with enough rows, a persistent
  grid loops over whole rows, two passes per row, the second one last tile first with L2
  eviction hints so that it re-reads from L2 ("persistent").

The thresholds are module attributes so that tests can lower them and drive the
cooperative and multi-block paths with tiny rows; :data:`PATHS` counts the paths taken.
"""

from __future__ import annotations

import functools
from collections import Counter
from dataclasses import dataclass

import torch

#: Longest row (entries) kept in registers by the single-block kernels.
MAX_SINGLE_BLOCK = 32768
#: Entries per loop iteration of the multi-block kernels (a power of two).
TILE = 4096
#: Entries per program that the single-block kernels aim for with short rows.
MIN_TILE_ELEMS = 2048
#: Entries per thread that the single-block kernels aim for (sets their warps).
SINGLE_PER_THREAD = 16
#: Programs per multiprocessor that the multi-block split aims for: rows are split over
#: programs only when there are fewer than ``PROGRAMS_PER_SM * SMs`` of them (1 measured
#: best on an H100: a persistent row loop beat a 2-way split at 512 x 262144, see
#: benchmarks/results/gpu_bench_h100_notes.md).
PROGRAMS_PER_SM = 1
#: Rows that get one program each (the "fused" multi-block case) run on a persistent grid
#: of this many programs per SM (0: one program per row) with loop tiles of
#: ``PERSISTENT_TILE``: few rows in flight, so that the second pass over a row hits L2.
PERSISTENT_PROGRAMS_PER_SM = 1
PERSISTENT_TILE = 8192
#: L2 eviction hints of the persistent kernels: keep what the first pass reads, drop what
#: the second pass reads and writes.
EVICT_HINTS = True
#: Programs per SM of the cooperative path (0: off; then long rows take the multi-block
#: paths), chunks of up to ``COOP_CHUNK`` entries per program, and the polls a program waits
#: for the other programs of its row before it computes the row's state itself.
COOP_PROGRAMS_PER_SM = 1
COOP_CHUNK = 16384
COOP_SPIN = 1 << 14
#: Load the next row's chunk while waiting for the other programs of this one (not yet
#: measured on a GPU, so off).
COOP_PREFETCH = False
#: Which passes take the cooperative path, and from which entry size: measured on an H200
#: (benchmarks/results/gpu-h200-notes.md), the backward of float32 rows of 65536-1M entries
#: reached 65-78% of copy bandwidth against 61-72% for the multi-block paths, but the
#: forward (no prefetch) 45-60% against 58-69%, and bfloat16 backward at 65536 66% against 80%.
COOP_FORWARD = False
COOP_BACKWARD = True
COOP_MIN_ITEMSIZE = 4
#: Upper bound on the chunks one row is split into (the partial states of a row are
#: merged in one block of ``next_pow2(n_chunks)`` lanes).
MAX_CHUNKS = 1024

#: How often each kernel path ran (``"softmax.single"``, ``"softmax.multi"``, ...).
PATHS: Counter = Counter()


def next_pow2(n: int) -> int:
    return 1 << max(0, int(n) - 1).bit_length()


def cdiv(a: int, b: int) -> int:
    return -(-a // b)


@functools.cache
def _sm_count(device: str) -> int:
    if device.startswith("cuda"):
        return torch.cuda.get_device_properties(torch.device(device)).multi_processor_count
    return 4  # CPU (the Triton interpreter): small, so that tiny tests split rows


def sm_count(device: torch.device) -> int:
    return _sm_count(str(device))


def evict_hints() -> dict:
    """Eviction-policy constexprs of the persistent kernels (``KEEP``, ``DROP``)."""
    return dict(KEEP="evict_last", DROP="evict_first") if EVICT_HINTS else dict(KEEP="", DROP="")


def is_single(n: int) -> bool:
    return n <= MAX_SINGLE_BLOCK


def warps(elems: int, per_thread: int = 16) -> int:
    """Warps for a tile of ``elems`` entries at about ``per_thread`` entries per thread."""
    return max(4, min(32, next_pow2(elems // (32 * per_thread))))


@dataclass(frozen=True)
class SingleBlock:
    """``ROWS`` rows of up to ``BLOCK`` entries per program."""

    rows: int
    block: int
    grid: tuple
    num_warps: int


def single_block(m: int, n: int) -> SingleBlock:
    block = next_pow2(max(n, 1))
    rows = max(1, min(MIN_TILE_ELEMS // block, next_pow2(m)))
    return SingleBlock(rows, block, (cdiv(m, rows),), warps(rows * block, SINGLE_PER_THREAD))


@dataclass(frozen=True)
class Coop:
    """Rows cut into ``n_chunks`` chunks of ``chunk`` entries, one program each; ``grid``
    programs in all, ``grid // n_chunks`` rows at a time; ``tile``: the loop tile of a
    program that reads the whole row itself (its partners late)."""

    chunk: int
    n_chunks: int
    grid: tuple
    block_c: int
    num_warps: int
    spin: int
    tile: int


def coop(m: int, n: int, x: torch.Tensor, backward: bool) -> Coop | None:
    """The cooperative plan for ``m`` rows of ``n`` entries of ``x``'s dtype in the forward or
    backward pass, or None when it is off for them or a row needs more programs than may run
    at once."""
    device = x.device
    if (not COOP_PROGRAMS_PER_SM or not (COOP_BACKWARD if backward else COOP_FORWARD)
            or x.element_size() < COOP_MIN_ITEMSIZE):
        return None
    n_chunks = cdiv(max(n, 1), COOP_CHUNK)
    chunk = next_pow2(cdiv(max(n, 1), n_chunks))
    groups = min(m, COOP_PROGRAMS_PER_SM * sm_count(device) // n_chunks)
    if groups < 1 or n_chunks > MAX_CHUNKS:
        return None
    # on the interpreter programs run one after another: no partner ever arrives later
    spin = COOP_SPIN if device.type == "cuda" else 0
    return Coop(chunk, n_chunks, (groups * n_chunks,), next_pow2(n_chunks),
                warps(chunk, SINGLE_PER_THREAD), spin, min(TILE, chunk))


@dataclass(frozen=True)
class MultiBlock:
    """Each row cut into ``n_chunks`` spans of ``span`` entries (a multiple of ``tile``)."""

    span: int
    n_chunks: int
    tile: int
    block_c: int
    num_warps: int


def multi_block(m: int, n: int, device: torch.device, split: bool = True) -> MultiBlock:
    """Split rows over programs so that about ``PROGRAMS_PER_SM`` programs run per SM
    (``split=False``: one program per row)."""
    tile = min(TILE, next_pow2(max(n, 1)))
    tiles = cdiv(max(n, 1), tile)
    want = cdiv(PROGRAMS_PER_SM * sm_count(device), max(m, 1)) if split else 1
    n_chunks = max(1, min(want, tiles, MAX_CHUNKS))
    span = cdiv(tiles, n_chunks) * tile
    n_chunks = cdiv(max(n, 1), span)
    return MultiBlock(span, n_chunks, tile, next_pow2(n_chunks), warps(tile, 8))


def is_f64(x: torch.Tensor) -> bool:
    return x.dtype == torch.float64


def acc_dtype(x: torch.Tensor) -> torch.dtype:
    """float64 for float64 inputs, else float32 (the compute dtype of every kernel)."""
    return torch.float64 if x.dtype == torch.float64 else torch.float32
