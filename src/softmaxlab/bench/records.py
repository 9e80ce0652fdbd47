"""The records of a benchmark: a :class:`Case` (an op on one input shape) with its
:class:`Impl` (implementations: the candidate first, then baselines) and :class:`Target`
(goals for the candidate), and the :class:`Row` each measurement gives."""

from __future__ import annotations

import dataclasses
import importlib
import math
import zlib
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import torch

from .timing import MODES, AutogradStep, Inputs, Repeated, Step, run_once

#: Row statuses.
OK, NOT_INSTALLED, UNAVAILABLE, ERROR = "ok", "not installed", "unavailable", "error"


class ImplUnavailable(Exception):
    """An implementation that cannot run here (a peer package not installed, a function
    ``torch.compile`` cannot compile): reported as the row's ``status`` with the reason,
    never raised to the user."""

    def __init__(self, reason: str, status: str = UNAVAILABLE):
        super().__init__(reason)
        self.status = status


def error_text(e: BaseException) -> str:
    """The first line of ``type: message``, at most 300 characters."""
    text = f"{type(e).__name__}: {e}".strip()
    return text.splitlines()[0][:300] if text else type(e).__name__


@dataclass(frozen=True)
class Impl:
    """One implementation of a case's op.

    ``load()`` imports lazily and returns ``fn(*args)`` (or, with ``manual``, a function
    ``(case, inputs, mode) -> Step`` for implementations not timed through autograd, such
    as the GEMM bound). ``package``/``dist``: a peer's import and pip names; when it is not
    importable the row says "not installed". ``compiled``: ``torch.compile(fn,
    fullgraph=True)`` is timed instead of ``fn``.
    """

    name: str
    load: Callable[[], Callable[..., Any]]
    role: str = "baseline"
    package: str | None = None
    dist: str | None = None
    manual: bool = False
    note: str = ""
    compiled: bool = False

    def resolve(self) -> Callable[..., Any]:
        if self.package is not None:
            try:
                importlib.import_module(self.package)
            except ModuleNotFoundError as e:
                if (e.name or "").split(".")[0] != self.package.split(".")[0]:
                    raise
                raise ImplUnavailable(
                    f"{self.dist or self.package} not installed "
                    f"(pip install {self.dist or self.package})", NOT_INSTALLED) from None
        return self.load()

    def compiled_variant(self) -> Impl:
        """This implementation under ``torch.compile(fullgraph=True)``, as a baseline."""
        return dataclasses.replace(
            self, name=f"{self.name} compiled", role="baseline", compiled=True,
            note="torch.compile(fullgraph=True), compiled by an untimed warm-up call")


@dataclass(frozen=True)
class Row:
    """One measurement: a case x implementation x mode (a row of the result document; the
    fields are defined in :data:`softmaxlab.bench.results.DEFINITIONS`)."""

    suite: str | None = None
    case: str | None = None
    op: str | None = None
    shape: tuple[int, ...] = ()
    dtype: str | None = None
    device: str | None = None
    mode: str | None = None
    impl: str | None = None
    role: str | None = None
    status: str = OK
    note: str | None = None
    n: int | None = None
    median_s: float | None = None
    p20_s: float | None = None
    p80_s: float | None = None
    min_s: float | None = None
    max_s: float | None = None
    mean_s: float | None = None
    first_s: float | None = None
    peak_mem_bytes: int | None = None
    mem_method: str | None = None
    io_bytes: int | None = None
    gbps: float | None = None
    copy_frac: float | None = None
    flops: int | None = None
    gflops: float | None = None
    ratios: dict[str, float] = field(default_factory=dict)
    mem_ratios: dict[str, float] = field(default_factory=dict)
    targets: tuple[dict, ...] = ()

    @classmethod
    def of(cls, case: Case, impl: Impl, mode: str) -> Row:
        """The row of ``impl`` of ``case`` in ``mode``, before it is measured."""
        return cls(suite=case.suite, case=case.id, op=case.op, shape=case.shape,
                   dtype=case.dtype_name, device=case.device, mode=mode, impl=impl.name,
                   role=impl.role, note=impl.note or None)

    def as_dict(self) -> dict:
        """The row as JSON types."""
        return dataclasses.asdict(self) | {"shape": list(self.shape),
                                           "targets": list(self.targets)}


#: Fields of every row.
ROW_FIELDS: tuple[str, ...] = tuple(f.name for f in dataclasses.fields(Row))


