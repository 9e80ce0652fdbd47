"""The run loop of ``softmaxlab bench``: every (case, implementation, mode) is measured the
same way.

* **Steps.** A measurement is a :class:`~.timing.Step`: ``before()`` (untimed: e.g. the
  forward pass whose backward is timed), ``call()`` (timed: the op alone) and ``after()``
  (untimed: drop the outputs). Inputs and upstream gradients are made once per case, outside
  the timed region, so nothing is allocated inside it except what the op itself allocates;
  outputs are released only after the clock stops. Modes: see :mod:`.timing`.
* **Order.** Each implementation's first call is timed on its own (``first_s``: it exposes
  compilation and lazy initialization), then warm-up calls, then the repetitions run
  in rounds over the implementations, so that the ratios between them are measured
  under the same machine load; each round in a new (seeded) random order, because what
  ran just before matters: an implementation called right after one that freed large
  temporaries gets fresh pages from the allocator (glibc trims its heap), ~1 us per 4 KiB
  page, 3x the time of a (4096, 1024) softmax. A fixed order put the candidate after the
  naive formula in every round.
* **Statistics.** Median, p20 and p80 (linear interpolation between order statistics,
  numpy's default), min, max, mean of the repetitions (:mod:`.stats`).
* **Peak memory.** :mod:`.memory`; the modes of one implementation share its process, one
  after the other.
* **Bandwidth.** Each case documents the bytes its op must move per mode (e.g. softmax
  forward: read x + write y); ``gbps = bytes / median``, reported against the machine's copy
  bandwidth (:func:`~.timing.copy_bandwidth`) measured in the same run.
* **Ratios.** ``ratios[b] = median(candidate) / median(b)`` for every baseline ``b`` of the
  same case and mode (below 1: the candidate is faster); ``mem_ratios`` likewise for peak
  memory.
"""

from __future__ import annotations

import dataclasses
import datetime as _dt
import gc
import os
import random
import time
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass

import torch

from . import environment
from .memory import cuda_peak_memory, rss_growth_in_fresh_process
from .records import ERROR, OK, Case, ImplUnavailable, Row, error_text
from .report import progress_line
from .results import DEFINITIONS, SCHEMA
from .stats import Stats
from .suites import build_suite, memory_steps, resolve_suites
from .timing import MODES, Inputs, Timer, copy_bandwidth


@dataclass(frozen=True)
class Settings:
    """How hard to measure: ``repeat`` fixes the number of repetitions (else it adapts to
    ``budget_s`` of timed work per case and mode, within ``min_repeat``/``max_repeat``);
    ``quick`` and ``compile`` name the suites' variant (for the memory processes)."""

    repeat: int | None = None
    warmup: int = 2
    budget_s: float = 2.0
    min_repeat: int = 5
    max_repeat: int = 100
    memory: bool = True
    quick: bool = False
    compile: bool = False

    @classmethod
    def default(cls, *, quick: bool, repeat: int | None = None, memory: bool = True,
                compile: bool = False):
        if quick:
            return cls(repeat, warmup=1, budget_s=0.1, min_repeat=5, max_repeat=30,
                       memory=memory, quick=True, compile=compile)
        return cls(repeat, memory=memory, compile=compile)


