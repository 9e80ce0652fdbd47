"""Show benchmark results: progress lines, a terminal table (Rich when installed, else plain
text), a Markdown table and a Matplotlib chart of the candidate's time ratios (for the
README). Rows are the result document's (JSON) rows."""

from __future__ import annotations

import io
import math
import sys
from collections.abc import Sequence

from .._text import table
from .records import OK
from .results import write_atomic

COLUMNS = ("op", "shape", "dtype", "mode", "impl", "median", "p20-p80", "first", "peak mem",
           "throughput", "time ratio", "mem ratio", "targets")


def format_time(s: float | None) -> str:
    """Seconds with a readable unit.

    Example:
        >>> format_time(0.0123), format_time(2.5e-6), format_time(3.2)
        ('12.3 ms', '2.5 us', '3.2 s')
    """
    if s is None:
        return "-"
    for unit, scale in (("s", 1.0), ("ms", 1e-3), ("us", 1e-6)):
        if s >= scale:
            v = s / scale
            return f"{v:.3g} {unit}" if v < 100 else f"{v:.0f} {unit}"
    return f"{s / 1e-9:.0f} ns"


def progress_line(r: dict) -> str:
    """One row on one line (the run's progress on stderr)."""
    shape = "x".join(str(s) for s in r["shape"])
    head = f"  {r['op']:<22} {shape:<14} {r['mode']:<8} {r['impl']:<12} "
    if r["status"] != OK:
        return f"{head}{r['status']}: {r['note']}"
    return f"{head}{format_time(r['median_s']):>9}  {_ratios(r['ratios'], ' ', '')}"


def _mib(b: int | None) -> str:
    if b is None:
        return "-"
    return f"{b / 2**20:.1f} MiB" if b < 2**30 else f"{b / 2**30:.2f} GiB"


def _throughput(r: dict) -> str:
    if r.get("gbps") is not None:
        frac = f" ({r['copy_frac']:.0%})" if r.get("copy_frac") is not None else ""
        return f"{r['gbps']:.1f} GB/s{frac}"
    if r.get("gflops") is not None:
        return f"{r['gflops']:.0f} GFLOP/s"
    return "-"


def _ratios(ratios: dict, sep: str, empty: str = "-") -> str:
    return sep.join(f"{k} {v:.2f}x" for k, v in ratios.items()) or empty


def _targets(r: dict, sep: str) -> str:
    out = []
    for t in r.get("targets", []):
        what = (f"bw>={t['value']:.0%}" if t["metric"] == "bandwidth"
                else f"{t['metric']} vs {t['baseline']}<={t['value']:g}")
        mark = "?" if t["met"] is None else ("ok" if t["met"] else "MISS")
        out.append(f"{what} {mark}")
    return sep.join(out) or "-"


def row_cells(r: dict, sep: str = ", ") -> list[str]:
    """The cells of one row under :data:`COLUMNS`; ``sep`` joins the entries of one cell."""
    shape = "x".join(str(s) for s in r["shape"])
    if r["status"] != OK:
        return [r["op"], shape, r["dtype"], r["mode"], r["impl"], r["status"],
                r.get("note") or "", "-", "-", "-", "-", "-", "-"]
    spread = f"{format_time(r['p20_s'])} - {format_time(r['p80_s'])}"
    cand = r["role"] == "candidate"
    return [r["op"], shape, r["dtype"], r["mode"], r["impl"], format_time(r["median_s"]), spread,
            format_time(r["first_s"]), _mib(r.get("peak_mem_bytes")), _throughput(r),
            _ratios(r.get("ratios", {}), sep) if cand else "",
            _ratios(r.get("mem_ratios", {}), sep) if cand else "",
            _targets(r, sep) if cand else ""]


def header(doc: dict) -> str:
    m, v, g = doc["machine"], doc["versions"], doc.get("git") or {}
    bw = ", ".join(f"{d} {c['gbps']:.1f} GB/s" for d, c in doc.get("copy_bandwidth", {}).items())
    commit = (g.get("commit") or "no git")[:12] + (" (dirty)" if g.get("dirty") else "")
    gpu = f", GPU {m['gpu']}" if m.get("gpu") else ""
    return (f"softmaxlab {v.get('softmaxlab')} @ {commit}, torch {v.get('torch')}, "
            f"{m.get('cpu')} ({m.get('cores_usable')} cores, {m.get('torch_threads')} threads, "
            f"{m.get('allocator')} malloc){gpu}; copy bandwidth {bw or '-'}; "
            f"backend {doc.get('backend')}; {doc.get('timestamp')}"
            + (" [quick]" if doc.get("quick") else ""))


def print_table(doc: dict) -> None:
    """The rows of ``doc`` as a terminal table (Rich if installed, else plain text)."""
    try:
        from rich.console import Console
        from rich.table import Table
    except ImportError:
        print(header(doc))
        print(table(COLUMNS, [row_cells(r) for r in doc["rows"]]))
        return
    t = Table(title=header(doc), show_lines=False, title_justify="left")
    for c in COLUMNS:
        t.add_column(c, overflow="fold", no_wrap=c not in ("targets", "p20-p80"))
    prev = None
    for r in doc["rows"]:
        c = row_cells(r, sep="\n")
        key = (r["case"], r["mode"])
        if prev is not None and key != prev:
            t.add_section()
        prev = key
        style = "bold" if r["role"] == "candidate" else ("dim" if r["status"] != OK else None)
        t.add_row(*c, style=style)
    console = Console() if sys.stdout.isatty() else Console(width=250)
    console.print(t)


