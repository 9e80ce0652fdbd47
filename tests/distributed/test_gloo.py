"""Vocabulary-parallel losses on 2 and 3 spawned gloo ranks against the single-process loss.

One spawn per world size for the whole session (shared between pytest-xdist workers
through a file lock): the ranks run every case of ``_cases.py`` (every mapping with a log
form and every Fenchel-Young mapping from the registry, each parameter setting, weights,
ignore_index, label smoothing, every reduction, all-ignored batches, odd and empty shards,
DTensor inputs) and save their results; each test below compares one case in float64:
the loss on every rank and the gradient (the ranks' slices put together) with the
single-process loss of the whole vocabulary.
"""

from __future__ import annotations

import os
from pathlib import Path

import pytest
import torch
from filelock import FileLock

from .._helpers import assert_close
from ..tolerances import F64, LOSS, LOSS_BISECT
from . import _cases as C
from ._worker import launch

WORLDS = (2, 3)

pytestmark = pytest.mark.skipif(
    not (torch.distributed.is_available() and torch.distributed.is_gloo_available()),
    reason="this torch build has no torch.distributed gloo backend")


def _results(world: int, base: Path) -> list[dict]:
    d = base / f"gloo-{world}"
    with FileLock(str(d) + ".lock"):
        if not (d / "done").exists() and not (d / "failed").exists():
            d.mkdir(exist_ok=True)
            try:
                launch(world, d)
            except Exception as e:
                (d / "failed").write_text(f"{type(e).__name__}: {e}")
                raise
            (d / "done").touch()
    if (d / "failed").exists():
        pytest.fail(f"the {world} gloo ranks failed: {(d / 'failed').read_text()}")
    return [torch.load(d / f"rank{r}.pt", weights_only=False) for r in range(world)]


@pytest.fixture(scope="session")
def gloo(tmp_path_factory):
    """``gloo(world)``: every rank's results (spawned once per session and world size)."""
    base = tmp_path_factory.getbasetemp()
    if os.environ.get("PYTEST_XDIST_WORKER"):
        base = base.parent  # shared by the session's xdist workers
    cache: dict[int, list[dict]] = {}

    def get(world: int) -> list[dict]:
        if world not in cache:
            cache[world] = _results(world, base)
        return cache[world]

    return get


def _tol(case: C.Case):
    alpha = case.kw.get("alpha", 1.5)
    bisect = case.mapping == "entmax" and alpha not in (1.0, 2.0)
    return (LOSS_BISECT if bisect else LOSS)[F64]


@pytest.mark.parametrize("world", WORLDS)
@pytest.mark.parametrize("case", C.CASES, ids=lambda c: c.id)
def test_matches_single_process(gloo, world, case):
    ranks = [r[case.id] for r in gloo(world)]
    for rank, r in enumerate(ranks):
        if isinstance(r, str):
            pytest.fail(f"rank {rank} raised {r}")
    ref = C.single(case)
    tol = _tol(case)
    for rank, r in enumerate(ranks):
        assert_close(r["loss"], ref["loss"], tol, f"loss on rank {rank}")
    if case.kind == "topk":
        for r in ranks:
            assert torch.equal(r["index"], ref["index"])
    if case.kind == "linear":
        for name, dim in (("proj", 0), ("bias", 0)):
            if name in ref:
                got = torch.cat([r[name] for r in ranks], dim)
                assert_close(got, ref[name], tol, f"gradient of {name}")
        if case.x.get("reduce_hidden_grad", True):
            for rank, r in enumerate(ranks):
                assert_close(r["hidden"], ref["hidden"], tol, f"hidden gradient, rank {rank}")
        else:  # each rank's part; their sum is the gradient
            got = torch.stack([r["hidden"] for r in ranks]).sum(0)
            assert_close(got, ref["hidden"], tol, "sum of the hidden gradients")
    else:
        got = torch.cat([r["logits"] for r in ranks], -1)
        assert_close(got, ref["logits"], tol, "gradient of the logits")
    if case.opts.get("all_ignored"):
        for r in ranks:
            assert r["loss"].item() == 0.0
            grads = [v for k, v in r.items() if k not in ("loss", "index")]
            assert all(bool((g == 0).all()) for g in grads)


def test_cases_cover_the_registry():
    import softmaxlab as sl
    from softmaxlab.losses.fenchel_young import fenchel_young_names

    covered = {(c.kind, c.mapping) for c in C.CASES}
    for m in sl.mappings():
        if m.log_fn is not None and m.normalized:
            assert ("ce", m.name) in covered
            assert m.log_score is not None, f"{m.name} has a log form but no log_score"
    for name in fenchel_young_names():
        assert ("fy", name) in covered


# ------------------------------------------------------------------ checks inside the ranks
def _checks(gloo, world):
    return [r["checks"] for r in gloo(world)]


@pytest.mark.parametrize("world", WORLDS)
def test_traffic_is_what_the_docs_say(gloo, world):
    """Collectives per call, counted by ``count_traffic`` (rows n=16, float32 logits):
    cross-entropy = the sizes' all-gather, one max (4 B/row), one sum of 2 (3 with label
    smoothing) values per row; topk one all-gather of 2k + 2 float64 per row."""
    n = 16
    for c in _checks(gloo, world):
        f32, i64, f64 = torch.float32, torch.int64, torch.float64
        sizes = ("all_gather", i64, 2)
        assert c["traffic-ce"] == [sizes, ("all_reduce", f32, n), ("all_reduce", f32, 2 * n)]
        assert c["traffic-ce-smooth"] == [sizes, ("all_reduce", f32, n),
                                          ("all_reduce", f32, 3 * n)]
        assert c["traffic-topk"] == [sizes, ("all_gather", f64, n * (2 * 3 + 2))]
        # linear CE in chunks of 8 rows: a max and a sum per chunk, the hidden gradient once
        assert c["traffic-linear"] == [sizes] + [("all_reduce", f32, 8),
                                                 ("all_reduce", f32, 16)] * 2 + [
            ("all_reduce", f32, n * 8)]
        fy = c["traffic-fy-sparsemax"]
        assert fy[:2] == [sizes, ("all_reduce", f64, n)]  # sizes, max (float64)
        assert all(call == ("all_reduce", f64, 2 * n) for call in fy[2:-1])  # Newton steps
        assert fy[-1] == ("all_reduce", f32, 3 * n)  # <z, p - q>, sum p^a, sum q^a


@pytest.mark.parametrize("world", WORLDS)
def test_exact_thresholds_take_few_steps(gloo, world):
    for c in _checks(gloo, world):
        assert all(1 <= s <= 12 for s in c["steps"].values()), c["steps"]


@pytest.mark.parametrize("world", WORLDS)
@pytest.mark.parametrize("what, message", [
    ("rows", "every rank must pass the same rows"),
    ("target", "target values must be in [0,"),
    ("weight", "must have shape ("),
    ("k", "k must be in [1,"),
    ("mapping", "mapping must be a normalized mapping with a log form"),
    ("param", "order must be an even integer"),
])
def test_errors_are_raised_on_every_rank(gloo, world, what, message):
    for c in _checks(gloo, world):
        assert c[f"error-{what}"].startswith(("ValueError", "TypeError")), c[f"error-{what}"]
        assert message in c[f"error-{what}"]


@pytest.mark.parametrize("world", WORLDS)
def test_low_precision_keeps_the_dtype(gloo, world):
    for c in _checks(gloo, world):
        assert c["dtype-f32"] == torch.float32 and c["dtype-bf16"] == torch.bfloat16
        assert c["f32-vs-f64"] < 1e-5
