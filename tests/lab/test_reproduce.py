"""softmaxlab reproduce: the experiments run at smoke scale, verdicts follow the statistics,
reruns resume, a missing dataset is reported, never an error."""

from __future__ import annotations

import json
import sys
from dataclasses import replace

import pytest

from softmaxlab import cli
from softmaxlab.lab import experiments as ex
from softmaxlab.lab import reproduce as rp
from softmaxlab.lab import results


def _runs(mapping: str, metric: str, values: list[float]) -> list[dict]:
    return [{"kind": "run", "mapping": mapping, "seed": s, "status": "ok",
             "metrics": {metric: v}} for s, v in enumerate(values)]


def _experiment(*checks: ex.Check) -> ex.Experiment:
    return ex.Experiment("t", "paper", "claim", checks, setup=lambda s: {},
                         differences=lambda s: "none")


@pytest.mark.parametrize(("a", "b", "verdict"), [
    ([1.0, 1.1, 0.9, 1.05, 0.95], [2.0, 2.1, 1.9, 2.1, 2.0], "confirmed"),
    ([2.0, 2.1, 1.9, 2.1, 2.0], [1.0, 1.1, 0.9, 1.05, 0.95], "refuted"),
    ([1.0, 2.0, 1.5, 1.2, 1.8], [1.5, 1.4, 1.6, 1.7, 1.3], "inconclusive"),
    ([1.0], [2.0], "inconclusive"),
])
def test_a_directional_check_follows_the_paired_test(a, b, verdict):
    e = _experiment(ex.Check("x", "y", "loss", higher=False))
    (r,) = rp.verdicts(e, _runs("x", "loss", a) + _runs("y", "loss", b))
    assert r.verdict == verdict
    assert r.n == min(len(a), len(b))


@pytest.mark.parametrize(("shift", "verdict"), [(0.0, "confirmed"), (5.0, "refuted"),
                                                 (1.0, "inconclusive")])
def test_an_equivalence_check_compares_the_interval_with_the_margin(shift, verdict):
    base = [90.0, 91.0, 89.5, 90.5, 90.2, 89.8]
    noise = [0.1, -0.1, 0.05, -0.05, 0.0, 0.02]
    other = [v + shift + n for v, n in zip(base, noise, strict=True)]
    e = _experiment(ex.Check("x", "y", "acc", higher=True, margin=1.0))
    (r,) = rp.verdicts(e, _runs("x", "acc", other) + _runs("y", "acc", base))
    assert r.verdict == verdict


def test_derived_metrics_and_sides_with_their_own_metric():
    records = [{"kind": "run", "mapping": "softmax", "seed": s, "status": "ok",
                "metrics": {"ece": 0.2 + 0.01 * s, "ece_ts": 0.02 + 0.001 * s}}
               for s in range(4)]
    e = _experiment(ex.Check("softmax", "softmax", "ece_pct", higher=False,
                             better_metric="ece_ts_pct"))
    (r,) = rp.verdicts(e, records)
    assert r.verdict == "confirmed"
    assert r.diff == pytest.approx(100 * (0.02 + 0.0015 - 0.2 - 0.015))


def test_failed_runs_and_other_mappings_do_not_count():
    records = _runs("x", "loss", [1.0, 1.0, 1.0]) + _runs("y", "loss", [2.0, 2.0, 2.0])
    records[0]["status"] = "failed"
    e = _experiment(ex.Check("x", "y", "loss", higher=False))
    (r,) = rp.verdicts(e, records + _runs("z", "loss", [0.0] * 3))
    assert r.n == 2


def test_every_experiment_is_well_formed():
    names = [e.name for e in ex.experiments()]
    assert len(names) == len(set(names)) >= 8
    for e in ex.experiments():
        assert e.checks and e.paper and e.claim
        for scale in ex.SCALES:
            assert isinstance(e.setup(scale), dict)
            assert e.differences(scale)


def test_register_refuses_duplicates_and_bad_kinds():
    first = ex.experiments()[0]
    with pytest.raises(ValueError, match="already registered"):
        ex.register(first)
    with pytest.raises(ValueError, match="kind"):
        ex.register(replace(first, name="new", kind="other"))
    with pytest.raises(ValueError, match="run function"):
        ex.register(replace(first, name="new2", kind="custom", run=None))


def _cli(*argv: str) -> int:
    return cli.main(["reproduce", *argv])


def test_list_names_every_experiment(capsys):
    assert _cli("--list") == 0
    out = capsys.readouterr().out
    assert all(e.name in out for e in ex.experiments())


@pytest.mark.parametrize(("argv", "message"), [
    (["--scale", "huge"], "--scale"), (["nope"], "unknown experiment 'nope'")])
