"""The suites: ids, targets, I/O counts, baselines that compute the same function, the
overhead suite."""

from __future__ import annotations

import dataclasses

import pytest
import torch

import softmaxlab as sl
from softmaxlab.bench import baselines, records, runner, suites, timing


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the message on a CPU-only machine")
def test_gpu_suite_without_cuda_is_an_error_and_all_skips_it():
    with pytest.raises(ValueError, match="suite 'gpu' needs a CUDA device"):
        suites.resolve_suites("gpu")
    names, skipped = suites.resolve_suites("all")
    assert "gpu" not in names and skipped == {"gpu": "CUDA not available"}
    assert names == [s for s in suites.SUITES if s != "gpu"]


def test_every_suite_builds_with_unique_ids_and_consistent_targets():
    for quick, compile in ((False, False), (True, False), (False, True)):
        ids = []
        for suite in suites.SUITES:
            cases = suites.build_suite(suite, quick=quick, compile=compile)
            assert cases, suite
            for case in cases:
                ids.append(case.id)
                names = [i.name for i in case.impls]
                assert len(set(names)) == len(names), case.id
                assert case.impls[0].role == "candidate" and names[0] == "softmaxlab"
                assert all(i.role == "baseline" for i in case.impls[1:])
                assert set(case.compilable) <= set(names)
                assert all((f"{n} compiled" in names) == compile for n in case.compilable)
                for t in case.targets:
                    assert t.metric in ("time", "memory", "bandwidth")
                    assert t.metric == "bandwidth" or t.baseline in names, (case.id, t)
                    assert set(t.modes) <= set(case.modes) <= set(timing.MODES) and t.source
                assert case.io, case.id
                for mode in case.modes:
                    assert (case.io_bytes(mode) or case.flops(mode)
                            or isinstance(case, records.OverheadCase)), case.id
        assert len(set(ids)) == len(ids)
    full = {c.op: c.shape for c in suites.build_suite("linear_ce")}
    assert full == {"linear_cross_entropy": (4096, 1024, 50257)}


def test_io_byte_counts_are_the_documented_ones():
    case = suites.build_suite("softmax")[0]
    n = 4096 * 1024 * 4
    assert [case.io_bytes(m) for m in timing.MODES] == [2 * n, 3 * n, 5 * n]
    topk = suites.build_suite("topk")[0]
    full, top = 64 * 262144 * 4, 64 * 10 * (4 + 8)
    assert topk.io_bytes("forward") == full + top
    lin = suites.build_suite("linear_ce")[0]
    assert lin.flops("both") == 6 * 4096 * 1024 * 50257 and lin.io_bytes("both") is None


@pytest.mark.parametrize("op", ["softmax", "log_softmax", "taylor_softmax", "log_taylor_softmax",
                                "spherical_softmax", "log_spherical_softmax", "sigsoftmax",
                                "log_sigsoftmax", "sparsemax", "entmax15"])
def test_each_naive_baseline_computes_the_candidates_function(op):
    x = torch.randn(5, 33, generator=torch.Generator().manual_seed(0), dtype=torch.float64) * 2
    cand = baselines.candidate(op).resolve()
    naive = baselines.naive(op).resolve()
    torch.testing.assert_close(naive(x), cand(x), rtol=1e-9, atol=1e-12)


def test_the_linear_baselines_compute_the_same_loss():
    case = suites.build_suite("linear_ce", quick=True)[0]
    case = dataclasses.replace(case, shape=(16, 8, 40), dtype=torch.float64)
    h, w, t = case.make().detached()
    losses = {i.name: i.resolve()(h, w, t) for i in case.impls if not i.manual}
    for name, loss in losses.items():
        torch.testing.assert_close(loss.double(), losses["F.cross_entropy"].double(),
                                   msg=name)
    top = baselines.topk_impls(3)
    x = torch.randn(4, 50, dtype=torch.float64)
    ref_v, ref_i = torch.softmax(x, -1).topk(3)
    for impl in top:
        v, i = impl.resolve()(x)
        torch.testing.assert_close(v, ref_v)
        assert torch.equal(i, ref_i)


# ---------------------------------------------------------------- the overhead suite
def _tiny(case):
    """The case with 2 calls per timed sample (these tests check rows, not time)."""
    return dataclasses.replace(case, calls=2)


def test_overhead_suite_covers_every_registered_function_forward_only():
    cases = suites.build_suite("overhead", quick=True)
    fns = [f.__name__ for m in sl.mappings() for f in (m.fn, m.log_fn) if f is not None]
    assert [c.op for c in cases] == [*fns, "softmax_topk(k=2)", "cross_entropy"]
    for c in cases:
        assert c.shape == (4, 8) and c.dtype == torch.float32 and c.modes == ("forward",)
        assert [t.label() for t in c.targets] == [f"time vs {c.impls[1].name} <= 2x"]
        x = c.make().args[0]
        assert not x.requires_grad


