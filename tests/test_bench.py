"""The benchmark harness (``softmaxlab bench``): statistics, the result document, memory
measurement, rendering, errors. Nothing here asserts on absolute time."""

from __future__ import annotations

import dataclasses
import json
import os
import sys

import pytest
import torch

import softmaxlab as sl
from softmaxlab.cli import main
from softmaxlab.lab.bench import cases as C
from softmaxlab.lab.bench import harness as H
from softmaxlab.lab.bench import report as R


@pytest.fixture(scope="module", autouse=True)
def _stop_memory_server():
    """The fork server for memory measurements holds ~400 MB: stop it after this module
    instead of at the end of the test session."""
    yield
    H.close_memory_server()


# ---------------------------------------------------------------- statistics
def test_quantiles_and_stats_on_synthetic_timings():
    ten = [float(v) for v in range(10, 0, -1)]  # 10..1, unsorted on purpose
    assert H.quantile(ten, 0.5) == pytest.approx(5.5)
    assert H.quantile(ten, 0.2) == pytest.approx(2.8)  # 1 + 0.2 * 9
    assert H.quantile(ten, 0.8) == pytest.approx(8.2)
    assert H.quantile(ten, 0.0) == 1.0 and H.quantile(ten, 1.0) == 10.0
    assert H.quantile([3.0], 0.2) == 3.0
    with pytest.raises(ValueError, match="no values"):
        H.quantile([], 0.5)
    with pytest.raises(ValueError, match="q must be in"):
        H.quantile([1.0], 1.5)
    # one slow outlier moves the mean, not the median or the p20/p80 band
    times = [1.0] * 9 + [100.0]
    s = H.Stats.of(times)
    assert (s.n, s.median, s.p20, s.p80, s.min, s.max) == (10, 1.0, 1.0, 1.0, 1.0, 100.0)
    assert s.mean == pytest.approx(10.9)
    with pytest.raises(ValueError, match="no timings"):
        H.Stats.of([])


def test_format_time_picks_a_readable_unit():
    assert H.format_time(None) == "-"
    assert H.format_time(1.5e-8) == "15 ns"
    assert H.format_time(0.25) == "250 ms"
    assert H.format_time(125.0) == "125 s"


# ---------------------------------------------------------------- ratios and targets
def _row(case_id, mode, impl, role, median, mem=None, copy_frac=None, status=H.OK):
    return {**dict.fromkeys(H.ROW_FIELDS), "case": case_id, "mode": mode, "impl": impl,
            "role": role, "median_s": median, "peak_mem_bytes": mem, "copy_frac": copy_frac,
            "status": status, "ratios": {}, "mem_ratios": {}, "targets": []}


def test_link_computes_ratios_in_the_same_case_and_mode_and_checks_targets():
    mib = 1 << 20
    rows = [_row("a", "forward", "softmaxlab", "candidate", 2.0, 100 * mib, copy_frac=0.9),
            _row("a", "forward", "torch", "baseline", 4.0, 400 * mib),
            _row("a", "forward", "peer", "baseline", None, status=H.NOT_INSTALLED),
            _row("a", "backward", "torch", "baseline", 1.0, 50 * mib),  # other mode
            _row("b", "forward", "torch", "baseline", 8.0, 10 * mib),  # other case
            # below the resident-set resolution: times compared, memory not
            _row("c", "both", "softmaxlab", "candidate", 1.0, 100 << 10),
            _row("c", "both", "torch", "baseline", 2.0, 300 << 10)]
    targets = [C.Target("time", 0.6, "torch"), C.Target("memory", 0.2, "torch"),
               C.Target("bandwidth", 0.8), C.Target("time", 1.0, "peer"),
               C.Target("time", 1.0, "torch", modes=("both",))]
    H.link(rows, targets)
    cand = rows[0]
    assert cand["ratios"] == {"torch": 0.5} and cand["mem_ratios"] == {"torch": 0.25}
    got = {(t["metric"], t["baseline"]): (t["actual"], t["met"]) for t in cand["targets"]}
    assert got == {("time", "torch"): (0.5, True), ("memory", "torch"): (0.25, False),
                   ("bandwidth", None): (0.9, True), ("time", "peer"): (None, None)}
    assert all(r["ratios"] == {} for r in rows[1:5])
    assert rows[5]["ratios"] == {"torch": 0.5} and rows[5]["mem_ratios"] == {}