def _md_escape(s: str) -> str:
    return s.replace("|", "\\|")


def markdown(docs: Sequence[dict]) -> str:
    """One Markdown section per result document: machine, versions, commit, and a table
    of every row (candidate rows in bold)."""
    out = []
    for doc in docs:
        suites = ", ".join(doc.get("suites", []))
        out.append(f"### softmaxlab bench: {suites}\n")
        out.append(_md_escape(header(doc)) + "\n")
        out.append("| " + " | ".join(COLUMNS) + " |")
        out.append("|" + "---|" * len(COLUMNS))
        for r in doc["rows"]:
            cells = [_md_escape(c) for c in row_cells(r)]
            if r["role"] == "candidate" and r["status"] == OK:
                cells[4] = f"**{cells[4]}**"
            out.append("| " + " | ".join(cells) + " |")
        out.append("")
        out.append("Ratios: median time of softmaxlab / median time of the baseline, same run "
                   "(< 1: softmaxlab is faster). Throughput: documented I/O bytes / median "
                   "(% of the measured copy bandwidth), or GFLOP/s for matrix products.\n")
    return "\n".join(out)


def _plot_groups(docs: Sequence[dict]) -> dict[str, list]:
    """Per suite: (label, time ratios, time targets) of every candidate row with ratios."""
    suites: dict[str, list] = {}
    for doc in docs:
        for r in doc["rows"]:
            if r["role"] == "candidate" and r["status"] == OK and r.get("ratios"):
                shape = "x".join(str(s) for s in r["shape"])
                label = f"{r['op']} {shape} {r['dtype']} {r['mode']}"
                targets = [t for t in r.get("targets", []) if t["metric"] == "time"]
                suites.setdefault(r["suite"], []).append((label, r["ratios"], targets))
    return suites


def plot(docs: Sequence[dict], path) -> None:
    """Bar charts (one panel per suite) of the candidate's time ratio to each baseline per
    case and mode, log scale (1 = parity, below: softmaxlab is faster), with the time
    targets drawn as short black lines over their bars; PNG, written atomically."""
    import matplotlib

    matplotlib.use("Agg", force=True)
    import matplotlib.pyplot as plt

    suites = _plot_groups(docs) or {"no results": []}
    baselines = sorted({b for groups in suites.values() for _, rs, _ in groups for b in rs})
    color = {b: plt.get_cmap("tab10")(i % 10) for i, b in enumerate(baselines)}
    most = max(len(g) for g in suites.values())
    width_in = min(30.0, max(8.0, 0.3 * most * max(1, len(baselines)) ** 0.5 + 2))
    fig, axes = plt.subplots(len(suites), 1, figsize=(width_in, 3.6 * len(suites)),
                             squeeze=False)
    values = [v for groups in suites.values() for _, rs, _ in groups for v in rs.values()]
    lo, hi = min([*values, 1.0]), max([*values, 1.0])
    ylim = (10 ** math.floor(math.log10(lo) - 0.05), 10 ** math.ceil(math.log10(hi) + 0.05))
    for ax, (suite, groups) in zip(axes[:, 0], suites.items(), strict=True):
        names = sorted({b for _, rs, _ in groups for b in rs})
        w = 0.8 / max(1, len(names))
        for j, b in enumerate(names):
            off = (j - (len(names) - 1) / 2) * w
            idx = [i for i, (_, rs, _) in enumerate(groups) if b in rs]
            ax.bar([i + off for i in idx], [groups[i][1][b] for i in idx], width=w,
                   color=color[b], label=f"vs {b}")
            for i in idx:
                for t in groups[i][2]:
                    if t["baseline"] == b:
                        ax.hlines(t["value"], i + off - w / 2, i + off + w / 2, colors="black",
                                  linewidth=2.5)
        ax.axhline(1.0, color="grey", linestyle="--", linewidth=1)
        ax.set_yscale("log")
        ax.set_ylim(*ylim)
        ax.set_xlim(-0.6, max(len(groups), 1) - 0.4)
        ax.set_xticks(range(len(groups)))
        ax.set_xticklabels([g[0] for g in groups], rotation=35, ha="right", fontsize=7)
        ax.set_ylabel("time ratio (log)")
        ax.set_title(f"{suite}: softmaxlab time / baseline time (< 1: faster; "
                     "black: target)", fontsize=9)
        if names:
            ax.legend(fontsize=7, ncol=min(5, len(names)), loc="upper left")
        else:
            ax.text(0.5, 0.5, "no candidate ratios in these results", ha="center",
                    transform=ax.transAxes)
    fig.tight_layout()
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=100)
    plt.close(fig)
    write_atomic(path, buf.getvalue())
