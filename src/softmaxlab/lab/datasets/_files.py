"""The user's own data: ``.npz`` (X, y), CSV or Parquet with a label column, ``.txt`` corpus."""

from __future__ import annotations

import csv
import importlib.util
from collections.abc import Callable
from pathlib import Path

import numpy as np

from ._core import (
    Dataset,
    DatasetUnavailable,
    classification,
    install_command,
    language_model,
    lines_to_tokens,
    split_by_position,
)

SUFFIXES = {".npz": "classification", ".csv": "classification", ".parquet": "classification",
            ".pq": "classification", ".txt": "language_model"}


def _labels(raw: np.ndarray, path: Path) -> tuple[np.ndarray, int, list | None]:
    """Integer labels >= 0 are kept as they are (``n_classes = max + 1``); anything else is
    numbered in sorted order and the original values go to ``meta["classes"]``."""
    if raw.dtype.kind in "iu" or (raw.dtype.kind == "f" and np.all(np.isfinite(raw))
                                  and np.all(raw == np.round(raw))):
        y = raw.astype(np.int64)
        if y.min() >= 0:
            return y, int(y.max()) + 1, None
    if raw.dtype.kind == "f" and not np.all(np.isfinite(raw)):
        raise ValueError(f"{path}: labels contain NaN or infinity")
    classes, y = np.unique(raw, return_inverse=True)
    return y.astype(np.int64), len(classes), classes.tolist()


def _finish(path: Path, x: np.ndarray, raw_y: np.ndarray, *, seed: int, limit: int | None,
            meta: dict) -> Dataset:
    if len(x) == 0:
        raise ValueError(f"{path}: no rows")
    if not np.all(np.isfinite(x)):
        bad = np.argwhere(~np.isfinite(x))[0].tolist()
        raise ValueError(f"{path}: features contain NaN or infinity (first at index {bad})")
    y, n_classes, classes = _labels(raw_y, path)
    if classes is not None:
        meta["classes"] = classes
    meta = {"input_shape": tuple(x.shape[1:]), "source": str(path), **meta}
    return classification(path.stem, x, y, seed=seed, limit=limit, n_classes=n_classes,
                          meta=meta, source=str(path))


def read_npz(path: Path, *, seed: int, limit: int | None) -> Dataset:
    """Arrays ``X`` (N, *features) and ``y`` (N,)."""
    try:
        with np.load(path, allow_pickle=False) as f:
            arrays = {k: f[k] for k in f.files}
    except (OSError, ValueError, EOFError) as e:
        raise ValueError(f"{path}: not a readable .npz file ({e})") from None
    missing = [k for k in ("X", "y") if k not in arrays]
    if missing:
        raise ValueError(f"{path}: missing array(s) {', '.join(missing)} "
                         f"(found: {', '.join(arrays) or 'none'})")
    x, y = arrays["X"], arrays["y"]
    if x.ndim < 2 or y.ndim != 1 or len(x) != len(y):
        raise ValueError(f"{path}: need X of shape (N, *features) and y of shape (N,), "
                         f"got X {x.shape} and y {y.shape}")
    if x.dtype.kind not in "biuf":
        raise ValueError(f"{path}: X must be numeric, got dtype {x.dtype}")
    return _finish(path, x.astype(np.float64), y, seed=seed, limit=limit,
                   meta={"description": f"user data {path.name}"})


def _table(path: Path, header: list[str], columns: list[list], label: str,
           line_of: Callable[[int], str]) -> tuple[np.ndarray, np.ndarray, list[str]]:
    """Numeric features from every column but ``label``."""
    if label not in header:
        raise ValueError(f"{path}: no label column {label!r}; columns present: "
                         f"{', '.join(header)} (choose one with label=...)")
    if len(header) < 2:
        raise ValueError(f"{path}: no feature columns besides {label!r}")
    features = [h for h in header if h != label]
    x = np.empty((len(columns[0]), len(features)), dtype=np.float64)
    for j, name in enumerate(features):
        col = columns[header.index(name)]
        for i, v in enumerate(col):
            try:
                x[i, j] = float(v)
            except (TypeError, ValueError):
                raise ValueError(f"{path}: {line_of(i)}, column {name!r}: "
                                 f"{v!r} is not a number") from None
    y = np.asarray(columns[header.index(label)])
    if y.dtype.kind in "OU":
        try:
            y = np.asarray([float(v) for v in y])
        except (TypeError, ValueError):
            y = np.asarray([str(v) for v in y])
    return x, y, features


