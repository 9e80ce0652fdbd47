"""The suites of ``softmaxlab bench``: their names, which apply to this machine, their cases.

A case names its inputs (shape, dtype, device), the function under test (the public
softmaxlab API, through whatever fast path the library dispatches to; mapping functions come
from the registry, :func:`softmaxlab.get_mapping`), its baselines (torch, the naive formula,
peer packages where they exist), the bytes and FLOPs its op must move and compute per mode
(documented in ``io``), and its targets (goals for the candidate). The suites are described
in :mod:`.cpu`, :mod:`.patch` and :mod:`.gpu`.
"""

from __future__ import annotations

from collections.abc import Callable

import torch

from ..records import Case
from ..timing import Step, run_once
from .cpu import (
    attention_suite,
    elementwise_suite,
    linear_suite,
    overhead_suite,
    softmax_suite,
    sparse_suite,
    topk_suite,
)
from .gpu import gpu_suite
from .patch import patch_suite

_BUILDERS: dict[str, Callable[[bool], list[Case]]] = {
    "softmax": softmax_suite,
    "topk": topk_suite,
    "linear_ce": linear_suite,
    "sparse": sparse_suite,
    "elementwise": elementwise_suite,
    "attention": attention_suite,
    "overhead": overhead_suite,
    "patch": patch_suite,
    "gpu": gpu_suite,
}
#: Every suite, in the order ``all`` runs them.
SUITES: tuple[str, ...] = tuple(_BUILDERS)
#: Suites that need a CUDA device.
CUDA_SUITES: frozenset[str] = frozenset({"gpu"})


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


def build_suite(name: str, *, quick: bool = False, compile: bool = False) -> list[Case]:
    """The cases of suite ``name`` (no tensors are made until a case runs); ``compile``: with
    the compiled variants of each case's :attr:`~softmaxlab.bench.records.Case.compilable`
    implementations."""
    if name not in _BUILDERS:
        raise ValueError(f"unknown suite {name!r}; valid suites: {', '.join(SUITES)}")
    cases = _BUILDERS[name](quick)
    return [c.with_compiled() for c in cases] if compile else cases


def find_case(suite: str, quick: bool, compile: bool, case_id: str) -> Case:
    for c in build_suite(suite, quick=quick, compile=compile):
        if c.id == case_id:
            return c
    raise ValueError(f"no case {case_id!r} in suite {suite!r} (quick={quick}, "
                     f"compile={compile})")


def memory_steps(suite: str, quick: bool, compile: bool, case_id: str, impl: str,
                 modes: list[str]) -> dict[str, Step]:
    """The steps whose peak memory a fresh process measures, one per mode, on one set of
    inputs. Each mode's op first runs once on a tiny copy of the case (code paged in,
    thread pools started, lazy imports done), so that only the op's own allocations count.
    """
    case = find_case(suite, quick, compile, case_id)
    implementation = case.impl(impl)
    tiny = case.tiny()
    tiny_inputs = tiny.make()
    for mode in modes:
        run_once(tiny.step(implementation, mode, tiny_inputs))
    del tiny_inputs
    inputs = case.make()
    return {mode: case.step(implementation, mode, inputs) for mode in modes}