# ---------------------------------------------------------------- steps
class _Counting:
    def __init__(self):
        self.forwards = 0

    def __call__(self, x):
        self.forwards += 1
        return x.exp()


def test_backward_mode_times_the_backward_alone_and_forward_mode_builds_no_graph():
    x = torch.randn(4, 3, requires_grad=True)
    fn = _Counting()
    inputs = H.Inputs((x,), (x,), torch.ones(4, 3))
    bwd = H.AutogradStep(fn, inputs, "backward")
    bwd.before()
    assert fn.forwards == 1
    (dx,) = bwd.call()
    assert fn.forwards == 1  # the timed call ran no forward
    assert torch.allclose(dx, x.exp())
    bwd.after()
    both = H.AutogradStep(fn, inputs, "both")
    y, (dx,) = both.call()
    assert fn.forwards == 2 and torch.allclose(dx, x.exp())
    fwd = H.AutogradStep(fn, inputs, "forward")
    assert fwd.call().grad_fn is None
    with pytest.raises(ValueError, match="mode must be one of forward, backward, both"):
        H.AutogradStep(fn, inputs, "sideways")


# ---------------------------------------------------------------- memory
def test_fresh_process_rss_measurement_detects_a_known_allocation():
    target = ("softmaxlab.lab.bench.harness", "allocation_probe")
    big, method = H.rss_growth_in_fresh_process((*target, {"nbytes": 200_000_000}))
    small, _ = H.rss_growth_in_fresh_process((*target, {"nbytes": 1_000}))
    assert 150e6 <= big <= 260e6, (big, method)
    assert small < 20e6, small  # a fresh process: the big one's pages are not counted here
    assert "fresh process" in method


def test_a_failing_memory_measurement_raises_with_the_childs_error():
    with pytest.raises(RuntimeError, match="no case 'nope'"):
        H.rss_growth_in_fresh_process(("softmaxlab.lab.bench.cases", "memory_steps",
                                       {"suite": "topk", "quick": True, "case_id": "nope",
                                        "impl": "softmaxlab", "modes": ["forward"]}))


# ---------------------------------------------------------------- the CLI run
def test_quick_cli_run_writes_json_with_every_documented_field(tmp_path, capsys, monkeypatch):
    monkeypatch.delenv(H.BACKEND_ENV, raising=False)
    out = tmp_path / "r" / "bench.json"
    code = main(["bench", "--suite", "linear_ce", "--quick", "--repeat", "3", "--backend",
                 "reference", "--quiet", "--out", str(out)])
    assert code == 0
    printed = capsys.readouterr().out
    assert f"wrote {out}" in printed and "3 GEMMs" in printed
    assert H.BACKEND_ENV not in os.environ  # set for the run only
    assert [p.name for p in out.parent.iterdir()] == ["bench.json"]  # no temp file left
    doc = json.loads(out.read_text())

    assert set(H.DOC_FIELDS) <= set(doc)
    assert set(H.MACHINE_FIELDS) <= set(doc["machine"])
    for key in ("python", "torch", "triton", "entmax", "liger", "cce", "softmaxlab"):
        assert doc["versions"][key], key
    assert doc["versions"]["softmaxlab"] == sl.__version__
    assert set(doc["git"]) == {"commit", "dirty"}
    assert doc["backend"] == "reference" and doc["quick"] is True
    assert doc["suites"] == ["linear_ce"] and doc["modes"] == list(H.MODES)
    assert doc["copy_bandwidth"]["cpu"]["gbps"] > 0
    assert doc["timestamp"] and doc["definitions"]["ratios"]
    (case,) = doc["cases"]
    assert case["io"] and case["targets"]

    rows = doc["rows"]
    impls = {i.name for i in C.build_suite("linear_ce", quick=True)[0].impls}
    assert {(r["impl"], r["mode"]) for r in rows} == {(i, m) for i in impls for m in H.MODES}
    for r in rows:
        assert set(H.ROW_FIELDS) <= set(r), r
        assert r["status"] == H.OK, r
        assert r["n"] == 3
        assert 0 < r["min_s"] <= r["p20_s"] <= r["median_s"] <= r["p80_s"] <= r["max_s"]
        assert r["first_s"] > 0
        assert isinstance(r["peak_mem_bytes"], int) and r["peak_mem_bytes"] >= 0, r
        assert "fresh process" in r["mem_method"]
        assert r["gflops"] == pytest.approx(r["flops"] / r["median_s"] / 1e9)
    by = {(r["impl"], r["mode"]): r for r in rows}
    for mode in H.MODES:
        cand = by["softmaxlab", mode]
        assert cand["role"] == "candidate"
        assert set(cand["ratios"]) == impls - {"softmaxlab"}
        for base, ratio in cand["ratios"].items():
            assert ratio == pytest.approx(cand["median_s"] / by[base, mode]["median_s"])
    # the naive form materializes the N x V logits: its peak holds at least them
    n, d, v = case["shape"]
    assert by["F.cross_entropy", "both"]["peak_mem_bytes"] >= n * v * 4
    targets = by["softmaxlab", "both"]["targets"]
    assert {t["metric"] for t in targets} == {"time", "memory"}
    assert all(t["actual"] is not None and isinstance(t["met"], bool) for t in targets)


