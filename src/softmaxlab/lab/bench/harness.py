"""The timing, memory and bandwidth machinery of ``softmaxlab bench`` (the one harness).

Every (case, implementation, mode) is measured the same way:

* **Steps.** A measurement is a :class:`Step` with three parts: ``before()`` (untimed: e.g.
  the forward pass whose backward is timed), ``call()`` (timed: the op alone) and ``after()``
  (untimed: drop the outputs). Inputs and upstream gradients are made once per case,
  outside the timed region, so nothing is allocated inside it except what the op itself
  allocates; outputs are released only after the clock stops.
* **Modes.** ``forward``: the op on inputs that do not require grad, under ``no_grad`` (the
  inference path). ``backward``: ``torch.autograd.grad`` alone, the forward done in
  ``before()`` for every repetition. ``both``: forward and backward together.
* **Order.** Each implementation's first call is timed on its own (``first_s``: it exposes
  compilation and lazy initialization), then warm-up calls, then the repetitions run
  in rounds over the implementations, so that the ratios between them are measured
  under the same machine load; each round in a new (seeded) random order, because what
  ran just before matters: an implementation called right after one that freed large
  temporaries gets fresh pages from the allocator (glibc trims its heap), ~1 us per 4 KiB
  page, 3x the time of a (4096, 1024) softmax. A fixed order put the candidate after the
  naive formula in every round.
* **Statistics.** Median, p20 and p80 (linear interpolation between order statistics,
  numpy's default), min, max, mean of the repetitions.
* **Peak memory.** CUDA: ``torch.cuda.max_memory_allocated()`` above what was allocated
  before the call (the inputs, the untimed forward). CPU: growth of the peak resident set
  in a fresh process per case and implementation (forked from a clean server that only
  imported the library, :mod:`._server`), which makes the case's inputs, runs the op once
  on a tiny copy of the case (to page in code and start thread pools), then for each mode
  resets the peak (``/proc/self/clear_refs``), reads the resident set and runs the op once;
  glibc's dynamic mmap threshold is pinned (``mallopt``) there so that freed memory leaves
  the resident set. Without ``/proc`` the ``ru_maxrss`` growth is reported (a lower bound).
  The modes of one implementation share its process, one after the other.
* **Bandwidth.** Each case documents the bytes its op must move per mode (e.g. softmax
  forward: read x + write y); ``gbps = bytes / median``, reported against the machine's copy
  bandwidth (``dst.copy_(src)`` of a large tensor, read + write bytes over the median time),
  measured by :func:`copy_bandwidth` in the same run.
* **Ratios.** ``ratios[b] = median(candidate) / median(b)`` for every baseline ``b`` of the
  same case and mode (below 1: the candidate is faster); ``mem_ratios`` likewise for peak
  memory.
"""

from __future__ import annotations

import atexit
import contextlib
import ctypes
import datetime as _dt
import gc
import importlib
import importlib.metadata
import json
import math
import os
import platform
import random
import re
import resource
import subprocess
import sys
import tempfile
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Iterable, Sequence

import torch

#: The modes a case can be measured in (``all`` on the command line means these three).
MODES: tuple[str, ...] = ("forward", "backward", "both")
#: Values of ``--backend``; the run sets :data:`BACKEND_ENV` to it.
BACKENDS: tuple[str, ...] = ("reference", "cpu", "triton", "auto")
#: The environment variable through which the library picks its fast path.
BACKEND_ENV = "SOFTMAXLAB_BACKEND"
#: Version of the JSON layout below.
SCHEMA = 1

