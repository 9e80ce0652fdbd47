"""The Ray executor and ``softmaxlab sweep``: the same records as the local executor, on a
local Ray of 2 CPUs shared by the module's tests."""

from __future__ import annotations

import json

import pytest

pytest.importorskip("ray", reason='Ray is not installed (pip install "softmaxlab[ray]")')
pytest.importorskip("matplotlib", reason="the lab extra is not installed (pip install -e .[lab])")

import ray

from softmaxlab.cli import main
from softmaxlab.lab import results
from softmaxlab.lab.compare import compare
from softmaxlab.lab.executor import RayTasks, emit

#: Metrics that measure time: the only ones allowed to differ between executors.
TIMES = {"train_time", "train_time_per_epoch", "wall_time", "inference_time_per_example"}
SMALL = dict(dataset="digits", limit=200, epochs=2, seeds=2, mappings="softmax,sparsemax",
             jobs=2, progress=False)


@pytest.fixture(scope="module")
def local_ray():
    """One local Ray of 2 CPUs for the module (``ray.init`` takes seconds); the executors
    use the Ray this process has open and leave it open."""
    if ray.is_initialized():
        yield
        return
    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False)
    yield
    ray.shutdown()


def _task(shared, task):
    for step in range(2):
        emit((task, step))
    return shared * task


def test_ray_tasks_return_every_result_and_event(local_ray):
    events = []
    out = dict(RayTasks(2).map(_task, 10, [1, 2, 3], on_event=events.append))
    assert out == {1: 10, 2: 20, 3: 30}
    assert sorted(events) == [(t, s) for t in (1, 2, 3) for s in range(2)]
    assert ray.is_initialized()  # the module's Ray is left open


def _runs(directory) -> dict:
    return {(r["mapping"], r["seed"]): r for r in results.read(directory) if r["kind"] == "run"}


def test_compare_on_ray_writes_the_local_executors_records(local_ray, tmp_path):
    local = compare(out=tmp_path / "local", **SMALL)
    on_ray = compare(out=tmp_path / "ray", executor="ray", **SMALL)
    a, b = _runs(local), _runs(on_ray)
    assert sorted(a) == sorted(b) == [(m, s) for m in ("softmax", "sparsemax") for s in (0, 1)]
    for key in a:
        assert a[key].keys() == b[key].keys()
        assert a[key]["status"] == b[key]["status"] == "ok"
        assert {k: v for k, v in a[key]["metrics"].items() if k not in TIMES} == {
            k: v for k, v in b[key]["metrics"].items() if k not in TIMES}
        for field in ("curve", "reliability", "config"):
            assert a[key][field] == b[key][field]
    session = [r for r in results.read(on_ray) if r["kind"] == "session"]
    assert [(s["executor"], s["runs"], s["jobs"]) for s in session] == [("ray", 4, 2)]


def test_compare_on_ray_resumes_and_shows_progress(local_ray, tmp_path, capsys):
    out = tmp_path / "run"
    args = ["compare", "--limit", "200", "--epochs", "2", "--mappings", "softmax",
            "--jobs", "2", "--executor", "ray", "--out", str(out)]
    assert main([*args, "--seeds", "1"]) == 0
    first = (out / results.RESULTS).read_text().splitlines()
    assert main([*args, "--seeds", "2"]) == 0  # adds seed 1, keeps seed 0's record
    err = capsys.readouterr().err
    assert "training 1 runs x 2 epochs on 1 job(s)" in err and "100%  1/1 runs" in err
    lines = (out / results.RESULTS).read_text().splitlines()
    assert lines[:len(first)] == first
    runs = [json.loads(line) for line in lines if json.loads(line)["kind"] == "run"]
    assert sorted((r["mapping"], r["seed"]) for r in runs) == [("softmax", 0), ("softmax", 1)]
