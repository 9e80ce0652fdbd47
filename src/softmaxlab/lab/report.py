"""The comparison report, rendered from ``results.jsonl`` alone (``softmaxlab report DIR``).

Writes ``summary.csv`` (per mapping and metric: mean, std, median, min and max over seeds,
and the paired comparison with softmax), ``plots/*.png``, ``report.md`` and a self-contained
``report.html`` (the plots embedded as base64 PNG), and prints a summary that fits 80
columns. Every number shown goes through :func:`cell`, so the terminal, Markdown and HTML
agree with ``summary.csv``.

Each report opens with a **Recommendation** for the user's goal (``--goal``: accuracy,
calibration, sparsity or speed; :mod:`.evidence`): the mapping to use, the evidence
(paired comparisons over seeds against softmax, Holm-corrected, with confidence intervals
and effect sizes), its strength, and what each alternative costs. Quality metrics are shown
as mean ± standard deviation over seeds; costs (time, memory) as the median and the range
over seeds, which never leaves the measured values (no interval below zero).
"""

from __future__ import annotations

import argparse
import base64
import csv
import html
import io
import math
import statistics
import textwrap
from dataclasses import dataclass, field
from pathlib import Path

from . import evidence, outputs, results
from .heads import order_key
from .options import GOALS, check_goal
from .train import TASK_METRICS

__all__ = ["Summary", "summarize", "render", "print_summary", "cell", "register"]

#: metric -> (label, True if higher is better / False if lower / None: no best, display scale)
METRICS = {
    "accuracy": ("accuracy", True, 1),
    "perplexity": ("perplexity", False, 1),
    "hr@10": ("HR@10", True, 1),
    "ndcg@10": ("NDCG@10", True, 1),
    "nll": ("NLL", False, 1),
    "ece": ("ECE", False, 1),
    "ece_ts": ("ECE after TS", False, 1),
    "temperature": ("T (fitted)", None, 1),
    "brier": ("Brier", False, 1),
    "support": ("support", False, 1),
    "attention_support": ("attention support", False, 1),
    "train_time_per_epoch": ("train s/epoch", False, 1),
    "inference_time_per_example": ("infer µs/example", False, 1e6),
    "peak_memory_mb": ("peak MB", False, 1),
}
#: Costs: shown as median (min-max) over seeds, compared as ratios to softmax.
COSTS = ("train_time_per_epoch", "inference_time_per_example", "peak_memory_mb")
REFERENCE = "softmax"
NA = "n/a"
#: The plots, in the order they appear.
PLOT_NAMES = ("goal", "tradeoffs", "metrics", "curves", "reliability")
#: Every file :func:`render` writes, relative to the run directory.
OUTPUT_NAMES = ("summary.csv", "report.md", "report.html",
                *(f"plots/{name}.png" for name in PLOT_NAMES))
#: Width of the terminal summary.
WIDTH = 80


@dataclass
class Row:
    """One mapping: its runs' values per seed."""

    mapping: str
    status: str  # ok | failed | partial (some seeds failed) | skipped
    seeds_ok: list[int] = field(default_factory=list)
    failures: list[str] = field(default_factory=list)  # "seed N: reason" or the skip reason
    by_seed: dict[str, dict[int, float]] = field(default_factory=dict)
    vs_reference: str = NA
    p_value: float | None = None  # paired, uncorrected
    p_holm: float | None = None

    @property
    def values(self) -> dict[str, list[float]]:
        return {m: list(v.values()) for m, v in self.by_seed.items()}

    def mean_std(self, metric: str) -> tuple[float, float] | None:
        """Mean and sample standard deviation over seeds (exact: equal values give 0)."""
        v = list(self.by_seed.get(metric, {}).values())
        if not v:
            return None
        return statistics.mean(v), statistics.stdev(v) if len(v) > 1 else 0.0

    def median_range(self, metric: str) -> tuple[float, float, float] | None:
        """Median, minimum and maximum over seeds."""
        v = list(self.by_seed.get(metric, {}).values())
        if not v:
            return None
        return statistics.median(v), min(v), max(v)

    def center(self, metric: str) -> float | None:
        """The mean (quality) or the median (costs) over seeds."""
        if metric in COSTS:
            m = self.median_range(metric)
            return m[0] if m else None
        m = self.mean_std(metric)
        return m[0] if m else None


@dataclass
class Summary:
    config: dict
    metrics: list[str]
    rows: list[Row]
    runs: list[dict]
    sessions: list[dict]
    goal: str = "accuracy"
    directory: str = ""
    best: dict[str, str] = field(default_factory=dict)  # metric -> mapping
    recommendation: evidence.Recommendation | None = None

    @property
    def primary(self) -> str:
        return self.metrics[0]

    def row(self, mapping: str) -> Row | None:
        return next((r for r in self.rows if r.mapping == mapping), None)


def fmt(v: float) -> str:
    return f"{v:.4g}"


def cell(row: Row, metric: str) -> str:
    """``mean ± std`` (quality) or ``median (min to max)`` (costs) over seeds in display units,
    or ``n/a``."""
    scale = METRICS[metric][2]
    if metric in COSTS:
        mr = row.median_range(metric)
        if mr is None:
            return NA
        med, lo, hi = (v * scale for v in mr)
        return fmt(med) if lo == hi else f"{fmt(med)} ({lo:.3g} to {hi:.3g})"
    ms = row.mean_std(metric)
    if ms is None:
        return NA
    return f"{fmt(ms[0] * scale)} ± {ms[1] * scale:.2g}"