#: Top-level fields of a result document (the JSON written by ``--out``).
DOC_FIELDS: tuple[str, ...] = (
    "schema", "tool", "argv", "suites", "suites_skipped", "quick", "modes", "repeat",
    "backend", "timestamp", "git", "machine", "versions", "copy_bandwidth", "definitions",
    "cases", "rows",
)
#: Fields of ``machine``.
MACHINE_FIELDS: tuple[str, ...] = (
    "host", "platform", "cpu", "cores", "cores_usable", "torch_threads", "memory_bytes",
    "allocator", "gpu", "cuda",
)
#: Packages whose versions are recorded (distribution name -> key in ``versions``).
VERSION_PACKAGES: dict[str, str] = {
    "torch": "torch", "triton": "triton", "entmax": "entmax", "liger-kernel": "liger",
    "cut-cross-entropy": "cce", "numpy": "numpy", "rich": "rich", "matplotlib": "matplotlib",
}
#: Fields of every row (one row = one case x implementation x mode).
ROW_FIELDS: tuple[str, ...] = (
    "suite", "case", "op", "shape", "dtype", "device", "mode", "impl", "role", "status",
    "note", "n", "median_s", "p20_s", "p80_s", "min_s", "max_s", "mean_s", "first_s",
    "peak_mem_bytes", "mem_method", "io_bytes", "gbps", "copy_frac", "flops", "gflops",
    "ratios", "mem_ratios", "targets",
)
#: Row statuses.
OK, NOT_INSTALLED, ERROR = "ok", "not installed", "error"

DEFINITIONS = {
    "time": "seconds per call of the timed region; median, p20, p80 over the repetitions "
            "(linear interpolation between order statistics); first_s is the first call of "
            "the implementation in this mode in this process (compilation, lazy init)",
    "modes": {
        "forward": "the op on inputs that do not require grad, under torch.no_grad()",
        "backward": "torch.autograd.grad alone; the forward runs untimed before each repetition",
        "both": "forward + torch.autograd.grad",
    },
    "peak_mem_bytes": "CUDA: torch.cuda.max_memory_allocated() above the memory allocated "
                      "before the call; CPU: growth of the peak resident set while the op runs "
                      "once in a fresh process (see mem_method)",
    "io_bytes": "bytes the op must read and write in this mode (documented per case in "
                "cases[].io); both = forward + backward",
    "gbps": "io_bytes / median_s / 1e9",
    "copy_frac": "gbps / copy_bandwidth[device].gbps (above 1 when the data fits in cache: "
                 "the copy is measured out of cache)",
    "gflops": "flops / median_s / 1e9 (matrix products: 2*N*d*V per GEMM)",
    "ratios": "median_s(candidate) / median_s(baseline), same case and mode, same run "
              "(< 1: the candidate is faster)",
    "mem_ratios": "peak_mem_bytes(candidate) / peak_mem_bytes(baseline); on CPU only when "
                  "one of the two is >= 4 MiB (resident-set peaks resolve a few hundred KiB)",
    "targets": "goals for the candidate: time/memory ratios (met if <= value) and bandwidth "
               "(copy_frac, met if >= value)",
    "copy_bandwidth": "dst.copy_(src) of a large contiguous float32 tensor: 2 * bytes / "
                      "median time (read + write)",
}


# ------------------------------------------------------------------------ statistics
def quantile(values: Sequence[float], q: float) -> float:
    """The ``q``-quantile of ``values`` by linear interpolation between order statistics
    (Hyndman-Fan type 7, numpy's default).

    Example:
        >>> quantile([4.0, 1.0, 3.0, 2.0], 0.5)
        2.5
        >>> quantile([1.0, 2.0, 3.0, 4.0, 5.0, 6.0, 7.0, 8.0, 9.0, 10.0], 0.2)
        2.8
    """
    if not values:
        raise ValueError("quantile of no values")
    if not 0.0 <= q <= 1.0:
        raise ValueError(f"q must be in [0, 1], got {q!r}")
    xs = sorted(values)
    pos = q * (len(xs) - 1)
    lo = math.floor(pos)
    hi = min(lo + 1, len(xs) - 1)
    return xs[lo] + (xs[hi] - xs[lo]) * (pos - lo)


@dataclass(frozen=True)
class Stats:
    """Summary of the repetitions' times (seconds)."""

    n: int
    median: float
    p20: float
    p80: float
    min: float
    max: float
    mean: float

    @classmethod
    def of(cls, times: Sequence[float]) -> "Stats":
        """The statistics of ``times`` (at least one).

        Example:
            >>> s = Stats.of([5.0, 1.0, 4.0, 2.0, 3.0])
            >>> (s.n, s.median, s.p20, s.p80, s.min, s.max, s.mean)
            (5, 3.0, 1.8, 4.2, 1.0, 5.0, 3.0)
        """
        if not times:
            raise ValueError("no timings")
        return cls(len(times), quantile(times, 0.5), quantile(times, 0.2), quantile(times, 0.8),
                   min(times), max(times), sum(times) / len(times))


