"""The Ray executor and ``softmaxlab sweep``: the same records as the local executor, on a
local Ray of 2 CPUs shared by the module's tests; a sweep killed with SIGKILL resumes."""

from __future__ import annotations

import contextlib
import io
import json
import os
import signal
import subprocess
import sys
import time

import pytest

pytest.importorskip("ray", reason='Ray is not installed (pip install "softmaxlab[ray]")')
pytest.importorskip("matplotlib", reason="the lab extra is not installed (pip install -e .[lab])")

import ray

from softmaxlab.cli import main
from softmaxlab.lab import results
from softmaxlab.lab.compare import compare
from softmaxlab.lab.executor import RayTasks, emit
from softmaxlab.lab.sweep import BEST, sweep

from .._helpers import interactive_sigint

#: One xdist worker runs the module (make test: --dist loadgroup): one Ray, not one per worker.
pytestmark = pytest.mark.xdist_group("ray")
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


@pytest.fixture(scope="module")
def compared(local_ray, tmp_path_factory) -> tuple:
    """The same small compare on the local executor and on Ray: the two run directories."""
    root = tmp_path_factory.mktemp("compare")
    return compare(out=root / "local", **SMALL), compare(out=root / "ray", executor="ray",
                                                         **SMALL)


def test_compare_on_ray_writes_the_local_executors_records(compared):
    local, on_ray = compared
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


# ------------------------------------------------------------------------------- sweep


def _trials(directory) -> dict:
    return {r["trial"]: r for r in results.read(directory) if "trial" in r}


@pytest.fixture(scope="module")
def swept(local_ray, tmp_path_factory):
    """A sweep of 3 trials of 2 epochs (ASHA halves at each rung): its folder, its stderr."""
    err = io.StringIO()
    with contextlib.redirect_stderr(err):
        out = sweep("entmax", ["alpha=1.1:2.0"], samples=3, epochs=2, limit=200, jobs=2,
                    out=tmp_path_factory.mktemp("sweep") / "entmax", reduction_factor=2.0)
    return out, err.getvalue()


def test_sweep_writes_a_record_per_trial_and_the_best_config(swept, compared):
    out, err = swept
    trials = _trials(out)
    assert len(trials) == 3
    finished = [r for r in trials.values() if r["kind"] == "run"]
    stopped = [r for r in trials.values() if r["kind"] == "stopped"]
    assert finished and len(finished) + len(stopped) == 3
    compare_keys = set(_runs(compared[0])[("softmax", 0)])
    for r in finished:
        assert r["status"] == "ok" and set(r) == compare_keys | {"trial"}
        alpha = float(r["mapping"].removeprefix("entmax:alpha="))
        assert 1.1 <= alpha <= 2.0 and len(r["curve"]["val_accuracy"]) == 2
        assert r["config"]["sweep"]["params"] == {"alpha": [1.1, 2.0, "linear"]}
    for r in stopped:
        assert r["epochs"] == 1 and r["reason"] == "stopped early by ASHA"
    best = json.loads((out / BEST).read_text())
    top = max(finished, key=lambda r: r["curve"]["val_accuracy"][-1])
    assert (best["mapping"], best["value"], best["trial"]) == (
        top["mapping"], top["curve"]["val_accuracy"][-1], top["trial"])
    assert best["params"] == {"alpha": float(top["mapping"].split("=")[1])}
    assert best["test_metrics"] == top["metrics"]
    assert sum(line.startswith("trial ") for line in err.splitlines()) == 3


def test_a_sweep_folder_of_another_configuration_is_refused(swept, capsys):
    out, _ = swept
    before = (out / results.RESULTS).read_bytes()
    assert main(["sweep", "entmax", "--param", "alpha=1.1:1.9", "--samples", "3", "--epochs",
                 "2", "--limit", "200", "--out", str(out)]) == 2
    err = capsys.readouterr().err
    assert "holds a sweep of another configuration" in err and "--out NEW" in err
    assert (out / results.RESULTS).read_bytes() == before


def _driver(args: list[str], log) -> subprocess.Popen:
    """``softmaxlab ARGS`` in a new process group (its local Ray joins it), stderr to
    ``log`` (a file: a pipe nobody reads could fill and block it)."""
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(sys.path)}
    with open(log, "wb") as err:
        return subprocess.Popen([sys.executable, "-m", "softmaxlab.cli", *args], env=env,
                                stdout=subprocess.DEVNULL, stderr=err, start_new_session=True,
                                preexec_fn=interactive_sigint)


def _wait_for_records(out, driver, log, n: int) -> None:
    deadline = time.monotonic() + 120
    while len(_trials(out)) < n and driver.poll() is None and time.monotonic() < deadline:
        time.sleep(0.1)
    assert driver.poll() is None, log.read_text()[-2000:]
    assert len(_trials(out)) >= n


