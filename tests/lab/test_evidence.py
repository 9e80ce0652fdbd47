"""The recommendation and its statistics: paired tests over seeds, Holm's correction,
intervals and effect sizes, the wording of the evidence, and the report that opens with it.
Fast: synthetic results, no training."""

from __future__ import annotations

import math

import pytest
from scipy import stats

pytest.importorskip("matplotlib", reason="the lab extra is not installed (pip install -e .[lab])")

from softmaxlab.cli import main
from softmaxlab.lab import evidence, results
from softmaxlab.lab.report import WIDTH, summarize, terminal_lines
from softmaxlab.lab.train import TASK_METRICS


def test_paired_matches_scipy_and_gives_an_interval_and_an_effect_size():
    a = {0: 0.91, 1: 0.93, 2: 0.95, 3: 0.90, 4: 0.94}
    b = {0: 0.90, 1: 0.91, 2: 0.93, 3: 0.90, 4: 0.92}
    c = evidence.paired("x", "ref", "accuracy", a, b)
    ref = stats.ttest_rel(list(a.values()), list(b.values()))
    assert c.n == 5 and c.p == pytest.approx(ref.pvalue)
    diffs = [a[s] - b[s] for s in a]
    assert c.diff == pytest.approx(sum(diffs) / 5)
    assert c.ci[0] < c.diff < c.ci[1]
    assert c.d == pytest.approx(c.diff / stats.tstd(diffs))
    # only the seeds both have are paired
    assert evidence.paired("x", "ref", "accuracy", a, {0: 0.9, 1: 0.9}).n == 2


def test_the_same_difference_in_every_seed_is_exact():
    c = evidence.paired("k2", "ref", "support", {0: 2.0, 1: 2.0, 2: 2.0},
                        {0: 10.0, 1: 10.0, 2: 10.0})
    assert c.exact and c.diff == -8 and c.p == 0.0 and math.isinf(c.d)
    same = evidence.paired("a", "ref", "support", {0: 10.0, 1: 10.0}, {0: 10.0, 1: 10.0})
    assert same.exact and same.p == 1.0 and same.diff == 0


def test_holm_controls_the_family_and_keeps_order():
    ps = [0.01, 0.02, 0.03, 0.04]
    adj = evidence.holm(ps)
    assert adj == pytest.approx([0.04, 0.06, 0.06, 0.06])
    assert all(x >= p for x, p in zip(adj, ps, strict=True))
    assert evidence.holm([None, 0.2]) == [None, 0.2]


def noisy(mean: float, n: int, spread: float = 0.01) -> dict[int, float]:
    return {s: mean + spread * ((s * 7919) % 11 - 5) / 5 for s in range(n)}


def _values(spec: dict[str, dict[int, float]], other: dict[str, dict[str, dict[int, float]]]
            | None = None):
    return {"accuracy": spec, **(other or {})}


LABELS = {"accuracy": "accuracy", "support": "support", "ece": "ECE"}


def test_a_clear_winner_over_enough_seeds_is_recommended_with_its_strength():
    acc = {"softmax": noisy(0.90, 8), "good": {s: v + 0.03 for s, v in noisy(0.90, 8).items()},
           "same": noisy(0.90, 8, 0.012)}
    rec = evidence.recommend("accuracy", "accuracy", True, "accuracy", True, _values(acc),
                             list(acc), {}, LABELS)
    assert rec.choice == "good" and rec.strength == "exact"  # +0.03 in every seed
    acc["good"] = {s: v + 0.03 + 0.004 * (-1) ** s for s, v in noisy(0.90, 8).items()}
    rec = evidence.recommend("accuracy", "accuracy", True, "accuracy", True, _values(acc),
                             list(acc), {}, LABELS)
    assert rec.choice == "good" and rec.strength == "strong"
    assert rec.headline.startswith("Use good for accuracy: accuracy 0.93")
    assert "95% CI" in rec.headline and "Holm p" in rec.headline
    assert rec.comparisons["same"].verdict == "within noise"
    assert any("Holm-corrected over 2 comparisons" in line for line in rec.evidence)


def test_without_a_detectable_winner_it_says_stay_with_softmax_and_that_evidence_is_weak():
    acc = {"softmax": noisy(0.90, 3, 0.02), "a": noisy(0.905, 3, 0.03),
           "b": noisy(0.89, 3, 0.02)}
    acc["a"] = {0: 0.95, 1: 0.88, 2: 0.89}
    rec = evidence.recommend("accuracy", "accuracy", True, "accuracy", True, _values(acc),
                             list(acc), {}, LABELS)
    assert rec.choice == "softmax" and rec.strength == "none"
    assert rec.headline.startswith("Stay with softmax for accuracy: no mapping beats it")
    assert "The best mean, a" in rec.headline
    assert any(line.startswith("Strength: weak. 3 seeds")
               for line in rec.evidence)


