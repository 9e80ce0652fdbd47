r"""torch's own kernels under the library's contract: safe softmax and log-softmax
(``torch._softmax``/``torch._log_softmax``, and ``_backward_data`` from the saved output),
and the softmax cross-entropy of rows (``F.cross_entropy``, one fused call).

On torch's kernels the library's contract costs one column per row: in torch's output a
row is NaN entirely or not at all, so one column tells which rows to look at; of those, the
rows with nothing kept (all ``-inf``) become zeros (log: ``-inf``) and pass zero gradient,
and a genuine NaN stays. The numba forward flags those rows as it goes (no extra read; it
is also faster than torch's at 1024-entry rows, see ``benchmarks/results``).

Large outputs and glibc: an allocation above 32 MiB is a fresh ``mmap`` each call, and its
page faults cost more than the softmax itself (2-core AVX-512 machine, float32
``(1024, 32768)``: ``torch.softmax`` 47 ms forward, 88 ms forward+backward). Keeping freed
memory in the process removes them, for torch and this library alike (19 ms and 36 ms):
``MALLOC_MMAP_THRESHOLD_=4294967296 MALLOC_TRIM_THRESHOLD_=17179869184`` in the environment
of the process (or jemalloc with ``dirty_decay_ms:-1``), at the price of a process that does
not return freed memory to the system.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F

NEG_INF = float("-inf")


def expnorm_forward(l: torch.Tensor, log: bool) -> torch.Tensor:
    """Safe (log-)softmax of the rows ``l`` by torch's kernels: rows with nothing kept (all
    ``-inf``) give zeros (log: ``-inf``), a NaN stays in its row."""
    out = (torch._log_softmax if log else torch._softmax)(l, -1, False)
    if out.shape[-1] and l.dim():
        nan_rows = out[..., 0].isnan()
        if bool(nan_rows.any()):
            empty = (nan_rows & (l.amax(-1) == NEG_INF)).unsqueeze(-1)
            out.masked_fill_(empty, NEG_INF if log else 0.0)
    return out


def softmax_backward(g: torch.Tensor, out: torch.Tensor) -> torch.Tensor:
    """Input gradient of softmax from its output (0 where ``out`` is)."""
    return torch._softmax_backward_data(g, out, -1, out.dtype)


def expnorm_backward(g: torch.Tensor, out: torch.Tensor, log: bool) -> torch.Tensor:
    """Input gradient from the saved output; the log form ignores the upstream gradient at
    excluded entries and gives them 0 (the gradient of the row with them sliced out)."""
    if not log:
        return softmax_backward(g, out)
    # g - e^out sum g, with g 0 at the excluded entries (where e^out is 0): 0 there
    return torch._log_softmax_backward_data(g.masked_fill(out == NEG_INF, 0.0), out, -1,
                                            out.dtype)


def cross_entropy_forward(z: torch.Tensor, target: torch.Tensor, weight: torch.Tensor | None,
                          ignore_index: int, reduction: str) -> torch.Tensor | None:
    """torch's softmax cross-entropy of rows ``z`` ``(M, C)`` and class ids ``(M,)``, or
    ``None`` where its result holds a NaN the contract defines otherwise or that torch's
    kernel may have made (a row with nothing kept, every row ignored; a NaN logit gives NaN
    on either path): the caller then takes the safe path. Eager CPU only (reads the value).
    An id out of range raises torch's ``IndexError``."""
    loss = F.cross_entropy(z, target, weight, ignore_index=ignore_index, reduction=reduction)
    nan = bool(loss.isnan().any()) if reduction == "none" else math.isnan(loss.item())
    return None if nan else loss
