"""The ``softmaxlab`` command: ``list``, ``demo``, ``env``, the lab's commands and ``bench``.

``list``, ``demo`` and ``env`` are plain text and need only the core library. Further
subcommands live in their own modules, listed in :data:`COMMANDS`: each module defines
``register(subparsers)``, which adds its parser and sets ``func``; it imports its heavy
dependencies (the ``lab`` extra) only when run.
"""

from __future__ import annotations

import argparse
import importlib
import math
import sys
from collections.abc import Sequence

import torch

from . import __version__
from ._registry import mappings
from ._text import table

#: Modules that add a subcommand with ``register(subparsers)``.
COMMANDS: tuple[str, ...] = ("softmaxlab.lab.datasets.command", "softmaxlab.lab.compare",
                             "softmaxlab.lab.sweep", "softmaxlab.lab.report",
                             "softmaxlab.lab.reproduce",
                             "softmaxlab.bench.command")


def _fmt(t: torch.Tensor, digits: int = 4) -> str:
    """Fixed-point, except tiny non-zero values, which get an exponent."""
    def one(v: float) -> str:
        return f"{v:.1e}" if 0 < abs(v) < 0.5 * 10**-digits else f"{v:.{digits}f}"

    return "[" + ", ".join(one(v) for v in t.tolist()) + "]"


def cmd_list(args: argparse.Namespace) -> int:
    flags = ("normalized", "sparse", "shift_invariant", "scale_invariant", "training_only")
    rows = []
    for m in mappings():
        params = ", ".join(f"{p.name}={p.default!r}" for p in m.params) or "-"
        rows.append(
            [m.name, m.log_fn.__name__ if m.log_fn else "-", m.loss or "-", params]
            + ["yes" if getattr(m, f) else "" for f in flags]
        )
    headers = ["mapping", "log form", "natural loss", "parameters", "normalized", "sparse",
               "shift-inv", "scale-inv", "train-only"]
    print(table(headers, rows))
    if args.formulas:
        print()
        rows = [[m.name, m.formula, "; ".join(f"{p.name}: {p.description}" for p in m.params)]
                for m in mappings()]
        print(table(["mapping", "formula", "parameter ranges"], rows))
    return 0


def _entropy(p: torch.Tensor) -> float:
    return float(-(p * p.clamp(min=1e-30).log()).sum())


def _vector(text: str) -> torch.Tensor:
    try:
        return torch.tensor([float(v) for v in text.split(",")])
    except ValueError:
        raise ValueError(f"--vector must be comma-separated numbers, got {text!r}") from None


