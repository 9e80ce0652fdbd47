"""Executors pass the tasks' progress events to the caller, in process and from workers;
compare shows progress inside runs, with an estimate for the whole compare."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest

from softmaxlab.cli import main
from softmaxlab.lab.compare import Progress
from softmaxlab.lab.executor import InProcess, LocalProcesses, RayTasks, emit


def _task(shared, task):
    for step in range(3):
        emit((task, step))
    return task * shared


@pytest.mark.parametrize("make", [InProcess, lambda: LocalProcesses(2)], ids=["in", "workers"])
def test_events_reach_the_caller(make):
    events = []
    out = dict(make().map(_task, 10, [1, 2, 3], on_event=events.append))
    assert out == {1: 10, 2: 20, 3: 30}
    assert sorted(events) == sorted((t, s) for t in (1, 2, 3) for s in range(3))


def test_emit_without_a_listener_is_a_no_op():
    emit("nobody listens")
    assert dict(InProcess().map(_task, 1, [5])) == {5: 5}


def test_progress_counts_epochs_and_estimates_the_rest(monkeypatch):
    clock = iter(range(100))
    monkeypatch.setattr("softmaxlab.lab.compare.time.perf_counter", lambda: float(next(clock)))
    p = Progress([("a", 0), ("b", 0)], epochs=10, jobs=1, show=False, window=1.0)
    assert p.eta() is None
    p.epoch(("a", 0, 1))
    assert p.eta() is None  # the first epoch only starts the clock (start-up excluded)
    p.epoch(("a", 0, 2))
    p.epoch(("a", 0, 3))
    eta = p.eta()
    assert eta is not None and eta > 0
    p.finished({"mapping": "a", "seed": 0, "status": "ok"})
    p.epoch(("a", 0, 9))  # an event that arrives after the run's record changes nothing
    assert p.epochs_done == 10


def test_compare_reports_progress_inside_runs(tmp_path, capsys):
    assert main(["compare", "--limit", "300", "--epochs", "30", "--mappings", "softmax",
                 "--seeds", "1", "--jobs", "1", "--out", str(tmp_path)]) == 0
    err = capsys.readouterr().err
    assert "training 1 runs x 30 epochs on 1 job(s)" in err
    assert "estimate: about " in err and " left (from the rate of the first " in err
    assert "100%  1/1 runs" in err


def test_without_ray_the_ray_executor_names_the_install_command(monkeypatch, tmp_path, capsys):
    monkeypatch.setitem(sys.modules, "ray", None)  # `import ray` raises ImportError
    assert main(["compare", "--limit", "300", "--mappings", "softmax", "--executor", "ray",
                 "--out", str(tmp_path)]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("softmaxlab: error: --executor ray: Ray is not installed")
    assert err.endswith('install it with pip install "softmaxlab[ray]"')
    assert len(err.splitlines()) == 1 and not any(tmp_path.iterdir())
    with pytest.raises(ImportError, match=r'pip install "softmaxlab\[ray\]"'):
        list(RayTasks(1).map(_task, 1, [1]))
    assert main(["sweep", "entmax", "--param", "alpha=1.1:2", "--out", str(tmp_path)]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("softmaxlab: error: sweep: Ray is not installed")
    assert err.endswith('install it with pip install "softmaxlab[ray]"') and "\n" not in err
    assert not any(tmp_path.iterdir())


@pytest.mark.parametrize(("flags", "message"), [
    (["--address", "auto"], "--address auto needs --executor ray"),
    (["--executor", "dask"], "argument --executor: invalid choice: 'dask'"),
])
def test_bad_executor_flags_are_one_line(flags, message, tmp_path, capsys):
    assert main(["compare", "--limit", "300", "--mappings", "softmax", *flags,
                 "--out", str(tmp_path)]) == 2
    err = capsys.readouterr().err
    assert message in err and len(err.strip().splitlines()) == 1


def test_importing_softmaxlab_and_its_cli_does_not_import_ray():
    code = ("import sys, softmaxlab, softmaxlab.cli; softmaxlab.cli.build_parser(); "
            "print('ray' in sys.modules)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         check=True, env={**os.environ, "PYTHONPATH": os.pathsep.join(sys.path)})
    assert out.stdout.strip() == "False"