def test_bad_arguments_exit_2_with_one_line(argv, message, capsys, tmp_path):
    assert _cli(*argv, "--out", str(tmp_path / "o")) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and message in err[0]


def test_smoke_runs_report_and_resume(tmp_path, capsys):
    names = "ds-softmax,fused-softmax-topk"
    out = tmp_path / "rp"
    assert _cli(names, "--scale", "smoke", "--out", str(out), "--quiet") == 0
    verdicts = json.loads((out / "verdicts.json").read_text())
    assert {c["experiment"] for c in verdicts["checks"]} == set(names.split(","))
    assert all(c["verdict"] in ("confirmed", "refuted", "inconclusive")
               for c in verdicts["checks"])
    report = (out / "report.md").read_text()
    assert "Setup differences" in report and "| paper |" in report
    assert (out / "plots" / "ds-softmax.png").stat().st_size > 0
    html = (out / "report.html").read_text()
    assert "data:image/png;base64" in html
    counts = {n: len(results.read(out / n)) for n in names.split(",")}
    # an interrupted run: drop the last record, rerun, only it comes back
    path = out / "ds-softmax" / results.RESULTS
    lines = path.read_text().splitlines(keepends=True)
    path.write_text("".join(lines[:-1]) + lines[-1][:10])  # and a torn last line
    assert _cli(names, "--scale", "smoke", "--out", str(out), "--quiet") == 0
    assert {n: len(results.read(out / n)) for n in names.split(",")} == counts


def test_a_missing_dataset_makes_the_experiment_not_run(tmp_path, monkeypatch):
    e = ex.get("taylor-spherical-ptb")
    missing = replace(e, setup=lambda s: {**e.setup(s), "dataset": "ptb"})
    monkeypatch.setitem(ex._EXPERIMENTS, e.name, missing)
    from softmaxlab.lab.datasets import DatasetUnavailable

    def unavailable(*a, **k):
        raise DatasetUnavailable("dataset 'ptb' is not installed here; install it with: X")

    monkeypatch.setattr("softmaxlab.lab.compare.compare", unavailable)
    out = rp.reproduce(e.name, scale="smoke", out=tmp_path / "o", progress=False)
    checks = json.loads((out / "verdicts.json").read_text())["checks"]
    assert [c["verdict"] for c in checks] == ["not run"] * len(e.checks)
    assert "install it with" in (out / "report.md").read_text()


@pytest.mark.parametrize("name", ["taylor-spherical-ptb", "sigsoftmax-ptb"])
def test_language_model_experiments_run_on_a_corpus_the_test_makes(name, tmp_path,
                                                                    monkeypatch):
    import random

    rng = random.Random(0)
    words = [f"w{i}" for i in range(40)]
    corpus = tmp_path / "corpus.txt"
    corpus.write_text("\n".join(" ".join(rng.choices(words, k=12)) for _ in range(300)))
    e = ex.get(name)
    small = replace(e, setup=lambda s: {**e.setup(s), "dataset": str(corpus), "limit": None,
                                        "seeds": 2})
    monkeypatch.setitem(ex._EXPERIMENTS, name, small)
    out = rp.reproduce(name, scale="smoke", out=tmp_path / "o", progress=False)
    checks = json.loads((out / "verdicts.json").read_text())["checks"]
    assert all(c["n"] == 2 for c in checks)


def test_training_experiments_run_at_smoke_scale(tmp_path):
    out = rp.reproduce("temperature-scaling,taylor-spherical-mnist", scale="smoke",
                       out=tmp_path / "o", progress=False)
    checks = json.loads((out / "verdicts.json").read_text())["checks"]
    assert len(checks) == 2 and all(c["n"] == 2 for c in checks)
    assert sys.modules["softmaxlab.lab.compare"]  # they ran through compare


def _corpus(path, n_lines=300):
    import random

    rng = random.Random(0)
    words = [f"w{i}" for i in range(40)]
    path.write_text("\n".join(" ".join(rng.choices(words, k=12)) for _ in range(n_lines)))
    return path