@dataclass(frozen=True)
class Target:
    """A goal for the candidate: ``metric`` "time" or "memory" (ratio to ``baseline``,
    met if ``<= value``) or "bandwidth" (fraction of copy bandwidth, met if ``>= value``),
    in ``modes``; ``source`` says where the number comes from."""

    metric: str
    value: float
    baseline: str | None = None
    modes: tuple[str, ...] = MODES
    source: str = ""

    def applies(self, row: Row) -> bool:
        return row.mode in self.modes

    def actual(self, row: Row) -> float | None:
        if self.metric == "time":
            return row.ratios.get(self.baseline)
        if self.metric == "memory":
            return row.mem_ratios.get(self.baseline)
        return row.copy_frac

    def check(self, row: Row) -> dict:
        a = self.actual(row)
        met = None if a is None else (a >= self.value if self.metric == "bandwidth"
                                      else a <= self.value)
        return {"metric": self.metric, "baseline": self.baseline, "value": self.value,
                "actual": a, "met": met, "source": self.source}

    def label(self) -> str:
        if self.metric == "bandwidth":
            return f"bandwidth >= {self.value:.0%} of copy"
        return f"{self.metric} vs {self.baseline} <= {self.value:g}x"


def _seed(text: str) -> int:
    return zlib.crc32(text.encode())


@dataclass(frozen=True)
class Case:
    """One op on one input shape, with its implementations (the first is the candidate).

    ``modes``: the modes it is measured in (of those asked for); ``memory``: whether its
    peak memory is measured; ``compilable``: names of implementations that ``--compile``
    also measures under ``torch.compile`` (:meth:`with_compiled`).
    """

    suite: str
    op: str
    shape: tuple[int, ...]
    dtype: torch.dtype
    device: str
    impls: tuple[Impl, ...]
    targets: tuple[Target, ...] = ()
    io: str = ""
    modes: tuple[str, ...] = MODES
    memory: bool = True
    compilable: tuple[str, ...] = ()

    @property
    def dtype_name(self) -> str:
        return str(self.dtype).removeprefix("torch.")

    @property
    def id(self) -> str:
        shape = "x".join(map(str, self.shape))
        return f"{self.suite}/{self.op}/{shape}/{self.dtype_name}/{self.device}"

    @property
    def itemsize(self) -> int:
        return torch.empty((), dtype=self.dtype).element_size()

    def impl(self, name: str) -> Impl:
        for i in self.impls:
            if i.name == name:
                return i
        raise ValueError(f"{self.id} has no implementation {name!r}; "
                         f"valid: {', '.join(i.name for i in self.impls)}")

    def generator(self) -> torch.Generator:
        return torch.Generator(device=self.device).manual_seed(_seed(self.id))

    def tiny(self) -> Case:
        """The same case on a tiny shape (to page in code before a memory measurement)."""
        return dataclasses.replace(self, shape=tuple(min(s, 64) for s in self.shape))

    def with_compiled(self) -> Case:
        """This case with the compiled variants of its :attr:`compilable` implementations."""
        return dataclasses.replace(
            self, impls=self.impls + tuple(self.impl(n).compiled_variant()
                                           for n in self.compilable))

    def make(self) -> Inputs:
        raise NotImplementedError

    def io_bytes(self, mode: str) -> int | None:
        return None

    def flops(self, mode: str) -> int | None:
        return None

    def timed(self, fn: Callable[..., Any], inputs: Inputs, mode: str) -> Step:
        """The step timing ``fn`` on ``inputs`` in ``mode``."""
        return AutogradStep(fn, inputs, mode)

    def step(self, impl: Impl, mode: str, inputs: Inputs) -> Step:
        """The step timing ``impl`` in ``mode``. A compiled implementation is compiled here,
        by an untimed call; if that fails, it is unavailable (:class:`ImplUnavailable`)."""
        fn = impl.resolve()
        if impl.manual:
            return fn(self, inputs, mode)
        if not impl.compiled:
            return self.timed(fn, inputs, mode)
        # each case compiles afresh: the recompilations of earlier cases (other modes,
        # dtypes, shapes of a shared function) must not count towards Dynamo's limit
        torch._dynamo.reset()
        try:
            step = self.timed(torch.compile(fn, fullgraph=True), inputs, mode)
            run_once(step)
        except Exception as e:  # noqa: BLE001  (reported with the reason)
            raise ImplUnavailable(
                f"torch.compile(fullgraph=True) failed: {error_text(e)}") from None
        return step

    def describe(self) -> dict:
        return {"id": self.id, "suite": self.suite, "op": self.op, "shape": list(self.shape),
                "dtype": self.dtype_name, "device": self.device,
                "impls": [{"name": i.name, "role": i.role, "package": i.dist} for i in self.impls],
                "io": self.io, "targets": [dataclasses.asdict(t) | {"label": t.label()}
                                           for t in self.targets]}

ROWS_IO = ("forward: read x + write y (2 N); backward: read y + read dy + write dx (3 N); "
           "N = elements x itemsize")


