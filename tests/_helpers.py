"""Helpers of the mapping tests: cases, inputs, checks.

Everything here is derived from the one registry (``softmaxlab.mappings()``): a *case* is one
registered function (a mapping's ``fn`` or its ``log_fn``) with one parameter setting (the
defaults, or the defaults with one ``Param.valid`` value swapped in). A newly registered
mapping is therefore covered by the mapping tests (``tests/functional``, ``tests/nn``) without
editing them once it has a reference in ``tests/oracle/references.py`` (a registry test
enforces that). A CPU or Triton fast path is not picked up: the kernel tests list their ops
by hand (``MAPPINGS`` in ``tests/kernels/test_cpu.py``, ``_ops`` in
``tests/kernels/triton/test_triton.py``).

The few facts the registry does not record are listed once below (domain, size-bounded
parameters, accuracy-only parameters, parameter values at which a sparse map is dense).
Tolerances live in ``tests/tolerances.py``.
"""

from __future__ import annotations

import inspect
import zlib
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import torch

import softmaxlab as sl
from softmaxlab import Mapping, Param

from .oracle.references import REFERENCES
from .tolerances import ORACLE, Tol

NEG_INF = float("-inf")


# ---------------------------------------------------------------- facts not in the registry
#: Mappings defined only for x >= 0 (a negative kept entry must raise ValueError).
NONNEGATIVE_DOMAIN = frozenset({"normalize"})
#: Parameters that must not exceed the size of the reduced dimension.
SIZE_BOUND_PARAMS = frozenset({"k"})
#: Parameters that only set the accuracy of an iterative algorithm: the oracle computes the
#: exact value and takes no such argument.
ACCURACY_PARAMS = frozenset({"n_iter"})
#: (mapping, parameter, value) at which a mapping flagged ``sparse`` is dense by definition:
#: 1-entmax is softmax (DESIGN.md §1). Tests assert these really are dense (all > 0).
DENSE_AT = frozenset({("entmax", "alpha", 1.0)})


# ---------------------------------------------------------------- tolerances
def bisection_error(kwargs: dict, dtype: torch.dtype) -> float:
    """Absolute error bound of alpha-entmax by bisection (0 for other cases).

    tau is bracketed in an interval of width <= 1 halved ``n_iter`` times, and is rounded
    (the shifted logits (alpha - 1)(z - max z) are rounded too): |d tau| <= delta =
    2^-n_iter + 2 eps. Then p = u^q with u = [(alpha-1) z - tau]_+ in [0, 1] and
    q = 1/(alpha-1): u -> u^q is q-Lipschitz for q >= 1 (alpha <= 2) and q-Hölder,
    |a^q - b^q| <= |a - b|^q, for q < 1 (alpha > 2: near the support boundary the error is
    ~sqrt(delta) at alpha = 3 — the math, not slack). The factor 4 covers the final division
    by the sum and the oracle's own (200-step, hence rounding-limited) bisection.
    alpha 1 and 2 are computed exactly (softmax, sparsemax): no extra error.
    """
    alpha, n_iter = kwargs.get("alpha"), kwargs.get("n_iter")
    if n_iter is None or isinstance(alpha, torch.Tensor) or alpha in (1, 2):
        return 0.0
    delta = 2.0**-n_iter + 2 * torch.finfo(dtype).eps
    q = 1 / (alpha - 1)
    return 4 * (q * delta if q >= 1 else delta**q)