def measure(case: Case, mode: str, settings: Settings, inputs: Inputs | None = None, *,
            copy_gbps: float | None = None) -> list[Row]:
    """Time every implementation of ``case`` in ``mode`` (and, on CUDA, its peak memory);
    one row each. CPU memory is measured per case by :func:`measure_case`.

    An implementation that cannot run here (:class:`~.records.ImplUnavailable`: a peer
    package not installed, a failed ``torch.compile``) gives a row with that status and the
    reason; an implementation that raises gives status ``error`` and the message; neither
    stops the run.
    """
    inputs = case.make() if inputs is None else inputs
    timer = Timer(case.device)
    rows, steps, first, times = {}, {}, {}, {}
    for impl in case.impls:
        rows[impl.name] = Row.of(case, impl, mode)
        try:
            steps[impl.name] = case.step(impl, mode, inputs)
        except ImplUnavailable as e:
            rows[impl.name] = dataclasses.replace(rows[impl.name], status=e.status, note=str(e))
            continue
        except Exception as e:  # noqa: BLE001
            rows[impl.name] = _failed(rows[impl.name], e)
            continue
        try:
            first[impl.name] = timer.time(steps[impl.name])
            # slow ops (seconds per call) need no more than one warm-up call
            warm = settings.warmup if first[impl.name] < settings.budget_s / 4 else min(
                settings.warmup, 1)
            times[impl.name] = [timer.time(steps[impl.name]) for _ in range(warm)]
        except Exception as e:  # noqa: BLE001
            rows[impl.name] = _failed(rows[impl.name], e)
            del steps[impl.name]
            _free(case.device)
    if steps:
        if settings.repeat is not None:
            reps = settings.repeat
        else:
            per_round = sum(min(times[k] or [first[k]]) * steps[k].calls for k in steps)
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
                    rows[name] = _failed(rows[name], e)
                    del steps[name]
                    _free(case.device)
    for name in steps:
        st = Stats.of(times[name])
        rows[name] = _throughput(case, mode, dataclasses.replace(
            rows[name], n=st.n, median_s=st.median, p20_s=st.p20, p80_s=st.p80, min_s=st.min,
            max_s=st.max, mean_s=st.mean, first_s=first[name]), copy_gbps)
    if settings.memory and case.memory and timer.cuda:
        for name, step in steps.items():
            try:
                peak, method = cuda_peak_memory(step)
            except Exception as e:  # noqa: BLE001
                peak, method = None, f"failed: {error_text(e)}"
                _free(case.device)
            rows[name] = dataclasses.replace(rows[name], peak_mem_bytes=peak, mem_method=method)
    steps.clear()
    _free(case.device)
    return list(rows.values())


def _failed(row: Row, e: BaseException) -> Row:
    return dataclasses.replace(row, status=ERROR, note=error_text(e))


def cpu_memory(case: Case, rows: list[Row], settings: Settings) -> list[Row]:
    """``rows`` with ``peak_mem_bytes`` of the successful CPU rows of ``case`` filled in: one
    fresh process per implementation measures its modes one after the other (different
    cases and implementations never share a process)."""
    by_impl: dict[str, list[Row]] = {}
    for r in rows:
        if r.status == OK:
            by_impl.setdefault(r.impl, []).append(r)
    filled: dict[tuple, Row] = {}
    for name, group in by_impl.items():
        target = (memory_steps.__module__, memory_steps.__name__,
                  {"suite": case.suite, "quick": settings.quick, "compile": settings.compile,
                   "case_id": case.id, "impl": name, "modes": [r.mode for r in group]})
        try:
            growth, method = rss_growth_in_fresh_process(target)
        except Exception as e:  # noqa: BLE001
            growth, method = {}, f"failed: {error_text(e)}"
        for r in group:
            filled[r.impl, r.mode] = dataclasses.replace(r, peak_mem_bytes=growth.get(r.mode),
                                                mem_method=method)
    return [filled.get((r.impl, r.mode), r) for r in rows]


def measure_case(case: Case, modes: Sequence[str], settings: Settings, *,
                 copy_gbps: float | None = None) -> list[Row]:
    """Every implementation of ``case`` in every mode (of ``modes`` that the case has): time,
    memory, throughput, ratios and targets; one row each."""
    inputs = case.make()
    rows: list[Row] = []
    for mode in modes:
        if mode in case.modes:
            rows += measure(case, mode, settings, inputs, copy_gbps=copy_gbps)
    del inputs
    _free(case.device)
    if settings.memory and case.memory and torch.device(case.device).type == "cpu":
        rows = cpu_memory(case, rows, settings)
    return link(rows, case.targets)


def _free(device: str) -> None:
    """Return cached CUDA memory (tensors themselves are freed by reference counting; a
    full ``gc.collect()`` costs ~0.1 s with torch loaded, so it runs on CUDA only)."""
    if torch.device(device).type == "cuda":
        gc.collect()
        torch.cuda.empty_cache()


def _throughput(case: Case, mode: str, row: Row, copy_gbps: float | None) -> Row:
    io, flops = case.io_bytes(mode), case.flops(mode)
    gbps = io / row.median_s / 1e9 if io else None
    return dataclasses.replace(
        row, io_bytes=io, flops=flops, gbps=gbps,
        copy_frac=gbps / copy_gbps if gbps is not None and copy_gbps else None,
        gflops=flops / row.median_s / 1e9 if flops else None)


#: Resident-set peaks resolve allocations to a few hundred KiB (small blocks can come from
#: heap pages already resident): no memory ratio is formed when both peaks are below this.
RSS_RATIO_FLOOR = 4 << 20


def _mem_comparable(c: Row, b: Row) -> bool:
    pc, pb = c.peak_mem_bytes, b.peak_mem_bytes
    if pc is None or not pb:
        return False
    exact = (c.mem_method or "").startswith("cuda")
    return exact or max(pc, pb) >= RSS_RATIO_FLOOR


