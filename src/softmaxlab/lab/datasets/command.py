"""``softmaxlab data``: the datasets the lab can use here, and how to install the others."""

from __future__ import annotations

import argparse


def register(subparsers) -> None:
    p = subparsers.add_parser(
        "data", help="the datasets: task, sizes, whether installed, how to install",
        description="List the built-in datasets (loading each installed one to report its "
                    "split sizes), or describe the named datasets / files.")
    p.add_argument("names", nargs="*", metavar="NAME_OR_PATH",
                   help="only these datasets, or a .npz/.csv/.parquet/.txt file of your own")
    p.add_argument("--label", default=None, help="class column of a CSV/Parquet file")
    p.add_argument("--seed", type=int, default=0, help="split seed (default %(default)s)")
    p.add_argument("--no-load", action="store_true",
                   help="don't load the installed datasets; show their documented sizes")
    p.set_defaults(func=run)


def _sizes(ds) -> str:
    unit = "tokens" if ds.task == "language_model" else "rows"
    return f"{len(ds.train)}/{len(ds.val)}/{len(ds.test)} {unit}"


def run(args: argparse.Namespace) -> int:
    from ..._text import table
    from . import datasets, get_dataset, load
    from ._core import install_command

    builtin = {s.name for s in datasets()}
    specs = [get_dataset(n) for n in args.names if n in builtin] if args.names else datasets()
    files = [n for n in args.names if n not in builtin]
    rows = []
    for spec in specs:
        if not spec.available():
            rows.append([spec.name, spec.task, spec.size, "-", "no", spec.description,
                         install_command(spec.install)])
        elif args.no_load:
            rows.append([spec.name, spec.task, spec.size, "-", "yes", spec.description, ""])
        else:
            ds = spec.load(seed=args.seed)
            rows.append([spec.name, spec.task, _sizes(ds), ds.n_classes, "yes",
                         spec.description, ""])
    for name in files:
        ds = load(name, seed=args.seed, label=args.label)
        rows.append([name, ds.task, _sizes(ds), ds.n_classes, "yes",
                     ds.meta.get("description", ""), ""])
    print(table(["dataset", "task", "train/val/test", "classes", "installed", "description",
                 "install with"], rows))
    return 0