# ---------------------------------------------------------------- rendering
def _fake_doc() -> dict:
    rows = []
    for impl, role, med, mem in (("softmaxlab", "candidate", 1e-3, 1 << 20),
                                 ("torch.softmax", "baseline", 2e-3, 2 << 20),
                                 ("entmax", "baseline", None, None)):
        r = {**dict.fromkeys(H.ROW_FIELDS), "suite": "sparse", "case": "sparse/sparsemax/8x8",
             "op": "sparsemax", "shape": [8, 8], "dtype": "float32", "device": "cpu",
             "mode": "both", "impl": impl, "role": role, "status": H.OK, "ratios": {},
             "mem_ratios": {}, "targets": [], "n": 5, "median_s": med, "p20_s": med,
             "p80_s": med, "min_s": med, "max_s": med, "mean_s": med, "first_s": med,
             "peak_mem_bytes": mem, "io_bytes": 2560, "gbps": 2560 / med / 1e9 if med else None}
        if impl == "entmax":
            r.update(status=H.NOT_INSTALLED, note="entmax not installed (pip install entmax)")
        rows.append(r)
    H.link(rows, [C.Target("time", 0.6, "torch.softmax")])
    return {"schema": H.SCHEMA, "suites": ["sparse"], "quick": True, "backend": "auto",
            "timestamp": "2026-01-01T00:00:00+00:00", "git": {"commit": "abc", "dirty": False},
            "machine": {"cpu": "test cpu", "cores_usable": 2, "torch_threads": 2,
                        "allocator": "system", "gpu": None},
            "versions": {"softmaxlab": sl.__version__, "torch": torch.__version__},
            "copy_bandwidth": {"cpu": {"gbps": 10.0}}, "rows": rows}


def test_render_writes_a_markdown_table(tmp_path, capsys):
    f = tmp_path / "r.json"
    f.write_text(json.dumps(_fake_doc()))
    md = tmp_path / "out" / "bench.md"
    assert main(["bench", "--render", str(f), str(f), "--markdown", str(md)]) == 0
    text = md.read_text()
    assert text.count("### softmaxlab bench: sparse") == 2
    assert "| op | shape | dtype | mode | impl | median |" in text
    assert "**softmaxlab**" in text and "torch.softmax 0.50x" in text
    assert "time vs torch.softmax<=0.6 ok" in text and "not installed" in text
    capsys.readouterr()
    assert main(["bench", "--render", str(f)]) == 0  # no output file: Markdown to stdout
    assert "**softmaxlab**" in capsys.readouterr().out


def test_render_plots_a_png_of_ratios(tmp_path):
    pytest.importorskip("matplotlib", reason="the chart needs matplotlib (the lab extra)")
    f = tmp_path / "r.json"
    f.write_text(json.dumps(_fake_doc()))
    png = tmp_path / "chart.png"
    assert main(["bench", "--render", str(f), "--plot", str(png)]) == 0
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert len(png.read_bytes()) > 5000


def test_render_rejects_a_file_that_is_not_a_result(tmp_path, capsys):
    f = tmp_path / "x.json"
    f.write_text("{}")
    assert main(["bench", "--render", str(f)]) == 2
    assert "is not a softmaxlab bench result" in capsys.readouterr().err
    assert main(["bench", "--render", str(tmp_path / "missing.json")]) == 2
    assert "cannot read" in capsys.readouterr().err