# ---------------------------------------------------------------- cases
@dataclass(frozen=True)
class Case:
    """One registered function with one parameter setting."""

    mapping: Mapping
    fn: Callable[..., torch.Tensor]
    overrides: tuple[tuple[str, Any], ...] = ()

    @property
    def name(self) -> str:
        return self.fn.__name__

    @property
    def log(self) -> bool:
        return self.fn is self.mapping.log_fn

    @property
    def kwargs(self) -> dict[str, Any]:
        return {**self.mapping.defaults, **dict(self.overrides)}

    @property
    def normalized(self) -> bool:
        return self.mapping.normalized

    @property
    def dense_override(self) -> bool:
        """A sparse mapping at a parameter value where it is dense (``DENSE_AT``)."""
        return any((self.mapping.name, k, v) in DENSE_AT for k, v in self.kwargs.items())

    @property
    def nonnegative(self) -> bool:
        return self.mapping.name in NONNEGATIVE_DOMAIN

    @property
    def size_bound(self) -> list[str]:
        """The parameters of this case that must not exceed the size of the reduced dim."""
        return [k for k in self.kwargs if k in SIZE_BOUND_PARAMS]

    @property
    def min_size(self) -> int:
        """The smallest size of the reduced dim this case accepts (0: any)."""
        return max([0] + [self.kwargs[k] for k in self.size_bound])

    @property
    def excluded(self) -> float:
        """Output value of an excluded entry: 0, or -inf for a log form."""
        return NEG_INF if self.log else 0.0

    def __str__(self) -> str:
        return self.name + "".join(f"-{k}={v!r}" for k, v in self.overrides)

    def with_params(self, **params: Any) -> Case:
        return Case(self.mapping, self.fn, tuple({**dict(self.overrides), **params}.items()))

    def __call__(self, x: torch.Tensor, dim: int = -1, **extra: Any) -> torch.Tensor:
        return self.fn(x, dim, **{**self.kwargs, **extra})

    def reference(self, x: torch.Tensor, dim: int = -1) -> torch.Tensor:
        """The oracle along ``dim`` (it works along the last dim), in ``x``'s dtype."""
        kw = {k: v for k, v in self.kwargs.items() if k not in ACCURACY_PARAMS}
        return REFERENCES[self.name](x.movedim(dim, -1), **kw).movedim(-1, dim)

    def tol(self, dtype: torch.dtype) -> Tol:
        return ORACLE[dtype] + bisection_error(self.kwargs, dtype)

    def domain(self, x: torch.Tensor) -> torch.Tensor:
        """``x`` moved into the mapping's domain (|x| for the non-negative ones)."""
        return x.abs() if self.nonnegative else x

    def logits(self, shape, g: torch.Generator, dtype=torch.float64, scale: float = 2.0):
        """Random logits in the mapping's domain (computed in float64, then cast)."""
        x = torch.randn(shape, generator=g, dtype=torch.float64) * scale
        return self.domain(x).to(dtype)


def functions(m: Mapping) -> list[Callable[..., torch.Tensor]]:
    return [f for f in (m.fn, m.log_fn) if f is not None]


def settings(m: Mapping) -> list[tuple[tuple[str, Any], ...]]:
    """Defaults, then each ``Param.valid`` value one at a time."""
    return [()] + [((p.name, v),) for p in m.params for v in p.valid]


def tensor_params(m: Mapping) -> list[Param]:
    return [p for p in m.params if torch.Tensor in p.types]


MAPPINGS: tuple[Mapping, ...] = sl.mappings()
FUNCTIONS: list[tuple[Mapping, Callable]] = [(m, f) for m in MAPPINGS for f in functions(m)]
#: One case per function with default parameters.
DEFAULT_CASES = [Case(m, f) for m, f in FUNCTIONS]
#: Every function x every parameter setting.
CASES = [Case(m, f, s) for m, f in FUNCTIONS for s in settings(m)]
NORMALIZED_CASES = [c for c in CASES if c.normalized]
SHIFT_CASES = [c for c in CASES if c.mapping.shift_invariant]
SCALE_CASES = [c for c in CASES if c.mapping.scale_invariant]
SPARSE_CASES = [c for c in CASES if c.mapping.sparse]
LOG_PAIRS = [(Case(m, m.fn, s), Case(m, m.log_fn, s)) for m in MAPPINGS if m.log_fn
             for s in settings(m)]
#: (default case, parameter) for every parameter that may be a tensor (learned, per row).
TENSOR_PARAM_CASES = [(c, p) for c in DEFAULT_CASES for p in tensor_params(c.mapping)]
#: (default case, parameter, value) for every ``Param.bad`` value.
BAD_PARAMS = [(c, p, v) for c in DEFAULT_CASES for p in c.mapping.params for v in p.bad]


