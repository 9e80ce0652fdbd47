"""Rendering results: time units, Markdown, the chart, the plain-text table."""

from __future__ import annotations

import dataclasses
import json
import sys

import pytest
import torch

import softmaxlab as sl
from softmaxlab.bench import records, report, results, runner
from softmaxlab.cli import main


def test_format_time_picks_a_readable_unit():
    assert report.format_time(None) == "-"
    assert report.format_time(1.5e-8) == "15 ns"
    assert report.format_time(0.25) == "250 ms"
    assert report.format_time(125.0) == "125 s"


def _fake_doc() -> dict:
    rows = []
    for impl, role, med, mem in (("softmaxlab", "candidate", 1e-3, 1 << 20),
                                 ("torch.softmax", "baseline", 2e-3, 2 << 20),
                                 ("entmax", "baseline", None, None)):
        r = records.Row(suite="sparse", case="sparse/sparsemax/8x8", op="sparsemax",
                        shape=(8, 8), dtype="float32", device="cpu", mode="both", impl=impl,
                        role=role, n=5, median_s=med, p20_s=med, p80_s=med, min_s=med,
                        max_s=med, mean_s=med, first_s=med, peak_mem_bytes=mem, io_bytes=2560,
                        gbps=2560 / med / 1e9 if med else None)
        if impl == "entmax":
            r = dataclasses.replace(r, status=records.NOT_INSTALLED,
                                    note="entmax not installed (pip install entmax)")
        rows.append(r)
    rows = [r.as_dict() for r in runner.link(rows, [records.Target("time", 0.6, "torch.softmax")])]
    return {"schema": results.SCHEMA, "suites": ["sparse"], "quick": True, "backend": "auto",
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
    report.print_table(_fake_doc())
    out = capsys.readouterr().out
    assert "softmaxlab" in out and "torch.softmax 0.50x" in out and "not installed" in out


def test_progress_line_shows_time_and_ratios_or_the_status():
    ok, missing = _fake_doc()["rows"][0], _fake_doc()["rows"][2]
    assert report.progress_line(ok).split() == ["sparsemax", "8x8", "both", "softmaxlab", "1",
                                                "ms", "torch.softmax", "0.50x"]
    assert report.progress_line(missing).endswith(
        "not installed: entmax not installed (pip install entmax)")