def test_graph_tv_runs_on_a_corpus_the_test_makes(tmp_path, monkeypatch):
    e = ex.get("graph-tv")
    corpus = _corpus(tmp_path / "corpus.txt")
    monkeypatch.setitem(ex._EXPERIMENTS, e.name, replace(
        e, setup=lambda s: {**e.setup(s), "dataset": str(corpus), "limit": None}))
    out = rp.reproduce(e.name, scale="smoke", out=tmp_path / "o", progress=False)
    (check,) = json.loads((out / "verdicts.json").read_text())["checks"]
    assert check["n"] == 2 and check["verdict"] != "not run"
    from softmaxlab.lab.experiments.graph_tv import TV, chosen_weight

    records = results.read(out / e.name)
    weights = e.setup("smoke")["weights"]
    tuning = [r for r in records if "(tuning)" in r["mapping"]]
    assert len(tuning) == len(weights) and {r["seed"] for r in tuning} == {0}
    best = chosen_weight(records, weights)
    final = [r for r in records if r["mapping"] in (TV, "softmax")]
    assert sorted((r["mapping"], r["seed"]) for r in final) == [
        ("softmax", 0), ("softmax", 1), (TV, 0), (TV, 1)]
    assert all(r["metrics"]["weight"] == best for r in final)
    # seed 0 of the chosen weight is its tuning run, scored on the test split as well
    (tuned,) = [r for r in tuning if r["mapping"] == f"graph TV weight={best:g} (tuning)"]
    (tv0,) = [r for r in final if r["mapping"] == TV and r["seed"] == 0]
    assert tv0["metrics"]["perplexity"] == tuned["metrics"]["perplexity"]
    assert tuned["metrics"]["val_perplexity"] != tuned["metrics"]["perplexity"]


def test_graph_tv_chooses_the_weight_by_validation_perplexity():
    from softmaxlab.lab.experiments.graph_tv import chosen_weight

    def tuning(w, val, test):
        return {"kind": "run", "status": "ok", "seed": 0,
                "mapping": f"graph TV weight={w:g} (tuning)",
                "metrics": {"val_perplexity": val, "perplexity": test}}

    records = [tuning(0.01, 120.0, 90.0), tuning(0.001, 110.0, 130.0)]
    assert chosen_weight(records, (0.001, 0.01)) == 0.001  # not the better test number
    assert chosen_weight(records[:1], (0.001, 0.01)) is None  # until every weight has run


def test_online_normalizer_is_judged_against_torchs_safe_softmax(tmp_path):
    out = rp.reproduce("online-normalizer", scale="smoke", out=tmp_path / "o", progress=False)
    checks = json.loads((out / "verdicts.json").read_text())["checks"]
    assert [c["check"].split(" < ")[1] for c in checks] == [
        "torch.softmax on time_ms", "safe softmax (3 passes) on time_ms"]
    assert all(c["n"] == 3 and c["ours"].endswith("x)") for c in checks)
    assert "1.3x" in checks[0]["paper"]


def test_graph_tv_links_each_word_to_its_strongest_successors():
    import torch

    from softmaxlab.lab.experiments.graph_tv import cooccurrence

    tokens = torch.tensor([0, 1, 0, 1, 0, 2, 3, 1])
    (src, dst), w = cooccurrence(tokens, 4, edges=1)
    edges = dict(zip(src.tolist(), zip(dst.tolist(), w.tolist(), strict=True), strict=True))
    assert edges[0] == (1, pytest.approx(2 / 3))  # 0 -> 1 twice, 0 -> 2 once
    assert edges[1][0] == 0 and edges[2] == (3, 1.0) and edges[3] == (1, 1.0)


def test_dropout_decouple_runs_on_histories_the_test_makes(tmp_path, monkeypatch):
    import torch

    from softmaxlab.lab.datasets import Dataset, Split
    from softmaxlab.lab.experiments import recsys

    g = torch.Generator().manual_seed(0)

    def split(n):
        x = torch.randint(1, 30, (n, 8), generator=g)
        return Split(x, (x[:, -1] % 29) + 1)  # the next item follows from the last one

    data = Dataset("toy", "recommendation", split(400), split(50), split(50), n_classes=30)
    monkeypatch.setattr(recsys.datasets, "load", lambda name, limit=None: data)
    out = rp.reproduce("dropout-decouple", scale="smoke", out=tmp_path / "o", progress=False)
    (check,) = json.loads((out / "verdicts.json").read_text())["checks"]
    assert check["n"] == 2 and check["verdict"] != "not run"


def test_runs_in_worker_processes_record_what_serial_runs_do(tmp_path):
    names = "sm-taylor,temperature-scaling"  # a custom training loop and compare

    def records(jobs):
        out = rp.reproduce(names, scale="smoke", out=tmp_path / f"j{jobs}", progress=False,
                           jobs=jobs)
        return {n: sorted((r["mapping"], r["seed"], json.dumps(
            {k: v for k, v in r["metrics"].items() if "time" not in k}, sort_keys=True))
            for r in results.read(out / n) if r["kind"] == "run") for n in names.split(",")}

    serial = records(1)
    assert [len(v) for v in serial.values()] == [4, 2]  # (arms x seeds) 2 x 2, 1 x 2
    assert records(2) == serial


def test_jobs_must_be_positive(tmp_path):
    with pytest.raises(ValueError, match="--jobs"):
        rp.reproduce("sm-taylor", scale="smoke", out=tmp_path / "o", jobs=0)