def _last_goal(sessions: list[dict]) -> str:
    return next((s["goal"] for s in reversed(sessions) if s.get("goal")), "accuracy")


def summarize(directory: str | Path, goal: str | None = None) -> Summary:
    """Group the records of ``directory/results.jsonl`` by mapping (in registry order) and
    answer ``goal`` (default: the last compare's ``--goal``, else accuracy)."""
    records = results.read(directory)
    runs = [r for r in records if r["kind"] in ("run", "skipped")]
    if not runs:
        raise ValueError(f"{Path(directory) / results.RESULTS}: no finished runs to report")
    sessions = [r for r in records if r["kind"] == "session"]
    goal = check_goal(goal or _last_goal(sessions))
    config = runs[-1]["config"]
    metrics = [m for m in TASK_METRICS[config["task"]] if m != "attention_support"
               or any(r.get("metrics", {}).get(m) is not None for r in runs)]
    rows: dict[str, Row] = {}
    for r in runs:
        row = rows.setdefault(r["mapping"], Row(r["mapping"], "ok"))
        if r["kind"] == "skipped":
            row.status, row.failures = "skipped", [r["reason"]]
        elif r["status"] == "failed":
            row.failures.append(f"seed {r['seed']}: {r['reason']}")
        else:
            row.seeds_ok.append(r["seed"])
            for m in metrics:
                if r["metrics"].get(m) is not None:
                    row.by_seed.setdefault(m, {})[r["seed"]] = r["metrics"][m]
    for row in rows.values():
        if row.status != "skipped" and row.failures:
            row.status = "partial" if row.seeds_ok else "failed"
    summary = Summary(config, metrics, sorted(rows.values(), key=lambda r: order_key(r.mapping)),
                      [r for r in runs if r["kind"] == "run"], sessions, goal, str(directory))
    for m in metrics:
        higher = METRICS[m][1]
        scored = [(row.center(m), row.mapping) for row in summary.rows
                  if row.center(m) is not None]
        if higher is not None and scored and m not in ("support", "attention_support"):
            summary.best[m] = (max if higher else min)(scored)[1]
    _decide(summary)
    return summary


def _decide(summary: Summary) -> None:
    """The recommendation, and the primary metric's comparison with softmax per row."""
    complete = [r.mapping for r in summary.rows if r.status == "ok" and r.seeds_ok]
    incomplete = {r.mapping: r.status if r.status != "partial" else
                  f"{len(r.failures)} of {len(r.failures) + len(r.seeds_ok)} seeds failed"
                  for r in summary.rows if r.status in ("partial", "failed")}
    values = {m: {r.mapping: r.by_seed[m] for r in summary.rows
                  if r.mapping in complete and m in r.by_seed} for m in summary.metrics}
    metric = evidence.goal_metric(summary.goal, summary.primary)
    if metric == "support" and summary.config.get("head") is not None:
        metric = "attention_support"  # the runs differ in their attention, not their head
    labels = {m: METRICS[m][0] for m in METRICS}
    train_time = {r.mapping: r.center("train_time_per_epoch") for r in summary.rows
                  if r.mapping in complete and r.center("train_time_per_epoch")}
    rec = evidence.recommend(summary.goal, metric, bool(METRICS[metric][1]), summary.primary,
                             bool(METRICS[summary.primary][1]), values, complete, incomplete,
                             labels, REFERENCE, train_time)
    summary.recommendation = rec
    for row in summary.rows:
        if row.mapping == rec.reference:
            row.vs_reference = "reference"
        elif row.mapping in rec.quality:
            c = rec.quality[row.mapping]
            row.vs_reference, row.p_value, row.p_holm = c.verdict, c.p, c.p_holm


# --------------------------------------------------------------------------- tables


def _verdict(row: Row) -> str:
    p = f" (p {row.p_holm:.2g})" if row.p_holm is not None else ""
    return row.vs_reference + p


def table_rows(summary: Summary, metrics: list[str], mark: str) -> tuple[list[str], list[list]]:
    """Header and rows of the full table; the best of each metric gets ``mark``."""
    header = (["mapping", "runs"] + [METRICS[m][0] for m in metrics]
              + [f"{METRICS[summary.primary][0]} vs {REFERENCE} (Holm p)"])
    out = []
    for row in summary.rows:
        cells = [cell(row, m) + (mark if summary.best.get(m) == row.mapping else "")
                 for m in metrics]
        out.append([row.mapping, runs_cell(row), *cells, _verdict(row)])
    return header, out


def _ratio(row: Row, ref: Row | None, metric: str) -> str:
    a, b = row.center(metric), ref.center(metric) if ref else None
    if a is None or not b:
        return NA
    return f"{a / b:.2f}x"