def read_csv(path: Path, *, seed: int, limit: int | None, label: str = "label") -> Dataset:
    """A header row, then one row per example; ``label`` names the class column."""
    with open(path, newline="", encoding="utf-8") as f:
        rows = list(csv.reader(f))
    rows = [(i, r) for i, r in enumerate(rows, 1) if any(c.strip() for c in r)]
    if not rows:
        raise ValueError(f"{path}: empty file")
    header = [h.strip() for h in rows[0][1]]
    data = rows[1:]
    if not data:
        raise ValueError(f"{path}: a header but no data rows")
    for i, r in data:
        if len(r) != len(header):
            raise ValueError(f"{path}: line {i} has {len(r)} fields, expected {len(header)}")
    columns = [[r[j].strip() for _, r in data] for j in range(len(header))]
    x, y, features = _table(path, header, columns, label, lambda k: f"line {data[k][0]}")
    return _finish(path, x, y, seed=seed, limit=limit, meta={
        "features": features, "label": label, "description": f"user data {path.name}"})


def read_parquet(path: Path, *, seed: int, limit: int | None, label: str = "label") -> Dataset:
    """Like :func:`read_csv`; needs pyarrow or pandas."""
    if importlib.util.find_spec("pyarrow") is not None:
        import pyarrow.parquet as pq
        try:
            table = pq.read_table(path)
        except Exception as e:  # noqa: BLE001 - pyarrow raises several types
            raise ValueError(f"{path}: not a readable Parquet file ({e})") from None
        header, columns = table.column_names, [c.to_pylist() for c in table.columns]
    elif importlib.util.find_spec("pandas") is not None:
        import pandas as pd
        try:
            frame = pd.read_parquet(path)
        except ImportError as e:
            raise DatasetUnavailable(f"{path}: reading Parquet needs pyarrow: "
                                     f"{install_command('pip install pyarrow')} ({e})"
                                     ) from None
        except Exception as e:  # noqa: BLE001
            raise ValueError(f"{path}: not a readable Parquet file ({e})") from None
        header = [str(c) for c in frame.columns]
        columns = [frame[c].tolist() for c in frame.columns]
    else:
        raise DatasetUnavailable(f"{path}: reading Parquet needs pyarrow or pandas: "
                                 f"{install_command('pip install pyarrow')}")
    if not columns or not columns[0]:
        raise ValueError(f"{path}: no rows")
    x, y, features = _table(path, header, columns, label, lambda k: f"row {k}")
    return _finish(path, x, y, seed=seed, limit=limit, meta={
        "features": features, "label": label, "description": f"user data {path.name}"})


def read_txt(path: Path, *, seed: int, limit: int | None) -> Dataset:
    """Whitespace tokens plus ``<eos>`` per line, split 90/5/5 by position."""
    try:
        text = path.read_text(encoding="utf-8")
    except UnicodeDecodeError as e:
        raise ValueError(f"{path}: not UTF-8 text (byte {e.start})") from None
    tokens = lines_to_tokens(text)
    if not tokens:
        raise ValueError(f"{path}: empty file")
    train, val, test = split_by_position(tokens)
    if not val or not test:
        raise ValueError(f"{path}: {len(tokens)} tokens are too few for a train/val/test split")
    return language_model(path.stem, train, val, test, limit=limit, meta={
        "source": str(path), "split": "by position: first 90% train, next 5% val, last 5% test",
        "description": f"user corpus {path.name}"})


def read_file(path: Path, *, seed: int, limit: int | None, label: str | None) -> Dataset:
    suffix = path.suffix.lower()
    if suffix not in SUFFIXES:
        raise ValueError(f"{path}: unsupported file type {suffix!r} "
                         f"(use {', '.join(SUFFIXES)})")
    if not path.is_file():
        raise ValueError(f"{path}: no such file")
    if path.stat().st_size == 0:
        raise ValueError(f"{path}: empty file")
    if label is not None and suffix not in (".csv", ".parquet", ".pq"):
        raise ValueError(f"{path}: label= applies to CSV and Parquet files only")
    if suffix == ".npz":
        return read_npz(path, seed=seed, limit=limit)
    if suffix == ".txt":
        return read_txt(path, seed=seed, limit=limit)
    reader = read_csv if suffix == ".csv" else read_parquet
    return reader(path, seed=seed, limit=limit, label=label or "label")
