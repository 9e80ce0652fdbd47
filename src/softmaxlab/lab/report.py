"""The comparison report, rendered from ``results.jsonl`` alone (``softmaxlab report DIR``).

Writes ``summary.csv`` (mean and std over seeds per mapping and metric), ``plots/*.png``,
``report.md`` and a self-contained ``report.html`` (the plots embedded as base64 PNG), and
prints the summary table. Every number shown goes through :func:`cell`, so the terminal,
Markdown and HTML tables agree with ``summary.csv``.

Whether a mapping differs from softmax beyond seed noise: Welch's t-test (unequal
variances) on the task's primary metric over seeds, two-sided, p < 0.05.
"""

from __future__ import annotations

import argparse
import base64
import csv
import html
import io
import math
import statistics
from dataclasses import dataclass, field
from pathlib import Path

from . import outputs, results
from .heads import order_key
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
    "support": ("support", None, 1),
    "train_time_per_epoch": ("train s/epoch", False, 1),
    "inference_time_per_example": ("infer µs/example", False, 1e6),
    "peak_memory_mb": ("peak MB", False, 1),
}
#: Left out of the terminal table to keep it narrow (they are in summary.csv and the reports).
TERMINAL_SKIP = {"temperature", "ndcg@10", "inference_time_per_example", "peak_memory_mb"}
ALPHA = 0.05
#: The plots, in the order they appear.
PLOT_NAMES = ("metrics", "curves", "reliability", "cost")
#: Every file :func:`render` writes, relative to the run directory.
OUTPUT_NAMES = ("summary.csv", "report.md", "report.html",
                *(f"plots/{name}.png" for name in PLOT_NAMES))
REFERENCE = "softmax"
NA = "n/a"


@dataclass
class Row:
    """One mapping: its runs' statistics over seeds."""

    mapping: str
    status: str  # ok | failed | partial (some seeds failed) | skipped
    seeds_ok: list[int] = field(default_factory=list)
    failures: list[str] = field(default_factory=list)  # "seed N: reason" or the skip reason
    values: dict[str, list[float]] = field(default_factory=dict)
    vs_reference: str = NA
    p_value: float | None = None

    def mean_std(self, metric: str) -> tuple[float, float] | None:
        """Mean and sample standard deviation over seeds (exact: equal values give 0)."""
        v = self.values.get(metric) or []
        if not v:
            return None
        return statistics.mean(v), statistics.stdev(v) if len(v) > 1 else 0.0


@dataclass
class Summary:
    config: dict
    metrics: list[str]
    rows: list[Row]
    runs: list[dict]
    sessions: list[dict]
    best: dict[str, str] = field(default_factory=dict)  # metric -> mapping

    @property
    def primary(self) -> str:
        return self.metrics[0]


def fmt(v: float) -> str:
    return f"{v:.4g}"


def cell(row: Row, metric: str) -> str:
    """``mean ± std`` over seeds in display units, or ``n/a``."""
    ms = row.mean_std(metric)
    if ms is None:
        return NA
    scale = METRICS[metric][2]
    return f"{fmt(ms[0] * scale)} ± {ms[1] * scale:.2g}"


def welch_p(a: list[float], b: list[float]) -> float:
    """Two-sided p-value of Welch's t-test (unequal variances); samples of 2 or more.
    Without spread in either sample it is 1 for equal means and 0 otherwise."""
    from scipy.stats import t as student_t

    ma, mb = statistics.mean(a), statistics.mean(b)
    sa, sb = statistics.variance(a) / len(a), statistics.variance(b) / len(b)
    if sa + sb == 0:
        return 1.0 if ma == mb else 0.0
    t = (ma - mb) / math.sqrt(sa + sb)
    df = (sa + sb) ** 2 / (sa**2 / (len(a) - 1) + sb**2 / (len(b) - 1))
    return float(2 * student_t.sf(abs(t), df))


def summarize(directory: str | Path) -> Summary:
    """Group the records of ``directory/results.jsonl`` by mapping (in registry order)."""
    records = results.read(directory)
    runs = [r for r in records if r["kind"] in ("run", "skipped")]
    if not runs:
        raise ValueError(f"{Path(directory) / results.RESULTS}: no finished runs to report")
    config = runs[-1]["config"]
    metrics = list(TASK_METRICS[config["task"]])
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
                    row.values.setdefault(m, []).append(r["metrics"][m])
    for row in rows.values():
        if row.status != "skipped" and row.failures:
            row.status = "partial" if row.seeds_ok else "failed"
    summary = Summary(config, metrics, sorted(rows.values(), key=lambda r: order_key(r.mapping)),
                      [r for r in runs if r["kind"] == "run"],
                      [r for r in records if r["kind"] == "session"])
    _compare_to_reference(summary)
    for m in metrics:
        higher = METRICS[m][1]
        scored = [(row.mean_std(m)[0], row.mapping) for row in summary.rows if row.mean_std(m)]
        if higher is not None and scored:
            summary.best[m] = (max if higher else min)(scored)[1]
    return summary


