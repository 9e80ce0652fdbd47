"""How one call is timed: :class:`Step` (untimed ``before``/``after`` around the timed
``call``), the case's :class:`Inputs`, :class:`Timer` and :func:`copy_bandwidth`.

Modes: ``forward`` is the op on inputs that do not require grad, under ``no_grad`` (the
inference path); ``backward`` is ``torch.autograd.grad`` alone, the forward done in
``before()`` for every repetition; ``both`` is forward and backward together.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import torch

from .stats import Stats

#: The modes a case can be measured in (``all`` on the command line means these three).
MODES: tuple[str, ...] = ("forward", "backward", "both")


class Step:
    """One timed measurement: ``before()`` and ``after()`` run untimed around the timed
    ``call()``; the value ``call()`` returns is kept alive until the clock has stopped.
    ``calls``: op calls per ``call()`` (:class:`Timer` reports the time per op call)."""

    calls: int = 1

    def before(self) -> None:
        pass

    def call(self) -> Any:
        raise NotImplementedError

    def after(self) -> None:
        pass


def run_once(step: Step) -> None:
    """One untimed call of ``step`` (a warm-up)."""
    step.before()
    out = step.call()
    del out
    step.after()


@dataclass
class Inputs:
    """A case's inputs, made once outside the timed region.

    ``args`` go to the implementation (tensors that are differentiated require grad);
    ``wrt`` are the tensors gradients are taken with respect to; ``dy`` is the upstream
    gradient of the op's (first) output, ``None`` for a scalar loss.
    """

    args: tuple
    wrt: tuple
    dy: torch.Tensor | None = None

    def detached(self) -> tuple:
        """``args`` with gradient-requiring tensors detached (same storage, no copy)."""
        return tuple(a.detach() if isinstance(a, torch.Tensor) and a.requires_grad else a
                     for a in self.args)


def primary(out: Any) -> torch.Tensor:
    """The differentiated output: the op's output, or the first of a tuple (values of
    ``topk``, the loss of a loss returning extras), or the ``loss`` of an output record."""
    if isinstance(out, (tuple, list)):
        return out[0]
    loss = getattr(out, "loss", None)
    return loss if isinstance(loss, torch.Tensor) and not isinstance(out, torch.Tensor) else out


class AutogradStep(Step):
    """An implementation timed through autograd: ``fn(*args)`` forward, and
    ``torch.autograd.grad(output, wrt, dy)`` backward."""

    def __init__(self, fn: Callable[..., Any], inputs: Inputs, mode: str):
        if mode not in MODES:
            raise ValueError(f"mode must be one of {', '.join(MODES)}, got {mode!r}")
        self.fn, self.mode = fn, mode
        self.args = inputs.detached() if mode == "forward" else inputs.args
        self.wrt, self.dy = inputs.wrt, inputs.dy
        self._y: torch.Tensor | None = None

    def before(self) -> None:
        if self.mode == "backward":
            with torch.enable_grad():
                self._y = primary(self.fn(*self.args))

    def call(self) -> Any:
        if self.mode == "forward":
            with torch.no_grad():
                return self.fn(*self.args)
        if self.mode == "backward":
            return torch.autograd.grad(self._y, self.wrt, self.dy)
        with torch.enable_grad():
            y = primary(self.fn(*self.args))
            return y, torch.autograd.grad(y, self.wrt, self.dy)

    def after(self) -> None:
        self._y = None


class CallStep(Step):
    """A plain callable per call (used for bounds such as 'the 3 GEMMs alone')."""

    def __init__(self, call: Callable[[], Any], before: Callable[[], None] | None = None):
        self._call, self._before = call, before

    def before(self) -> None:
        if self._before is not None:
            self._before()

    def call(self) -> Any:
        return self._call()


class Repeated(Step):
    """``calls`` calls of ``fn()`` per timed call, for ops of microseconds (the clock's
    resolution and its own cost are then spread over the calls)."""

    def __init__(self, fn: Callable[[], Any], calls: int):
        self.fn, self.calls = fn, calls

    def call(self) -> Any:
        out = None
        for _ in range(self.calls):
            out = self.fn()
        return out


class Timer:
    """Times one call of a step, in seconds per op call: ``perf_counter`` on CPU; CUDA events
    on a GPU, with the L2 cache flushed (a 256 MiB buffer zeroed) before every call, untimed."""

    def __init__(self, device: str):
        self.cuda = torch.device(device).type == "cuda"
        self._flush = torch.empty(64 << 20, dtype=torch.int32, device=device) if self.cuda else None

    def time(self, step: Step) -> float:
        step.before()
        if self.cuda:
            self._flush.zero_()
            start = torch.cuda.Event(enable_timing=True)
            end = torch.cuda.Event(enable_timing=True)
            torch.cuda.synchronize()
            start.record()
            out = step.call()
            end.record()
            end.synchronize()
            seconds = start.elapsed_time(end) / 1e3
        else:
            t0 = time.perf_counter()
            out = step.call()
            seconds = time.perf_counter() - t0
        del out
        step.after()
        return seconds / step.calls


def copy_bandwidth(device: str = "cpu", nbytes: int = 256 << 20, repeat: int = 10) -> dict:
    """The machine's copy bandwidth: ``dst.copy_(src)`` of ``nbytes`` of float32, both
    pre-touched; ``gbps = 2 * nbytes / median / 1e9`` (read + write)."""
    n = max(1, nbytes // 4)
    src = torch.ones(n, dtype=torch.float32, device=device)
    dst = torch.zeros_like(src)
    timer = Timer(device)
    step = CallStep(lambda: dst.copy_(src))
    timer.time(step)  # warm-up
    stats = Stats.of([timer.time(step) for _ in range(repeat)])
    return {"device": device, "bytes": 2 * n * 4, "median_s": stats.median,
            "gbps": 2 * n * 4 / stats.median / 1e9, "n": stats.n}