# ------------------------------------------------------------------------ steps
class Step:
    """One timed measurement: ``before()`` and ``after()`` run untimed around the timed
    ``call()``; the value ``call()`` returns is kept alive until the clock has stopped."""

    def before(self) -> None:
        pass

    def call(self) -> Any:
        raise NotImplementedError

    def after(self) -> None:
        pass


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


# ------------------------------------------------------------------------ timing
class Timer:
    """Times one call of a step: ``perf_counter`` on CPU; CUDA events on a GPU, with the
    L2 cache flushed (a 256 MiB buffer zeroed) before every call, untimed."""

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
        return seconds


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


# ------------------------------------------------------------------------ memory
def _status_kib(field: str) -> int | None:
    try:
        with open("/proc/self/status") as f:
            m = re.search(rf"^{field}:\s+(\d+) kB", f.read(), re.M)
    except OSError:
        return None
    return int(m.group(1)) if m else None


def _reset_peak_rss() -> bool:
    """Reset the peak resident set of this process (Linux >= 4.0); False if impossible."""
    try:
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")
    except OSError:
        return False
    return _status_kib("VmHWM") is not None


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
    if _reset_peak_rss():
        base = _status_kib("VmRSS") * 1024
        out = step.call()
        peak = _status_kib("VmHWM") * 1024
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
    """Client of :mod:`softmaxlab.lab.bench._server`: a clean process that imported the
    library once and forks a fresh child per request. Started on first use, stopped at
    exit (or by :meth:`close`)."""

    def __init__(self):
        self._proc: subprocess.Popen | None = None
        self.fork = hasattr(os, "fork")

    def _start(self) -> subprocess.Popen:
        cmd = [sys.executable, "-m", "softmaxlab.lab.bench._server"]
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
                  and not m.startswith("softmaxlab.lab.") and m != "softmaxlab.__main__")


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
    (``rss_growth_in_fresh_process(("softmaxlab.lab.bench.harness", "allocation_probe",
    {"nbytes": n}))`` must report about ``n``)."""
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


# ------------------------------------------------------------------------ environment
def _cpu_model() -> str:
    with contextlib.suppress(OSError):
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    return platform.processor() or platform.machine()


#: glibc allocator settings that change the timings of large outputs (recorded with them;
#: see :mod:`softmaxlab.kernels.cpu.softmax` on fresh pages).
MALLOC_VARIABLES = ("MALLOC_MMAP_THRESHOLD_", "MALLOC_TRIM_THRESHOLD_", "GLIBC_TUNABLES",
                    "MALLOC_CONF")


def machine_info() -> dict:
    """Host, CPU model, cores, torch threads, memory, allocator, GPU."""
    try:
        usable = len(os.sched_getaffinity(0))
    except (AttributeError, OSError):
        usable = os.cpu_count()
    try:
        mem = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    except (ValueError, OSError, AttributeError):
        mem = None
    preload = os.environ.get("LD_PRELOAD", "")
    allocator = next((a for a in ("jemalloc", "tcmalloc", "mimalloc") if a in preload), "system")
    tuned = [f"{k}={os.environ[k]}" for k in MALLOC_VARIABLES if os.environ.get(k)]
    allocator += f" ({', '.join(tuned)})" if tuned else ""
    cuda = torch.cuda.is_available()
    return {
        "host": platform.node(),
        "platform": platform.platform(),
        "cpu": _cpu_model(),
        "cores": os.cpu_count(),
        "cores_usable": usable,
        "torch_threads": torch.get_num_threads(),
        "memory_bytes": mem,
        "allocator": allocator,
        "gpu": torch.cuda.get_device_name(0) if cuda else None,
        "cuda": torch.version.cuda if cuda else None,
    }


def versions() -> dict:
    """Python, softmaxlab and the packages in :data:`VERSION_PACKAGES` ("not installed"
    when absent); read from package metadata, nothing is imported."""
    import softmaxlab

    out = {"python": platform.python_version(), "softmaxlab": softmaxlab.__version__}
    for dist, key in VERSION_PACKAGES.items():
        try:
            out[key] = importlib.metadata.version(dist)
        except importlib.metadata.PackageNotFoundError:
            out[key] = "not installed"
    out["torch"] = torch.__version__
    return out


def git_info() -> dict:
    """The commit of the library's source tree and whether it has uncommitted changes
    (``None`` outside a git checkout)."""
    here = Path(__file__).resolve().parent

    def git(*args: str) -> str | None:
        try:
            r = subprocess.run(["git", "-C", str(here), *args], capture_output=True, text=True,
                               timeout=20)
        except (OSError, subprocess.SubprocessError):
            return None
        return r.stdout.strip() if r.returncode == 0 else None

    commit = git("rev-parse", "HEAD")
    status = git("status", "--porcelain") if commit else None
    return {"commit": commit, "dirty": None if status is None else bool(status)}


def write_atomic(path: str | os.PathLike, data: bytes | str) -> Path:
    """Write ``data`` to ``path`` through a temporary file in the same folder and
    ``os.replace`` (readers never see a partial file)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    payload = data.encode() if isinstance(data, str) else data
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(payload)
            f.flush()
            os.fsync(f.fileno())
        os.chmod(tmp, 0o644)  # mkstemp makes 0600; results are meant to be shared
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise
    return path


