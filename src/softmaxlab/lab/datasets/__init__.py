"""The datasets the lab iterates: one registry, read from disk, never downloaded at run time.

Built-in datasets come from installed packages (``softmaxlab data`` lists them with their
install commands); :func:`load` also reads the user's own ``.npz`` / ``.csv`` /
``.parquet`` (classification) and ``.txt`` (language modeling) files.

Splits are fixed: the same ``seed`` always gives the same rows in the same order.

* classification from one pool (digits, user files): stratified by class and seeded,
  60/20/20 train/val/test;
* official splits (mnist, ptb; fashion-mnist's validation set is the last 10,000
  training images): as published, rows in seeded random order;
* text corpora (shakespeare, user ``.txt``): by position, 90/5/5;
* movielens-100k: leave-one-out per user (last item test, second to last val).

``limit`` keeps the first ``limit`` rows (or tokens) of each split.
"""

from __future__ import annotations

from pathlib import Path

from ._builtin import SPECS
from ._core import TASKS, Dataset, DatasetSpec, DatasetUnavailable, Split
from ._files import SUFFIXES, read_file

__all__ = ["Dataset", "DatasetSpec", "DatasetUnavailable", "Split", "datasets", "get_dataset",
           "load"]

_PATH_FORMS = ("a .npz file with arrays X and y; a .csv or .parquet file with a label "
               "column; a .txt corpus for language modeling")


def datasets() -> tuple[DatasetSpec, ...]:
    """Every built-in dataset, installed here or not."""
    return SPECS


def get_dataset(name: str) -> DatasetSpec:
    """The built-in dataset called ``name``; ``ValueError`` listing the choices otherwise."""
    for spec in SPECS:
        if spec.name == name:
            return spec
    raise ValueError(f"unknown dataset {name!r}; choose one of "
                     f"{', '.join(s.name for s in SPECS)}, or give a path: {_PATH_FORMS}")


def load(name_or_path: str | Path, *, seed: int = 0, limit: int | None = None,
         label: str | None = None, task: str | None = None) -> Dataset:
    """A built-in dataset by name, or the user's file by path.

    ``label`` names the class column of a CSV/Parquet file (default ``"label"``); ``task``,
    when given, must match the dataset's task.
    """
    if task is not None and task not in TASKS:
        raise ValueError(f"unknown task {task!r}; choose one of {', '.join(TASKS)}")
    name = str(name_or_path)
    if any(s.name == name for s in SPECS):
        if label is not None:
            raise ValueError(f"label= applies to CSV and Parquet files, not to {name!r}")
        spec = get_dataset(name)
        _check_task(spec.task, task, name)
        return spec.load(seed=seed, limit=limit)
    path = Path(name).expanduser()
    if path.suffix.lower() not in SUFFIXES:
        if path.exists():
            raise ValueError(f"{path}: unsupported file type {path.suffix!r}; "
                             f"give {_PATH_FORMS}")
        get_dataset(name)  # raises, listing the names and the path forms
    _check_task(SUFFIXES[path.suffix.lower()], task, str(path))
    if limit is not None and (not isinstance(limit, int) or limit < 1):
        raise ValueError(f"limit must be a positive integer or None, got {limit!r}")
    return read_file(path, seed=seed, limit=limit, label=label)


def _check_task(actual: str, wanted: str | None, what: str) -> None:
    if wanted is not None and wanted != actual:
        raise ValueError(f"{what} is a {actual} dataset, not {wanted}")
