"""The source papers' claims, each an :class:`Experiment` that re-measures it here.

An experiment names the paper, its claim and number, the setup it runs at each scale
(``smoke``: minutes, what the tests run; ``small``: the whole set within about an hour on a
2-core machine; ``full``: closer to the paper), the :class:`Check` s that decide the
verdict, and how its setup differs from the paper's. Training experiments run
:func:`softmaxlab.lab.compare.compare` (its ``results.jsonl``: crash-safe, resumable);
speed experiments time the library with the bench harness, candidate and baseline in the
same run (:mod:`.speed`).

A check compares two sides, ``(mapping, metric)`` each, seed by seed (a paired t-test,
Holm-corrected over the experiment's checks): ``confirmed`` when the paper's direction
holds at p < 0.05, ``refuted`` when the opposite does, ``inconclusive`` otherwise.

Adding a paper: a module here that calls :func:`register` (imported below).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

__all__ = ["SCALES", "Check", "Experiment", "experiments", "get", "register"]

SCALES = ("smoke", "small", "full")


@dataclass(frozen=True)
class Check:
    """``better`` beats ``worse`` on ``metric`` (``higher``: higher is better), as the paper
    says; or, with ``margin``, the two are equal within ``margin`` (confirmed when the 95%
    interval of the difference lies inside ``[-margin, margin]``, refuted when it lies
    outside). Each side is ``(mapping, metric)`` (``metric`` of the side overrides the
    check's, e.g. ECE after temperature scaling against ECE before it). ``paper``: the
    paper's numbers for the two sides, as text."""

    better: str
    worse: str
    metric: str
    higher: bool
    paper: str = ""
    better_metric: str | None = None
    worse_metric: str | None = None
    margin: float | None = None

    @property
    def sides(self) -> tuple[tuple[str, str], tuple[str, str]]:
        return ((self.better, self.better_metric or self.metric),
                (self.worse, self.worse_metric or self.metric))

    def describe(self) -> str:
        (b, bm), (w, wm) = self.sides
        left = b if bm == self.metric else f"{b} ({bm})"
        right = w if wm == self.metric else f"{w} ({wm})"
        if self.margin is not None:
            return f"{left} = {right} on {self.metric} (within ±{self.margin:g})"
        return f"{left} {'>' if self.higher else '<'} {right} on {self.metric}"


@dataclass(frozen=True)
class Experiment:
    """One paper's claim re-measured.

    ``setup(scale)`` returns the keyword arguments of the run: for ``kind="train"`` those of
    :func:`~softmaxlab.lab.compare.compare` (``dataset``, ``mappings``, ``model``,
    ``seeds``, ``epochs``, ``limit``, ...); for ``kind="speed"`` those of
    :func:`.speed.run`; for ``kind="custom"`` those of its own ``run(directory,
    progress=..., **setup)`` (a training loop of its own, recorded by :func:`._runs.runs`).
    ``differences(scale)``: how that setup differs from the paper's.
    """

    name: str
    paper: str
    claim: str
    checks: tuple[Check, ...]
    setup: Callable[[str], dict[str, Any]]
    differences: Callable[[str], str]
    kind: str = "train"
    run: Callable[..., Any] | None = None
    tags: tuple[str, ...] = field(default=())


_EXPERIMENTS: dict[str, Experiment] = {}


def register(experiment: Experiment) -> Experiment:
    if experiment.name in _EXPERIMENTS:
        raise ValueError(f"experiment {experiment.name!r} is already registered")
    if experiment.kind not in ("train", "speed", "custom"):
        raise ValueError(f"kind must be 'train', 'speed' or 'custom', got {experiment.kind!r}")
    if (experiment.kind == "custom") != (experiment.run is not None):
        raise ValueError(f"experiment {experiment.name!r}: a run function goes with "
                         "kind='custom' (and only with it)")
    _EXPERIMENTS[experiment.name] = experiment
    return experiment


def experiments() -> tuple[Experiment, ...]:
    """Every registered experiment, in registration order."""
    return tuple(_EXPERIMENTS.values())


def get(name: str) -> Experiment:
    try:
        return _EXPERIMENTS[name]
    except KeyError:
        raise ValueError(f"unknown experiment {name!r}; choose one of "
                         f"{', '.join(_EXPERIMENTS)} or all") from None


# the papers in the order of the issue and of the README's table
# isort: off
from . import taylor_spherical, sigsoftmax, mixtures, speed  # noqa: E402,F401
from . import ds_softmax, margins, graph_tv, recsys, calibration  # noqa: E402,F401
# isort: on
