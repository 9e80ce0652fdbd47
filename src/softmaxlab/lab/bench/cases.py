"""The benchmark cases of ``softmaxlab bench``, grouped in suites.

A :class:`Case` names its inputs (shape, dtype, device), the function under test (the
public softmaxlab API, through whatever fast path the library dispatches to; mapping
functions come from the registry, :func:`softmaxlab.get_mapping`), its baselines (torch,
the naive formula, peer packages where they exist), the bytes and FLOPs its op must move and
compute per mode (documented in ``io``), and its targets (goals for the candidate, with the
anchor they come from). Peer packages are imported only when a case runs; a missing one is
reported as "not installed".

Suites (``--quick`` shrinks every shape; targets keep referring to the full shapes'
anchors):

* ``softmax``: softmax, log_softmax at (4096, 1024), (1024, 32768), (64, 262144).
* ``topk``: softmax_topk, k=10, at (64, 262144), (8, 1000000) vs softmax -> topk.
* ``linear_ce``: linear_cross_entropy, N=4096, d=1024, V=50257, vs F.cross_entropy of the
  logits, the naive formula, and the bound "the 3 GEMMs alone" (h @ W.T, g @ W, g.T @ h).
* ``sparse``: sparsemax, entmax15 at (4096, 1024), (256, 32768) vs ``entmax`` and
  torch.softmax.
* ``elementwise``: taylor_softmax, spherical_softmax, sigsoftmax and their log forms at
  (4096, 1024), (1024, 32768) vs torch.softmax / torch.log_softmax.
* ``gpu`` (CUDA only): softmax fwd/bwd on 2^27 entries, float32 rows of 1024..1M entries
  and bfloat16 rows of 4096..262144, against copy bandwidth, torch and ``liger-kernel``, with
  the Triton launch settings' alternatives (the other side of the single/multi-block
  threshold, other multi-block schedules); log_softmax; softmax_topk (float32, bfloat16) with
  the reference algorithm (topk + logsumexp) and torch.topk alone; sparsemax (single-block
  and streamed rows) vs ``entmax`` and Liger; linear cross-entropy at N=8192, d=4096,
  V=128256 in bfloat16 vs ``liger-kernel`` (bf16 and fp32 accumulation) and
  ``cut-cross-entropy`` (default and exact), with other chunk budgets.
"""

from __future__ import annotations

import contextlib
import dataclasses
import importlib
import math
import zlib
from dataclasses import dataclass
from typing import Any, Callable

import torch
import torch.nn.functional as F

from .harness import MODES, AutogradStep, CallStep, Inputs, Step

#: Every suite, in the order ``all`` runs them.
SUITES: tuple[str, ...] = ("softmax", "topk", "linear_ce", "sparse", "elementwise", "gpu")
#: Suites that need a CUDA device.
CUDA_SUITES: frozenset[str] = frozenset({"gpu"})

#: Where each target comes from: the numbered targets of issue 4 ("fast paths and the
#: benchmark harness").
_ISSUE = "issue 4, target"


class ImplUnavailable(Exception):
    """A peer package that is not installed (reported, never raised to the user)."""


