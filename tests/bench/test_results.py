"""The result file: atomic writes, the default path."""

from __future__ import annotations

import os
from pathlib import Path

from softmaxlab.bench import results


def test_write_atomic_replaces_the_file_and_leaves_no_temporary(tmp_path):
    p = tmp_path / "a" / "b.json"
    results.write_atomic(p, "one")
    results.write_atomic(p, b"two")
    assert p.read_text() == "two"
    assert os.listdir(p.parent) == ["b.json"]


def test_default_output_path_names_suite_host_and_date():
    p = results.default_out("topk")
    here = Path(results.__file__).resolve().parents[3]  # this checkout
    assert p.parent == here / "benchmarks" / "results" and p.is_absolute()
    assert p.name.startswith("bench-topk-") and p.suffix == ".json"