def _compare_to_reference(summary: Summary) -> None:
    primary = summary.primary
    ref = next((r for r in summary.rows if r.mapping == REFERENCE), None)
    ref_values = ref.values.get(primary, []) if ref else []
    higher = METRICS[primary][1]
    for row in summary.rows:
        values = row.values.get(primary, [])
        if row is ref:
            row.vs_reference = "reference"
        elif not values or len(values) < 2 or len(ref_values) < 2:
            continue  # n/a: needs 2+ seeds of both
        else:
            row.p_value = welch_p(values, ref_values)
            if row.p_value >= ALPHA:
                row.vs_reference = "within noise"
            else:
                ahead = statistics.mean(values) > statistics.mean(ref_values)
                row.vs_reference = "better" if ahead == higher else "worse"


# --------------------------------------------------------------------------- tables


def table_rows(summary: Summary, metrics: list[str], mark: str) -> tuple[list[str], list[list]]:
    """Header and rows of the summary table; the best mean of each metric gets ``mark``."""
    header = ["mapping", "runs"] + [METRICS[m][0] for m in metrics] + [f"vs {REFERENCE} (p)"]
    out = []
    for row in summary.rows:
        cells = [cell(row, m) + (mark if summary.best.get(m) == row.mapping else "")
                 for m in metrics]
        p = f" ({row.p_value:.3g})" if row.p_value is not None else ""
        out.append([row.mapping, runs_cell(row), *cells, row.vs_reference + p])
    return header, out


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
        f"mean ± std over seeds; * marks the best mean of a metric. vs {REFERENCE}: Welch's "
        f"t-test on {METRICS[summary.primary][0]} over seeds, two-sided, p < {ALPHA} "
        "(\"within noise\" otherwise; n/a with fewer than 2 seeds).",
        "n/a for NLL, perplexity, ECE after TS and T: the mapping has no log form (sparse "
        "maps, one-vs-all sigmoids), so the likelihood and temperature scaling are undefined.",
        "support: mean number of non-zero probabilities. Costs: train s/epoch is the median "
        "over epochs of the time in training steps, after an untimed warm-up step per run; "
        "peak MB is the memory of one training step (parameters plus the peak of the tensors "
        "it allocates: activations, gradients, Adam state), the same in any run order.",
    ]


def _problems(summary: Summary) -> list[str]:
    return [f"{row.mapping} ({row.status}): {f}" for row in summary.rows for f in row.failures]


# --------------------------------------------------------------------------- plots


def plots(summary: Summary) -> dict[str, bytes]:
    """PNG images: metric bars, learning curves, reliability diagrams, accuracy vs cost."""
    import matplotlib

    matplotlib.use("Agg")
    from matplotlib import pyplot as plt

    rows = [r for r in summary.rows if r.seeds_ok]
    if not rows:
        return {}
    colors = {r.mapping: plt.cm.tab20(i % 20) for i, r in enumerate(rows)}
    out = {}
    drawers = {"metrics": _metric_bars, "curves": _curves, "reliability": _reliability_grid,
               "cost": _cost}
    for name in PLOT_NAMES:
        draw = drawers[name]
        fig = draw(plt, summary, rows, colors)
        buf = io.BytesIO()
        fig.savefig(buf, format="png", dpi=72)
        plt.close(fig)
        out[name] = buf.getvalue()
    return out


def _metric_bars(plt, summary, rows, colors):
    """One panel per metric: mean over seeds with std error bars, mappings on the y axis."""
    shown = [m for m in summary.metrics if any(r.mean_std(m) for r in rows)]
    cols = 5
    n_rows = math.ceil(len(shown) / cols)
    fig, axes = plt.subplots(n_rows, cols, figsize=(16, (0.2 * len(rows) + 1.2) * n_rows),
                             sharey=True, squeeze=False)
    y = range(len(rows))
    for ax, m in zip(axes.flat, shown, strict=False):  # spare panels stay empty
        label, _, scale = METRICS[m]
        stats = [r.mean_std(m) or (math.nan, 0.0) for r in rows]
        ax.barh(y, [s[0] * scale for s in stats], xerr=[s[1] * scale for s in stats],
                color=[colors[r.mapping] for r in rows], capsize=2)
        ax.set_title(label, fontsize=9)
        ax.tick_params(labelsize=7)
    axes[0, 0].set_yticks(y, [r.mapping for r in rows])
    axes[0, 0].invert_yaxis()
    for ax in axes.flat[len(shown):]:
        ax.axis("off")
    fig.suptitle("mean ± std over seeds", fontsize=9)
    fig.subplots_adjust(left=0.1, right=0.99, top=0.9, bottom=0.05, hspace=0.4, wspace=0.15)
    return fig


