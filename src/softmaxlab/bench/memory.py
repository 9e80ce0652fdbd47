"""Peak memory of one call: growth of the peak resident set in a fresh process (CPU), or of
``torch.cuda.max_memory_allocated()`` (CUDA).

CPU: each measurement runs in a process forked from a clean server that only imported the
library (:mod:`._server`); it makes the case's inputs, runs the op once on a tiny copy of the
case (to page in code and start thread pools), then for each mode resets the peak
(``/proc/self/clear_refs``), reads the resident set and runs the op once; glibc's dynamic
mmap threshold is pinned (``mallopt``) there so that freed memory leaves the resident set.
Without ``/proc`` the ``ru_maxrss`` growth is reported (a lower bound). :func:`reset_peak_rss`
and :func:`proc_status_bytes` are the one peak-RSS helper (the lab's training runs use it too).
"""

from __future__ import annotations

import atexit
import ctypes
import importlib
import json
import os
import re
import resource
import subprocess
import sys
import threading
from typing import Any

import torch

from .environment import BACKEND_ENV
from .timing import Step


def proc_status_bytes(field: str) -> int | None:
    """A memory field of ``/proc/self/status`` (``VmRSS``, ``VmHWM``: the resident set, its
    peak) in bytes; ``None`` without ``/proc``."""
    try:
        with open("/proc/self/status") as f:
            m = re.search(rf"^{field}:\s+(\d+) kB", f.read(), re.M)
    except OSError:
        return None
    return int(m.group(1)) * 1024 if m else None


def reset_peak_rss() -> int | None:
    """Reset the peak resident set of this process to the current one (Linux >= 4.0) and
    return the current one in bytes; ``None`` if impossible."""
    try:
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")
    except OSError:
        return None
    return proc_status_bytes("VmRSS")


def _maxrss_bytes() -> int:
    r = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return r if sys.platform == "darwin" else r * 1024


def _pin_malloc() -> bool:
    """Fix glibc's mmap and trim thresholds at 128 KiB (this disables the dynamic mmap
    threshold), so that large freed blocks leave the resident set at once."""
    try:
        libc = ctypes.CDLL(None)
        mallopt = libc.mallopt
    except (OSError, AttributeError):
        return False
    m_trim_threshold, m_mmap_threshold = -1, -3
    return bool(mallopt(m_mmap_threshold, 128 << 10)) and bool(mallopt(m_trim_threshold, 128 << 10))


def rss_growth_here(step: Step) -> tuple[int, str]:
    """Peak resident-set growth (bytes) while ``step.call()`` runs once in this process,
    after ``step.before()``; and the method used."""
    step.before()
    base = reset_peak_rss()
    if base is not None:
        out = step.call()
        peak = proc_status_bytes("VmHWM")
        method = "rss-peak (fresh process, VmHWM reset)"
    else:
        base = _maxrss_bytes()
        out = step.call()
        peak = _maxrss_bytes()
        method = "ru_maxrss growth (fresh process; lower bound)"
    del out
    step.after()
    return max(0, peak - base), method


def measure_request(request: dict) -> dict:
    """Handle one memory request in this (fresh) process: ``request["target"]`` =
    ``(module, function, kwargs)`` names a function returning a :class:`Step` or a dict
    of named steps; each one's RSS growth is measured, one after the other."""
    for k, v in (request.get("env") or {}).items():
        if v is None:
            os.environ.pop(k, None)
        else:
            os.environ[k] = v
    if request.get("threads"):
        torch.set_num_threads(int(request["threads"]))
    pinned = _pin_malloc()
    module, func, kwargs = request["target"]
    steps = getattr(importlib.import_module(module), func)(**kwargs)
    steps = steps if isinstance(steps, dict) else {"": steps}
    out, method = {}, ""
    for key in list(steps):
        out[key], method = rss_growth_here(steps.pop(key))
    if pinned:
        method += ", malloc thresholds pinned"
    return {"bytes": out, "method": method}


class MemoryServer:
    """Client of :mod:`._server`: a clean process that imported the library once and forks
    a fresh child per request. Started on first use, stopped at exit (or by :meth:`close`)."""

    def __init__(self):
        self._proc: subprocess.Popen | None = None
        self.fork = hasattr(os, "fork")

    def _start(self) -> subprocess.Popen:
        cmd = [sys.executable, "-m", f"{__package__}._server"]
        if not self.fork:
            cmd.append("--no-fork")
        return subprocess.Popen(cmd, stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True,
                                bufsize=1)

    def request(self, request: dict, timeout: float) -> dict:
        if self._proc is None or self._proc.poll() is not None:
            self._proc = self._start()
        proc = self._proc
        proc.stdin.write(json.dumps(request) + "\n")
        proc.stdin.flush()
        timer = threading.Timer(timeout, proc.kill)
        timer.start()
        try:
            line = proc.stdout.readline()
        finally:
            timer.cancel()
        if not self.fork:
            self.close()
        if not line:
            self.close()
            return {"error": f"memory server stopped (timeout {timeout:.0f} s or crash)"}
        return json.loads(line)

    def close(self) -> None:
        proc, self._proc = self._proc, None
        if proc is not None and proc.poll() is None:
            proc.stdin.close()
            try:
                proc.wait(10)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()


_SERVER: MemoryServer | None = None