# ------------------------------------------------------------------------ records
@dataclass(frozen=True)
class Impl:
    """One implementation of a case's op.

    ``load()`` imports lazily and returns ``fn(*args)`` (or, with ``manual``, a function
    ``(case, inputs, mode) -> Step`` for implementations not timed through autograd, such
    as the GEMM bound). ``package``/``dist``: a peer's import and pip names; when it is not
    importable the row says "not installed".
    """

    name: str
    load: Callable[[], Callable[..., Any]]
    role: str = "baseline"
    package: str | None = None
    dist: str | None = None
    manual: bool = False
    note: str = ""

    def resolve(self) -> Callable[..., Any]:
        if self.package is not None:
            try:
                importlib.import_module(self.package)
            except ModuleNotFoundError as e:
                if (e.name or "").split(".")[0] != self.package.split(".")[0]:
                    raise
                raise ImplUnavailable(
                    f"{self.dist or self.package} not installed "
                    f"(pip install {self.dist or self.package})") from None
        return self.load()


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

    def applies(self, row: dict) -> bool:
        return row["mode"] in self.modes

    def actual(self, row: dict) -> float | None:
        if self.metric == "time":
            return row["ratios"].get(self.baseline)
        if self.metric == "memory":
            return row["mem_ratios"].get(self.baseline)
        return row.get("copy_frac")

    def check(self, row: dict) -> dict:
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
    """One op on one input shape, with its implementations (the first is the candidate)."""

    suite: str
    op: str
    shape: tuple[int, ...]
    dtype: torch.dtype
    device: str
    impls: tuple[Impl, ...]
    targets: tuple[Target, ...] = ()
    io: str = ""

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

    def tiny(self) -> "Case":
        """The same case on a tiny shape (to page in code before a memory measurement)."""
        return dataclasses.replace(self, shape=tuple(min(s, 64) for s in self.shape))

    def make(self) -> Inputs:
        raise NotImplementedError

    def io_bytes(self, mode: str) -> int | None:
        return None

    def flops(self, mode: str) -> int | None:
        return None

    def step(self, impl: Impl, mode: str, inputs: Inputs) -> Step:
        fn = impl.resolve()
        if impl.manual:
            return fn(self, inputs, mode)
        return AutogradStep(fn, inputs, mode)

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


# ------------------------------------------------------------------------ naive formulas
def naive_softmax(x: torch.Tensor, temperature: float = 1.0) -> torch.Tensor:
    """exp(x - max) / sum: the textbook formula, three unfused passes."""
    x = x / temperature if temperature != 1.0 else x
    e = (x - x.amax(-1, keepdim=True)).exp()
    return e / e.sum(-1, keepdim=True)


def naive_log_softmax(x: torch.Tensor, temperature: float = 1.0) -> torch.Tensor:
    x = x / temperature if temperature != 1.0 else x
    s = x - x.amax(-1, keepdim=True)
    return s - s.exp().sum(-1, keepdim=True).log()


def _normalized(f: torch.Tensor) -> torch.Tensor:
    return f / f.sum(-1, keepdim=True)


def naive_taylor(x: torch.Tensor, order: int = 2) -> torch.Tensor:
    f = torch.ones_like(x)
    term = torch.ones_like(x)
    for i in range(1, order + 1):
        term = term * x / i
        f = f + term
    return _normalized(f)


def naive_spherical(x: torch.Tensor, eps: float = 0.01) -> torch.Tensor:
    return _normalized(x * x + eps)


def naive_sigsoftmax(x: torch.Tensor) -> torch.Tensor:
    return _normalized((x - x.amax(-1, keepdim=True)).exp() * torch.sigmoid(x))


def naive_sparsemax(x: torch.Tensor) -> torch.Tensor:
    """Sort-based sparsemax in torch ops (Martins & Astudillo 2016, Alg. 1), autograd
    through the ops."""
    z = x - x.amax(-1, keepdim=True)
    srt = z.sort(-1, descending=True).values
    r = torch.arange(1, z.shape[-1] + 1, device=z.device, dtype=z.dtype)
    cs = srt.cumsum(-1)
    k = (1 + r * srt > cs).sum(-1, keepdim=True)
    tau = (cs.gather(-1, k - 1) - 1) / k
    return (z - tau).clamp(min=0)


def naive_entmax15(x: torch.Tensor) -> torch.Tensor:
    """Sort-based 1.5-entmax in torch ops (Peters et al. 2019, Alg. 2), autograd through
    the ops."""
    z = (x - x.amax(-1, keepdim=True)) / 2
    srt = z.sort(-1, descending=True).values
    r = torch.arange(1, z.shape[-1] + 1, device=z.device, dtype=z.dtype)
    mean = srt.cumsum(-1) / r
    mean_sq = (srt * srt).cumsum(-1) / r
    tau = mean - ((1 - r * (mean_sq - mean * mean)) / r).clamp(min=0).sqrt()
    k = (tau <= srt).sum(-1, keepdim=True)
    return (z - tau.gather(-1, k - 1)).clamp(min=0) ** 2