def cmd_demo(args: argparse.Namespace) -> int:
    from . import functional as F

    vec = _vector(args.vector)

    print("softmaxlab demo: the source articles' examples, computed live\n")

    print("1. Softmax vs standard normalization (z / sum z)")
    rows = []
    for z in ([1.0, 2.0], [10.0, 20.0]):
        x = torch.tensor(z)
        rows.append([_fmt(x, 0), _fmt(F.softmax(x)), _fmt(F.normalize(x))])
    print(table(["logits", "softmax", "normalize"], rows))
    print("   Normalization only sees ratios (scale-invariant); softmax sees differences:")
    print("   weak evidence gives a blurry distribution, strong evidence a crisp one.\n")

    print("2. Temperature: from blurry (T large) to crisp (T small), logits [1, 2, 3]")
    x = torch.tensor([1.0, 2.0, 3.0])
    rows = [[t, _fmt(F.softmax(x, temperature=t)), f"{_entropy(F.softmax(x, temperature=t)):.3f}"]
            for t in (100.0, 10.0, 2.0, 1.0, 0.5, 0.1, 0.01)]
    print(table(["T", "softmax(z / T)", "entropy (nats)"], rows))
    print(f"   Uniform entropy is log 3 = {math.log(3):.3f}; T -> 0 approaches argmax.\n")

    print("3. Softmax vs sigmoid for two classes")
    rows = []
    for z in (-2.0, 0.0, 1.5, 4.0):
        two = torch.tensor([z, 0.0])
        sm, sg = F.softmax(two), F.ova_sigmoid(two)
        rows.append([_fmt(two, 1), _fmt(sm), f"{torch.sigmoid(torch.tensor(z)).item():.4f}",
                     _fmt(sg), f"{float(sg.sum()):.4f}"])
    print(table(["logits [z, 0]", "softmax", "sigmoid(z)", "ova_sigmoid", "ova sum"], rows))
    print("   softmax([z, 0])[0] equals sigmoid(z); one-vs-all sigmoids do not sum to one.\n")

    print(f"4. Every mapping in the registry on z = {_fmt(vec, 2)}")
    rows = []
    for m in mappings():
        if m.name == "normalize":
            out, note = m.fn(vec - vec.min()), "on z - min z"
        else:
            out, note = m.fn(vec), ", ".join(f"{p.name}={p.default}" for p in m.params)
        rows.append([m.name, _fmt(out), f"{float(out.sum()):.3f}", int((out == 0).sum()), note])
    print(table(["mapping", "output", "sum", "zeros", "parameters"], rows))
    print("\nPublished test vector z = [-2, 0, 0.5]:")
    t = torch.tensor([-2.0, 0.0, 0.5])
    print(table(["mapping", "output", "published"], [
        ["softmax", _fmt(F.softmax(t)), "[0.0486, 0.3592, 0.5922]"],
        ["sparsemax", _fmt(F.sparsemax(t)), "[0.0000, 0.2500, 0.7500]"],
        ["entmax15", _fmt(F.entmax15(t)), "[0.0000, 0.3260, 0.6740]"],
    ]))
    return 0


def cmd_env(args: argparse.Namespace) -> int:
    from .bench import environment

    print(table(["component", "version"], environment.rows()))
    return 0


class Parser(argparse.ArgumentParser):
    """An ``ArgumentParser`` whose usage errors are one line (``softmaxlab: error: message``,
    as every other user error, exit status 2) pointing at ``--help``, rather than the usage
    block; its subcommand parsers are of this class too."""

    def error(self, message: str):  # type: ignore[override]
        raise UsageError(f"{message} (see {self.prog} --help)")


class UsageError(Exception):
    """A command line argparse refused; :func:`main` prints it in one line (exit status 2)."""


def build_parser() -> argparse.ArgumentParser:
    parser = Parser(
        prog="softmaxlab", description="The softmax function and its alternatives: library and lab."
    )
    parser.add_argument("--version", action="version", version=f"softmaxlab {__version__}")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    p = sub.add_parser("list", help="the registry of mappings with their properties")
    p.add_argument("--formulas", action="store_true", help="also print each formula")
    p.set_defaults(func=cmd_list)
    p = sub.add_parser("demo", help="the source articles' examples, computed live")
    p.add_argument("--vector", default="-1,0,0.5,1,1.5",
                   help="comma-separated logits for the side-by-side table (default %(default)s)")
    p.set_defaults(func=cmd_demo)
    p = sub.add_parser("env", help="versions and devices, for bug reports and benchmarks")
    p.set_defaults(func=cmd_env)
    for name in COMMANDS:
        importlib.import_module(name).register(sub)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Run one subcommand. A user error (a bad value, a missing or unwritable file) is one
    line on stderr and exit status 2, never a traceback; Ctrl-C is one line and 130."""
    try:
        args = build_parser().parse_args(argv)
    except UsageError as e:
        print(f"softmaxlab: error: {e}", file=sys.stderr)
        return 2
    try:
        return args.func(args)
    except ValueError as e:
        print(f"softmaxlab: error: {e}", file=sys.stderr)
        return 2
    except OSError as e:
        what = f"{e.filename}: " if e.filename else ""
        print(f"softmaxlab: error: {what}{e.strerror or e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("\nsoftmaxlab: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    raise SystemExit(main())