def cost_rows(summary: Summary) -> tuple[list[str], list[list[str]]]:
    """The alternatives for the goal, best first: the goal metric, its paired difference
    with softmax, and each cost as a ratio of medians to softmax's."""
    rec = summary.recommendation
    if rec is None or rec.reference is None:
        return [], []
    ref = summary.row(rec.reference)
    label = METRICS[rec.metric][0]
    scale = METRICS[rec.metric][2]
    header = ["mapping", label, f"difference vs {rec.reference} (95% CI, uncorrected)",
              "Holm p", "verdict"]
    primary = summary.primary != rec.metric
    if primary:
        header.append(f"{METRICS[summary.primary][0]} vs {rec.reference}")
    header += ["train time", "inference", "memory"]
    out = []
    for m in rec.eligible + [m for m in rec.excluded if summary.row(m)]:
        row = summary.row(m)
        if row is None or not row.seeds_ok:
            continue
        if m == rec.reference:
            cols = ["(reference)", "", "reference"]
        elif m in rec.comparisons:
            c = rec.comparisons[m]
            cols = [_interval(c, scale), _p(c), c.verdict]
        else:
            cols = ["", "", f"not considered: {rec.excluded.get(m, '')}"]
        name = m + (" ◀" if m == rec.choice else "")
        line = [name, cell(row, rec.metric), *cols]
        if primary:
            q = rec.quality.get(m)
            line.append("(reference)" if m == rec.reference else
                        f"{_interval(q, METRICS[summary.primary][2])} {q.verdict}" if q else NA)
        line += [_ratio(row, ref, c) for c in COSTS]
        out.append(line)
    return header, out


def _interval(c: evidence.Paired, scale: float) -> str:
    if c.ci is None:
        return f"{c.diff * scale:+.3g}"
    if c.exact:
        return f"{c.diff * scale:+.3g} (every seed)"
    return f"{c.diff * scale:+.3g} ({c.ci[0] * scale:+.3g} to {c.ci[1] * scale:+.3g})"


def _p(c: evidence.Paired) -> str:
    return "" if c.p_holm is None else f"{c.p_holm:.2g}"


def runs_cell(row: Row) -> str:
    """``3 ok``, ``2 ok, 1 failed`` or ``skipped``."""
    if row.status == "skipped":
        return "skipped"
    failed = f", {len(row.failures)} failed" if row.failures else ""
    return f"{len(row.seeds_ok)} ok{failed}"


def _last_session(summary: Summary) -> dict | None:
    """The last compare invocation that trained something."""
    return next((s for s in reversed(summary.sessions) if s["train_time"] > 0), None)


def timing_lines(summary: Summary) -> list[str]:
    """Where the time went: inside the runs, and in the last compare that trained."""
    ok = [r["metrics"] for r in summary.runs if r["status"] == "ok"]
    train = sum(m["train_time"] for m in ok)
    lines = []
    if train > 0:
        other = sum(m["wall_time"] for m in ok) - train
        lines.append(f"Inside the {len(ok)} runs: {train:.1f} s in training steps, {other:.1f} "
                     f"s in evaluation, calibration and data ({other / train:.0%} of training).")
    last = _last_session(summary)
    if last:
        per_job = last["train_time"] / last["jobs"]
        over = last["wall_time"] - per_job
        lines.append(
            f"Last compare: {last['wall_time']:.1f} s wall for {last['runs']} runs on "
            f"{last['jobs']} job(s), {last['train_time']:.1f} s in training steps "
            f"({per_job:.1f} s per job); lab overhead = wall - training per job = {over:.1f} s "
            f"({over / per_job:.0%} of training): process start-up, data, evaluation, "
            "calibration, results (rendering this report not included).")
    return lines


def _notes(summary: Summary) -> list[str]:
    return [
        "Quality: mean ± std over seeds; costs: median (min to max) over seeds; * marks the best "
        f"of a metric. vs {REFERENCE}: paired t-test over seeds on "
        f"{METRICS[summary.primary][0]}, Holm-corrected over all mappings, 5% (\"within "
        "noise\" otherwise; n/a with fewer than 2 seeds).",
        "n/a for NLL, perplexity, ECE after TS and T: the mapping has no log form (sparse "
        "maps, one-vs-all sigmoids), so the likelihood and temperature scaling are undefined.",
        "support: mean number of non-zero probabilities. Costs: train s/epoch is the median "
        "over epochs of the time in training steps, after an untimed warm-up step per run, in "
        "a random run order; peak MB is the memory of one training step (parameters plus the "
        "peak of the tensors it allocates: activations, gradients, Adam state), the same in "
        "any run order. Ratios (1.20x) are medians over medians, against softmax.",
    ]


def _problems(summary: Summary) -> list[str]:
    return [f"{row.mapping} ({row.status}): {f}" for row in summary.rows for f in row.failures]


# --------------------------------------------------------------------------- plots

#: Font sizes (points) of the plots: at 100 dpi and the page's width, 10 pt reads easily.
FONT, SMALL = 11, 10
VERDICT_COLORS = {"better": "#1a9850", "worse": "#d73027", "within noise": "#7f7f7f",
                  "reference": "#000000", "n/a": "#bdbdbd"}