def close_memory_server() -> None:
    """Stop the memory server now (it restarts on the next measurement)."""
    if _SERVER is not None:
        _SERVER.close()


def library_modules() -> list[str]:
    """The softmaxlab modules this process has imported (kernels are imported lazily, on
    first dispatch): the memory server imports them too before forking, so that a child
    pays for no imports (library modules have no import-time side effects)."""
    return sorted(m for m in sys.modules if m.startswith("softmaxlab.")
                  and not m.startswith(("softmaxlab.lab.", "softmaxlab.bench."))
                  and m != "softmaxlab.__main__")


def _server() -> MemoryServer:
    global _SERVER
    if _SERVER is None:
        _SERVER = MemoryServer()
        atexit.register(_SERVER.close)
    return _SERVER


def rss_growth_in_fresh_process(target: tuple[str, str, dict], *, threads: int | None = None,
                                timeout: float = 1800.0) -> tuple[Any, str]:
    """Run ``module.function(**kwargs)`` in a fresh process and measure the peak
    resident-set growth (bytes) of one ``call()`` of the :class:`Step` it returns (or of
    each step of the dict it returns, one after the other: then a dict of growths is
    returned). Also returns the method used. The process is forked from a clean server
    that only imported the library (:mod:`._server`).

    Raises ``RuntimeError`` with the child's error if the measurement failed.
    """
    env = {BACKEND_ENV: os.environ.get(BACKEND_ENV)}
    msg = _server().request({"target": list(target), "env": env, "preload": library_modules(),
                             "threads": threads or torch.get_num_threads()}, timeout)
    if "error" in msg:
        raise RuntimeError(msg["error"])
    got = msg["bytes"]
    return (got[""] if list(got) == [""] else got), msg["method"]


class _Allocation(Step):
    def __init__(self, nbytes: int):
        self.n = nbytes // 4
        torch.ones(1)  # torch's own first-op initialization, before the measurement

    def call(self) -> torch.Tensor:
        return torch.ones(self.n, dtype=torch.float32)  # written, so every page is resident


def allocation_probe(nbytes: int) -> Step:
    """A step that allocates and touches ``nbytes``: a self-check of the memory measurement
    (``rss_growth_in_fresh_process((__name__, "allocation_probe", {"nbytes": n}))`` must
    report about ``n``)."""
    return _Allocation(int(nbytes))


def cuda_peak_memory(step: Step) -> tuple[int, str]:
    """``torch.cuda.max_memory_allocated()`` growth above what was allocated before the
    call (after ``step.before()``)."""
    step.before()
    torch.cuda.synchronize()
    base = torch.cuda.memory_allocated()
    torch.cuda.reset_peak_memory_stats()
    out = step.call()
    torch.cuda.synchronize()
    peak = torch.cuda.max_memory_allocated() - base
    del out
    step.after()
    return max(0, peak), "cuda max_memory_allocated above inputs"


class TensorPeak:
    """Peak bytes of the tensors created while the block runs, above those alive before it:
    a ``TorchDispatchMode`` sees every op's outputs (forward, the autograd engine's backward
    on this thread, optimizer updates) and counts each new storage until its last tensor is
    freed. Deterministic and independent of the allocator's state, so of what ran before in
    the process. Not seen: scratch memory inside one op (a fused kernel's temporaries; its
    outputs are counted), memory outside torch tensors, and CUDA backward threads (use the
    CUDA allocator's peak there).

    Example:
        >>> with TensorPeak() as peak:
        ...     y = torch.ones(1024) * 2
        >>> peak.bytes
        8192
    """

    def __init__(self):
        self.bytes = 0
        self._now = 0
        self._live: dict[int, list[int]] = {}
        self._mode = None

    def __enter__(self) -> TensorPeak:
        import weakref

        from torch.utils._python_dispatch import TorchDispatchMode
        from torch.utils._pytree import tree_leaves

        tracker = self

        def release(ptr: int) -> None:
            entry = tracker._live.get(ptr)
            if entry is not None:
                entry[1] -= 1
                if entry[1] == 0:
                    tracker._now -= entry[0]
                    del tracker._live[ptr]

        class Mode(TorchDispatchMode):
            def __torch_dispatch__(self, func, types, args=(), kwargs=None):
                out = func(*args, **(kwargs or {}))
                inputs = {a.untyped_storage().data_ptr() for a in tree_leaves((args, kwargs))
                          if isinstance(a, torch.Tensor) and a.layout == torch.strided}
                for t in tree_leaves(out):
                    if not isinstance(t, torch.Tensor) or t.layout != torch.strided:
                        continue
                    storage = t.untyped_storage()
                    ptr, nbytes = storage.data_ptr(), storage.nbytes()
                    if ptr in tracker._live:
                        tracker._live[ptr][1] += 1
                    elif ptr in inputs or nbytes == 0:
                        continue  # in place, or a view of a tensor from before the block
                    else:
                        tracker._live[ptr] = [nbytes, 1]
                        tracker._now += nbytes
                        tracker.bytes = max(tracker.bytes, tracker._now)
                    weakref.finalize(t, release, ptr)
                return out

        self._mode = Mode()
        self._mode.__enter__()
        return self

    def __exit__(self, *exc) -> None:
        self._mode.__exit__(*exc)
