r"""Safe softmax and log-softmax: the forward of :mod:`.expnorm` (numba, float32) or torch's
own ``torch._softmax``/``torch._log_softmax``, and torch's ``_backward_data`` from the saved
output, inside one ``autograd.Function``.

On torch's kernels the library's contract costs one column per row: in torch's output a
row is NaN entirely or not at all, so one column tells which rows to look at; of those, the
rows with nothing kept (all ``-inf``) become zeros (log: ``-inf``) and pass zero gradient,
and a genuine NaN stays. The numba forward flags those rows as it goes (no extra read; it
is also faster than torch's at 1024-entry rows, see ``benchmarks/results``).

One difference from the reference remains, by design (zeroing it would cost a full pass):
in a row with kept entries, the log-softmax passes to a ``-inf`` logit the upstream
gradient of its ``-inf`` log-probability (torch's derivative; the reference passes 0). That
upstream gradient is 0 whenever the loss is finite.

Large outputs and glibc: an allocation above 32 MiB is a fresh ``mmap`` each call, and its
page faults cost more than the softmax itself (2-core AVX-512 machine, float32
``(1024, 32768)``: ``torch.softmax`` 47 ms forward, 88 ms forward+backward). Keeping freed
memory in the process removes them, for torch and this library alike (19 ms and 36 ms):
``MALLOC_MMAP_THRESHOLD_=4294967296 MALLOC_TRIM_THRESHOLD_=17179869184`` in the environment
of the process (or jemalloc with ``dirty_decay_ms:-1``), at the price of a process that does
not return freed memory to the system.
"""

from __future__ import annotations

import torch

NEG_INF = float("-inf")


class ExpNormalize(torch.autograd.Function):
    """Safe (log-)softmax of log-scores ``l`` along the last dim; saves only its output (and
    the rows with nothing kept, when there are some). ``rows_kernel``: the numba forward
    (:func:`softmaxlab.kernels.cpu.expnorm.forward`, float32), or ``None`` for torch's."""

    @staticmethod
    def forward(ctx, l: torch.Tensor, log: bool, rows_kernel) -> torch.Tensor:
        empty = None
        if rows_kernel is not None:
            l = l.detach().contiguous()
            out = torch.empty_like(l)
            n = max(l.shape[-1], 1)
            flags = rows_kernel(l.view(-1, n).numpy(), out.view(-1, n).numpy(), log)
            if flags.any():
                empty = torch.from_numpy(flags).view(*l.shape[:-1], 1)
        else:
            out = (torch._log_softmax if log else torch._softmax)(l, -1, False)
            if out.shape[-1] and l.dim():
                nan_rows = out[..., 0].isnan()
                if bool(nan_rows.any()):
                    empty = (nan_rows & (l.amax(-1) == NEG_INF)).unsqueeze(-1)
                    out.masked_fill_(empty, NEG_INF if log else 0.0)
        ctx.log = log
        ctx.save_for_backward(out, empty)
        return out

    @staticmethod
    def backward(ctx, g: torch.Tensor):
        out, empty = ctx.saved_tensors
        if not ctx.log:  # p * (g - <g, p>) is 0 where p is
            return torch._softmax_backward_data(g, out, -1, out.dtype), None, None
        grad = torch._log_softmax_backward_data(g, out, -1, out.dtype)
        return (grad if empty is None else grad.masked_fill(empty, 0.0)), None, None


def exp_normalize(l: torch.Tensor, log: bool, rows_kernel=None) -> torch.Tensor:
    """Safe (log-)softmax of log-scores along the last dim (see :class:`ExpNormalize`)."""
    return ExpNormalize.apply(l, log, rows_kernel)