def plots(summary: Summary) -> dict[str, bytes]:
    """PNG images: the goal's evidence, quality against costs, every metric, learning
    curves, reliability diagrams."""
    import matplotlib

    matplotlib.use("Agg")
    from matplotlib import pyplot as plt

    rows = [r for r in summary.rows if r.seeds_ok]
    if not rows:
        return {}
    # the dark half of tab20 first (readable on white), then the light half
    colors = {r.mapping: plt.cm.tab20((2 * i + (i // 10) % 2) % 20) for i, r in enumerate(rows)}
    drawers = {"goal": _goal, "tradeoffs": _tradeoffs, "metrics": _metric_dots,
               "curves": _curves, "reliability": _reliability_grid}
    out = {}
    with plt.rc_context({"font.size": FONT, "axes.titlesize": FONT, "axes.labelsize": FONT,
                         "xtick.labelsize": SMALL, "ytick.labelsize": SMALL,
                         "legend.fontsize": SMALL, "axes.spines.top": False,
                         "axes.spines.right": False}):
        for name in PLOT_NAMES:
            fig = drawers[name](plt, summary, rows, colors)
            if fig is None:
                continue
            buf = io.BytesIO()
            fig.savefig(buf, format="png", dpi=100)
            plt.close(fig)
            out[name] = buf.getvalue()
    return out


def _dots(ax, rows, metric, colors, ref_value=None, highlight=None):
    """One row per mapping: the mean (quality) or median (costs) as a dot, the seeds' range
    (min to max) as a line; the axis zooms to the data (no bar from zero)."""
    scale = METRICS[metric][2]
    for i, row in enumerate(rows):
        v = list(row.by_seed.get(metric, {}).values())
        if not v:
            continue
        c = row.center(metric) * scale
        ax.plot([min(v) * scale, max(v) * scale], [i, i], color=colors[row.mapping], lw=2.5,
                alpha=0.55, solid_capstyle="butt")
        ax.plot([c], [i], "o", color=colors[row.mapping], ms=7 if row.mapping == highlight
                else 5, mec="k" if row.mapping == highlight else "none")
    if ref_value is not None:
        ax.axvline(ref_value * scale, color="k", ls="--", lw=0.8)
    _zoom(ax, [v * scale for r in rows for v in r.by_seed.get(metric, {}).values()]
          + ([ref_value * scale] if ref_value is not None else []))
    ax.grid(axis="x", alpha=0.3)


def _zoom(ax, values: list[float]) -> None:
    """x limits around ``values`` with a margin, at least 5% of their magnitude wide (values
    that agree to a few digits look the same), plain tick labels (no offset), few ticks."""
    from matplotlib.ticker import MaxNLocator

    finite = [v for v in values if math.isfinite(v)]
    if finite:
        lo, hi = min(finite), max(finite)
        span = max(hi - lo, 0.05 * max(abs(lo), abs(hi)), 1e-12)
        mid = (lo + hi) / 2 if hi - lo < span else None
        if mid is not None:
            lo, hi = mid - span / 2, mid + span / 2
        pad = 0.08 * span
        ax.set_xlim(lo - pad, hi + pad)
    ax.xaxis.set_major_locator(MaxNLocator(nbins=5))
    ax.ticklabel_format(axis="x", useOffset=False, style="plain")


def _label_rows(ax, rows, choice=None):
    ax.set_yticks(range(len(rows)), [r.mapping for r in rows])
    for tick, row in zip(ax.get_yticklabels(), rows, strict=True):
        if row.mapping == choice:
            tick.set_fontweight("bold")
    ax.set_ylim(len(rows) - 0.5, -0.5)


def _goal_rows(summary: Summary, rows: list[Row]) -> list[Row]:
    """The rows with the goal metric, the recommendation's ranking first."""
    rec = summary.recommendation
    metric = rec.metric if rec else summary.primary
    have = [r for r in rows if metric in r.by_seed]
    rank = {m: i for i, m in enumerate(rec.eligible)} if rec else {}
    return sorted(have, key=lambda r: (rank.get(r.mapping, len(rank)),
                                       order_key(r.mapping)))


def _goal(plt, summary, rows, colors):
    """The goal metric per mapping (mean, range over seeds) and its paired difference with
    softmax (95% CI, coloured by the Holm-corrected verdict)."""
    rec = summary.recommendation
    if rec is None or rec.reference is None:
        return None
    shown = _goal_rows(summary, rows)
    ref = summary.row(rec.reference)
    fig, axes = plt.subplots(1, 2, figsize=(11, 0.34 * len(shown) + 1.6), sharey=True,
                             gridspec_kw={"width_ratios": [1, 1.2]})
    label, _, scale = METRICS[rec.metric]
    _dots(axes[0], shown, rec.metric, colors, ref.center(rec.metric) if ref else None,
          rec.choice)
    axes[0].set_title(f"{label} (dot: {'median' if rec.metric in COSTS else 'mean'}; "
                      "line: range over seeds)")
    ax = axes[1]
    for i, row in enumerate(shown):
        c = rec.comparisons.get(row.mapping)
        if row.mapping == rec.reference:
            ax.plot([0], [i], "D", color="k", ms=5)
            continue
        if c is None or c.ci is None:
            continue
        color = VERDICT_COLORS.get(c.verdict, "#bdbdbd")
        ax.plot([c.ci[0] * scale, c.ci[1] * scale], [i, i], color=color, lw=2.5)
        ax.plot([c.diff * scale], [i], "o", color=color, ms=5)
    ax.axvline(0, color="k", lw=0.8)
    ax.grid(axis="x", alpha=0.3)
    _zoom(ax, [0.0] + [v * scale for c in rec.comparisons.values() if c.ci for v in c.ci])
    better = "higher" if rec.higher else "lower"
    ax.set_title(f"difference vs {rec.reference}, 95% CI ({better} is better)")
    handles = [plt.Line2D([], [], color=VERDICT_COLORS[v], lw=2.5, label=v)
               for v in ("better", "within noise", "worse")]
    ax.legend(handles=handles, loc="lower right", frameon=False, title="Holm-corrected")
    _label_rows(axes[0], shown, rec.choice)
    fig.suptitle(f"Goal: {summary.goal}. Recommended: {rec.choice or 'none'} "
                 f"(evidence: {rec.strength})", fontsize=FONT + 1)
    fig.tight_layout()
    return fig


def _tradeoffs(plt, summary, rows, colors):
    """Quality and each cost side by side, one row per mapping, in the goal's order."""
    shown = _goal_rows(summary, rows)
    metrics = [summary.primary] + [c for c in COSTS if any(c in r.by_seed for r in shown)]
    if summary.recommendation and summary.recommendation.metric not in metrics:
        metrics.insert(1, summary.recommendation.metric)
    ref = summary.row(REFERENCE)
    fig, axes = plt.subplots(1, len(metrics), figsize=(3.3 * len(metrics) + 1.5,
                                                      0.34 * len(shown) + 1.4),
                             sharey=True, squeeze=False)
    for ax, m in zip(axes[0], metrics, strict=True):
        _dots(ax, shown, m, colors, ref.center(m) if ref and ref.center(m) else None,
              summary.recommendation.choice if summary.recommendation else None)
        ax.set_title(METRICS[m][0])
    _label_rows(axes[0, 0], shown, summary.recommendation.choice
                if summary.recommendation else None)
    fig.suptitle(f"What each mapping costs (dashed: {REFERENCE}; dot: mean for quality, "
                 "median for costs; line: range over seeds)", fontsize=FONT)
    fig.tight_layout()
    return fig


def _metric_dots(plt, summary, rows, colors):
    """One panel per metric, mappings on the y axis, in registry order."""
    shown = [m for m in summary.metrics if any(m in r.by_seed for r in rows)]
    cols = 3
    n_rows = math.ceil(len(shown) / cols)
    fig, axes = plt.subplots(n_rows, cols, figsize=(13, (0.3 * len(rows) + 1.0) * n_rows),
                             sharey=True, squeeze=False)
    ref = summary.row(REFERENCE)
    for ax, m in zip(axes.flat, shown, strict=False):  # spare panels stay empty
        _dots(ax, rows, m, colors, ref.center(m) if ref and ref.center(m) is not None
              else None)
        ax.set_title(METRICS[m][0])
    for r in range(n_rows):
        _label_rows(axes[r, 0], rows)
    for ax in axes.flat[len(shown):]:
        ax.axis("off")
    fig.suptitle(f"Every metric (dashed: {REFERENCE}; dot: mean, or median for costs; "
                 "line: range over seeds)", fontsize=FONT)
    fig.tight_layout()
    return fig


def _curves(plt, summary, rows, colors):
    """Training loss and the validation primary metric per epoch, mean over seeds."""
    primary = summary.primary
    fig, axes = plt.subplots(1, 2, figsize=(13, 5))
    for row in rows:
        runs = [r for r in summary.runs if r["mapping"] == row.mapping and r["status"] == "ok"]
        for ax, key in zip(axes, ("train_loss", f"val_{primary}"), strict=True):
            curves = [r["curve"][key] for r in runs]
            if any(v is None for c in curves for v in c):
                continue  # e.g. perplexity of a mapping without a log form
            mean = [sum(c) / len(c) for c in zip(*curves, strict=True)]
            ax.plot(range(1, len(mean) + 1), mean, label=row.mapping, color=colors[row.mapping])
    axes[0].set(title="training loss (each mapping's own loss)", xlabel="epoch", yscale="log")
    axes[1].set(title=f"validation {METRICS[primary][0]} (mean over seeds)", xlabel="epoch")
    values = [v for line in axes[1].get_lines() for v in line.get_ydata()[len(line.get_ydata())
                                                                          // 3:]]
    if values:  # zoom on the part of the curves where the mappings differ
        lo, hi = min(values), max(values)
        pad = 0.1 * (hi - lo or abs(hi) or 1)
        axes[1].set_ylim(lo - pad, hi + pad)
    for ax in axes:
        ax.xaxis.get_major_locator().set_params(integer=True)
        ax.grid(alpha=0.3)
    axes[1].legend(ncol=2, loc="best", frameon=False)
    fig.tight_layout()
    return fig


def _reliability_grid(plt, summary, rows, colors):
    """Per mapping, pooled over seeds: accuracy per confidence bin before temperature
    scaling (filled steps) and after (dots), against the diagonal."""
    cols = 5
    n_rows = math.ceil(len(rows) / cols)
    fig, axes = plt.subplots(n_rows, cols, figsize=(15, 3.1 * n_rows + 0.6), sharex=True,
                             sharey=True, squeeze=False)
    for ax, row in zip(axes.flat, rows, strict=False):  # spare panels stay empty
        runs = [r for r in summary.runs if r["mapping"] == row.mapping and r["status"] == "ok"]
        for key in ("raw", "ts"):
            parts = [r["reliability"][key] for r in runs if key in r["reliability"]]
            if not parts:
                continue
            n_bins = len(parts[0]["counts"])
            counts = [sum(p["counts"][b] for p in parts) for b in range(n_bins)]
            acc = [sum(p["counts"][b] * p["accuracy"][b] for p in parts) / counts[b]
                   if counts[b] else 0.0 for b in range(n_bins)]
            if key == "raw":
                ax.stairs(acc, [b / n_bins for b in range(n_bins + 1)], fill=True, alpha=0.6,
                          color=colors[row.mapping])
            else:
                ax.plot([(b + 0.5) / n_bins for b in range(n_bins) if counts[b]],
                        [a for a, c in zip(acc, counts, strict=True) if c], "o", ms=3, color="k")
        ax.plot([0, 1], [0, 1], "k--", lw=0.8)
        ax.set_title(f"{row.mapping}\nECE {cell(row, 'ece')}", fontsize=SMALL)
    for ax in axes.flat[len(rows):]:
        ax.axis("off")
    fig.suptitle("accuracy per confidence bin (x: confidence); filled: as trained, dots: after "
                 "temperature scaling; dashed: perfect calibration", fontsize=FONT)
    fig.tight_layout()
    return fig


# --------------------------------------------------------------------------- files


def _heading(summary: Summary) -> str:
    c = summary.config
    return (f"dataset {c['dataset']} ({c['task']}, train/val/test "
            f"{'/'.join(map(str, c['sizes']))}, {c['n_classes']} classes"
            f"{', limit ' + str(c['limit']) if c['limit'] else ''}); model {c['model']}, "
            f"{c['epochs']} epochs, Adam lr {c['lr']}, batch {c['batch_size']}, "
            f"device {c['device']}; data split seed 0, seeds vary initialisation and data "
            "order")


def _csv(summary: Summary) -> str:
    rec = summary.recommendation
    stats = ("mean", "std", "median", "min", "max")
    with io.StringIO(newline="") as f:
        w = csv.writer(f)
        w.writerow(["mapping", "status", "seeds_ok", "runs_failed"]
                   + [f"{m}_{s}" for m in summary.metrics for s in stats]
                   + [f"vs_{REFERENCE}", "diff", "ci_low", "ci_high", "p_value", "p_holm",
                      "recommended", "notes"])
        for row in summary.rows:
            cols = []
            for m in summary.metrics:
                ms, mr = row.mean_std(m), row.median_range(m)
                cols += [repr(v) for v in (*ms, *mr)] if ms else [""] * len(stats)
            c = rec.quality.get(row.mapping) if rec else None
            comparison = ([repr(c.diff), *(map(repr, c.ci) if c.ci else ("", ""))]
                          if c else ["", "", ""])
            w.writerow([row.mapping, row.status, len(row.seeds_ok),
                        len(row.failures) if row.status != "skipped" else 0, *cols,
                        row.vs_reference, *comparison,
                        "" if row.p_value is None else repr(row.p_value),
                        "" if row.p_holm is None else repr(row.p_holm),
                        "yes" if rec and rec.choice == row.mapping else "",
                        "; ".join(row.failures)])
        return f.getvalue()


def next_step(summary: Summary) -> list[str] | None:
    """The command that would firm up a weak answer: the choice, softmax and the closest
    contenders with more seeds, in the same run directory (finished runs are kept), as
    words; ``None`` when the evidence is not weak."""
    from .datasets import datasets
    from .models import ATTENTION_MODELS, check_model
    from .train import RunConfig

    rec = summary.recommendation
    if rec is None or rec.choice is None or rec.strength in ("strong", "exact"):
        return None
    seeds = max(len(summary.row(m).seeds_ok) for m in rec.eligible)
    if seeds >= 10:
        return None
    c = summary.config
    names = list(dict.fromkeys([rec.reference, rec.choice, *rec.contenders]))
    builtin = {d.name for d in datasets()}
    dataset = c["dataset"] if c["dataset"] in builtin else (c.get("source") or c["dataset"])
    arms = (["--mappings", ",".join(names)] if c.get("head") is None else
            ["--attention", ",".join(names)]
            + (["--mappings", c["head"]] if c["head"] != "softmax" else []))
    words = ["softmaxlab", "compare", "--dataset", str(dataset), *arms, "--seeds", "10"]
    if summary.goal != "accuracy":
        words += ["--goal", summary.goal]
    defaults = RunConfig(model=ATTENTION_MODELS[0] if c.get("head") is not None  # --attention's
                         else check_model(None, c["task"]))
    for key, flag in (("model", "--model"), ("epochs", "--epochs"), ("lr", "--lr"),
                      ("batch_size", "--batch-size"), ("device", "--device")):
        if c.get(key) != getattr(defaults, key):
            words += [flag, str(c[key])]
    if c.get("limit"):
        words += ["--limit", str(c["limit"])]
    return [*words, "--out", summary.directory]


def _recommendation_lines(summary: Summary) -> tuple[str, list[str]]:
    rec = summary.recommendation
    lines = list(rec.evidence)
    step = next_step(summary)
    if step:
        lines.append("Next step, for a firmer answer: more seeds for the closest contenders, "
                     "in this run directory (the finished runs are kept): "
                     + " ".join(step))
    return rec.headline, lines


def _md_table(header: list[str], rows: list[list[str]]) -> list[str]:
    return (["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
            + ["| " + " | ".join(r) + " |" for r in rows])


def _markdown(summary: Summary, images: dict[str, bytes]) -> str:
    headline, lines = _recommendation_lines(summary)
    header, rows = table_rows(summary, summary.metrics, " *")
    out = [f"# softmaxlab compare: {summary.config['dataset']}", "", _heading(summary), "",
           f"## Recommendation (goal: {summary.goal})", "", f"**{headline}**", ""]
    out += [f"- {line}" for line in lines] + [""]
    if "goal" in images:
        out += ["![goal](plots/goal.png)", ""]
    cost_header, costs = cost_rows(summary)
    if costs:
        out += ["### What each alternative costs", "",
                "Costs are ratios of medians to softmax's (1.20x: 20% more); ◀ marks the "
                "recommendation.", ""]
        out += [*_md_table(cost_header, costs), ""]
    out += ["## Every metric", "", *_md_table(header, rows), ""]
    out += [f"- {n}" for n in _notes(summary)] + [""]
    out += [*timing_lines(summary), ""]
    if _problems(summary):
        out += ["## Skipped and failed", ""] + [f"- {p}" for p in _problems(summary)] + [""]
    out += [f"![{name}](plots/{name}.png)" for name in images if name != "goal"]
    return "\n".join(out) + "\n"


def _html_table(header: list[str], rows: list[list[str]], cls: str = "") -> str:
    e = html.escape
    out = [f"<table class=\"{cls}\"><tr>" + "".join(f"<th>{e(h)}</th>" for h in header)
           + "</tr>"]
    out += ["<tr>" + "".join(f"<td>{e(c)}</td>" for c in r) + "</tr>" for r in rows]
    out.append("</table>")
    return "\n".join(out)


def _img(name: str, png: bytes) -> str:
    data = base64.b64encode(png).decode("ascii")
    return f'<img alt="{html.escape(name)}" src="data:image/png;base64,{data}">'


TITLES = {"tradeoffs": "Quality and costs side by side", "metrics": "Every metric",
          "curves": "Learning curves", "reliability": "Reliability diagrams"}


def _html(summary: Summary, images: dict[str, bytes]) -> str:
    e = html.escape
    headline, lines = _recommendation_lines(summary)
    header, rows = table_rows(summary, summary.metrics, " ★")
    cost_header, costs = cost_rows(summary)
    problems = _problems(summary)
    body = [f"<h1>softmaxlab compare: {e(summary.config['dataset'])}</h1>",
            f"<p class=\"meta\">{e(_heading(summary))}</p>",
            f"<section class=\"rec\"><h2>Recommendation (goal: {e(summary.goal)})</h2>",
            f"<p class=\"headline\">{e(headline)}</p>",
            "<ul>" + "".join(f"<li>{e(n)}</li>" for n in lines) + "</ul></section>"]
    if "goal" in images:
        body.append(_img("goal", images["goal"]))
    if costs:
        body += ["<h3>What each alternative costs</h3>",
                 "<p>Costs are ratios of medians to softmax's (1.20x: 20% more); ◀ marks the "
                 "recommendation.</p>", _html_table(cost_header, costs, "costs")]
    body += ["<h2>Every metric</h2>", _html_table(header, rows),
             "<ul>" + "".join(f"<li>{e(n)}</li>" for n in _notes(summary)) + "</ul>",
             *(f"<p>{e(t)}</p>" for t in timing_lines(summary))]
    if problems:
        body += ["<h2>Skipped and failed</h2>",
                 "<ul>" + "".join(f"<li>{e(p)}</li>" for p in problems) + "</ul>"]
    for name, png in images.items():
        if name != "goal":
            body += [f"<h2>{e(TITLES.get(name, name))}</h2>", _img(name, png)]
    style = ("body{font-family:sans-serif;margin:2em;max-width:1200px}"
             "table{border-collapse:collapse;font-size:13px;margin:0.5em 0}"
             "td,th{border:1px solid #ccc;padding:3px 6px;text-align:right}"
             "td:first-child,th:first-child{text-align:left}img{max-width:100%}"
             ".rec{background:#f3f7fb;border-left:4px solid #2c7fb8;padding:0.4em 1em;"
             "margin:1em 0}.headline{font-size:1.2em;font-weight:bold}.meta{color:#555}")
    return (f"<!DOCTYPE html>\n<html><head><meta charset=\"utf-8\"><title>softmaxlab compare"
            f"</title><style>{style}</style></head><body>\n" + "\n".join(body)
            + "\n</body></html>\n")


def render(directory: str | Path, goal: str | None = None) -> Summary:
    """Write summary.csv, plots/*.png, report.md and report.html from results.jsonl (never
    over files softmaxlab did not write: :mod:`.outputs`)."""
    directory = Path(directory)
    outputs.check_overwrite(directory, OUTPUT_NAMES)
    summary = summarize(directory, goal)
    images = plots(summary)
    files = {f"plots/{name}.png": png for name, png in images.items()}
    files["summary.csv"] = _csv(summary).encode()
    files["report.md"] = _markdown(summary, images).encode()
    files["report.html"] = _html(summary, images).encode()
    outputs.write_outputs(directory, files)
    return summary


# --------------------------------------------------------------------------- terminal


def _clip(text: str, width: int) -> str:
    return text if len(text) <= width else text[:width - 1] + "…"


def terminal_lines(summary: Summary, total_wall: float | None = None,
                   directory: str | Path | None = None) -> list[str]:
    """The summary printed after a compare: the recommendation, then one line per mapping
    (goal metric, its difference with softmax, the verdict, train time ratio); every line at
    most :data:`WIDTH` characters."""
    from .._text import table

    rec = summary.recommendation
    wrap = textwrap.TextWrapper(width=WIDTH, subsequent_indent="  ")
    out = [_clip(f"softmaxlab compare: {summary.config['dataset']} ({summary.config['task']},"
                 f" model {summary.config['model']}, {summary.config['epochs']} epochs)", WIDTH),
           "", f"Recommendation (goal: {summary.goal})"]
    bullet = textwrap.TextWrapper(width=WIDTH, initial_indent="  - ", subsequent_indent="    ")
    out += wrap.wrap("  " + rec.headline)
    for line in rec.evidence:
        out += bullet.wrap(line)
    step = next_step(summary)
    if step:
        out += bullet.wrap("Next step, for a firmer answer (the finished runs are kept):")
        out += _command_lines(step, indent="      ")
    out.append("")
    metric = rec.metric if rec.reference else summary.primary
    label, _, scale = METRICS[metric]
    ref = summary.row(rec.reference) if rec.reference else None
    rows = []
    for row in _goal_rows(summary, [r for r in summary.rows if r.seeds_ok]):
        c = rec.comparisons.get(row.mapping)
        if row.mapping == rec.reference:
            diff, verdict = "", "reference"
        elif c is not None:
            diff = f"{c.diff * scale:+.3g}"
            verdict = c.verdict + (f" {c.p_holm:.2g}" if c.p_holm is not None else "")
        else:
            diff, verdict = "", _clip(rec.excluded.get(row.mapping, "n/a"), 20)
        center = row.center(metric) * scale
        spread = (f"±{row.mean_std(metric)[1] * scale:.1g}" if metric not in COSTS else "")
        rows.append([_clip(row.mapping + (" <" if row.mapping == rec.choice else ""), 22),
                     f"{fmt(center)}{spread}", diff, verdict,
                     _ratio(row, ref, "train_time_per_epoch")])
    for row in summary.rows:
        if not row.seeds_ok:
            rows.append([_clip(row.mapping, 22), NA, "", row.status, ""])
    out += table(["mapping", label, f"vs {rec.reference or REFERENCE}", "verdict (Holm p)",
                  "time"], rows).splitlines()
    out += wrap.wrap("(< recommended; time: train s/epoch as a ratio to softmax's median; "
                     "report.md has every metric and cost)")
    last = _last_session(summary)
    if last:
        line = f"{last['runs']} runs on {last['jobs']} job(s) in {last['wall_time']:.0f} s"
        if total_wall is not None:
            line += f" ({total_wall:.0f} s with the report)"
        out.append(line + ".")
    if directory is not None:
        out.append(f"Report: {Path(directory) / 'report.html'}")
    return [_clip(line, WIDTH) if not line.startswith(("Report: ", "      ")) else line
            for line in out]


def _command_lines(words: list[str], indent: str) -> list[str]:
    """``words`` as a shell command over lines of at most :data:`WIDTH` characters, each
    continued with a backslash (a word longer than a line stays whole)."""
    lines, line = [], indent
    for w in words:
        if line.strip() and len(line) + len(w) + 3 > WIDTH:
            lines.append(line + " \\")
            line = indent + "  "
        line += ("" if not line.strip() else " ") + w
    return [*lines, line]


def print_summary(directory: str | Path, total_wall: float | None = None,
                  goal: str | None = None) -> Summary:
    """Print :func:`terminal_lines` (the report's recommendation and a compact table)."""
    summary = summarize(directory, goal)
    print("\n".join(terminal_lines(summary, total_wall, directory)))
    return summary


def cmd_report(args: argparse.Namespace) -> int:
    if not Path(args.dir).is_dir():
        raise ValueError(f"{args.dir} is not a folder (give a compare run directory)")
    render(args.dir, args.goal)
    print_summary(args.dir, goal=args.goal)
    return 0


def register(subparsers) -> None:
    p = subparsers.add_parser("report", help="re-render a compare run's report from its "
                                             "results.jsonl",
                              description="Write summary.csv, report.md, report.html and "
                                          "plots/ in DIR from DIR/results.jsonl.")
    p.add_argument("dir", help="a compare run directory")
    p.add_argument("--goal", choices=GOALS, default=None,
                   help="what the recommendation optimises (default: the one compare was "
                        "given, else accuracy)")
    p.set_defaults(func=cmd_report)
