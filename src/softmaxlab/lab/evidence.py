"""Which mapping to use: paired comparisons over seeds and the recommendation built on them.

Every comparison is **paired by seed**: runs with the same seed share the data order and
the initialisation of the layers below the output, so the difference ``mapping - reference``
per seed removes most of the seed-to-seed spread. For one metric, each mapping is compared
with the reference (softmax) by a two-sided paired t-test over the seeds both have; the
p-values of all the mappings compared are adjusted together with **Holm's** step-down
method (family-wise error 5%), so that testing many mappings does not manufacture a
"better". Each comparison reports the mean difference with its 95% t confidence interval
and Cohen's d_z (mean difference / standard deviation of the differences). A difference that
is the same in every seed (``support`` of ``sparse_softmax:k=2`` is 2, always) has no
spread: it is exact, with p = 0 (or 1 for no difference).

:func:`recommend` answers the user's goal (``--goal``):

* ``accuracy``: the task's quality metric (accuracy, perplexity or HR@10);
* ``calibration``: ECE (as trained, 15 bins);
* ``sparsity``: support (mean number of non-zero probabilities);
* ``speed``: training seconds per epoch.

For the goals other than accuracy, a mapping whose quality metric is detectably worse than
the reference's is not eligible. The best eligible mapping by mean is recommended when it is
detectably better than the reference after the correction; otherwise the reference is
(there is no evidence that anything beats it). The strength of the evidence is said plainly:
fewer than 5 seeds is weak evidence whatever the p-value.
"""

from __future__ import annotations

import math
import statistics
from dataclasses import dataclass, field

__all__ = ["GOAL_METRICS", "ALPHA", "MIN_SEEDS", "Paired", "Recommendation", "goal_metric",
           "holm", "paired", "compare_to", "recommend"]

ALPHA = 0.05
#: Below this many seeds the evidence is called weak whatever the p-value.
MIN_SEEDS = 5
#: ``--goal`` -> metric (``None``: the task's first metric).
GOAL_METRICS = {"accuracy": None, "calibration": "ece", "sparsity": "support",
                "speed": "train_time_per_epoch"}


def goal_metric(goal: str, primary: str) -> str:
    return GOAL_METRICS[goal] or primary


@dataclass
class Paired:
    """``mapping`` against ``reference`` on ``metric`` over ``n`` common seeds."""

    mapping: str
    reference: str
    metric: str
    n: int
    diff: float  # mean of mapping - reference
    ci: tuple[float, float] | None  # 95% interval of ``diff`` (None with fewer than 2 seeds)
    d: float | None  # Cohen's d_z; inf when every seed gives the same non-zero difference
    p: float | None  # two-sided paired t-test, uncorrected
    exact: bool = False  # the differences do not vary over seeds
    p_holm: float | None = None
    verdict: str = "n/a"  # better | worse | within noise | n/a


def paired(mapping: str, reference: str, metric: str, a: dict[int, float],
           b: dict[int, float]) -> Paired:
    """Paired t-test of ``a`` (seed -> value of ``mapping``) against ``b`` (of ``reference``)
    on the seeds both have."""
    from scipy.stats import t as student_t

    seeds = sorted(set(a) & set(b))
    diffs = [a[s] - b[s] for s in seeds]
    n = len(diffs)
    if n == 0:
        return Paired(mapping, reference, metric, 0, math.nan, None, None, None)
    mean = statistics.fmean(diffs)
    if n < 2:
        return Paired(mapping, reference, metric, n, mean, None, None, None)
    sd = statistics.stdev(diffs)
    scale = max(abs(v) for v in (*a.values(), *b.values())) or 1.0
    if sd <= 1e-12 * scale:  # the same difference in every seed
        same = abs(mean) <= 1e-12 * scale
        return Paired(mapping, reference, metric, n, 0.0 if same else mean,
                      (mean, mean) if not same else (0.0, 0.0), 0.0 if same else math.inf,
                      1.0 if same else 0.0, exact=True)
    se = sd / math.sqrt(n)
    t = mean / se
    half = float(student_t.ppf(0.975, n - 1)) * se
    return Paired(mapping, reference, metric, n, mean, (mean - half, mean + half), mean / sd,
                  float(2 * student_t.sf(abs(t), n - 1)))


def holm(ps: list[float | None]) -> list[float | None]:
    """Holm-adjusted p-values (``None`` stays ``None``; the others form the family).

    Example:
        >>> holm([0.01, 0.04, None, 0.03])
        [0.03, 0.06, None, 0.06]
    """
    idx = sorted((i for i, p in enumerate(ps) if p is not None), key=lambda i: ps[i])
    m = len(idx)
    out: list[float | None] = [None] * len(ps)
    running = 0.0
    for rank, i in enumerate(idx):
        running = max(running, min(1.0, (m - rank) * ps[i]))
        out[i] = round(running, 15)
    return out


