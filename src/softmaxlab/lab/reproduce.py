"""``softmaxlab reproduce``: every source paper's claim re-measured beside the paper's number.

Each experiment (:mod:`.experiments`) runs in ``OUT/<name>/`` (its ``results.jsonl`` is
the source of truth: rerunning the same command resumes), then every check gets a verdict
from the per-seed values of its two sides (paired t-test, Holm-corrected within the
experiment): ``confirmed`` (the paper's direction at p < 0.05), ``refuted`` (the opposite at
p < 0.05) or ``inconclusive``. ``OUT/report.md`` and ``OUT/report.html`` (with a plot per
experiment) put the paper's number, ours, the verdict and the setup differences side by
side; ``OUT/verdicts.json`` holds the same for machines.
"""

from __future__ import annotations

import argparse
import html
import json
import math
import os
import statistics
import sys
from dataclasses import asdict, dataclass
from pathlib import Path

from . import evidence, options, outputs, results
from .experiments import SCALES, Experiment, experiments, get
from .report import _html_table, _img, _md_table

__all__ = ["CheckResult", "register", "reproduce", "verdicts"]

ALPHA = 0.05
#: Metrics computed from recorded ones: name -> (recorded metric, function).
DERIVED = {
    "error_pct": ("accuracy", lambda a: 100.0 * (1.0 - a)),
    "ece_pct": ("ece", lambda e: 100.0 * e),
    "ece_ts_pct": ("ece_ts", lambda e: 100.0 * e),
}
REPORT_NAMES = ("report.md", "report.html", "verdicts.json",
                *(f"plots/{e.name}.png" for e in experiments()))


@dataclass
class CheckResult:
    """One check's outcome."""

    experiment: str
    check: str
    paper: str
    ours: str
    n: int
    diff: float | None  # mean over seeds of (better side - worse side)
    ci: tuple[float, float] | None
    p_holm: float | None
    verdict: str  # confirmed | refuted | inconclusive | not run
    reason: str = ""


def _value(record: dict, metric: str) -> float | None:
    metrics = record.get("metrics", {})
    if metric in DERIVED:
        source, f = DERIVED[metric]
        v = metrics.get(source)
        return None if v is None else f(v)
    return metrics.get(metric)


def _by_seed(records: list[dict], mapping: str, metric: str) -> dict[int, float]:
    out = {}
    for r in records:
        if r.get("kind") == "run" and r.get("status") == "ok" and r.get("mapping") == mapping:
            v = _value(r, metric)
            if v is not None and math.isfinite(v):
                out[r["seed"]] = float(v)
    return out


def _mean(values: dict[int, float]) -> str:
    if not values:
        return "-"
    m = statistics.fmean(values.values())
    sd = statistics.stdev(values.values()) if len(values) > 1 else 0.0
    return f"{m:.4g} ± {sd:.2g}"


def verdicts(experiment: Experiment, records: list[dict]) -> list[CheckResult]:
    """The verdict of every check of ``experiment`` from its run records."""
    pairs = []
    for check in experiment.checks:
        (b, bm), (w, wm) = check.sides
        pairs.append((check, _by_seed(records, b, bm), _by_seed(records, w, wm)))
    tests = [evidence.paired(c.better, c.worse, c.metric, a, r) for c, a, r in pairs]
    p_holm = evidence.holm([t.p for t in tests])
    out = []
    for (check, a, r), t, p in zip(pairs, tests, p_holm, strict=True):
        ours = f"{_mean(a)} vs {_mean(r)}"
        if a and r and check.metric.startswith("time"):
            ours += f" ({statistics.fmean(a.values()) / statistics.fmean(r.values()):.2f}x)"
        if t.n < 2 or p is None:
            verdict, reason = "inconclusive", f"{t.n} common seed(s): no test"
        elif check.margin is not None:
            lo, hi = t.ci if t.ci is not None else (t.diff, t.diff)
            if -check.margin <= lo and hi <= check.margin:
                verdict, reason = "confirmed", ""
            elif lo > check.margin or hi < -check.margin:
                verdict, reason = "refuted", "the difference exceeds the margin"
            else:
                verdict, reason = "inconclusive", "the interval straddles the margin"
        elif p >= ALPHA:
            verdict, reason = "inconclusive", "the difference is within noise"
        elif (t.diff > 0) == check.higher:
            verdict, reason = "confirmed", ""
        else:
            verdict, reason = "refuted", "the opposite direction holds"
        out.append(CheckResult(experiment.name, check.describe(), check.paper, ours, t.n,
                               None if math.isnan(t.diff) else t.diff, t.ci, p, verdict, reason))
    return out