@contextlib.contextmanager
def backend_env(backend: str | None):
    """Set :data:`BACKEND_ENV` to ``backend`` for the duration (unchanged when ``None``)."""
    if backend is None:
        yield
        return
    old = os.environ.get(BACKEND_ENV)
    os.environ[BACKEND_ENV] = backend
    try:
        yield
    finally:
        if old is None:
            os.environ.pop(BACKEND_ENV, None)
        else:
            os.environ[BACKEND_ENV] = old


# ------------------------------------------------------------------------ running
@dataclass(frozen=True)
class Settings:
    """How hard to measure: ``repeat`` fixes the number of repetitions (else it adapts to
    ``budget_s`` of timed work per case and mode, within ``min_repeat``/``max_repeat``)."""

    repeat: int | None = None
    warmup: int = 2
    budget_s: float = 2.0
    min_repeat: int = 5
    max_repeat: int = 100
    memory: bool = True
    quick: bool = False

    @classmethod
    def default(cls, *, quick: bool, repeat: int | None = None, memory: bool = True):
        if quick:
            return cls(repeat, warmup=1, budget_s=0.1, min_repeat=5, max_repeat=30,
                       memory=memory, quick=True)
        return cls(repeat, memory=memory)


def _error_text(e: BaseException) -> str:
    text = f"{type(e).__name__}: {e}".strip()
    return text.splitlines()[0][:300] if text else type(e).__name__


def _new_row(case, impl, mode: str) -> dict:
    row = dict.fromkeys(ROW_FIELDS)
    row.update(suite=case.suite, case=case.id, op=case.op, shape=list(case.shape),
               dtype=str(case.dtype).removeprefix("torch."), device=case.device, mode=mode,
               impl=impl.name, role=impl.role, status=OK, note=impl.note or None,
               ratios={}, mem_ratios={}, targets=[])
    return row