def test_plain_text_table_without_rich(monkeypatch, capsys):
    monkeypatch.setitem(sys.modules, "rich", None)
    monkeypatch.setitem(sys.modules, "rich.console", None)
    R.print_table(_fake_doc())
    out = capsys.readouterr().out
    assert "softmaxlab" in out and "torch.softmax 0.50x" in out and "not installed" in out


# ---------------------------------------------------------------- errors
@pytest.mark.parametrize("args, words", [
    (["--suite", "nope"], ["unknown suite 'nope'", "valid suites: softmax, topk, linear_ce, "
                                                   "sparse, elementwise, gpu, all"]),
    (["--suite", "softmax,bad"], ["unknown suite 'bad'"]),
    (["--backend", "cuda"], ["unknown backend 'cuda'", "valid backends: reference, cpu, "
                                                      "triton, auto"]),
    (["--mode", "sideways"], ["unknown mode 'sideways'", "valid modes: forward, backward, "
                                                        "both, all"]),
    (["--repeat", "0"], ["repeat must be an integer >= 1, got 0"]),
    (["--markdown", "x.md"], ["--markdown and --plot go with --render"]),
])
def test_bad_names_give_a_clear_error_listing_the_valid_ones(args, words, capsys):
    assert main(["bench", "--quick", *args]) == 2
    err = capsys.readouterr().err
    for w in words:
        assert w in err, err


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the message on a CPU-only machine")
def test_gpu_suite_without_cuda_is_an_error_and_all_skips_it():
    with pytest.raises(ValueError, match="suite 'gpu' needs a CUDA device"):
        C.resolve_suites("gpu")
    names, skipped = C.resolve_suites("all")
    assert "gpu" not in names and skipped == {"gpu": "CUDA not available"}
    assert names == [s for s in C.SUITES if s != "gpu"]


# ---------------------------------------------------------------- peers
def test_missing_peer_packages_are_reported_not_raised(monkeypatch):
    monkeypatch.setitem(sys.modules, "entmax", None)  # import entmax -> ModuleNotFoundError
    case = next(c for c in C.build_suite("sparse", quick=True) if c.op == "sparsemax")
    ghost = C.Impl("ghost", lambda: None, package="softmaxlab_no_such_peer", dist="ghost-peer")
    case = dataclasses.replace(case, shape=(4, 16), impls=(*case.impls, ghost))
    settings = H.Settings(repeat=2, warmup=0, memory=False)
    rows = {r["impl"]: r for r in H.measure_case(case, ["both"], settings)}
    assert rows["entmax"]["status"] == H.NOT_INSTALLED
    assert rows["entmax"]["note"] == "entmax not installed (pip install entmax)"
    assert rows["ghost"]["status"] == H.NOT_INSTALLED
    assert "pip install ghost-peer" in rows["ghost"]["note"]
    cand = rows["softmaxlab"]
    assert cand["status"] == H.OK and set(cand["ratios"]) == {"torch.softmax", "naive"}
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

        return C.Impl(name, load, role="candidate" if name == "a" else "baseline")

    case = C.RowsCase("softmax", "softmax", (2, 3), torch.float32, "cpu",
                      tuple(impl(n) for n in "abcd"))
    settings = H.Settings(repeat=12, warmup=0, memory=False)
    H.measure(case, "forward", settings)
    first = calls[4:]  # after the four first calls
    rounds = [first[i:i + 4] for i in range(0, 48, 4)]
    assert len(first) == 48 and all(sorted(r) == list("abcd") for r in rounds)
    assert len({tuple(r) for r in rounds}) > 3
    followers = {x: {first[i - 1] for i in range(1, 48) if first[i] == x} for x in "abcd"}
    assert all(len(f) > 1 for f in followers.values()), followers
    calls.clear()
    H.measure(case, "forward", settings)
    assert calls[4:] == first


def test_an_implementation_that_raises_is_an_error_row_not_a_crash():
    def broken():
        def fn(x):
            raise RuntimeError("kernel exploded")
        return fn

    case = C.RowsCase("softmax", "softmax", (4, 8), torch.float32, "cpu",
                      (C.candidate("softmax"), C.Impl("broken", broken)))
    rows = {r["impl"]: r for r in H.measure_case(case, ["forward", "both"],
                                                 H.Settings(repeat=2, warmup=0, memory=False))}
    assert rows["broken"]["status"] == H.ERROR
    assert rows["broken"]["note"] == "RuntimeError: kernel exploded"
    assert rows["softmaxlab"]["status"] == H.OK and rows["softmaxlab"]["ratios"] == {}