def _not_run(experiment: Experiment, reason: str) -> list[CheckResult]:
    return [CheckResult(experiment.name, c.describe(), c.paper, "-", 0, None, None, None,
                        "not run", reason) for c in experiment.checks]


def _run(experiment: Experiment, scale: str, directory: Path, progress: bool,
         jobs: int) -> None:
    setup = experiment.setup(scale)
    if experiment.kind == "custom":
        experiment.run(directory, progress=progress, jobs=jobs, **setup)
        return
    if experiment.kind == "speed":  # timed alone, whatever jobs says
        from .experiments import speed

        speed.run(directory, **setup, progress=progress)
        return
    from .compare import compare

    compare(setup.pop("dataset"), out=directory, progress=progress, jobs=jobs, **setup)


def reproduce(names: str = "all", *, scale: str = "small", out: str | Path | None = None,
              progress: bool = True, jobs: int = 1) -> Path:
    """Run the experiments ``names`` (comma-separated, or ``all``) at ``scale`` into ``out``
    and write the combined report; returns ``out``. A training experiment runs ``jobs`` of
    its runs at once (worker processes of one thread each; the records do not depend on
    ``jobs``); a speed experiment is always timed alone. A dataset that is not installed
    makes its experiment ``not run`` (the report names the install command), never an
    error."""
    from .datasets import DatasetUnavailable

    if scale not in SCALES:
        raise ValueError(f"--scale must be one of {', '.join(SCALES)}, got {scale!r}")
    jobs = options.check_positive_int("--jobs", jobs)
    chosen = (list(experiments()) if names.strip() == "all"
              else [get(n.strip()) for n in names.split(",") if n.strip()])
    if not chosen:
        raise ValueError(f"no experiment named in {names!r}")
    out = outputs.prepare(out if out is not None else Path("runs") / f"reproduce-{scale}")
    outputs.check_overwrite(out, REPORT_NAMES)
    outputs.make(out)
    found = []
    for i, e in enumerate(chosen, 1):
        if progress:
            print(f"[{i}/{len(chosen)}] {e.name}: {e.claim}", file=sys.stderr)
        directory = out / e.name
        try:
            _run(e, scale, directory, progress, jobs)
        except DatasetUnavailable as err:
            found.append((e, _not_run(e, str(err))))
            continue
        found.append((e, verdicts(e, results.read(directory))))
    _write_report(out, scale, found)
    return out


# ------------------------------------------------------------------------------ report
def _plot(experiment: Experiment, records: list[dict]) -> bytes | None:
    """Per-seed values of each check's two sides (dots) and their means (bars)."""
    import io

    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    checks = experiment.checks
    fig, axes = plt.subplots(1, len(checks), figsize=(4.2 * len(checks), 3.2), squeeze=False)
    any_data = False
    for ax, check in zip(axes[0], checks, strict=True):
        labels, values = [], []
        for mapping, metric in check.sides:
            labels.append(mapping if metric == check.metric else f"{mapping}\n({metric})")
            values.append(list(_by_seed(records, mapping, metric).values()))
        for j, v in enumerate(values):
            if v:
                any_data = True
                ax.bar(j, statistics.fmean(v), color="#cfd8e3", width=0.6)
                ax.plot([j] * len(v), v, "o", color="#1f4e79", ms=4)
        ax.set_xticks(range(len(labels)), labels, fontsize=8)
        ax.set_ylabel(check.metric)
        ax.set_title(("higher" if check.higher else "lower") + " is better", fontsize=9)
    fig.suptitle(experiment.name, fontsize=10)
    fig.tight_layout()
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=110)
    plt.close(fig)
    return buf.getvalue() if any_data else None


def _table(found) -> tuple[list[str], list[list[str]]]:
    header = ["experiment", "check", "paper", "ours (mean ± sd over seeds)", "seeds",
              "Holm p", "verdict"]
    rows = []
    for _, rs in found:
        for r in rs:
            p = "-" if r.p_holm is None else f"{r.p_holm:.3g}"
            verdict = r.verdict + (f" ({r.reason})" if r.reason else "")
            rows.append([r.experiment, r.check, r.paper or "-", r.ours, str(r.n), p, verdict])
    return header, rows