def measure(case, mode: str, settings: Settings, inputs: Inputs | None = None, *,
            copy_gbps: float | None = None) -> list[dict]:
    """Time every implementation of ``case`` in ``mode`` (and, on CUDA, its peak memory);
    one row each. CPU memory is measured per case by :func:`measure_case`.

    A peer package that is not installed gives a row with status ``not installed``; an
    implementation that raises gives status ``error`` and the message; neither stops the
    run.
    """
    from .cases import ImplUnavailable  # noqa: PLC0415  (cases imports this module)

    inputs = case.make() if inputs is None else inputs
    timer = Timer(case.device)
    rows, steps, first, times = {}, {}, {}, {}
    for impl in case.impls:
        row = rows[impl.name] = _new_row(case, impl, mode)
        try:
            steps[impl.name] = case.step(impl, mode, inputs)
        except ImplUnavailable as e:
            row.update(status=NOT_INSTALLED, note=str(e))
            continue
        except Exception as e:  # noqa: BLE001
            row.update(status=ERROR, note=_error_text(e))
            continue
        try:
            first[impl.name] = timer.time(steps[impl.name])
            # slow ops (seconds per call) need no more than one warm-up call
            warm = settings.warmup if first[impl.name] < settings.budget_s / 4 else min(
                settings.warmup, 1)
            times[impl.name] = [timer.time(steps[impl.name]) for _ in range(warm)]
        except Exception as e:  # noqa: BLE001
            row.update(status=ERROR, note=_error_text(e))
            del steps[impl.name]
            _free(case.device)
    if steps:
        if settings.repeat is not None:
            reps = settings.repeat
        else:
            per_round = sum(min(times[k] or [first[k]]) for k in steps)
            reps = int(settings.budget_s / max(per_round, 1e-9))
            reps = max(settings.min_repeat, min(settings.max_repeat, reps))
        times = {k: [] for k in steps}
        order = random.Random(f"{case.id}/{mode}")
        for _ in range(reps):
            for name in order.sample(list(steps), len(steps)):
                if name not in steps:  # it failed earlier in this round
                    continue
                try:
                    times[name].append(timer.time(steps[name]))
                except Exception as e:  # noqa: BLE001
                    rows[name].update(status=ERROR, note=_error_text(e))
                    del steps[name]
                    _free(case.device)
    for name in steps:
        st = Stats.of(times[name])
        rows[name].update(n=st.n, median_s=st.median, p20_s=st.p20, p80_s=st.p80, min_s=st.min,
                          max_s=st.max, mean_s=st.mean, first_s=first[name])
        _throughput(case, mode, rows[name], copy_gbps)
    if settings.memory and timer.cuda:
        for name, step in steps.items():
            try:
                rows[name]["peak_mem_bytes"], rows[name]["mem_method"] = cuda_peak_memory(step)
            except Exception as e:  # noqa: BLE001
                rows[name]["mem_method"] = f"failed: {_error_text(e)}"
                _free(case.device)
    steps.clear()
    _free(case.device)
    return list(rows.values())


def cpu_memory(case, rows: list[dict], settings: Settings) -> None:
    """Fill ``peak_mem_bytes`` of the successful CPU rows of ``case``: one fresh process per
    implementation measures its modes one after the other (different cases and
    implementations never share a process)."""
    by_impl: dict[str, list[dict]] = {}
    for r in rows:
        if r["status"] == OK:
            by_impl.setdefault(r["impl"], []).append(r)
    for name, group in by_impl.items():
        target = ("softmaxlab.lab.bench.cases", "memory_steps",
                  {"suite": case.suite, "quick": settings.quick, "case_id": case.id,
                   "impl": name, "modes": [r["mode"] for r in group]})
        try:
            growth, method = rss_growth_in_fresh_process(target)
        except Exception as e:  # noqa: BLE001
            for r in group:
                r["mem_method"] = f"failed: {_error_text(e)}"
            continue
        for r in group:
            r["peak_mem_bytes"], r["mem_method"] = growth[r["mode"]], method


def measure_case(case, modes: Sequence[str], settings: Settings, *,
                 copy_gbps: float | None = None,
                 log: Callable[[str], None] | None = None) -> list[dict]:
    """Every implementation of ``case`` in every mode: time, memory, throughput, ratios
    and targets; one row each."""
    t0 = time.perf_counter()
    inputs = case.make()
    rows: list[dict] = []
    for mode in modes:
        rows += measure(case, mode, settings, inputs, copy_gbps=copy_gbps)
    del inputs
    _free(case.device)
    if settings.memory and torch.device(case.device).type == "cpu":
        cpu_memory(case, rows, settings)
    link(rows, case.targets)
    if log is not None:
        for r in rows:
            log(_progress_line(r))
        log(f"{case.id}: {time.perf_counter() - t0:.1f} s")
    return rows


def _free(device: str) -> None:
    """Return cached CUDA memory (tensors themselves are freed by reference counting; a
    full ``gc.collect()`` costs ~0.1 s with torch loaded, so it runs on CUDA only)."""
    if torch.device(device).type == "cuda":
        gc.collect()
        torch.cuda.empty_cache()