def _curves(plt, summary, rows, colors):
    """Training loss and the validation primary metric per epoch, mean over seeds."""
    primary = summary.primary
    fig, axes = plt.subplots(1, 2, figsize=(12, 4))
    for row in rows:
        runs = [r for r in summary.runs if r["mapping"] == row.mapping and r["status"] == "ok"]
        for ax, key in zip(axes, ("train_loss", f"val_{primary}"), strict=True):
            curves = [r["curve"][key] for r in runs]
            if any(v is None for c in curves for v in c):
                continue  # e.g. perplexity of a mapping without a log form
            mean = [sum(c) / len(c) for c in zip(*curves, strict=True)]
            ax.plot(range(1, len(mean) + 1), mean, label=row.mapping, color=colors[row.mapping])
    axes[0].set(title="training loss (each mapping's own loss)", xlabel="epoch", yscale="log")
    axes[1].set(title=f"validation {METRICS[primary][0]}", xlabel="epoch")
    for ax in axes:
        ax.xaxis.get_major_locator().set_params(integer=True)
    axes[1].legend(fontsize=7, ncol=2)
    fig.subplots_adjust(left=0.06, right=0.98, top=0.92, bottom=0.12, wspace=0.2)
    return fig


def _reliability_grid(plt, summary, rows, colors):
    """Per mapping, pooled over seeds: accuracy per confidence bin before temperature
    scaling (filled steps) and after (dots), against the diagonal."""
    cols = 5
    n_rows = math.ceil(len(rows) / cols)
    fig, axes = plt.subplots(n_rows, cols, figsize=(15, 3 * n_rows), sharex=True, sharey=True,
                             squeeze=False)
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
        ax.set_title(f"{row.mapping}: ECE {cell(row, 'ece')}", fontsize=8)
    for ax in axes.flat[len(rows):]:
        ax.axis("off")
    fig.suptitle("accuracy per confidence bin (x: confidence); filled: as trained, dots: after "
                 "temperature scaling; dashed: perfect calibration", fontsize=9)
    fig.subplots_adjust(left=0.04, right=0.99, top=0.9, bottom=0.05, hspace=0.3, wspace=0.1)
    return fig


def _cost(plt, summary, rows, colors):
    """The primary metric against training and inference time (mean ± std)."""
    primary = summary.primary
    fig, axes = plt.subplots(1, 2, figsize=(12, 4.5), sharey=True)
    for ax, cost in zip(axes, ("train_time_per_epoch", "inference_time_per_example"), strict=True):
        scale = METRICS[cost][2]
        for row in rows:
            y, c = row.mean_std(primary), row.mean_std(cost)
            if y is None or c is None:
                continue
            ax.errorbar(c[0] * scale, y[0], xerr=c[1] * scale, yerr=y[1], fmt="o",
                        color=colors[row.mapping], capsize=2)
            ax.annotate(row.mapping, (c[0] * scale, y[0]), fontsize=7,
                        xytext=(3, 3), textcoords="offset points")
        ax.set(xlabel=METRICS[cost][0], title=f"{METRICS[primary][0]} vs {METRICS[cost][0]}")
    axes[0].set_ylabel(METRICS[primary][0])
    fig.subplots_adjust(left=0.06, right=0.98, top=0.92, bottom=0.12, wspace=0.1)
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
    with io.StringIO(newline="") as f:
        w = csv.writer(f)
        w.writerow(["mapping", "status", "seeds_ok", "runs_failed"]
                   + [f"{m}_{s}" for m in summary.metrics for s in ("mean", "std")]
                   + [f"vs_{REFERENCE}", "p_value", "notes"])
        for row in summary.rows:
            stats = []
            for m in summary.metrics:
                ms = row.mean_std(m)
                stats += [repr(ms[0]), repr(ms[1])] if ms else ["", ""]
            w.writerow([row.mapping, row.status, len(row.seeds_ok),
                        len(row.failures) if row.status != "skipped" else 0, *stats,
                        row.vs_reference, "" if row.p_value is None else repr(row.p_value),
                        "; ".join(row.failures)])
        return f.getvalue()


