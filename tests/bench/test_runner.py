"""The run loop: ratios and targets, missing peers, the order of rounds, failing
implementations. Nothing here asserts on time."""

from __future__ import annotations

import dataclasses
import sys

import torch

from softmaxlab.bench import baselines, records, runner, suites


def _row(case_id, mode, impl, role, median, mem=None, copy_frac=None, status=records.OK):
    return records.Row(case=case_id, mode=mode, impl=impl, role=role, median_s=median,
                       peak_mem_bytes=mem, copy_frac=copy_frac, status=status)


def test_link_computes_ratios_in_the_same_case_and_mode_and_checks_targets():
    mib = 1 << 20
    rows = [_row("a", "forward", "softmaxlab", "candidate", 2.0, 100 * mib, copy_frac=0.9),
            _row("a", "forward", "torch", "baseline", 4.0, 400 * mib),
            _row("a", "forward", "peer", "baseline", None, status=records.NOT_INSTALLED),
            _row("a", "backward", "torch", "baseline", 1.0, 50 * mib),  # other mode
            _row("b", "forward", "torch", "baseline", 8.0, 10 * mib),  # other case
            # below the resident-set resolution: times compared, memory not
            _row("c", "both", "softmaxlab", "candidate", 1.0, 100 << 10),
            _row("c", "both", "torch", "baseline", 2.0, 300 << 10)]
    targets = [records.Target("time", 0.6, "torch"), records.Target("memory", 0.2, "torch"),
               records.Target("bandwidth", 0.8), records.Target("time", 1.0, "peer"),
               records.Target("time", 1.0, "torch", modes=("both",))]
    rows = [r.as_dict() for r in runner.link(rows, targets)]
    cand = rows[0]
    assert cand["ratios"] == {"torch": 0.5} and cand["mem_ratios"] == {"torch": 0.25}
    got = {(t["metric"], t["baseline"]): (t["actual"], t["met"]) for t in cand["targets"]}
    assert got == {("time", "torch"): (0.5, True), ("memory", "torch"): (0.25, False),
                   ("bandwidth", None): (0.9, True), ("time", "peer"): (None, None)}
    assert all(r["ratios"] == {} for r in rows[1:5])
    assert rows[5]["ratios"] == {"torch": 0.5} and rows[5]["mem_ratios"] == {}


def test_missing_peer_packages_are_reported_not_raised(monkeypatch):
    monkeypatch.setitem(sys.modules, "entmax", None)  # import entmax -> ModuleNotFoundError
    case = next(c for c in suites.build_suite("sparse", quick=True) if c.op == "sparsemax")
    ghost = records.Impl("ghost", lambda: None, package="softmaxlab_no_such_peer",
                         dist="ghost-peer")
    case = dataclasses.replace(case, shape=(4, 16), impls=(*case.impls, ghost))
    settings = runner.Settings(repeat=2, warmup=0, memory=False)
    rows = {r.impl: r.as_dict() for r in runner.measure_case(case, ["both"], settings)}
    assert rows["entmax"]["status"] == records.NOT_INSTALLED
    assert rows["entmax"]["note"] == "entmax not installed (pip install entmax)"
    assert rows["ghost"]["status"] == records.NOT_INSTALLED
    assert "pip install ghost-peer" in rows["ghost"]["note"]
    cand = rows["softmaxlab"]
    assert cand["status"] == records.OK and set(cand["ratios"]) == {"torch.softmax", "naive"}
    time_vs_entmax = [t for t in cand["targets"] if t["baseline"] == "entmax"]
    assert time_vs_entmax and time_vs_entmax[0]["met"] is None


def test_rounds_run_in_a_seeded_random_order():
    """Every implementation runs once per round; the order changes between rounds (no
    implementation always follows the same one) and is the same in a second run."""
    calls: list[str] = []

    def impl(name):
        def load():
            def fn(x):
                calls.append(name)
                return x * 2

            return fn

        return records.Impl(name, load, role="candidate" if name == "a" else "baseline")

    case = records.RowsCase("softmax", "softmax", (2, 3), torch.float32, "cpu",
                      tuple(impl(n) for n in "abcd"))
    settings = runner.Settings(repeat=12, warmup=0, memory=False)
    runner.measure(case, "forward", settings)
    first = calls[4:]  # after the four first calls
    rounds = [first[i:i + 4] for i in range(0, 48, 4)]
    assert len(first) == 48 and all(sorted(r) == list("abcd") for r in rounds)
    assert len({tuple(r) for r in rounds}) > 3
    followers = {x: {first[i - 1] for i in range(1, 48) if first[i] == x} for x in "abcd"}
    assert all(len(f) > 1 for f in followers.values()), followers
    calls.clear()
    runner.measure(case, "forward", settings)
    assert calls[4:] == first


def test_an_implementation_that_raises_is_an_error_row_not_a_crash():
    def broken():
        def fn(x):
            raise RuntimeError("kernel exploded")
        return fn

    case = records.RowsCase("softmax", "softmax", (4, 8), torch.float32, "cpu",
                      (baselines.candidate("softmax"), records.Impl("broken", broken)))
    settings = runner.Settings(repeat=2, warmup=0, memory=False)
    rows = {r.impl: r.as_dict() for r in runner.measure_case(case, ["forward", "both"], settings)}
    assert rows["broken"]["status"] == records.ERROR
    assert rows["broken"]["note"] == "RuntimeError: kernel exploded"
    assert rows["softmaxlab"]["status"] == records.OK and rows["softmaxlab"]["ratios"] == {}