def _throughput(case, mode: str, row: dict, copy_gbps: float | None) -> None:
    row["io_bytes"] = case.io_bytes(mode)
    row["flops"] = case.flops(mode)
    if row["io_bytes"]:
        row["gbps"] = row["io_bytes"] / row["median_s"] / 1e9
        if copy_gbps:
            row["copy_frac"] = row["gbps"] / copy_gbps
    if row["flops"]:
        row["gflops"] = row["flops"] / row["median_s"] / 1e9


#: Resident-set peaks resolve allocations to a few hundred KiB (small blocks can come from
#: heap pages already resident): no memory ratio is formed when both peaks are below this.
RSS_RATIO_FLOOR = 4 << 20


def _mem_comparable(c: dict, b: dict) -> bool:
    pc, pb = c["peak_mem_bytes"], b["peak_mem_bytes"]
    if pc is None or not pb:
        return False
    exact = (c.get("mem_method") or "").startswith("cuda")
    return exact or max(pc, pb) >= RSS_RATIO_FLOOR


def link(rows: list[dict], targets: Iterable = ()) -> None:
    """Fill the candidate rows' ``ratios``, ``mem_ratios`` and ``targets`` from the other
    rows of the same case and mode (``rows`` may hold several cases and modes)."""
    by_key: dict[tuple, list[dict]] = {}
    for r in rows:
        by_key.setdefault((r["case"], r["mode"]), []).append(r)
    for group in by_key.values():
        for c in group:
            if c["role"] != "candidate" or c["status"] != OK:
                continue
            for b in group:
                if b is c or b["role"] != "baseline" or b["status"] != OK:
                    continue
                c["ratios"][b["impl"]] = c["median_s"] / b["median_s"]
                if _mem_comparable(c, b):
                    c["mem_ratios"][b["impl"]] = c["peak_mem_bytes"] / b["peak_mem_bytes"]
            c["targets"] = [t.check(c) for t in targets if t.applies(c)]


def _progress_line(r: dict) -> str:
    shape = "x".join(str(s) for s in r["shape"])
    if r["status"] != OK:
        return (f"  {r['op']:<22} {shape:<14} {r['mode']:<8} {r['impl']:<12} "
                f"{r['status']}: {r['note']}")
    ratios = " ".join(f"{k} {v:.2f}x" for k, v in r["ratios"].items())
    return (f"  {r['op']:<22} {shape:<14} {r['mode']:<8} {r['impl']:<12} "
            f"{format_time(r['median_s']):>9}  {ratios}")


def format_time(s: float | None) -> str:
    """Seconds with a readable unit.

    Example:
        >>> format_time(0.0123), format_time(2.5e-6), format_time(3.2)
        ('12.3 ms', '2.5 us', '3.2 s')
    """
    if s is None:
        return "-"
    for unit, scale in (("s", 1.0), ("ms", 1e-3), ("us", 1e-6)):
        if s >= scale:
            v = s / scale
            return f"{v:.3g} {unit}" if v < 100 else f"{v:.0f} {unit}"
    return f"{s / 1e-9:.0f} ns"