def link(rows: list[Row], targets: Iterable = ()) -> list[Row]:
    """``rows`` with the candidate rows' ``ratios``, ``mem_ratios`` and ``targets`` filled in
    from the other rows of the same case and mode (``rows`` may hold several cases and
    modes)."""
    by_key: dict[tuple, list[Row]] = {}
    for r in rows:
        by_key.setdefault((r.case, r.mode), []).append(r)
    out = []
    for c in rows:
        if c.role != "candidate" or c.status != OK:
            out.append(c)
            continue
        bases = [b for b in by_key[c.case, c.mode]
                 if b is not c and b.role == "baseline" and b.status == OK]
        c = dataclasses.replace(
            c, ratios={b.impl: c.median_s / b.median_s for b in bases},
            mem_ratios={b.impl: c.peak_mem_bytes / b.peak_mem_bytes for b in bases
                        if _mem_comparable(c, b)})
        out.append(dataclasses.replace(c, targets=tuple(t.check(c) for t in targets
                                                        if t.applies(c))))
    return out


def run(suites: Sequence[str] | str = "all", *, quick: bool = False,
        modes: Sequence[str] | str = "all", repeat: int | None = None,
        backend: str | None = None, memory: bool = True, compile: bool = False,
        argv: Sequence[str] | None = None, log: Callable[[str], None] | None = None) -> dict:
    """Run benchmark suites and return the result document (see
    :data:`~.results.DOC_FIELDS`).

    ``suites``: names from :data:`~.suites.SUITES` or ``"all"`` (every suite that applies to
    this machine). ``modes``: from :data:`~.timing.MODES` or ``"all"``. ``backend``: one of
    :data:`~.environment.BACKENDS`; :data:`~.environment.BACKEND_ENV` is set to it for the
    run (``None``: leave the environment as it is). ``compile``: also time the compiled
    variants the cases name. Unknown names raise ``ValueError`` listing the valid ones.
    """
    suites, skipped = resolve_suites(suites)
    modes = resolve_modes(modes)
    if backend is not None and backend not in environment.BACKENDS:
        raise ValueError(f"unknown backend {backend!r}; valid backends: "
                         f"{', '.join(environment.BACKENDS)}")
    if repeat is not None and (isinstance(repeat, bool) or not isinstance(repeat, int)
                               or repeat < 1):
        raise ValueError(f"repeat must be an integer >= 1, got {repeat!r}")
    settings = Settings.default(quick=quick, repeat=repeat, memory=memory, compile=compile)
    with environment.backend_env(backend):
        all_cases = [c for s in suites for c in build_suite(s, quick=quick, compile=compile)]
        devices = sorted({c.device for c in all_cases})
        warm_torch(devices)
        bw_bytes = (64 << 20) if quick else (256 << 20)
        copy = {}
        for d in devices:
            nbytes = bw_bytes if torch.device(d).type == "cpu" else (1 << 30)
            copy[d] = copy_bandwidth(d, nbytes, repeat=5 if quick else 10)
            if log:
                log(f"copy bandwidth ({d}): {copy[d]['gbps']:.1f} GB/s")
        rows: list[Row] = []
        interrupted = False
        try:
            for case in all_cases:
                t0 = time.perf_counter()
                done = measure_case(case, modes, settings, copy_gbps=copy[case.device]["gbps"])
                rows += done  # kept before anything is printed: a Ctrl-C after a line loses nothing
                if log is not None:
                    for r in done:
                        log(progress_line(r.as_dict()))
                    log(f"{case.id}: {time.perf_counter() - t0:.1f} s")
        except KeyboardInterrupt:  # keep what was measured: the caller saves it
            interrupted = True
    return {
        "schema": SCHEMA,
        "tool": "softmaxlab bench",
        "argv": list(argv) if argv is not None else None,
        "suites": list(suites),
        "suites_skipped": skipped,
        "quick": quick,
        "modes": list(modes),
        "repeat": repeat,
        "backend": (backend if backend is not None
                    else os.environ.get(environment.BACKEND_ENV, "auto")),
        "timestamp": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
        "git": environment.git_info(),
        "machine": environment.machine_info(),
        "versions": environment.versions(),
        "copy_bandwidth": copy,
        "definitions": DEFINITIONS,
        "cases": [c.describe() for c in all_cases],
        "rows": [r.as_dict() for r in rows],
        **({"interrupted": True} if interrupted else {}),
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
