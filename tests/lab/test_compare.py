"""``softmaxlab compare`` / ``report`` end to end, on small slices of real and synthetic data."""

from __future__ import annotations

import csv
import json
import math
import os
import re
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

pytest.importorskip("matplotlib", reason="the lab extra is not installed (pip install -e .[lab])")
pytest.importorskip("rich", reason="the lab extra is not installed (pip install -e .[lab])")

from softmaxlab.cli import main
from softmaxlab.lab import heads as lab_heads
from softmaxlab.lab import results
from softmaxlab.lab.compare import compare
from softmaxlab.lab.datasets import Dataset, Split, load
from softmaxlab.lab.report import METRICS, PLOT_NAMES, cell, summarize
from softmaxlab.lab.train import RunConfig, run

from .._helpers import interactive_sigint

SMALL = dict(dataset="digits", limit=300, epochs=2, progress=False)
#: Metrics that measure time or memory: the only ones allowed to differ between reruns.
COST = {"train_time", "train_time_per_epoch", "wall_time", "inference_time_per_example",
        "peak_memory_mb"}


def runs_of(directory) -> list[dict]:
    return [r for r in results.read(directory) if r["kind"] == "run"]


def numbers(record: dict) -> dict:
    return {k: v for k, v in record["metrics"].items() if k not in COST}