def ids(obj: Any) -> str:
    """Deterministic test ids (never a repr holding a memory address: xdist compares ids)."""
    if isinstance(obj, Case):
        return str(obj)
    if isinstance(obj, (Param, Mapping)):
        return obj.name
    if inspect.isfunction(obj):
        return obj.__name__
    if isinstance(obj, torch.dtype):
        return str(obj).removeprefix("torch.")
    return repr(obj)


def signature_params(fn: Callable) -> list[inspect.Parameter]:
    return list(inspect.signature(fn).parameters.values())


# ---------------------------------------------------------------- inputs
def gen(*key: Any) -> torch.Generator:
    """A generator seeded deterministically from ``key`` (e.g. the test name and case)."""
    return torch.Generator().manual_seed(zlib.crc32(repr(key).encode()))


def distinct_logits(case: Case, rows: int, n: int, g: torch.Generator, half_range=2.9):
    """``rows x n`` float64 logits, each row a random permutation of ``n`` values in
    ``[-half_range, half_range]`` at least half a grid step apart (a jittered grid): no
    ties, not even after rounding to bfloat16 (for n <= 64)."""
    step = 2 * half_range / (n - 1)
    grid = torch.linspace(-half_range, half_range, n, dtype=torch.float64)
    vals = grid + (torch.rand(rows, n, generator=g, dtype=torch.float64) - 0.5) * step / 2
    perm = torch.rand(rows, n, generator=g).argsort(-1)
    return case.domain(vals.gather(-1, perm).clamp(-half_range, half_range))


def random_mask(shape, g: torch.Generator, min_kept: int, dim: int = -1) -> torch.Tensor:
    """A bool mask (True = keep) with at least ``min_kept`` and at most size-1 kept entries
    (when the size allows) in every row along ``dim``; which ones is random."""
    n = shape[dim]
    moved = list(shape)
    moved.append(moved.pop(dim))
    rank = torch.rand(moved, generator=g).argsort(-1).argsort(-1)
    kept = torch.randint(min(min_kept, n), max(min_kept, n - 1) + 1, [*moved[:-1], 1],
                         generator=g)
    return (rank < kept).movedim(-1, dim)


def smooth_point(case: Case, shape, g: torch.Generator, *, dim: int = -1, mask=None,
                 tries: int = 50, **extra: Any) -> torch.Tensor:
    """Float64 logits where ``case`` is differentiable with room to spare for finite
    differences: entries of a row >= 1e-3 apart and >= 1e-3 from 0 (relu kink), and the
    zero pattern of the output unchanged when any entry moves by +-1e-3 (no support
    boundary, no top-k tie nearby)."""
    gap = 1e-3

    def zeros(x: torch.Tensor) -> torch.Tensor:
        return case(x, dim, mask=mask, **extra) == 0

    def support_stable(x: torch.Tensor) -> bool:
        z = zeros(x)
        if not (case.mapping.sparse or z.any()):  # no support: nothing can switch
            return True
        for i in range(x.numel()):
            for step in (gap, -gap):
                y = x.clone()
                y.view(-1)[i] += step
                if not torch.equal(zeros(y), z):
                    return False
        return True

    for _ in range(tries):
        x = case.logits(shape, g)
        gaps = x.sort(dim).values.diff(dim=dim).abs()
        if (gaps >= gap).all() and (x.abs() >= gap).all() and support_stable(x):
            return x
    raise AssertionError(f"{case}: no kink-free input found in {tries} tries")


# ---------------------------------------------------------------- checks
def expected_error(param: Param, value: Any) -> type[Exception]:
    """For a ``Param.bad`` value: TypeError when its type is wrong (a bool is never a
    number here), else ValueError."""
    if isinstance(value, bool) or not isinstance(value, param.types):
        return TypeError
    return ValueError


def finite_part(out: torch.Tensor) -> torch.Tensor:
    """``out`` with infinite entries (the -inf of excluded log-probabilities) set to 0, so
    that sums and finite differences stay defined; the gradient to those entries is 0."""
    return torch.where(torch.isfinite(out), out, torch.zeros_like(out))