# ---------------------------------------------------------------- the cases
def test_every_suite_builds_with_unique_ids_and_consistent_targets():
    for quick in (False, True):
        ids = []
        for suite in C.SUITES:
            cases = C.build_suite(suite, quick=quick)
            assert cases, suite
            for case in cases:
                ids.append(case.id)
                names = [i.name for i in case.impls]
                assert len(set(names)) == len(names), case.id
                assert case.impls[0].role == "candidate" and names[0] == "softmaxlab"
                assert all(i.role == "baseline" for i in case.impls[1:])
                for t in case.targets:
                    assert t.metric in ("time", "memory", "bandwidth")
                    assert t.metric == "bandwidth" or t.baseline in names, (case.id, t)
                    assert set(t.modes) <= set(H.MODES) and t.source
                for mode in H.MODES:
                    assert case.io_bytes(mode) or case.flops(mode), case.id
        assert len(set(ids)) == len(ids)
    full = {c.op: c.shape for c in C.build_suite("linear_ce")}
    assert full == {"linear_cross_entropy": (4096, 1024, 50257)}


def test_io_byte_counts_are_the_documented_ones():
    case = C.build_suite("softmax")[0]
    n = 4096 * 1024 * 4
    assert [case.io_bytes(m) for m in H.MODES] == [2 * n, 3 * n, 5 * n]
    topk = C.build_suite("topk")[0]
    full, top = 64 * 262144 * 4, 64 * 10 * (4 + 8)
    assert topk.io_bytes("forward") == full + top
    lin = C.build_suite("linear_ce")[0]
    assert lin.flops("both") == 6 * 4096 * 1024 * 50257 and lin.io_bytes("both") is None


@pytest.mark.parametrize("op", ["softmax", "log_softmax", "taylor_softmax", "log_taylor_softmax",
                                "spherical_softmax", "log_spherical_softmax", "sigsoftmax",
                                "log_sigsoftmax", "sparsemax", "entmax15"])
def test_each_naive_baseline_computes_the_candidates_function(op):
    x = torch.randn(5, 33, generator=torch.Generator().manual_seed(0), dtype=torch.float64) * 2
    cand = C.candidate(op).resolve()
    naive = C.naive(op).resolve()
    torch.testing.assert_close(naive(x), cand(x), rtol=1e-9, atol=1e-12)


def test_the_linear_baselines_compute_the_same_loss():
    case = C.build_suite("linear_ce", quick=True)[0]
    case = dataclasses.replace(case, shape=(16, 8, 40), dtype=torch.float64)
    h, w, t = case.make().detached()
    losses = {i.name: i.resolve()(h, w, t) for i in case.impls if not i.manual}
    for name, loss in losses.items():
        torch.testing.assert_close(loss.double(), losses["F.cross_entropy"].double(),
                                   msg=name)
    top = C.topk_impls(3)
    x = torch.randn(4, 50, dtype=torch.float64)
    ref_v, ref_i = torch.softmax(x, -1).topk(3)
    for impl in top:
        v, i = impl.resolve()(x)
        torch.testing.assert_close(v, ref_v)
        assert torch.equal(i, ref_i)


def test_write_atomic_replaces_the_file_and_leaves_no_temporary(tmp_path):
    p = tmp_path / "a" / "b.json"
    H.write_atomic(p, "one")
    H.write_atomic(p, b"two")
    assert p.read_text() == "two"
    assert os.listdir(p.parent) == ["b.json"]


def test_backend_env_is_set_for_the_run_and_restored(monkeypatch):
    monkeypatch.delenv(H.BACKEND_ENV, raising=False)
    with H.backend_env("cpu"):
        assert os.environ[H.BACKEND_ENV] == "cpu"
    assert H.BACKEND_ENV not in os.environ
    monkeypatch.setenv(H.BACKEND_ENV, "triton")
    with H.backend_env(None):
        assert os.environ[H.BACKEND_ENV] == "triton"
    with H.backend_env("reference"):
        pass
    assert os.environ[H.BACKEND_ENV] == "triton"


def test_default_output_path_names_suite_host_and_date():
    p = H.default_out("topk")
    assert p.parts[:2] == ("benchmarks", "results")
    assert p.name.startswith("bench-topk-") and p.suffix == ".json"