def _write_report(out: Path, scale: str, found) -> None:
    header, rows = _table(found)
    images = {}
    for e, rs in found:
        if any(r.verdict != "not run" for r in rs):
            png = _plot(e, results.read(out / e.name))
            if png is not None:
                images[e.name] = png
    counts = {v: sum(r.verdict == v for _, rs in found for r in rs)
              for v in ("confirmed", "refuted", "inconclusive", "not run")}
    summary = ", ".join(f"{n} {v}" for v, n in counts.items() if n)
    md = [f"# softmaxlab reproduce (scale {scale})", "", f"Checks: {summary}.", "",
          *_md_table(header, [[c.replace("|", "/") for c in row] for row in rows]),
          "", "## Experiments", ""]
    page = [f"<h1>softmaxlab reproduce (scale {html.escape(scale)})</h1>",
            f"<p>Checks: {html.escape(summary)}.</p>", _html_table(header, rows, "checks"),
            "<h2>Experiments</h2>"]
    for e, rs in found:
        diff = e.differences(scale)
        md += [f"### {e.name}", "", f"*{e.paper}*: {e.claim}.", "",
               f"Setup differences: {diff}.", ""]
        page += [f"<h3>{html.escape(e.name)}</h3>",
                 f"<p><i>{html.escape(e.paper)}</i>: {html.escape(e.claim)}.</p>",
                 f"<p>Setup differences: {html.escape(diff)}.</p>"]
        if any(r.verdict == "not run" for r in rs):
            md += [f"Not run: {rs[0].reason}", ""]
            page.append(f"<p>Not run: {html.escape(rs[0].reason)}</p>")
        if e.name in images:
            md += [f"![{e.name}](plots/{e.name}.png)", ""]
            page.append(_img(e.name, images[e.name]))
    files = {"report.md": "\n".join(md).encode(),
             "report.html": ("<!doctype html><meta charset=utf-8><title>softmaxlab "
                             "reproduce</title><style>table.checks{border-collapse:collapse}"
                             ".checks td,.checks th{border:1px solid #999;padding:4px}"
                             "</style>" + "\n".join(page)).encode(),
             "verdicts.json": json.dumps({"scale": scale, "checks": [
                 asdict(r) for _, rs in found for r in rs]}, indent=1).encode()}
    files.update({f"plots/{name}.png": png for name, png in images.items()})
    outputs.write_outputs(out, files)


# --------------------------------------------------------------------------------- CLI
def _list() -> int:
    from .._text import table

    rows = [[e.name, e.kind, e.paper, e.claim] for e in experiments()]
    print(table(["experiment", "kind", "paper", "claim"], rows))
    return 0


def cmd_reproduce(args: argparse.Namespace) -> int:
    if args.list:
        return _list()
    try:
        out = reproduce(args.names, scale=args.scale, out=args.out, progress=not args.quiet,
                        jobs=args.jobs)
    except ValueError as e:
        print(f"softmaxlab reproduce: error: {e}", file=sys.stderr)
        return 2
    print((out / "report.md").read_text())
    print(f"report: {out / 'report.html'}", file=sys.stderr)
    return 0


def register(subparsers) -> None:
    p = subparsers.add_parser(
        "reproduce", help="re-measure the source papers' claims beside their numbers",
        description="Run every source paper's experiment (or those named) and report the "
                    "paper's number beside ours with a verdict over seeds; rerunning the "
                    "same command resumes.")
    p.add_argument("names", nargs="?", default="all", metavar="NAME|all",
                   help="comma-separated experiment names (see --list), or all (default)")
    p.add_argument("--scale", default="small", metavar="|".join(SCALES),
                   help="smoke (minutes, what the tests run), small (all within about an "
                        "hour on 2 cores; default) or full (closer to the papers)")
    p.add_argument("--out", default=None, metavar="DIR",
                   help="output folder (default runs/reproduce-SCALE)")
    p.add_argument("--jobs", type=options.arg_type(options.check_positive_int, "--jobs"),
                   default=os.cpu_count() or 1, metavar="N",
                   help="training runs at once, in worker processes of one thread each "
                        "(default: the CPU count); speed experiments are always timed alone")
    p.add_argument("--list", action="store_true", help="list the experiments and exit")
    p.add_argument("--quiet", action="store_true", help="no progress on stderr")
    p.set_defaults(func=cmd_reproduce)