def _where(mask: torch.Tensor) -> str:
    idx = mask.nonzero()
    return "none" if len(idx) == 0 else f"{len(idx)} entries, first at {tuple(idx[0].tolist())}"


def assert_close(actual: torch.Tensor, expected: torch.Tensor, tol: Tol, what: str = ""):
    """``actual`` agrees with ``expected`` rounded to ``actual``'s dtype: same shape, same
    NaN and same infinite entries, and |a - e| <= atol + rtol |e| on the finite ones; a
    failure names the worst entry."""
    assert actual.shape == expected.shape, f"{what}: shape {actual.shape} != {expected.shape}"
    a = actual.detach().double()
    e = expected.detach().to(actual.dtype).double()
    nan_a, nan_e = a.isnan(), e.isnan()
    assert torch.equal(nan_a, nan_e), (
        f"{what}: NaN pattern differs: NaN only in actual: {_where(nan_a & ~nan_e)}; "
        f"NaN only in expected: {_where(nan_e & ~nan_a)}")
    inf = (a.isinf() | e.isinf()) & ~nan_a
    bad_inf = inf & (a != e)
    assert not bad_inf.any(), (
        f"{what}: infinities differ at {_where(bad_inf)}: actual "
        f"{a[bad_inf][:4].tolist()} expected {e[bad_inf][:4].tolist()}")
    fin = ~(inf | nan_a)
    excess = torch.where(fin, (a - e).abs() - tol.rtol * e.abs() - tol.atol, torch.zeros_like(a))
    if excess.numel() and excess.max() > 0:
        i = tuple(int(v) for v in torch.unravel_index(excess.argmax(), excess.shape))
        raise AssertionError(
            f"{what}: mismatch at {i}: actual {a[i].item()!r}, expected {e[i].item()!r}, "
            f"|diff| {abs(a[i] - e[i]).item():.3e} > atol {tol.atol:.1e} + rtol {tol.rtol:.1e}"
            f" * |expected|; {(excess > 0).sum().item()} of {excess.numel()} entries off")


def assert_normalized(out: torch.Tensor, case: Case, dim: int, has_mass: torch.Tensor,
                      atol: float, what: str = ""):
    """Rows along ``dim`` with ``has_mass`` sum to 1 (log form: logsumexp 0), the others
    are all excluded (0 / -inf); probabilities lie in [0, 1] (log: <= 0)."""
    out = out.detach().double()
    has_mass = has_mass.squeeze(dim)
    if case.log:
        assert (out <= 0).all(), f"{what}: positive log-probability, max {out.max().item()}"
        total = torch.logsumexp(out, dim)
        target = torch.where(has_mass, 0.0, NEG_INF)
    else:
        assert (out >= 0).all() and (out <= 1).all(), (
            f"{what}: probability outside [0, 1]: min {out.min().item()}, max {out.max().item()}")
        total = out.sum(dim)
        target = has_mass.double()
    assert_close(total, target, Tol(0.0, atol), f"{what}: row totals")


def expect_raises(exc, words, fn: Callable, *args: Any, **kwargs: Any):
    """``fn(*args, **kwargs)`` raises ``exc`` (an exception type or a tuple of them), and
    the message contains every string in ``words``."""
    name = " or ".join(e.__name__ for e in (exc if isinstance(exc, tuple) else (exc,)))
    try:
        fn(*args, **kwargs)
    except exc as e:
        msg = str(e)
        missing = [w for w in words if w not in msg]
        assert not missing, f"{type(e).__name__} message {msg!r} does not mention {missing}"
        return
    except Exception as e:  # any other type: report it as the wrong one
        raise AssertionError(f"expected {name}, got {type(e).__name__}: {e}") from e
    raise AssertionError(f"expected {name}, nothing was raised")


def interactive_sigint() -> None:
    """``preexec_fn`` of a subprocess that a test interrupts as Ctrl-C would: SIGINT back to
    its default, as in a terminal (a process started with SIGINT ignored, as this test
    worker may be after other tests' process pools and Ray, passes that on to its children
    and Python then installs no KeyboardInterrupt handler)."""
    import signal

    signal.signal(signal.SIGINT, signal.SIG_DFL)