def compare_to(reference: str, values: dict[str, dict[int, float]], metric: str,
               higher: bool | None) -> dict[str, Paired]:
    """Every mapping of ``values`` (mapping -> seed -> value) but ``reference`` against it,
    Holm-corrected together; verdicts from the corrected p-values and ``higher`` (True:
    higher is better)."""
    ref = values.get(reference, {})
    out = {m: paired(m, reference, metric, v, ref) for m, v in values.items() if m != reference}
    for c, p in zip(out.values(), holm([c.p for c in out.values()]), strict=True):
        c.p_holm = p
        if p is None or higher is None:
            c.verdict = "n/a"
        elif p >= ALPHA:
            c.verdict = "within noise"
        else:
            c.verdict = "better" if (c.diff > 0) == higher else "worse"
    return out


@dataclass
class Recommendation:
    """The answer to ``goal``, with the evidence behind it."""

    goal: str
    metric: str
    higher: bool
    reference: str | None
    choice: str | None
    headline: str
    strength: str  # strong | moderate | weak | exact | none
    evidence: list[str] = field(default_factory=list)
    comparisons: dict[str, Paired] = field(default_factory=dict)  # on ``metric``
    quality: dict[str, Paired] = field(default_factory=dict)  # on the task's first metric
    eligible: list[str] = field(default_factory=list)  # best first
    excluded: dict[str, str] = field(default_factory=dict)  # mapping -> why
    #: The closest rivals of the choice, worth more seeds (best first).
    contenders: list[str] = field(default_factory=list)


def _fmt(v: float) -> str:
    return f"{v:.4g}"


def _signed(v: float) -> str:
    return f"{v:+.3g}"


def describe(c: Paired, scale: float = 1.0) -> str:
    """``+0.014 (95% CI -0.01 to +0.04; Holm p = 0.31; d = 0.9; 3 seeds)``."""
    if c.n < 2:
        return f"{_signed(c.diff * scale)} (1 seed: no test)"
    if c.exact:
        return f"{_signed(c.diff * scale)} in every one of the {c.n} seeds"
    lo, hi = c.ci
    return (f"{_signed(c.diff * scale)} (95% CI {_signed(lo * scale)} to {_signed(hi * scale)}, "
            f"uncorrected; Holm p = {c.p_holm:.2g}; d = {c.d:.2g}; {c.n} seeds)")


def strength(c: Paired) -> str:
    if c.exact:
        return "exact"
    if c.p_holm is None or c.p_holm >= ALPHA:
        return "none"
    if c.n < MIN_SEEDS:
        return "weak"
    return "strong" if c.p_holm < 0.01 else "moderate"


def _cheaper_peers(choice: str, candidates: list[str], values: dict, metric: str,
                   higher: bool, train_time: dict[str, float]) -> list[str]:
    """Those of ``candidates`` that train faster than ``choice`` and are not detectably
    worse than it (paired, Holm-corrected), fastest first."""
    mine = train_time.get(choice)
    if not mine:
        return []
    against = compare_to(choice, {m: values[m] for m in [choice, *candidates]}, metric, higher)
    peers = [m for m, c in against.items() if c.verdict != "worse" and c.p is not None
             and train_time.get(m, math.inf) < mine]
    return sorted(peers, key=lambda m: train_time[m])