def test_overhead_rows_have_the_ratio_to_torch_in_forward_mode_only():
    settings = runner.Settings(repeat=2, warmup=0)  # memory on: the suite skips it
    for case in suites.build_suite("overhead", quick=True):
        rows = runner.measure_case(_tiny(case), timing.MODES, settings)
        assert [r.mode for r in rows] == ["forward", "forward"], case.id
        cand, base = rows
        assert cand.status == records.OK and base.status == records.OK, (cand, base)
        assert cand.peak_mem_bytes is None and cand.n == 2
        assert set(cand.ratios) == {base.impl}
        assert cand.ratios[base.impl] == pytest.approx(cand.median_s / base.median_s)
        assert [t["met"] for t in cand.targets] == [cand.ratios[base.impl] <= 2.0]


def test_a_compile_failure_is_reported_as_unavailable(monkeypatch):
    """A function ``torch.compile`` fails on is an "unavailable" row with the reason; the
    others (eager, and the compiled torch baseline) are measured."""

    def fake_compile(fn, fullgraph):
        assert fullgraph

        def compiled(*args):
            if getattr(fn, "func", None) is sl.softmax:  # the candidate: a partial
                raise RuntimeError("Unsupported: fullgraph=True graph break\nsecond line")
            return fn(*args)

        return compiled

    monkeypatch.setattr(torch, "compile", fake_compile)
    case = _tiny(suites.build_suite("overhead", quick=True, compile=True)[0])
    assert [i.name for i in case.impls] == ["softmaxlab", "torch.softmax", "softmaxlab compiled",
                                            "torch.softmax compiled"]
    rows = {r.impl: r for r in runner.measure_case(case, ["forward"],
                                                   runner.Settings(repeat=2, warmup=0))}
    bad = rows["softmaxlab compiled"]
    assert bad.status == records.UNAVAILABLE and bad.median_s is None
    assert bad.note == ("torch.compile(fullgraph=True) failed: RuntimeError: Unsupported: "
                        "fullgraph=True graph break")
    assert rows["torch.softmax compiled"].status == records.OK
    assert set(rows["softmaxlab"].ratios) == {"torch.softmax", "torch.softmax compiled"}


# ---------------------------------------------------------------- the attention suite
def test_attention_suite_shapes_and_targets():
    full = suites.build_suite("attention")
    assert [(c.op, c.shape) for c in full] == [
        (f"sdpa({m})", (4, 8, n, n, 64)) for n in (1024, 4096)
        for m in ("softmax", "entmax15", "sparsemax")]
    for c in full:
        assert c.modes == ("forward", "both") and c.dtype == torch.float32
        labels = [t.label() for t in c.targets]
        if c.op == "sdpa(softmax)":
            assert labels == ["time vs F.scaled_dot_product_attention <= 1.3x"]
        else:
            assert labels == ["time vs naive <= 0.1x", "memory vs naive <= 0.25x"]
    assert full[0].flops("both") == 14 * 4 * 8 * 1024 * 1024 * 64
    assert all(c.shape[:2] == (1, 2) for c in suites.build_suite("attention", quick=True))


@pytest.mark.parametrize("mapping", ["softmax", "entmax15", "sparsemax"])
def test_attention_baselines_compute_the_candidates_function(mapping):
    """On a tiny float64 case every installed implementation gives the candidate's output
    (F.scaled_dot_product_attention: for softmax only, the others' cost reference)."""
    case = next(c for c in suites.build_suite("attention", quick=True)
                if c.op == f"sdpa({mapping})")
    case = dataclasses.replace(case, shape=(1, 2, 5, 7, 3), dtype=torch.float64)
    q, k, v = case.make().detached()
    want = case.impls[0].resolve()(q, k, v)
    checked = []
    for impl in case.impls[1:]:
        if impl.name == "F.scaled_dot_product_attention" and mapping != "softmax":
            continue
        try:
            fn = impl.resolve()
        except records.ImplUnavailable as e:
            assert e.status == records.NOT_INSTALLED and impl.name == "entmax"
            continue
        torch.testing.assert_close(fn(q, k, v), want, rtol=1e-10, atol=1e-12, msg=impl.name)
        checked.append(impl.name)
    assert "naive" in checked


def test_attention_rows_are_measured_in_forward_and_both():
    case = next(c for c in suites.build_suite("attention", quick=True)
                if c.op == "sdpa(entmax15)")
    case = dataclasses.replace(case, shape=(1, 2, 9, 9, 4))
    rows = runner.measure_case(case, timing.MODES, runner.Settings(repeat=2, warmup=0,
                                                                   memory=False))
    ok = [(r.mode, r.impl) for r in rows if r.status == records.OK]
    for mode in ("forward", "both"):
        for impl in ("softmaxlab", "F.scaled_dot_product_attention", "naive"):
            assert (mode, impl) in ok
    assert {r.mode for r in rows} == {"forward", "both"}
    cand = next(r for r in rows if r.impl == "softmaxlab" and r.mode == "both")
    assert cand.gflops is not None and "naive" in cand.ratios