def test_for_sparsity_a_mapping_detectably_less_accurate_is_not_eligible():
    acc = {"softmax": noisy(0.90, 5), "sparse_ok": noisy(0.90, 5, 0.011),
           "sparse_bad": {s: v - 0.2 for s, v in noisy(0.90, 5).items()}}
    acc["sparse_bad"][0] -= 0.01  # not exact
    support = {"softmax": {s: 10.0 for s in range(5)}, "sparse_ok": noisy(2.0, 5, 0.2),
               "sparse_bad": noisy(1.0, 5, 0.1)}
    rec = evidence.recommend("sparsity", "support", False, "accuracy", True,
                             _values(acc, {"support": support}), list(acc), {}, LABELS)
    assert rec.choice == "sparse_ok"
    assert "accuracy detectably worse than softmax" in rec.excluded["sparse_bad"]
    assert any(line.startswith("Its accuracy against softmax:") for line in rec.evidence)


# --------------------------------------------------------------------------- the report


def fake_run(directory, mappings: dict[str, list[float]], task: str = "classification",
             goal: str = "accuracy") -> None:
    """A results.jsonl with one run per (mapping, seed) and the given accuracies."""
    config = {"dataset": "fake", "source": None, "task": task, "limit": None,
              "sizes": [100, 20, 20], "n_classes": 10, "data_sha256": "0" * 64,
              "model": "mlp", "epochs": 2, "lr": 0.003, "batch_size": 64, "bptt": 35,
              "device": "cpu"}
    rel = {"counts": [1.0] * 15, "confidence": [0.5] * 15, "accuracy": [0.5] * 15}
    for name, accs in mappings.items():
        for seed, acc in enumerate(accs):
            m = dict.fromkeys(TASK_METRICS[task], 0.1)
            m.update(accuracy=acc, support=10.0, train_time_per_epoch=0.01 * (1 + seed % 2),
                     inference_time_per_example=1e-6, peak_memory_mb=0.5, train_time=0.02,
                     wall_time=0.05)
            results.append(directory, {"kind": "run", "mapping": name, "seed": seed,
                                       "status": "ok", "metrics": m,
                                       "curve": {"train_loss": [1.0, 0.5],
                                                 "val_accuracy": [acc - 0.1, acc]},
                                       "reliability": {"raw": rel, "ts": rel},
                                       "config": config})
    results.append(directory, {"kind": "session", "runs": 1, "jobs": 1, "wall_time": 1.0,
                               "train_time": 0.5, "goal": goal})


LONG = "entmax:alpha=1.3,n_iter=30"


def test_the_report_opens_with_the_recommendation(tmp_path, capsys):
    fake_run(tmp_path, {"softmax": [0.90, 0.91, 0.92], "sparsemax": [0.93, 0.95, 0.95],
                        LONG: [0.80, 0.99, 0.85]})
    assert main(["report", str(tmp_path)]) == 0
    md = (tmp_path / "report.md").read_text()
    head = md.split("## Every metric")[0]
    assert "## Recommendation (goal: accuracy)" in head and "![goal](plots/goal.png)" in head
    assert "### What each alternative costs" in head
    page = (tmp_path / "report.html").read_text()
    assert page.index("Recommendation (goal: accuracy)") < page.index("Every metric")
    out = capsys.readouterr().out
    assert out.splitlines()[2] == "Recommendation (goal: accuracy)"
    assert max(len(line) for line in out.splitlines() if not line.startswith("Report:")
               ) <= WIDTH
    csv = (tmp_path / "summary.csv").read_text()
    assert "p_holm" in csv.splitlines()[0]


def test_the_goal_can_be_changed_when_re_rendering(tmp_path, capsys):
    fake_run(tmp_path, {"softmax": [0.90, 0.91, 0.92], "sparsemax": [0.93, 0.95, 0.95]})
    assert main(["report", str(tmp_path), "--goal", "speed"]) == 0
    assert "## Recommendation (goal: speed)" in (tmp_path / "report.md").read_text()
    assert summarize(tmp_path, "calibration").recommendation.metric == "ece"
    assert summarize(tmp_path).goal == "accuracy"  # the compare's own goal by default


def test_terminal_lines_fit_80_columns_with_long_names(tmp_path):
    fake_run(tmp_path, {"softmax": [0.90, 0.91], LONG + ",and_more": [0.92, 0.93],
                        "activation_normalize": [0.9, 0.9]})
    lines = terminal_lines(summarize(tmp_path), 12.0, tmp_path)
    assert all(len(line) <= WIDTH for line in lines if not line.startswith("Report:"))
    assert any(line.startswith("entmax:alpha=1.3,n_it…") for line in lines)


def test_cheaper_mappings_as_good_as_the_choice_are_named():
    base = noisy(0.90, 6)
    acc = {"softmax": base,
           "best": {s: v + 0.03 + 0.003 * (-1) ** s for s, v in base.items()},
           "cheap": {s: v + 0.029 + 0.003 * (-1) ** (s + 1) for s, v in base.items()}}
    times = {"softmax": 1.0, "best": 3.0, "cheap": 1.2}
    rec = evidence.recommend("accuracy", "accuracy", True, "accuracy", True, _values(acc),
                             list(acc), {}, LABELS, train_time=times)
    assert rec.choice == "best"
    line = next(x for x in rec.evidence if x.startswith("Also better than softmax, not "))
    assert "cheap (1.20x softmax's train time); best takes 3.00x" in line
    assert rec.contenders == ["cheap"]
