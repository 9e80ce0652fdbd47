"""Executors pass the tasks' progress events to the caller, in process and from workers;
compare shows progress inside runs, with an estimate for the whole compare."""

from __future__ import annotations

import pytest

from softmaxlab.cli import main
from softmaxlab.lab.compare import Progress
from softmaxlab.lab.executor import InProcess, LocalProcesses, emit


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