@pytest.fixture(scope="module")
def small_run(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("compare") / "digits"
    compare(mappings="softmax,sparsemax,normalize,am_softmax", seeds=2, out=out, **SMALL)
    return out


# ------------------------------------------------------------------------ outputs agree


def test_every_output_exists_and_shows_the_same_numbers(small_run):
    records = results.read(small_run)
    runs = [r for r in records if r["kind"] == "run"]
    assert sorted((r["mapping"], r["seed"]) for r in runs) == sorted(
        (m, s) for m in ("softmax", "sparsemax", "am_softmax") for s in (0, 1))
    assert all(r["status"] == "ok" for r in runs)
    skipped = [r for r in records if r["kind"] == "skipped"]
    assert [r["mapping"] for r in skipped] == ["normalize"] and "z >= 0" in skipped[0]["reason"]

    with open(small_run / "summary.csv", newline="") as f:
        table = {row["mapping"]: row for row in csv.DictReader(f)}
    md = (small_run / "report.md").read_text()
    page = (small_run / "report.html").read_text()
    summary = summarize(small_run)
    for mapping in ("softmax", "sparsemax", "am_softmax"):
        mine = [r for r in runs if r["mapping"] == mapping]
        row = next(r for r in summary.rows if r.mapping == mapping)
        full_table = md.split("## Every metric")[1]
        md_line = next(line for line in full_table.splitlines()
                       if line.startswith(f"| {mapping} |"))
        for metric in ("accuracy", "nll", "ece", "ece_ts", "brier", "support"):
            values = [r["metrics"][metric] for r in mine]
            if values[0] is None:  # sparsemax has no log form
                assert metric in ("nll", "ece_ts") and mapping == "sparsemax"
                assert table[mapping][f"{metric}_mean"] == ""
                continue
            mean = sum(values) / 2
            std = math.sqrt(sum((v - mean) ** 2 for v in values))  # n - 1 = 1
            assert float(table[mapping][f"{metric}_mean"]) == pytest.approx(mean, rel=1e-12)
            assert float(table[mapping][f"{metric}_std"]) == pytest.approx(std, abs=1e-12)
            shown = cell(row, metric)
            assert shown.startswith(f"{mean * METRICS[metric][2]:.4g} ± ")
            assert shown in md_line and shown in page
    assert table["normalize"]["status"] == "skipped"
    assert "normalize (skipped): no natural training loss" in md

    names = set(PLOT_NAMES)
    assert {p.stem for p in (small_run / "plots").glob("*.png")} == names
    for name in names:
        png = (small_run / "plots" / f"{name}.png").read_bytes()
        assert png.startswith(b"\x89PNG") and f"plots/{name}.png" in md
        assert f'alt="{name}" src="data:image/png;base64,' in page
    assert "src=\"http" not in page and "<link" not in page  # self-contained


def test_report_rerenders_from_results_jsonl_alone(small_run, tmp_path, capsys):
    copy = tmp_path / "copy"
    copy.mkdir()
    shutil.copy(small_run / results.RESULTS, copy)
    assert main(["report", str(copy)]) == 0
    assert (copy / "summary.csv").read_text() == (small_run / "summary.csv").read_text()
    # the same report, but for the run directory named in its next-step command
    assert (copy / "report.md").read_text().replace(str(copy), str(small_run)) == (
        small_run / "report.md").read_text()
    assert (copy / "report.html").exists()
    assert len(list((copy / "plots").glob("*.png"))) == len(PLOT_NAMES)
    out = capsys.readouterr().out
    assert "softmax" in out and "reference" in out and "Holm" in out


def test_summary_marks_the_best_and_tests_against_softmax(small_run):
    summary = summarize(small_run)
    best = max((r for r in summary.rows if r.seeds_ok), key=lambda r: r.mean_std("accuracy")[0])
    assert summary.best["accuracy"] == best.mapping
    assert "*" in (small_run / "report.md").read_text().split(f"| {best.mapping} |")[1]
    verdicts = {r.mapping: r.vs_reference for r in summary.rows}
    assert verdicts["softmax"] == "reference" and verdicts["normalize"] == "n/a"
    assert verdicts["sparsemax"] in ("better", "worse", "within noise")


# ------------------------------------------------------------------------ reliability


def test_rerun_resumes_a_run_whose_record_was_lost_and_repeats_nothing(tmp_path):
    out = compare(mappings="softmax,sigsoftmax", seeds=2, out=tmp_path, **SMALL)
    path = out / results.RESULTS
    lines = path.read_bytes().splitlines(keepends=True)
    last_run = max(i for i, line in enumerate(lines) if b'"kind": "run"' in line)
    lost = json.loads(lines[last_run])
    kept = lines[:last_run]
    # the process died after the previous record, in the middle of writing the next one
    path.write_bytes(b"".join(kept) + lines[last_run][:40])
    assert len(runs_of(out)) == 3  # the torn line is not counted
    compare(mappings="softmax,sigsoftmax", seeds=2, out=tmp_path, **SMALL)
    data = path.read_bytes()
    assert data.startswith(b"".join(kept)) and data.endswith(b"\n")  # finished ones untouched
    runs = runs_of(out)
    assert sorted((r["mapping"], r["seed"]) for r in runs) == sorted(
        (m, s) for m in ("softmax", "sigsoftmax") for s in (0, 1))
    redone = next(r for r in runs if (r["mapping"], r["seed"]) == (lost["mapping"], lost["seed"]))
    assert numbers(redone) == numbers(lost)
    # a third run has nothing to do
    compare(mappings="softmax,sigsoftmax", seeds=2, out=tmp_path, **SMALL)
    assert len(runs_of(out)) == 4 and results.read(out)[-1]["runs"] == 0


INTERRUPTED = dict(dataset="digits", limit=300, mappings="softmax,sparsemax", seeds=3,
                   epochs=30)


def _interrupt(out: Path, jobs: int, sig: int) -> tuple[subprocess.Popen, str]:
    """Start ``softmaxlab compare`` in a process and send it ``sig`` once a run finished."""
    args = [f"--{k}={v}" for k, v in INTERRUPTED.items()]
    proc = subprocess.Popen([sys.executable, "-m", "softmaxlab", "compare", *args,
                             f"--jobs={jobs}", f"--out={out}"],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            preexec_fn=interactive_sigint)
    try:
        deadline = time.monotonic() + 120
        while not runs_of(out):
            assert proc.poll() is None, proc.communicate()
            assert time.monotonic() < deadline, "no run finished in 120 s"
            time.sleep(0.02)
        proc.send_signal(sig)
        _, err = proc.communicate(timeout=60)
    finally:
        proc.kill()
    return proc, err


def test_kill_9_keeps_every_finished_run_and_the_rerun_completes_the_rest(tmp_path):
    proc, _ = _interrupt(tmp_path, 1, signal.SIGKILL)
    assert proc.returncode == -signal.SIGKILL
    before = runs_of(tmp_path)
    assert 1 <= len(before) < 6 and all(r["status"] == "ok" for r in before)
    compare(out=tmp_path, progress=False, **INTERRUPTED)
    after = runs_of(tmp_path)
    assert sorted((r["mapping"], r["seed"]) for r in after) == sorted(
        (m, s) for m in ("softmax", "sparsemax") for s in range(3))
    assert after[:len(before)] == before


def _children(pid: int) -> list[int]:
    kids = []
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        if int(fields[1]) == pid:
            kids.append(int(stat.parent.name))
    return kids


def _alive(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except OSError:
        return False
    return state != "Z"


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="reads /proc")
def test_kill_9_of_the_main_process_alone_leaves_no_worker_behind():
    proc = subprocess.Popen([sys.executable, "-m", "softmaxlab", "compare", "--limit=300",
                             "--epochs=500", "--mappings=softmax,sparsemax", "--seeds=2",
                             "--jobs=2", "--out=/tmp/never-finishes-" + str(os.getpid())],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        deadline = time.monotonic() + 120
        while len(workers := [k for k in _children(proc.pid)
                              if b"spawn_main" in Path(f"/proc/{k}/cmdline").read_bytes()]) < 2:
            assert proc.poll() is None and time.monotonic() < deadline, "no workers started"
            time.sleep(0.1)
        time.sleep(1.0)  # the workers are past their initializer, training
        os.kill(proc.pid, signal.SIGKILL)  # the main process only, not its group
        proc.wait(10)
        deadline = time.monotonic() + 15
        while any(_alive(w) for w in workers):
            assert time.monotonic() < deadline, f"workers {workers} outlived their parent"
            time.sleep(0.1)
    finally:
        proc.kill()
        shutil.rmtree(f"/tmp/never-finishes-{os.getpid()}", ignore_errors=True)


def test_ctrl_c_stops_the_worker_processes_and_keeps_their_identical_results(tmp_path):
    proc, err = _interrupt(tmp_path, 2, signal.SIGINT)
    assert proc.returncode == 130 and "rerun the same command to resume" in err
    finished = runs_of(tmp_path)
    assert 1 <= len(finished) < 6 and (tmp_path / results.RESULTS).read_bytes().endswith(b"\n")
    # the same seed gives the same numbers in a spawned worker and in this process
    data = load("digits", limit=300)
    cfg = RunConfig(model="mlp", epochs=INTERRUPTED["epochs"])
    for r in finished:
        mine = run(data, r["mapping"], r["seed"], cfg)
        assert numbers(mine) == numbers(r) and mine["curve"] == r["curve"]


ORDER_SCRIPT = """
import json, sys
from softmaxlab.lab import results
from softmaxlab.lab.compare import compare
compare("digits", mappings=sys.argv[1], seeds=1, epochs=5, limit=300, out=sys.argv[2],
        jobs=1, progress=False, shuffle=False)
print(json.dumps({r["mapping"]: r["metrics"] for r in results.read(sys.argv[2])
                  if r["kind"] == "run"}))
"""


def test_swapping_the_mapping_order_changes_no_cost_column_beyond_noise(tmp_path):
    """Each order in a fresh process, mapping by mapping as given: the first run of a
    process used to pay the process's one-time costs (5-30x its s/epoch, 100+ MB)."""
    order = ["softmax", "sparsemax", "entmax15"]
    costs = []
    for i, names in enumerate((order, order[::-1])):
        p = subprocess.run([sys.executable, "-c", ORDER_SCRIPT, ",".join(names),
                            str(tmp_path / str(i))], capture_output=True, text=True, check=True)
        costs.append(json.loads(p.stdout.strip().splitlines()[-1]))
    for name in order:
        a, b = costs[0][name], costs[1][name]
        assert a["peak_memory_mb"] == b["peak_memory_mb"] > 0  # deterministic
    for metric in ("train_time_per_epoch", "inference_time_per_example"):
        # each time relative to its process's geometric mean: the machine's load (other
        # processes) scales a whole process, the order bias moves one run against the others
        rel = [{n: c[n][metric] / math.prod(c[m][metric] for m in order) ** (1 / len(order))
                for n in order} for c in costs]
        for name in order:  # the order bias was 5-30x; load bursts on 2 shared cores ~2x
            ratio = rel[0][name] / rel[1][name]
            assert 1 / 4 < ratio < 4, (name, metric, rel)


def test_a_diverging_mapping_is_recorded_as_failed_and_the_others_go_on(tmp_path, monkeypatch):
    softmax = lab_heads.get_head("softmax")
    nan_loss = lab_heads.Head("diverges", softmax.mapping,
                              lambda out, y: softmax.loss(out, y) * float("nan"))
    everything = lab_heads.heads()
    monkeypatch.setattr(lab_heads, "heads", lambda: (*everything, nan_loss))
    out = compare(mappings="softmax,diverges", seeds=1, out=tmp_path, **SMALL)
    by_name = {r["mapping"]: r for r in runs_of(out)}
    assert by_name["softmax"]["status"] == "ok"
    assert by_name["diverges"]["status"] == "failed"
    assert by_name["diverges"]["reason"] == (
        "Diverged: training loss is nan at epoch 1, step 1")
    assert "diverges (failed): seed 0: Diverged: training loss is nan" in (
        out / "report.md").read_text()
    with open(out / "summary.csv", newline="") as f:
        assert {r["mapping"]: r["status"] for r in csv.DictReader(f)} == {
            "softmax": "ok", "diverges": "failed"}


# ------------------------------------------------------------------------ bad inputs


@pytest.mark.parametrize("args, words", [
    (["--dataset", "nope"], ["unknown dataset 'nope'", "digits", "movielens-100k"]),
    (["--mappings", "softmax,nope"], ["unknown mapping 'nope'", "sparsemax", "arcface"]),
    (["--model", "lstm"], ["unknown model 'lstm' for a classification dataset", "mlp, cnn"]),
    (["--seeds", "0"], ["argument --seeds: must be an integer >= 1, got 0"]),
    (["--jobs", "0"], ["argument --jobs: must be an integer >= 1, got 0"]),
], ids=["dataset", "mapping", "model", "seeds", "jobs"])
def test_unknown_names_are_rejected_with_the_valid_choices(tmp_path, capsys, args, words):
    assert main(["compare", "--out", str(tmp_path / "out"), *args]) == 2
    err = capsys.readouterr().err
    assert err.startswith("softmaxlab: error: ")
    for w in words:
        assert w in err
    assert not (tmp_path / "out").exists()


@pytest.mark.parametrize("text, words", [
    ("a,b,label\n1,2,0\n3,x,1\n", ["line 3", "'x' is not a number"]),
    ("a,b,label\n1,2,0\n3,4\n", ["line 3 has 2 fields, expected 3"]),
    ("a,b,target\n1,2,0\n3,4,1\n", ["no label column 'label'", "a, b, target"]),
], ids=["non-numeric", "short-line", "no-label-column"])
def test_a_malformed_data_file_names_the_problem(tmp_path, capsys, text, words):
    data = tmp_path / "data.csv"
    data.write_text(text)
    assert main(["compare", "--dataset", str(data), "--out", str(tmp_path / "out")]) == 2
    err = capsys.readouterr().err
    for w in [str(data), *words]:
        assert w in err


def test_a_run_directory_of_another_configuration_is_not_mixed_in(small_run, tmp_path, capsys):
    copy = tmp_path / "copy"
    copy.mkdir()
    shutil.copy(small_run / results.RESULTS, copy)
    assert main(["compare", "--limit", "300", "--epochs", "3", "--out", str(copy)]) == 2
    err = capsys.readouterr().err
    assert "holds results of another configuration (epochs: 2 there, 3 now)" in err
    assert "--out NEW" in err and "--force" in err


TINY = ["--limit", "100", "--epochs", "1", "--mappings", "softmax", "--seeds", "1",
        "--jobs", "1"]


def test_out_never_overwrites_files_softmaxlab_did_not_write(tmp_path, capsys):
    out = tmp_path / "mine"
    out.mkdir()
    (out / "report.md").write_text("my own notes")
    (out / "summary.csv").write_text("a,b\n")
    assert main(["compare", *TINY, "--out", str(out)]) == 2
    err = capsys.readouterr().err
    assert "holds summary.csv, report.md, which softmaxlab did not write" in err
    assert err.count("\n") == 1
    assert not (out / results.RESULTS).exists()  # refused before training
    assert main(["compare", *TINY, "--out", str(out), "--force"]) == 2  # --force neither
    assert (out / "report.md").read_text() == "my own notes"

    run_dir = tmp_path / "run"
    assert main(["compare", *TINY, "--out", str(run_dir)]) == 0
    assert main(["report", str(run_dir)]) == 0  # its own files: re-rendered
    (run_dir / "report.md").write_text("edited by hand")
    capsys.readouterr()
    assert main(["report", str(run_dir)]) == 2
    assert "holds report.md" in capsys.readouterr().err
    assert main(["compare", *TINY, "--out", str(run_dir)]) == 2
    assert (run_dir / "report.md").read_text() == "edited by hand"


def test_force_deletes_only_what_compare_wrote_and_starts_fresh(tmp_path, capsys):
    assert main(["compare", *TINY, "--out", str(tmp_path)]) == 0
    (tmp_path / "notes.txt").write_text("keep me")
    assert main(["compare", *TINY[:2], "--epochs", "2", *TINY[4:], "--out", str(tmp_path)]) == 2
    assert "--force" in capsys.readouterr().err
    assert main(["compare", *TINY[:2], "--epochs", "2", *TINY[4:], "--out", str(tmp_path),
                 "--force"]) == 0
    runs = runs_of(tmp_path)
    assert len(runs) == 1 and runs[0]["config"]["epochs"] == 2
    assert (tmp_path / "notes.txt").read_text() == "keep me"


def test_an_edited_data_file_is_detected(tmp_path, capsys):
    data = tmp_path / "data.csv"
    rows = [f"{i % 7},{(i * 3) % 5},{i % 3}" for i in range(60)]
    data.write_text("a,b,label\n" + "\n".join(rows) + "\n")
    args = ["compare", "--dataset", str(data), *TINY[2:], "--out", str(tmp_path / "run")]
    assert main(args) == 0
    assert main(args) == 0 and len(runs_of(tmp_path / "run")) == 1  # same data: resumed
    rows[10] = "6,4,1"  # one value changed: same name, same split sizes
    data.write_text("a,b,label\n" + "\n".join(rows) + "\n")
    capsys.readouterr()
    assert main(args) == 2
    err = capsys.readouterr().err
    assert "another configuration (data_sha256: '" in err and "--force" in err


def test_the_command_fails_when_every_run_failed(tmp_path, capsys, monkeypatch):
    softmax = lab_heads.get_head("softmax")
    nan_loss = lab_heads.Head("diverges", softmax.mapping,
                              lambda out, y: softmax.loss(out, y) * float("nan"))
    everything = lab_heads.heads()
    monkeypatch.setattr(lab_heads, "heads", lambda: (*everything, nan_loss))
    assert main(["compare", *TINY[:4], "--mappings", "diverges", "--seeds", "1", "--jobs", "1",
                 "--out", str(tmp_path)]) == 1
    assert "every run failed" in capsys.readouterr().err


# ------------------------------------------------------------------------ other tasks


def _tiny_corpus(tmp_path, lines: int = 120) -> Path:
    """A text file of ``lines`` lines of 8 random words out of 11."""
    g = torch.Generator().manual_seed(0)
    words = "the cat sat on a mat and dog ran far away".split()
    text = [" ".join(words[i] for i in torch.randint(len(words), (8,), generator=g))
            for _ in range(lines)]
    corpus = tmp_path / "tiny.txt"
    corpus.write_text("\n".join(text))
    return corpus


def test_language_modeling_end_to_end_on_a_tiny_corpus(tmp_path):
    corpus = _tiny_corpus(tmp_path, 200)
    out = compare(dataset=str(corpus), mappings="softmax,entmax15,arcface", seeds=1, epochs=2,
                  out=tmp_path / "out", progress=False)
    by_name = {r["mapping"]: r for r in runs_of(out)}
    assert all(r["status"] == "ok" for r in by_name.values()), by_name
    vocab = load(corpus).n_classes
    for name in ("softmax", "arcface"):
        m = by_name[name]["metrics"]
        assert math.exp(m["nll"]) == pytest.approx(m["perplexity"]) and m["support"] == vocab
    assert 1 < by_name["softmax"]["metrics"]["perplexity"] < 2 * vocab
    assert by_name["entmax15"]["metrics"]["perplexity"] is None
    md = (out / "report.md").read_text()
    assert "| mapping | runs | perplexity | accuracy |" in md and "model lstm" in md
    # the Transformer takes the same windows
    result = run(load(corpus), "sigsoftmax", 0, RunConfig(model="transformer", epochs=2))
    assert result["status"] == "ok" and 1 < result["metrics"]["perplexity"] < 2 * vocab


def test_compare_attention_mappings_of_a_transformer(tmp_path):
    """--attention: the runs differ in the transformer's attention only (one softmax
    head); sparse attention shows a smaller support per query than softmax's, whose support
    is at most the causal prefix ((T + 1) / 2 keys on average)."""
    corpus = _tiny_corpus(tmp_path)
    out = compare(dataset=str(corpus), attention="softmax,sparsemax,entmax:alpha=1.3",
                  seeds=1, epochs=1, out=tmp_path / "out", progress=False)
    by_name = {r["mapping"]: r for r in runs_of(out)}
    assert set(by_name) == {"softmax", "sparsemax", "entmax:alpha=1.3"}
    assert all(r["status"] == "ok" for r in by_name.values()), by_name
    config = by_name["softmax"]["config"]
    assert config["model"] == "transformer" and config["head"] == "softmax"
    vocab = load(corpus).n_classes
    support = {k: r["metrics"]["attention_support"] for k, r in by_name.items()}
    causal = (RunConfig.bptt + 1) / 2
    assert 1 <= support["sparsemax"] < support["softmax"] <= causal
    for r in by_name.values():  # every arm keeps the softmax head: full output support
        assert r["metrics"]["support"] == vocab and r["metrics"]["perplexity"] > 1
    md = (out / "report.md").read_text()
    assert "attention support" in md and "model transformer" in md
    summary = summarize(out, goal="sparsity")
    assert summary.recommendation.metric == "attention_support"


@pytest.mark.parametrize(("kwargs", "message"), [
    (dict(attention="softmax,bogus"), "unknown attention mapping 'bogus'"),
    (dict(attention="sigmoid:bias=1"), "sigmoid takes no parameters"),
    (dict(attention="entmax:alpha=0.5"), "--attention entmax:alpha=0.5"),
    (dict(attention="softmax", model="lstm"), "needs a model with attention"),
    (dict(attention="softmax", mappings="softmax,sparsemax"), "one output head"),
])
def test_compare_attention_bad_options(tmp_path, kwargs, message):
    with pytest.raises(ValueError, match=re.escape(message)):
        compare(dataset=str(_tiny_corpus(tmp_path)), seeds=1, epochs=1, out=tmp_path / "out",
                progress=False, **kwargs)
    assert not (tmp_path / "out" / "results.jsonl").exists()


def test_recommendation_end_to_end_on_a_tiny_dataset(tmp_path):
    g = torch.Generator().manual_seed(0)

    def split(n: int) -> Split:  # histories of items 1..29, left-padded; next = last + 1
        x = torch.randint(1, 29, (n, 6), generator=g)
        x[: n // 2, :2] = 0
        return Split(x, x[:, -1] + 1)

    data = Dataset("tiny-rec", "recommendation", split(256), split(64), split(64), 30, {})
    out = compare(data, mappings="softmax,sparsemax,ova_sigmoid", seeds=1, epochs=3,
                  out=tmp_path, progress=False)
    runs = runs_of(out)
    assert {r["mapping"] for r in runs} == {"softmax", "sparsemax", "ova_sigmoid"}
    for r in runs:
        m = r["metrics"]
        assert r["status"] == "ok" and 0 <= m["ndcg@10"] <= m["hr@10"] <= 1
    assert "| mapping | runs | HR@10 | NDCG@10 |" in (out / "report.md").read_text()


def test_the_cnn_trains_on_images_and_refuses_flat_features(tmp_path, capsys):
    images = load("digits", limit=100)  # 8x8 images: meta input_shape (1, 8, 8)
    result = run(images, "sparsemax", 0, RunConfig(model="cnn", epochs=1))
    assert result["status"] == "ok" and 0 <= result["metrics"]["accuracy"] <= 1
    flat = tmp_path / "flat.csv"
    flat.write_text("a,b,label\n" + "".join(f"{i},{i % 3},{i % 2}\n" for i in range(30)))
    assert main(["compare", "--dataset", str(flat), "--model", "cnn",
                 "--out", str(tmp_path / "out")]) == 2
    assert "model 'cnn' needs images: dataset 'flat' has input_shape (2,) for 2 features" in (
        capsys.readouterr().err)


def test_a_run_is_deterministic_for_its_seed():
    data = load("digits", limit=200)
    cfg = RunConfig(model="mlp", epochs=2)
    a, b = run(data, "taylor_softmax", 3, cfg), run(data, "taylor_softmax", 3, cfg)
    assert a["status"] == "ok" and numbers(a) == numbers(b) and a["curve"] == b["curve"]
    assert numbers(run(data, "taylor_softmax", 4, cfg)) != numbers(a)


# ------------------------------------------------------------------------ the HTML report


CHROMIUM = shutil.which("chromium") or ("/usr/bin/chromium" if os.path.exists(
    "/usr/bin/chromium") else None)
PROBE = """<script>
window.addEventListener("load", () => {
  const imgs = [...document.images];
  const out = document.createElement("pre");
  out.id = "probe";
  out.textContent = imgs.map(i => i.alt + "=" + i.naturalWidth + "x" + i.naturalHeight + "@"
    + Math.round(i.getBoundingClientRect().top)).join(" ");
  const rec = [...document.querySelectorAll("h2")].find(h => h.textContent.startsWith(
    "Recommendation"));
  out.textContent += " recommendation@" + (rec ? Math.round(rec.getBoundingClientRect().top)
                                                : -1);
  document.body.appendChild(out);
});
</script></body>"""


def _chromium(tmp_path: Path, *args: str) -> str:
    cmd = [CHROMIUM, "--headless", "--no-sandbox", "--disable-gpu",
           "--disable-background-networking", "--disable-component-update", "--disable-sync",
           "--no-first-run", f"--user-data-dir={tmp_path / 'profile'}", *args]
    return subprocess.run(cmd, capture_output=True, text=True, timeout=120, check=True).stdout


@pytest.mark.skipif(CHROMIUM is None, reason="headless Chromium not installed "
                                             "(apt-get install chromium)")
def test_the_html_report_renders_its_plots_in_chromium(small_run, tmp_path):
    from matplotlib.image import imread

    probed = tmp_path / "probed.html"
    probed.write_text((small_run / "report.html").read_text().replace("</body>", PROBE))
    dom = _chromium(tmp_path, "--virtual-time-budget=10000", "--dump-dom", probed.as_uri())
    probe = re.search(r'<pre id="probe">(.*?)</pre>', dom).group(1)
    found = {name: (int(w), int(h), int(top))
             for name, w, h, top in re.findall(r"(\w+)=(\d+)x(\d+)@(-?\d+)", probe)}
    assert set(found) == set(PLOT_NAMES)
    for w, h, _ in found.values():
        assert w > 300 and h > 150  # decoded, not a broken-image placeholder
    # the page opens with the recommendation and its plot, above everything else
    rec_top = int(re.search(r"recommendation@(-?\d+)", probe).group(1))
    assert 0 <= rec_top < 200 and found["goal"][2] == min(t for *_, t in found.values())

    shot = tmp_path / "shot.png"
    _chromium(tmp_path, f"--screenshot={shot}", "--window-size=1200,3000",
              (small_run / "report.html").as_uri())
    pixels = imread(shot)[..., :3]
    ink = (pixels.mean(-1) < 0.9).mean()  # share of non-white pixels
    colorful = (pixels.max(-1) - pixels.min(-1) > 0.2).mean()  # plot colours, not text
    assert ink > 0.02 and colorful > 0.002, (ink, colorful)