def run(suites: Sequence[str] | str = "all", *, quick: bool = False,
        modes: Sequence[str] | str = "all", repeat: int | None = None,
        backend: str | None = None, memory: bool = True, argv: Sequence[str] | None = None,
        log: Callable[[str], None] | None = None) -> dict:
    """Run benchmark suites and return the result document (see :data:`DOC_FIELDS`).

    ``suites``: names from :data:`softmaxlab.lab.bench.cases.SUITES` or ``"all"`` (every
    suite that applies to this machine). ``modes``: from :data:`MODES` or ``"all"``.
    ``backend``: one of :data:`BACKENDS`; :data:`BACKEND_ENV` is set to it for the run
    (``None``: leave the environment as it is). Unknown names raise ``ValueError`` listing
    the valid ones.
    """
    from . import cases as C  # noqa: PLC0415

    suites, skipped = C.resolve_suites(suites)
    modes = resolve_modes(modes)
    if backend is not None and backend not in BACKENDS:
        raise ValueError(f"unknown backend {backend!r}; valid backends: {', '.join(BACKENDS)}")
    if repeat is not None and (isinstance(repeat, bool) or not isinstance(repeat, int)
                               or repeat < 1):
        raise ValueError(f"repeat must be an integer >= 1, got {repeat!r}")
    settings = Settings.default(quick=quick, repeat=repeat, memory=memory)
    with backend_env(backend):
        all_cases = [c for s in suites for c in C.build_suite(s, quick=quick)]
        devices = sorted({c.device for c in all_cases})
        warm_torch(devices)
        bw_bytes = (64 << 20) if quick else (256 << 20)
        copy = {}
        for d in devices:
            nbytes = bw_bytes if torch.device(d).type == "cpu" else (1 << 30)
            copy[d] = copy_bandwidth(d, nbytes, repeat=5 if quick else 10)
            if log:
                log(f"copy bandwidth ({d}): {copy[d]['gbps']:.1f} GB/s")
        rows: list[dict] = []
        for case in all_cases:
            rows += measure_case(case, modes, settings, copy_gbps=copy[case.device]["gbps"],
                                 log=log)
    return {
        "schema": SCHEMA,
        "tool": "softmaxlab bench",
        "argv": list(argv) if argv is not None else None,
        "suites": list(suites),
        "suites_skipped": skipped,
        "quick": quick,
        "modes": list(modes),
        "repeat": repeat,
        "backend": backend if backend is not None else os.environ.get(BACKEND_ENV, "auto"),
        "timestamp": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
        "git": git_info(),
        "machine": machine_info(),
        "versions": versions(),
        "copy_bandwidth": copy,
        "definitions": DEFINITIONS,
        "cases": [c.describe() for c in all_cases],
        "rows": rows,
    }


def warm_torch(devices: Iterable[str] = ("cpu",)) -> None:
    """Run torch's own lazy initialization (the autograd engine, the imports of the first
    ``torch.autograd.grad``, the CUDA context) once before anything is timed, so that each
    implementation's ``first_s`` holds only its own first-call costs."""
    for d in devices:
        x = torch.randn(8, 8, device=d, requires_grad=True)
        y = torch.softmax(x, -1)
        torch.autograd.grad(y, (x,), torch.ones_like(y))
        if torch.device(d).type == "cuda":
            torch.cuda.synchronize()


def resolve_modes(modes: Sequence[str] | str) -> list[str]:
    """``"all"`` -> :data:`MODES`; a name or list of names, validated."""
    names = [modes] if isinstance(modes, str) else list(modes)
    if names == ["all"]:
        return list(MODES)
    bad = [m for m in names if m not in MODES]
    if bad or not names:
        raise ValueError(f"unknown mode {bad[0] if bad else ''!r}; valid modes: "
                         f"{', '.join(MODES)}, all")
    return names


def default_out(suites: Sequence[str] | str) -> Path:
    """``benchmarks/results/bench-<suite>-<host>-<date>.json`` (date: UTC, to the second)."""
    name = suites if isinstance(suites, str) else "+".join(suites)
    host = re.sub(r"[^A-Za-z0-9_.-]+", "_", platform.node() or "host")
    stamp = _dt.datetime.now(_dt.timezone.utc).strftime("%Y%m%dT%H%M%SZ")
    return Path("benchmarks") / "results" / f"bench-{name}-{host}-{stamp}.json"


def save(doc: dict, path: str | os.PathLike) -> Path:
    """Write the result document as JSON, atomically."""
    return write_atomic(path, json.dumps(doc, indent=1, sort_keys=False) + "\n")


def load(path: str | os.PathLike) -> dict:
    """Read a result document, checking that it is one (``ValueError`` otherwise)."""
    try:
        with open(path) as f:
            doc = json.load(f)
    except OSError as e:
        raise ValueError(f"cannot read {path}: {e.strerror or e}") from None
    except json.JSONDecodeError as e:
        raise ValueError(f"{path} is not JSON: {e}") from None
    if not isinstance(doc, dict):
        raise ValueError(f"{path} is not a softmaxlab bench result (not an object)")
    missing = [k for k in ("rows", "machine", "versions") if k not in doc]
    if missing:
        raise ValueError(f"{path} is not a softmaxlab bench result (missing {', '.join(missing)})")
    return doc
