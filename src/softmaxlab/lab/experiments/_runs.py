"""Experiments with their own training loop: ``(arm, seed)`` runs recorded one by one in
``results.jsonl`` as compare's are (``kind="run"``, ``mapping`` = the arm), so an
interrupted experiment resumes with the runs it has."""

from __future__ import annotations

import contextlib
import functools
import sys
import time
from collections.abc import Callable
from pathlib import Path

from .. import results

__all__ = ["arms", "runs"]


def _one(fn: Callable[[str, int], dict], task: tuple[str, int],
         one_thread: bool = True) -> tuple[dict, float]:
    """``(metrics, seconds)`` of one run, with one intra-op thread as compare's are (the
    same numbers in this process and in a worker), or with this process's threads."""
    from ..train import single_thread

    start = time.perf_counter()
    with single_thread() if one_thread else contextlib.nullcontext():
        metrics = fn(*task)
    return metrics, time.perf_counter() - start


def runs(directory: str | Path, config: dict, arms: list[str], seeds: int,
         fn: Callable[[str, int], dict[str, float]], progress: bool = True,
         jobs: int | None = None) -> Path:
    """``fn(arm, seed) -> metrics`` for every ``(arm, seed)`` not yet recorded with this
    ``config`` in ``directory``; each result is appended as soon as it is known.

    ``jobs=None``: the runs one after the other in this process with its threads (what a
    timed experiment needs). ``jobs=N``: each run with one thread, ``N`` at once in worker
    processes when ``N > 1`` (``fn`` must then pickle: a module-level function or a
    ``functools.partial`` of one); the records do not depend on ``N``."""
    from ..executor import executor

    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    results.repair(directory)
    done = {(r["mapping"], r["seed"]) for r in results.read(directory)
            if r["kind"] == "run" and r.get("config") == config}
    todo = [(a, s) for s in range(seeds) for a in arms if (a, s) not in done]
    if jobs is None:
        timed = ((t, _one(fn, t, one_thread=False)) for t in todo)
    else:
        timed = executor(max(1, min(jobs, len(todo)))).map(_one, fn, todo)
    for i, ((arm, seed), (metrics, seconds)) in enumerate(timed, 1):
        results.append(directory, {"kind": "run", "mapping": arm, "seed": seed, "status": "ok",
                                   "metrics": metrics, "config": config,
                                   "wall_time": seconds})
        if progress:
            print(f"  {arm} seed {seed}: done ({i}/{len(todo)}, {seconds:.1f} s)",
                  file=sys.stderr)
    return directory


def arms(name: str, names: list[str], fit: Callable[..., dict[str, float]]):
    """An experiment's ``run(directory, progress=True, jobs=1, **setup)``: ``fit(arm, seed,
    **setup)`` (a module-level function) for each of ``names`` over ``setup["seeds"]``
    seeds, ``jobs`` at once (the rest of ``setup`` is ``fit``'s keyword arguments, and with
    ``name`` the configuration a resumed run must match)."""

    def run(directory, progress: bool = True, jobs: int = 1, **setup):
        params = {k: v for k, v in setup.items() if k != "seeds"}
        return runs(directory, {"experiment": name, **setup}, names, setup["seeds"],
                    functools.partial(fit, **params), progress, jobs)

    return run