def recommend(goal: str, metric: str, higher: bool, primary: str, primary_higher: bool,
              values: dict[str, dict[str, dict[int, float]]], order: list[str],
              incomplete: dict[str, str], label: dict[str, str],
              reference: str = "softmax",
              train_time: dict[str, float] | None = None) -> Recommendation:
    """The recommendation for ``goal``.

    ``values[metric][mapping][seed]``; ``order``: the mappings that finished every seed (in
    report order); ``incomplete``: the others, with why; ``label``: display names of the
    metrics; ``train_time``: each mapping's median training seconds per epoch (to name the
    cheaper mappings that are not detectably worse than the choice).
    """
    name = label[metric]
    candidates = [m for m in order if values.get(metric, {}).get(m)]
    excluded = dict(incomplete)
    for m in order:
        if m not in candidates:
            excluded[m] = f"no {name} (undefined for this mapping)"
    if not candidates:
        return Recommendation(goal, metric, higher, None, None,
                              f"No mapping finished with a {name}: nothing to recommend.",
                              "none", excluded=excluded)
    ref = reference if reference in candidates else candidates[0]
    quality = compare_to(ref, {m: values[primary][m] for m in candidates
                               if m in values.get(primary, {})}, primary, primary_higher)
    eligible = list(candidates)
    if metric != primary:
        for m, c in quality.items():
            if c.verdict == "worse":
                eligible.remove(m)
                excluded[m] = f"{label[primary]} detectably worse than {ref}"
    comps = compare_to(ref, {m: values[metric][m] for m in eligible}, metric, higher)

    def mean(m: str) -> float:
        return statistics.fmean(values[metric][m].values())

    ranked = sorted(eligible, key=mean, reverse=higher)
    best = ranked[0]
    n = min(len(values[metric][m]) for m in eligible)
    rec = Recommendation(goal, metric, higher, ref, None, "", "none", comparisons=comps,
                         quality=quality, eligible=ranked, excluded=excluded)
    ref_mean = mean(ref)
    if best != ref and comps[best].verdict == "better":
        c = comps[best]
        rec.choice, rec.strength = best, strength(c)
        rec.headline = (f"Use {best} for {goal}: {name} {_fmt(mean(best))} against "
                        f"{_fmt(ref_mean)} with {ref}, a difference of {describe(c)}.")
        others = [m for m in ranked[1:] if m != ref and comps[m].verdict == "better"]
        if others:
            rec.evidence.append("Also detectably better than " + ref + ": "
                                + ", ".join(others) + ".")
        times = train_time or {}
        cheaper = _cheaper_peers(best, others, values[metric], metric, higher, times)
        if cheaper and times.get(ref):
            base = times[ref]
            rec.evidence.append(
                f"Also better than {ref}, not detectably worse than {best}, and cheaper to "
                "train: " + ", ".join(f"{m} ({times[m] / base:.2f}x {ref}'s train time)"
                                      for m in cheaper)
                + f"; {best} takes {times[best] / base:.2f}x.")
            rec.contenders = cheaper[:2]
    else:
        rec.choice = ref
        rec.strength = "none"
        hints = [m for m in ranked if m != ref and comps[m].ci is not None and not comps[m].exact
                 and comps[m].verdict == "within noise"
                 and (comps[m].ci[0] > 0 if higher else comps[m].ci[1] < 0)]
        if best == ref:
            rec.headline = (f"Stay with {ref} for {goal}: it has the best mean {name} "
                            f"({_fmt(ref_mean)}) of the {len(eligible)} mappings compared.")
        elif hints:
            lead = hints[0]
            rec.headline = (f"Keep {ref} for {goal} until more seeds decide: after correcting "
                            f"for {len(comps)} comparisons no mapping beats it beyond seed "
                            f"noise, but {lead} looks better ({name} {_fmt(mean(lead))} "
                            f"against {_fmt(ref_mean)}, {describe(comps[lead])}).")
            rec.evidence.append(
                f"The uncorrected 95% interval excludes 0 for {', '.join(hints)}: with "
                f"{len(comps)} mappings compared, some such intervals are expected by chance, "
                "so these are leads to test, not findings.")
        else:
            rec.headline = (f"Stay with {ref} for {goal}: no mapping beats it on {name} "
                            f"beyond seed noise. The best mean, {best} ({_fmt(mean(best))} "
                            f"against {_fmt(ref_mean)}), differs by {describe(comps[best])}.")
        worse = [m for m in ranked if m != ref and comps[m].verdict == "worse"]
        if worse:
            rec.evidence.append(f"Detectably worse than {ref} on {name}: {', '.join(worse)}.")
        if hints:
            rec.contenders = hints[:2]
    if not rec.contenders:
        rec.contenders = [m for m in ranked if m != rec.choice
                          and (comps.get(m) is None or comps[m].verdict != "worse")][:2]
    if metric != primary and rec.choice != ref and rec.choice in quality:
        rec.evidence.append(f"Its {label[primary]} against {ref}: "
                            f"{describe(quality[rec.choice])}.")
    family = sum(1 for c in comps.values() if c.p is not None)
    rec.evidence.append(
        f"How this was decided: paired t-tests over seeds against {ref} (the same seed "
        f"means the same data order and initialisation), Holm-corrected over {family} "
        f"comparisons at 5%; 95% confidence intervals of the mean difference; d is "
        "Cohen's d_z.")
    if rec.strength in ("exact",):
        rec.evidence.append(f"Strength: certain for this setting ({name} does not vary with "
                            "the seed).")
    elif n < MIN_SEEDS:
        rec.evidence.append(
            f"Strength: weak. {n} seed{'s' if n != 1 else ''} per mapping can only reveal "
            "large differences, and \"within noise\" is not evidence of equality.")
    elif rec.strength == "none":
        rec.evidence.append(f"Strength: no detectable difference with {n} seeds; smaller "
                            "differences than the intervals above cannot be told from noise.")
    else:
        rec.evidence.append(f"Strength: {rec.strength} ({n} seeds).")
    if excluded:
        rec.evidence.append("Not considered: " + "; ".join(f"{m} ({why})"
                                                           for m, why in excluded.items()) + ".")
    return rec
