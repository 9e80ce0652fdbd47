"""Experiments with their own training loop: ``(arm, seed)`` runs recorded one by one in
``results.jsonl`` as compare's are (``kind="run"``, ``mapping`` = the arm), so an
interrupted experiment resumes with the runs it has."""

from __future__ import annotations

import sys
import time
from collections.abc import Callable
from pathlib import Path

from .. import results

__all__ = ["arms", "runs"]


def runs(directory: str | Path, config: dict, arms: list[str], seeds: int,
         fn: Callable[[str, int], dict[str, float]], progress: bool = True) -> Path:
    """``fn(arm, seed) -> metrics`` for every ``(arm, seed)`` not yet recorded with this
    ``config`` in ``directory``; each result is appended as soon as it is known."""
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    results.repair(directory)
    done = {(r["mapping"], r["seed"]) for r in results.read(directory)
            if r["kind"] == "run" and r.get("config") == config}
    todo = [(a, s) for s in range(seeds) for a in arms if (a, s) not in done]
    for i, (arm, seed) in enumerate(todo, 1):
        start = time.perf_counter()
        metrics = fn(arm, seed)
        results.append(directory, {"kind": "run", "mapping": arm, "seed": seed, "status": "ok",
                                   "metrics": metrics, "config": config,
                                   "wall_time": time.perf_counter() - start})
        if progress:
            print(f"  {arm} seed {seed}: done ({i}/{len(todo)}, "
                  f"{time.perf_counter() - start:.1f} s)", file=sys.stderr)
    return directory


def arms(name: str, names: list[str], fit: Callable[..., dict[str, float]]):
    """An experiment's ``run(directory, progress=True, **setup)``: ``fit(arm, seed,
    **setup)`` for each of ``names`` over ``setup["seeds"]`` seeds (the rest of ``setup`` is
    ``fit``'s keyword arguments, and with ``name`` the configuration a resumed run must
    match)."""

    def run(directory, progress: bool = True, **setup):
        params = {k: v for k, v in setup.items() if k != "seeds"}
        return runs(directory, {"experiment": name, **setup}, names, setup["seeds"],
                    lambda arm, seed: fit(arm, seed, **params), progress)

    return run