@dataclass(frozen=True)
class RowsCase(Case):
    """A mapping along the last dim of ``shape`` (rows x n) logits."""

    io: str = ROWS_IO

    def make(self) -> Inputs:
        g = self.generator()
        x = torch.randn(self.shape, generator=g, dtype=self.dtype, device=self.device)
        x.mul_(2.0).requires_grad_(True)
        dy = torch.randn(self.shape, generator=g, dtype=self.dtype, device=self.device)
        return Inputs((x,), (x,), dy)

    def io_bytes(self, mode: str) -> int:
        n = math.prod(self.shape) * self.itemsize
        return {"forward": 2 * n, "backward": 3 * n, "both": 5 * n}[mode]


@dataclass(frozen=True)
class TopkCase(Case):
    """The ``k`` largest softmax probabilities of each row of (rows x n) logits."""

    k: int = 10
    io: str = ("forward: read x (N) + write k values and int64 indices per row; backward: "
               "read dvalues and indices + write dx (N); N = elements x itemsize")

    def make(self) -> Inputs:
        g = self.generator()
        x = torch.randn(self.shape, generator=g, dtype=self.dtype, device=self.device)
        x.mul_(2.0).requires_grad_(True)
        dy = torch.randn(self.shape[0], self.k, generator=g, dtype=self.dtype, device=self.device)
        return Inputs((x,), (x,), dy)

    def io_bytes(self, mode: str) -> int:
        rows, n = self.shape
        full, top = rows * n * self.itemsize, rows * self.k * (self.itemsize + 8)
        return {"forward": full + top, "backward": top + full, "both": 2 * (full + top)}[mode]


@dataclass(frozen=True)
class LinearCase(Case):
    """Cross-entropy of ``h @ W.T`` with ``shape = (N, d, V)``: h (N, d), W (V, d), targets
    (N,); the mean loss is differentiated with respect to h and W."""

    io: str = ("compute-bound: forward 1 GEMM (2 N d V FLOPs), backward 2 GEMMs (4 N d V); "
               "reported as GFLOP/s, no byte count. A fused loss may compute its gradients "
               "in forward (softmaxlab on CPU does): compare 'both'")

    def make(self) -> Inputs:
        n, d, v = self.shape
        g = self.generator()
        h = torch.randn(n, d, generator=g, dtype=self.dtype, device=self.device)
        w = torch.randn(v, d, generator=g, dtype=self.dtype, device=self.device)
        w.mul_(d ** -0.5)
        t = torch.randint(0, v, (n,), generator=g, device=self.device)
        h.requires_grad_(True)
        w.requires_grad_(True)
        return Inputs((h, w, t), (h, w), None)

    def flops(self, mode: str) -> int:
        n, d, v = self.shape
        return {"forward": 2, "backward": 4, "both": 6}[mode] * n * d * v


@dataclass(frozen=True)
class OverheadCase(Case):
    """The per-call time of an op on a tiny input that does not require grad (entries
    uniform in [0, 1): in every mapping's domain), called directly (no ``no_grad``
    context), ``calls`` times per timed sample; forward only. ``with_target``: the op also
    takes class indices (a loss)."""

    calls: int = 1000
    with_target: bool = False
    io: str = "per-call overhead on a tiny input: no byte count"
    modes: tuple[str, ...] = ("forward",)
    memory: bool = False

    def make(self) -> Inputs:
        g = self.generator()
        x = torch.rand(self.shape, generator=g, dtype=self.dtype, device=self.device)
        if not self.with_target:
            return Inputs((x,), ())
        t = torch.randint(0, self.shape[-1], self.shape[:-1], generator=g, device=self.device)
        return Inputs((x, t), ())

    def timed(self, fn: Callable[..., Any], inputs: Inputs, mode: str) -> Step:
        args = inputs.args
        return Repeated(lambda: fn(*args), self.calls)


@dataclass(frozen=True)
class AttentionCase(Case):
    """Attention with ``shape = (B, H, L, S, D)``: q ``(B, H, L, D)``, k and v
    ``(B, H, S, D)``, standard normal; ``out (B, H, L, D)`` is differentiated with respect
    to q, k and v."""

    io: str = ("compute-bound: forward q k^T and p v (4 B H L S D FLOPs), backward the "
               "flash-style recomputation of the scores and 4 products (10 B H L S D); "
               "reported as GFLOP/s, no byte count")
    modes: tuple[str, ...] = ("forward", "both")

    def make(self) -> Inputs:
        B, H, L, S, D = self.shape
        g = self.generator()

        def rnd(n: int) -> torch.Tensor:
            t = torch.randn(B, H, n, D, generator=g, dtype=self.dtype, device=self.device)
            return t.requires_grad_(True)

        q, k, v = rnd(L), rnd(S), rnd(S)
        dy = torch.randn(B, H, L, D, generator=g, dtype=self.dtype, device=self.device)
        return Inputs((q, k, v), (q, k, v), dy)

    def flops(self, mode: str) -> int:
        B, H, L, S, D = self.shape
        return {"forward": 4, "backward": 10, "both": 14}[mode] * B * H * L * S * D