def naive_linear_ce(h: torch.Tensor, w: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
    logits = (h @ w.T).float()
    return -naive_log_softmax(logits).gather(-1, t[:, None]).mean()


NAIVE: dict[str, Callable[..., torch.Tensor]] = {
    "softmax": naive_softmax,
    "log_softmax": naive_log_softmax,
    "taylor_softmax": naive_taylor,
    "log_taylor_softmax": lambda x, **kw: naive_taylor(x, **kw).log(),
    "spherical_softmax": naive_spherical,
    "log_spherical_softmax": lambda x, **kw: naive_spherical(x, **kw).log(),
    "sigsoftmax": naive_sigsoftmax,
    "log_sigsoftmax": lambda x: naive_sigsoftmax(x).log(),
    "sparsemax": naive_sparsemax,
    "entmax15": naive_entmax15,
}


# ------------------------------------------------------------------------ implementations
def _registry_fn(op: str) -> tuple[Callable[..., torch.Tensor], dict]:
    """The public function called ``op`` (a mapping or its log form) from the registry,
    with the mapping's default parameters."""
    import softmaxlab as sl

    for m in sl.mappings():
        for f in (m.fn, m.log_fn):
            if f is not None and f.__name__ == op:
                return f, m.defaults
    raise ValueError(f"{op!r} is not a registered mapping function")


def candidate(op: str) -> Impl:
    """The public softmaxlab function ``op`` along the last dim, default parameters."""

    def load():
        fn, params = _registry_fn(op)
        return lambda x: fn(x, -1, **params)

    return Impl("softmaxlab", load, role="candidate")


def naive(op: str) -> Impl:
    def load():
        _, params = _registry_fn(op)
        f = NAIVE[op]
        return lambda x: f(x, **params)

    return Impl("naive", load, note="the formula in unfused torch ops")


TORCH_SOFTMAX = Impl("torch.softmax", lambda: lambda x: torch.softmax(x, -1))
TORCH_LOG_SOFTMAX = Impl("torch.log_softmax", lambda: lambda x: torch.log_softmax(x, -1))


def _entmax(name: str) -> Impl:
    def load():
        import entmax

        f = getattr(entmax, name)
        return lambda x: f(x, dim=-1)

    return Impl("entmax", load, package="entmax", dist="entmax",
                note=f"entmax.{name} (sort-based)")


def topk_impls(k: int) -> tuple[Impl, ...]:
    def load_candidate():
        import softmaxlab as sl

        return lambda x: sl.softmax_topk(x, k)

    return (Impl("softmaxlab", load_candidate, role="candidate"),
            Impl("torch.softmax.topk", lambda: lambda x: torch.softmax(x, -1).topk(k, -1)),
            Impl("naive", lambda: lambda x: naive_softmax(x).topk(k, -1),
                 note="naive softmax, then topk"))


def _linear_candidate():
    import softmaxlab as sl

    return lambda h, w, t: sl.losses.linear_cross_entropy(h, w, t)


def _gemm_bound(case: Case, inputs: Inputs, mode: str) -> Step:
    """The 3 matrix products of linear cross-entropy alone: h @ W.T (forward), g @ W and
    g.T @ h (backward), with g an N x V gradient made untimed once."""
    h, w, _ = inputs.detached()
    state: dict[str, torch.Tensor] = {}

    def before():
        if mode != "forward" and "g" not in state:
            state["g"] = torch.randn(h.shape[0], w.shape[0], generator=case.generator(),
                                     dtype=h.dtype, device=h.device)

    if mode == "forward":
        return CallStep(lambda: h @ w.T)
    if mode == "backward":
        return CallStep(lambda: (state["g"] @ w, state["g"].T @ h), before)
    return CallStep(lambda: (h @ w.T, state["g"] @ w, state["g"].T @ h), before)


def _liger_flce(**kw):
    def load():
        try:
            from liger_kernel.transformers.functional import liger_fused_linear_cross_entropy
        except ImportError:  # older releases: the module only
            from liger_kernel.transformers.fused_linear_cross_entropy import (
                LigerFusedLinearCrossEntropyLoss,
            )

            loss = LigerFusedLinearCrossEntropyLoss(**kw)
            return lambda h, w, t: loss(w, h, t)
        return lambda h, w, t: liger_fused_linear_cross_entropy(h, w, t, **kw)

    return load


def _cce(exact: bool):
    def load():
        from cut_cross_entropy import linear_cross_entropy

        if exact:
            return lambda h, w, t: linear_cross_entropy(h, w, t, filter_eps=None)
        return lambda h, w, t: linear_cross_entropy(h, w, t)

    return load


def _liger_softmax():
    from liger_kernel.transformers.softmax import LigerSoftmax

    m = LigerSoftmax()
    return lambda x: m(x)


def _liger_sparsemax():
    from liger_kernel.transformers.functional import liger_sparsemax

    return lambda x: liger_sparsemax(x, -1)


def linear_impls(gpu: bool = False) -> tuple[Impl, ...]:
    impls = [
        Impl("softmaxlab", _linear_candidate, role="candidate"),
        Impl("F.cross_entropy", lambda: lambda h, w, t: F.cross_entropy(h @ w.T, t),
             note="F.cross_entropy(h @ W.T, t): the full N x V logits"),
        Impl("naive", lambda: naive_linear_ce, note="float32 logits, naive log_softmax, gather"),
        Impl("3 GEMMs", lambda: _gemm_bound, manual=True,
             note="bound: h @ W.T, g @ W, g.T @ h alone"),
    ]
    if gpu:
        impls += [Impl("liger", _liger_flce(), package="liger_kernel", dist="liger-kernel",
                       note="LigerFusedLinearCrossEntropyLoss"),
                  Impl("cce", _cce(False), package="cut_cross_entropy",
                       dist="cut-cross-entropy",
                       note="cut_cross_entropy.linear_cross_entropy (default: gradient filtering)"),
                  Impl("cce exact", _cce(True), package="cut_cross_entropy",
                       dist="cut-cross-entropy", note="filter_eps=None: exact gradients")]
    return tuple(impls)


# ------------------------------------------------------------------------ suites
def _pick(quick: bool, full: list, small: list) -> list:
    return small if quick else full


def _softmax_suite(quick: bool) -> list[Case]:
    shapes = _pick(quick, [(4096, 1024), (1024, 32768), (64, 262144)],
                   [(64, 1024), (4, 32768), (2, 262144)])
    src = f"{_ISSUE} 5: never slower than torch by more than 5%"
    out = []
    for shape in shapes:
        for op, base in (("softmax", TORCH_SOFTMAX), ("log_softmax", TORCH_LOG_SOFTMAX)):
            out.append(RowsCase("softmax", op, shape, torch.float32, "cpu",
                                (candidate(op), base, naive(op)),
                                (Target("time", 1.05, base.name, source=src),)))
    return out


def _topk_suite(quick: bool) -> list[Case]:
    shapes = _pick(quick, [(64, 262144), (8, 1000000)], [(2, 262144), (1, 1000000)])
    target = Target("time", 0.25, "torch.softmax.topk", ("forward",),
                    f"{_ISSUE} 1: >= 4x faster than softmax -> topk (one read of the input)")
    return [TopkCase("topk", "softmax_topk(k=10)", shape, torch.float32, "cpu", topk_impls(10),
                     (target,), k=10) for shape in shapes]


def _linear_suite(quick: bool) -> list[Case]:
    shape = (128, 128, 8192) if quick else (4096, 1024, 50257)
    targets = (
        Target("time", 0.8, "F.cross_entropy", ("both",), f"{_ISSUE} 2: <= 0.8x naive time"),
        Target("memory", 0.25, "F.cross_entropy", ("both",), f"{_ISSUE} 2: <= 25% of naive memory"),
        Target("time", 1 / 0.85, "3 GEMMs", ("both",), f"{_ISSUE} 2: >= 85% of the 3-GEMM bound"),
    )
    return [LinearCase("linear_ce", "linear_cross_entropy", shape, torch.float32, "cpu",
                       linear_impls(), targets)]


def _sparse_suite(quick: bool) -> list[Case]:
    shapes = _pick(quick, [(4096, 1024), (256, 32768)], [(64, 1024), (4, 32768)])
    targets = (Target("time", 1 / 8, "entmax", ("both",), f"{_ISSUE} 3: >= 8x faster than entmax"),
               Target("time", 4.0, "torch.softmax", ("both",), f"{_ISSUE} 3: <= 4x torch.softmax"))
    return [RowsCase("sparse", op, shape, torch.float32, "cpu",
                     (candidate(op), _entmax(op), TORCH_SOFTMAX, naive(op)), targets)
            for shape in shapes for op in ("sparsemax", "entmax15")]


def _elementwise_suite(quick: bool) -> list[Case]:
    shapes = _pick(quick, [(4096, 1024), (1024, 32768)], [(64, 1024), (4, 32768)])
    target = Target("time", 1.2, None, ("both",), f"{_ISSUE} 4: <= 1.2x torch.softmax")
    out = []
    for shape in shapes:
        for base_op in ("taylor_softmax", "spherical_softmax", "sigsoftmax"):
            for op, base in ((base_op, TORCH_SOFTMAX), ("log_" + base_op, TORCH_LOG_SOFTMAX)):
                out.append(RowsCase("elementwise", op, shape, torch.float32, "cpu",
                                    (candidate(op), base, naive(op)),
                                    (dataclasses.replace(target, baseline=base.name),)))
    return out


class _Configured(Step):
    """``inner`` with attributes of ``module`` set while it runs, its untimed forward too
    (setting them inside the timed call costs microseconds of Python)."""

    def __init__(self, inner: Step, module, settings: dict):
        self.inner, self.module, self.settings = inner, module, settings

    @contextlib.contextmanager
    def _set(self):
        old = {k: getattr(self.module, k) for k in self.settings}
        for k, v in self.settings.items():
            setattr(self.module, k, v)
        try:
            yield
        finally:
            for k, v in old.items():
                setattr(self.module, k, v)

    def before(self) -> None:
        with self._set():
            self.inner.before()

    def call(self) -> Any:
        with self._set():
            return self.inner.call()

    def after(self) -> None:
        self.inner.after()


def _configured(name: str, base: Impl, module: str, settings: dict) -> Impl:
    """The candidate ``base`` with module attributes of the Triton kernels changed (launch
    settings, chunk budgets): the defaults' alternatives, measured against them."""

    def load():
        fn, mod = base.load(), importlib.import_module(module)
        return lambda case, inputs, mode: _Configured(AutogradStep(fn, inputs, mode), mod,
                                                      settings)

    return Impl(f"softmaxlab {name}", load, manual=True,
                note=", ".join(f"{module}.{k} = {v}" for k, v in settings.items()))


_LAUNCH = "softmaxlab.kernels.triton._launch"
#: Multi-block schedules of the Triton softmax other than the defaults (persistent grid of 1
#: program per SM with L2 eviction hints, rows split only below 1 program per SM).
_MULTI_BLOCK = {"no L2 hints": {"EVICT_HINTS": False},
                "2 programs/SM": {"PERSISTENT_PROGRAMS_PER_SM": 2},
                "split to 4 programs/SM": {"PROGRAMS_PER_SM": 4},
                "no persistent grid": {"PERSISTENT_PROGRAMS_PER_SM": 0}}


def _softmax_variants(n: int) -> tuple[Impl, ...]:
    """The Triton softmax at other launch settings for rows of ``n``: the other side of the
    single/multi-block threshold (32768) for 8192 <= n <= 65536, the other multi-block
    schedules above it."""
    variants = {}
    if 8192 <= n <= 32768:
        variants["multi-block"] = {"MAX_SINGLE_BLOCK": 1}
    if n == 65536:
        variants["single block"] = {"MAX_SINGLE_BLOCK": n}
    if n > 32768:
        variants.update(_MULTI_BLOCK)
    return tuple(_configured(k, candidate("softmax"), _LAUNCH, v) for k, v in variants.items())


def _topk_references(k: int) -> tuple[Impl, ...]:
    """The library's reference algorithm in torch ops, and the selection alone (a floor)."""

    def reference():
        def fn(x):
            top, idx = x.topk(k, -1)
            lse = torch.logsumexp(x.float(), -1, keepdim=True)
            return (top.float() - lse).exp().to(x.dtype), idx

        return fn

    return (Impl("topk + logsumexp", reference,
                 note="the reference algorithm: torch.topk, torch.logsumexp (float32)"),
            Impl("torch.topk", lambda: lambda x: x.topk(k, -1), note="the selection alone"))


def _gpu_suite(quick: bool) -> list[Case]:
    dev = "cuda"
    out: list[Case] = []
    f32, bf16 = torch.float32, torch.bfloat16
    # 2^27 entries (512 MiB in float32: far larger than L2)
    rows = _pick(quick, [(f32, n) for n in (1024, 4096, 8192, 16384, 32768, 65536, 131072,
                                            262144, 1 << 20)]
                 + [(bf16, n) for n in (4096, 32768, 131072, 262144)],
                 [(f32, 4096), (f32, 65536), (bf16, 32768)])
    total = 1 << (22 if quick else 27)
    liger_softmax = Impl("liger", _liger_softmax, package="liger_kernel", dist="liger-kernel",
                         note="LigerSoftmax")
    bandwidth = Target("bandwidth", 0.8, modes=("forward",),
                       source=f"{_ISSUE} 6: >= 80% of copy bandwidth")
    for dt, n in rows:
        out.append(RowsCase("gpu", "softmax", (total // n, n), dt, dev,
                            (candidate("softmax"), TORCH_SOFTMAX, naive("softmax"), liger_softmax,
                             *_softmax_variants(n)),
                            (bandwidth,) if n >= 4096 else ()))
    for n in _pick(quick, [4096, 65536], [4096]):
        out.append(RowsCase("gpu", "log_softmax", (total // n, n), f32, dev,
                            (candidate("log_softmax"), TORCH_LOG_SOFTMAX, naive("log_softmax"))))
    for shape, dt, k in _pick(quick, [((64, 262144), f32, 10), ((8, 1000000), f32, 10),
                                      ((1024, 128256), f32, 10), ((4096, 128256), f32, 10),
                                      ((4096, 128256), bf16, 10), ((16384, 4096), f32, 5)],
                              [((64, 32768), f32, 10), ((4096, 8192), bf16, 10)]):
        out.append(TopkCase("gpu", f"softmax_topk(k={k})", shape, dt, dev,
                            topk_impls(k) + _topk_references(k), (), k=k))
    liger_sparsemax = Impl("liger", _liger_sparsemax, package="liger_kernel",
                           dist="liger-kernel", note="liger_sparsemax")
    for shape in _pick(quick, [(4096, 1024), (4096, 8192), (1024, 32768), (4096, 32768),
                               (64, 131072)], [(4096, 1024), (8, 131072)]):
        out.append(RowsCase("gpu", "sparsemax", shape, f32, dev,
                            (candidate("sparsemax"), _entmax("sparsemax"), liger_sparsemax,
                             TORCH_SOFTMAX, naive("sparsemax")),
                            ()))
    shape = (4096, 1024, 32768) if quick else (8192, 4096, 128256)
    lce = "softmaxlab.kernels.triton._linear_ce"
    budgets = tuple(_configured(f"budget 2^{b}", Impl("softmaxlab", _linear_candidate), lce,
                                {"CHUNK_ELEMENTS": 1 << b}) for b in (23, 25))
    liger_fp32 = Impl("liger fp32 accum", _liger_flce(accum_dtype=torch.float32),
                      package="liger_kernel", dist="liger-kernel",
                      note="LigerFusedLinearCrossEntropyLoss, accum_dtype=float32")
    out.append(LinearCase("gpu", "linear_cross_entropy", shape, bf16, dev,
                          linear_impls(gpu=True) + (liger_fp32,) + budgets,
                          (Target("memory", 1.0, "cce", ("both",),
                                  f"{_ISSUE} 6: memory <= cut-cross-entropy's"),
                           Target("time", 1.1, "liger", ("both",),
                                  f"{_ISSUE} 6: <= 1.1x the faster of CCE and Liger"),
                           Target("time", 1.1, "cce", ("both",),
                                  f"{_ISSUE} 6: <= 1.1x the faster of CCE and Liger"))))
    return out


_BUILDERS: dict[str, Callable[[bool], list[Case]]] = {
    "softmax": _softmax_suite,
    "topk": _topk_suite,
    "linear_ce": _linear_suite,
    "sparse": _sparse_suite,
    "elementwise": _elementwise_suite,
    "gpu": _gpu_suite,
}


def cuda_available() -> bool:
    return torch.cuda.is_available()


def resolve_suites(suites) -> tuple[list[str], dict[str, str]]:
    """Suite names to run (``"all"``: every suite that applies to this machine; a name; a
    comma-separated string or a list of names) and the skipped ones with the reason.
    Unknown names raise ``ValueError`` listing the valid ones."""
    names = suites.split(",") if isinstance(suites, str) else list(suites)
    names = [n.strip() for n in names if n.strip()]
    valid = ", ".join((*SUITES, "all"))
    if not names:
        raise ValueError(f"no suite given; valid suites: {valid}")
    bad = [n for n in names if n not in SUITES and n != "all"]
    if bad:
        raise ValueError(f"unknown suite {bad[0]!r}; valid suites: {valid}")
    skipped: dict[str, str] = {}
    if "all" in names:
        names = list(SUITES)
        if not cuda_available():
            skipped = {s: "CUDA not available" for s in SUITES if s in CUDA_SUITES}
            names = [s for s in names if s not in CUDA_SUITES]
    elif not cuda_available():
        need = [n for n in names if n in CUDA_SUITES]
        if need:
            raise ValueError(f"suite {need[0]!r} needs a CUDA device "
                             "(torch.cuda.is_available() is False)")
    return list(dict.fromkeys(names)), skipped


def build_suite(name: str, *, quick: bool = False) -> list[Case]:
    """The cases of suite ``name`` (no tensors are made until a case runs)."""
    if name not in _BUILDERS:
        raise ValueError(f"unknown suite {name!r}; valid suites: {', '.join(SUITES)}")
    return _BUILDERS[name](quick)


def find_case(suite: str, quick: bool, case_id: str) -> Case:
    for c in build_suite(suite, quick=quick):
        if c.id == case_id:
            return c
    raise ValueError(f"no case {case_id!r} in suite {suite!r} (quick={quick})")


def memory_steps(suite: str, quick: bool, case_id: str, impl: str,
                 modes: list[str]) -> dict[str, Step]:
    """The steps whose peak memory a fresh process measures, one per mode, on one set of
    inputs. Each mode's op first runs once on a tiny copy of the case (code paged in,
    thread pools started, lazy imports done), so that only the op's own allocations count.
    """
    case = find_case(suite, quick, case_id)
    implementation = case.impl(impl)
    tiny = case.tiny()
    tiny_inputs = tiny.make()
    for mode in modes:
        warm = tiny.step(implementation, mode, tiny_inputs)
        warm.before()
        out = warm.call()
        del out
        warm.after()
    del warm, tiny_inputs
    inputs = case.make()
    return {mode: case.step(implementation, mode, inputs) for mode in modes}
