"""The ``softmaxlab bench`` subcommand: run suites, or render committed results."""

from __future__ import annotations

import argparse
import sys

from .environment import BACKENDS
from .suites import SUITES, resolve_suites
from .timing import MODES


def register(subparsers) -> None:
    """Add the ``bench`` parser (heavy modules are imported only when it runs)."""
    p = subparsers.add_parser(
        "bench", help="benchmark softmaxlab against torch, the naive formula and peer packages",
        description="Time, memory and bandwidth of the public softmaxlab API against "
                    "baselines measured in the same run; writes JSON. With --render, turns "
                    "result files into Markdown and a chart instead.")
    p.add_argument("--suite", default="all",
                   help=f"suite to run: {', '.join(SUITES)}, or all (every suite that "
                        "applies to this machine); comma-separate several (default all)")
    p.add_argument("--quick", action="store_true",
                   help="small shapes and few repetitions: a smoke run in well under a minute")
    p.add_argument("--out", metavar="FILE",
                   help="JSON result file (default: bench-<suite>-<host>-<date>.json in the "
                        "repository's benchmarks/results/ when softmaxlab runs from a source "
                        "checkout, else in ./benchmarks/results/); an existing file is replaced "
                        "only if it is a softmaxlab bench result")
    p.add_argument("--mode", default="all",
                   help=f"{', '.join(MODES)} (backward: the backward pass alone), or all "
                        "(default all)")
    p.add_argument("--repeat", type=int, metavar="N",
                   help="timed repetitions per implementation (default: adaptive, >= 5)")
    p.add_argument("--backend", metavar="NAME",
                   help=f"{', '.join(BACKENDS)}: sets SOFTMAXLAB_BACKEND for the run "
                        "(default: the environment's)")
    p.add_argument("--compile", action="store_true",
                   help="also time torch.compile(fullgraph=True) of the candidate and the torch "
                        "baseline (softmax and overhead suites); one that fails to compile is "
                        "reported as unavailable")
    p.add_argument("--no-memory", dest="memory", action="store_false",
                   help="skip the peak-memory measurement (on CPU: one fresh process per case "
                        "and implementation)")
    p.add_argument("--quiet", action="store_true", help="no progress lines on stderr")
    p.add_argument("--render", nargs="+", metavar="FILE.json",
                   help="render result files instead of running (Markdown to stdout unless "
                        "--markdown or --plot is given)")
    p.add_argument("--markdown", metavar="OUT.md", help="with --render: write a Markdown table")
    p.add_argument("--plot", metavar="OUT.png",
                   help="with --render: write a bar chart of time ratios (needs matplotlib)")
    p.set_defaults(func=cmd_bench)


def _command_line(args: argparse.Namespace) -> list[str]:
    """The run's options as a command line (recorded in the result)."""
    out = ["softmaxlab", "bench", "--suite", args.suite, "--mode", args.mode]
    out += ["--quick"] if args.quick else []
    out += ["--repeat", str(args.repeat)] if args.repeat is not None else []
    out += ["--backend", args.backend] if args.backend else []
    out += ["--compile"] if args.compile else []
    out += [] if args.memory else ["--no-memory"]
    return out


def cmd_bench(args: argparse.Namespace) -> int:
    from . import report, results, runner

    if args.render:
        docs = [results.load(f) for f in args.render]
        text = report.markdown(docs)
        if args.markdown:
            print(f"wrote {results.write_atomic(args.markdown, text)}")
        if args.plot:
            try:
                report.plot(docs, args.plot)
            except ImportError:
                raise ValueError("--plot needs matplotlib (pip install softmaxlab[lab])") from None
            print(f"wrote {args.plot}")
        if not (args.markdown or args.plot):
            print(text)
        return 0
    if args.markdown or args.plot:
        raise ValueError("--markdown and --plot go with --render FILE.json")

    def log(line: str) -> None:
        print(line, file=sys.stderr, flush=True)

    suites, _ = resolve_suites(args.suite)  # unknown names fail here, before anything runs
    name = "all" if args.suite == "all" else suites
    path = results.check_out(args.out if args.out else results.default_out(name))
    doc = runner.run(args.suite, quick=args.quick, modes=args.mode, repeat=args.repeat,
                     backend=args.backend, memory=args.memory, compile=args.compile,
                     argv=_command_line(args), log=None if args.quiet else log)
    path = results.save(doc, path)  # first: never lose a run
    if doc.get("interrupted"):
        print(f"interrupted: saved the {len(doc['rows'])} rows measured so far to {path}",
              file=sys.stderr)
        return 130
    report.print_table(doc)
    print(f"wrote {path}")
    return 0