def _markdown(summary: Summary, images: dict[str, bytes]) -> str:
    header, rows = table_rows(summary, summary.metrics, " *")
    lines = [f"# softmaxlab compare: {summary.config['dataset']}", "", _heading(summary), ""]
    lines += ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(r) + " |" for r in rows]
    lines += [""] + [f"- {n}" for n in _notes(summary)] + [""]
    lines += [*timing_lines(summary), ""]
    if _problems(summary):
        lines += ["## Skipped and failed", ""] + [f"- {p}" for p in _problems(summary)] + [""]
    lines += [f"![{name}](plots/{name}.png)" for name in images]
    return "\n".join(lines) + "\n"


def _html(summary: Summary, images: dict[str, bytes]) -> str:
    e = html.escape
    header, rows = table_rows(summary, summary.metrics, " ★")
    table = ["<table><tr>" + "".join(f"<th>{e(h)}</th>" for h in header) + "</tr>"]
    table += ["<tr>" + "".join(f"<td>{e(c)}</td>" for c in r) + "</tr>" for r in rows]
    table.append("</table>")
    problems = _problems(summary)
    body = [f"<h1>softmaxlab compare: {e(summary.config['dataset'])}</h1>",
            f"<p>{e(_heading(summary))}</p>", *table,
            "<ul>" + "".join(f"<li>{e(n)}</li>" for n in _notes(summary)) + "</ul>",
            *(f"<p>{e(t)}</p>" for t in timing_lines(summary))]
    if problems:
        body += ["<h2>Skipped and failed</h2>",
                 "<ul>" + "".join(f"<li>{e(p)}</li>" for p in problems) + "</ul>"]
    for name, png in images.items():
        data = base64.b64encode(png).decode("ascii")
        body.append(f'<h2>{e(name)}</h2><img alt="{e(name)}" '
                    f'src="data:image/png;base64,{data}">')
    style = ("body{font-family:sans-serif;margin:2em}table{border-collapse:collapse;"
             "font-size:13px}td,th{border:1px solid #ccc;padding:3px 6px;text-align:right}"
             "td:first-child{text-align:left}img{max-width:100%}")
    return (f"<!DOCTYPE html>\n<html><head><meta charset=\"utf-8\"><title>softmaxlab compare"
            f"</title><style>{style}</style></head><body>\n" + "\n".join(body)
            + "\n</body></html>\n")


def render(directory: str | Path) -> Summary:
    """Write summary.csv, plots/*.png, report.md and report.html from results.jsonl (never
    over files softmaxlab did not write: :mod:`.outputs`)."""
    directory = Path(directory)
    outputs.check_overwrite(directory, OUTPUT_NAMES)
    summary = summarize(directory)
    images = plots(summary)
    files = {f"plots/{name}.png": png for name, png in images.items()}
    files["summary.csv"] = _csv(summary).encode()
    files["report.md"] = _markdown(summary, images).encode()
    files["report.html"] = _html(summary, images).encode()
    outputs.write_outputs(directory, files)
    return summary


def print_summary(directory: str | Path, total_wall: float | None = None) -> Summary:
    """The summary table (Rich) and the timing, as in report.md; ``total_wall``: the whole
    compare command that just ran, report included."""
    from rich.console import Console
    from rich.table import Table

    summary = summarize(directory)
    metrics = [m for m in summary.metrics if m not in TERMINAL_SKIP]
    header, rows = table_rows(summary, metrics, " *")
    t = Table(title=_heading(summary), title_justify="left")
    for h in header:
        t.add_column(h, justify="left" if h in ("mapping", "runs") else "right")
    for r in rows:
        t.add_row(*r)
    console = Console()
    if not console.is_terminal:
        console = Console(width=200)
    console.print(t)
    for line in _notes(summary) + timing_lines(summary) + _problems(summary):
        console.print(line, soft_wrap=True, highlight=False, markup=False)
    last = summary.sessions[-1] if summary.sessions else None
    if total_wall is not None and last and last["train_time"] > 0:
        per_job = last["train_time"] / last["jobs"]
        console.print(f"Total: {total_wall:.1f} s wall including the report; lab overhead "
                      f"{total_wall - per_job:.1f} s ({(total_wall - per_job) / per_job:.0%} of "
                      "training per job).", highlight=False)
    console.print(f"Report: {Path(directory) / 'report.html'}", highlight=False)
    return summary


def cmd_report(args: argparse.Namespace) -> int:
    if not Path(args.dir).is_dir():
        raise ValueError(f"{args.dir} is not a folder (give a compare run directory)")
    render(args.dir)
    print_summary(args.dir)
    return 0


def register(subparsers) -> None:
    p = subparsers.add_parser("report", help="re-render a compare run's report from its "
                                             "results.jsonl",
                              description="Write summary.csv, report.md, report.html and "
                                          "plots/ in DIR from DIR/results.jsonl.")
    p.add_argument("dir", help="a compare run directory")
    p.set_defaults(func=cmd_report)
