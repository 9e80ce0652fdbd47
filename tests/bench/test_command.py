"""The ``softmaxlab bench`` command: a quick run, and errors that list the valid names.
Nothing here asserts on time."""

from __future__ import annotations

import json
import os

import pytest

import softmaxlab as sl
from softmaxlab.bench import environment, records, results, suites, timing
from softmaxlab.cli import main

from .._helpers import interactive_sigint


def test_quick_cli_run_writes_json_with_every_documented_field(tmp_path, capsys, monkeypatch):
    monkeypatch.delenv(environment.BACKEND_ENV, raising=False)
    out = tmp_path / "r" / "bench.json"
    code = main(["bench", "--suite", "linear_ce", "--quick", "--repeat", "3", "--backend",
                 "reference", "--quiet", "--out", str(out)])
    assert code == 0
    printed = capsys.readouterr().out
    assert f"wrote {out}" in printed and "3 GEMMs" in printed
    assert environment.BACKEND_ENV not in os.environ  # set for the run only
    assert [p.name for p in out.parent.iterdir()] == ["bench.json"]  # no temp file left
    doc = json.loads(out.read_text())

    assert set(results.DOC_FIELDS) <= set(doc)
    assert set(environment.MACHINE_FIELDS) <= set(doc["machine"])
    for key in ("python", "torch", "triton", "entmax", "liger", "cce", "softmaxlab"):
        assert doc["versions"][key], key
    assert doc["versions"]["softmaxlab"] == sl.__version__
    assert set(doc["git"]) == {"commit", "dirty"}
    assert doc["backend"] == "reference" and doc["quick"] is True
    assert doc["suites"] == ["linear_ce"] and doc["modes"] == list(timing.MODES)
    assert doc["copy_bandwidth"]["cpu"]["gbps"] > 0
    assert doc["timestamp"] and doc["definitions"]["ratios"]
    (case,) = doc["cases"]
    assert case["io"] and case["targets"]

    rows = doc["rows"]
    impls = {i.name for i in suites.build_suite("linear_ce", quick=True)[0].impls}
    assert {(r["impl"], r["mode"]) for r in rows} == {(i, m) for i in impls for m in timing.MODES}
    for r in rows:
        assert set(records.ROW_FIELDS) <= set(r), r
        assert r["status"] == records.OK, r
        assert r["n"] == 3
        assert 0 < r["min_s"] <= r["p20_s"] <= r["median_s"] <= r["p80_s"] <= r["max_s"]
        assert r["first_s"] > 0
        assert isinstance(r["peak_mem_bytes"], int) and r["peak_mem_bytes"] >= 0, r
        assert "fresh process" in r["mem_method"]
        assert r["gflops"] == pytest.approx(r["flops"] / r["median_s"] / 1e9)
    by = {(r["impl"], r["mode"]): r for r in rows}
    for mode in timing.MODES:
        cand = by["softmaxlab", mode]
        assert cand["role"] == "candidate"
        assert set(cand["ratios"]) == impls - {"softmaxlab"}
        for base, ratio in cand["ratios"].items():
            assert ratio == pytest.approx(cand["median_s"] / by[base, mode]["median_s"])
    # the naive form materializes the N x V logits: its peak holds at least them
    n, _d, v = case["shape"]
    assert by["F.cross_entropy", "both"]["peak_mem_bytes"] >= n * v * 4
    targets = by["softmaxlab", "both"]["targets"]
    assert {t["metric"] for t in targets} == {"time", "memory"}
    assert all(t["actual"] is not None and isinstance(t["met"], bool) for t in targets)


@pytest.mark.parametrize("args, words", [
    (["--suite", "nope"], ["unknown suite 'nope'", "valid suites: softmax, topk, linear_ce, "
                                                   "sparse, elementwise, attention, overhead, "
                                                   "patch, gpu, all"]),
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


def test_out_is_checked_before_anything_runs_and_never_replaces_a_foreign_file(tmp_path, capsys):
    mine = tmp_path / "notes.json"
    mine.write_text('{"my": "notes"}')
    for out, words in ((tmp_path, "is a folder"), (mine, "not a softmaxlab bench result"),
                       (mine / "r.json", "is a file")):
        assert main(["bench", "--suite", "linear_ce", "--quick", "--out", str(out)]) == 2
        err = capsys.readouterr().err
        assert words in err and err.count("\n") == 1 and "Traceback" not in err
    assert mine.read_text() == '{"my": "notes"}'


def test_the_default_out_is_absolute_and_in_the_checkout_when_there_is_one(tmp_path,
                                                                         monkeypatch):
    monkeypatch.chdir(tmp_path)
    path = results.default_out("softmax")
    assert path.is_absolute() and path.parent == results.results_dir()
    assert tmp_path not in path.parents or not (
        results.Path(results.__file__).resolve().parents[3] / "benchmarks").is_dir()


def test_ctrl_c_saves_what_was_measured_and_prints_one_line(tmp_path):
    import signal
    import subprocess
    import sys
    import time

    out = tmp_path / "r.json"
    proc = subprocess.Popen([sys.executable, "-m", "softmaxlab", "bench", "--suite",
                             "softmax,elementwise", "--quick", "--repeat", "3", "--out",
                             str(out)], stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            text=True, preexec_fn=interactive_sigint)
    seen = []
    try:
        deadline = time.monotonic() + 120
        while True:  # wait for the first finished case
            line = proc.stderr.readline()
            assert line and time.monotonic() < deadline, ("".join(seen), proc.poll())
            seen.append(line)
            if line.rstrip().endswith(" s") and ": " in line and "/" in line:
                break
        proc.send_signal(signal.SIGINT)
        _, err = proc.communicate(timeout=60)
    finally:
        proc.kill()
    assert proc.returncode == 130, err
    assert "Traceback" not in err and "KeyboardInterrupt" not in err, err
    assert err.strip().splitlines()[-1].startswith("interrupted: saved the ")
    doc = json.loads(out.read_text())
    assert doc["interrupted"] is True and doc["rows"]