def test_a_stopped_or_killed_sweep_resumes_without_training_finished_trials_again(
        local_ray, tmp_path, capsys):
    out = tmp_path / "sweep"
    args = ["sweep", "sparse_softmax", "--param", "k=2:6", "--samples", "3", "--epochs",
            "80", "--grace-period", "80", "--limit", "500", "--jobs", "1", "--out", str(out)]
    # Ctrl-C: Tune saves its state and stops; the command says how to resume
    log = tmp_path / "driver.err"
    driver = _driver(args, log)
    _wait_for_records(out, driver, log, 1)
    driver.send_signal(signal.SIGINT)
    assert driver.wait(timeout=60) == 130
    assert "interrupted: finished trials are kept; rerun the same command" in log.read_text()
    # kill -9 of the rerun after its first trial: no clean-up at all
    driver = _driver(args, log)
    try:
        _wait_for_records(out, driver, log, len(_trials(out)) + 1)
        before = set(_trials(out))
        time.sleep(1.5)  # Tune saves its state every second: the finished trials are in it
    finally:
        os.killpg(driver.pid, signal.SIGKILL)  # the driver and the Ray it started
        driver.wait()
    at_kill = _trials(out)
    assert len(at_kill) < 3  # a trial was left unfinished
    assert main([*args, "--resume"]) == 0
    err = capsys.readouterr().err
    assert "resuming the sweep in" in err
    trained = {line.split()[2] for line in err.splitlines() if line.startswith("trial ")}
    assert trained and not trained & before
    trials = _trials(out)
    assert len(trials) == 3 and set(at_kill) <= set(trials)
    assert all(trials[t] == r for t, r in at_kill.items())
    lines = [json.loads(line) for line in (out / results.RESULTS).read_text().splitlines()]
    assert len([r for r in lines if "trial" in r]) == 3  # one record per trial
    assert (out / BEST).is_file()


@pytest.mark.parametrize(("argv", "message"), [
    (["entmax", "--param", "alpha=2:1.5"], "--param alpha=2:1.5: LOW must be < HIGH"),
    (["entmax", "--param", "alpha=0.5:2"], "--param alpha=0.5:2: alpha must be"),
    (["entmax", "--param", "beta=1:2"], "entmax has no parameter 'beta'"),
    (["entmax", "--param", "alpha=1.2"], "--param alpha=1.2: give NAME=LOW:HIGH"),
    (["entmax", "--param", "alpha=1.2:1.8:sqrt"], "give NAME=LOW:HIGH or NAME=LOW:HIGH:log"),
    (["entmax", "--param", "alpha=1.2:1.8", "--param", "alpha=1.3:1.4"], "given twice"),
    (["entmax:alpha=1.3", "--param", "alpha=1.2:1.8"], "given twice"),
    (["taylor_softmax", "--param", "order=2:6"], "--param order=2:6: order must be"),
    (["sparse_softmax", "--param", "k=2:20"], "k must be <= the number of classes (10)"),
    (["softmax", "--param", "temperature=0:2:log"], "a log range needs LOW > 0"),
    (["activation_normalize", "--param", "activation=a:b"], "takes str values, not a range"),
    (["sigsoftmax", "--param", "x=1:2"], "sigsoftmax has no parameters to sweep"),
    (["arcface", "--param", "margin=0.1:4"], "--param margin=0.1:4: margin must be a number"),
    (["am_softmax", "--param", "real=0:1"], "am_softmax has no parameter 'real'"),
    (["nope", "--param", "x=1:2"], "unknown mapping 'nope'"),
    (["entmax", "--param", "alpha=1.2:1.8", "--grace-period", "5", "--epochs", "2"],
     "--grace-period must be <= --epochs (2), got 5"),
    (["entmax", "--param", "alpha=1.2:1.8", "--reduction-factor", "1"],
     "--reduction-factor must be > 1, got 1.0"),
    (["entmax", "--param", "alpha=1.2:1.8", "--samples", "0"], "--samples: must be"),
    (["entmax", "--param", "alpha=1.2:1.8", "--seed", "-1"], "--seed: must be"),
    (["entmax", "--param", "alpha=1.2:1.8", "--resume"], "holds no sweep to resume"),
    (["entmax", "--param", "alpha=1.2:1.8", "--address", "nowhere"],
     "--address must be auto, host:port or ray://host:port, got 'nowhere'"),
    (["entmax"], "the following arguments are required: --param"),
])
def test_bad_sweep_flags_fail_before_any_work_in_one_line(argv, message, tmp_path, capsys):
    out = tmp_path / "sweep"
    assert main(["sweep", *argv, "--limit", "200", "--out", str(out)]) == 2
    err = capsys.readouterr().err
    assert message in err and len(err.strip().splitlines()) == 1, err
    assert not out.exists()
