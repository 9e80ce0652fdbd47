"""The data types and the split and vocabulary helpers shared by every loader."""

from __future__ import annotations

import hashlib
import importlib.util
import sys
from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch

TASKS = ("classification", "language_model", "recommendation")

#: Fractions of rows in (val, test) for the seeded stratified splits; the rest is train.
VAL_FRACTION = TEST_FRACTION = 0.2
#: Fractions of tokens in (val, test) for the positional splits of text corpora.
TEXT_VAL_FRACTION = TEXT_TEST_FRACTION = 0.05
#: Default vocabulary cap (including ``<unk>`` and ``<eos>``) for word-level corpora.
VOCAB_SIZE = 10_000
UNK, EOS = "<unk>", "<eos>"


def install_command(command: str) -> str:
    """``command`` as it must be typed for this environment: a ``pip install`` goes to the
    Python running softmaxlab (``.venv/bin/python -m pip install ...``), not whichever
    ``pip`` comes first on the PATH; other commands (``apt-get``) stay as they are."""
    if not command.startswith("pip "):
        return command
    python = Path(sys.executable)
    try:
        shown = str(python.relative_to(Path.cwd()))
    except ValueError:
        shown = str(python)
    return f"{shown} -m {command}"


class DatasetUnavailable(ValueError):
    """A dataset or the package needed to read it is not installed; the message says how."""


@dataclass(frozen=True)
class Split:
    """One split.

    classification: ``x`` float32 ``(N, *features)``, ``y`` int64 ``(N,)``.
    language_model: ``x`` int64 ``(T,)`` token stream, ``y`` is ``None``.
    recommendation: ``x`` int64 ``(N, L)`` item histories left-padded with 0 (items start
    at 1), ``y`` int64 ``(N,)`` the next item.
    """

    x: torch.Tensor
    y: torch.Tensor | None

    def __len__(self) -> int:
        return self.x.shape[0]


@dataclass(frozen=True)
class Dataset:
    """A loaded dataset: three fixed splits plus what a model needs to know about them.

    ``n_classes`` is the number of classes, the vocabulary size (language models) or the
    number of items + 1 (recommendation; id 0 is padding).
    """

    name: str
    task: str
    train: Split
    val: Split
    test: Split
    n_classes: int
    meta: dict = field(default_factory=dict)

    def sizes(self) -> tuple[int, int, int]:
        """Rows (or tokens) in train, val and test."""
        return len(self.train), len(self.val), len(self.test)

    def content_sha256(self) -> str:
        """SHA-256 of what a model sees: each split's tensors (dtype, shape and bytes, in
        order) and ``n_classes``. An edited data file, another split or another ``limit``
        changes it; the same data read again gives the same digest."""
        h = hashlib.sha256(f"{self.task}/{self.n_classes}".encode())
        for split in (self.train, self.val, self.test):
            for t in (split.x, split.y):
                if t is None:
                    h.update(b"none")
                    continue
                t = t.detach().cpu().contiguous()
                h.update(f"{t.dtype}{tuple(t.shape)}".encode())
                h.update(t.view(torch.uint8).numpy().tobytes() if t.numel() else b"")
        return h.hexdigest()


Reader = Callable[..., Dataset]


@dataclass(frozen=True)
class DatasetSpec:
    """A dataset the lab knows: where it comes from and how to read it.

    ``locate()`` returns the path of its data on disk, or ``None`` when not installed;
    ``read(path, seed=, limit=)`` builds the :class:`Dataset`. ``load(root=...)`` reads from
    another location in the same format (used by the tests).
    """

    name: str
    task: str
    description: str
    install: str
    size: str
    locate: Callable[[], Path | None] = field(repr=False, compare=False)
    read: Reader = field(repr=False, compare=False)

    def available(self) -> bool:
        return self.locate() is not None

    def load(self, *, seed: int = 0, limit: int | None = None,
             root: str | Path | None = None) -> Dataset:
        """Load the three splits; ``limit`` caps rows (or tokens) per split."""
        _check_limit(limit)
        path = Path(root) if root is not None else self.locate()
        if path is None:
            raise DatasetUnavailable(
                f"dataset {self.name!r} is not installed here; install it with: "
                f"{install_command(self.install)}")
        if not path.exists():
            raise ValueError(f"dataset {self.name!r}: {path} does not exist")
        return self.read(path, seed=seed, limit=limit)


# --- locating package data without importing the package --------------------------------

def package_dir(package: str) -> Path | None:
    """The directory of an installed package, found without importing it."""
    try:
        spec = importlib.util.find_spec(package)
    except (ImportError, ValueError):
        return None
    if spec is None or not spec.submodule_search_locations:
        return None
    return Path(next(iter(spec.submodule_search_locations)))


def package_file(package: str, *parts: str) -> Path | None:
    """``<package dir>/<parts>`` when the package is installed and the file exists."""
    base = package_dir(package)
    if base is None:
        return None
    path = base.joinpath(*parts)
    return path if path.exists() else None


# --- splits -------------------------------------------------------------------------------

def _check_limit(limit: int | None) -> None:
    if limit is not None and (not isinstance(limit, int) or limit < 1):
        raise ValueError(f"limit must be a positive integer or None, got {limit!r}")


def stratified_indices(y: np.ndarray, seed: int, val: float = VAL_FRACTION,
                       test: float = TEST_FRACTION) -> tuple[np.ndarray, ...]:
    """Seeded stratified (train, val, test) row indices, each in seeded random order.

    Each class gives ``round(n_c * val)`` rows to val and ``round(n_c * test)`` to test;
    the rest go to train. The same ``seed`` gives the same split.
    """
    rng = np.random.default_rng(seed)
    parts: tuple[list, list, list] = ([], [], [])
    for c in np.unique(y):
        idx = rng.permutation(np.flatnonzero(y == c))
        n_val, n_test = round(len(idx) * val), round(len(idx) * test)
        parts[1].append(idx[:n_val])
        parts[2].append(idx[n_val:n_val + n_test])
        parts[0].append(idx[n_val + n_test:])
    return tuple(rng.permutation(np.concatenate(p)).astype(np.int64) for p in parts)


def shuffled(n: int, seed: int) -> np.ndarray:
    return np.random.default_rng(seed).permutation(n)


def classification_split(x: np.ndarray, y: np.ndarray, order: np.ndarray | None,
                         limit: int | None) -> Split:
    """A classification :class:`Split` from rows ``order`` (all rows when ``None``)."""
    if order is not None:
        x, y = x[order], y[order]
    if limit is not None:
        x, y = x[:limit], y[:limit]
    return Split(torch.as_tensor(np.ascontiguousarray(x, dtype=np.float32)),
                 torch.as_tensor(np.ascontiguousarray(y, dtype=np.int64)))


def classification(name: str, x: np.ndarray, y: np.ndarray, *, seed: int, limit: int | None,
                   n_classes: int, meta: dict, source: str) -> Dataset:
    """Split ``(x, y)`` with :func:`stratified_indices` into a :class:`Dataset`."""
    tr, va, te = stratified_indices(y, seed)
    if len(va) == 0 or len(te) == 0:
        raise ValueError(f"{source}: {len(y)} rows are too few for a train/val/test split "
                         f"(val {len(va)}, test {len(te)} rows)")
    meta = {"split": f"stratified by class, seeded; val {VAL_FRACTION:.0%}, "
                     f"test {TEST_FRACTION:.0%}", **meta}
    return Dataset(name, "classification", classification_split(x, y, tr, limit),
                   classification_split(x, y, va, limit), classification_split(x, y, te, limit),
                   n_classes, meta)


# --- word-level text ----------------------------------------------------------------------

def build_vocab(tokens: Sequence[str], size: int = VOCAB_SIZE,
                specials: Sequence[str] = (UNK, EOS)) -> list[str]:
    """``specials`` then the most frequent tokens (ties alphabetical), ``size`` in all."""
    counts = Counter(t for t in tokens if t not in specials)
    words = sorted(counts, key=lambda w: (-counts[w], w))
    return list(specials) + words[:max(size - len(specials), 0)]


def encode(tokens: Sequence[str], vocab: Sequence[str], limit: int | None = None) -> torch.Tensor:
    """Token ids (unknown tokens map to ``<unk>``), the first ``limit`` only."""
    index = {w: i for i, w in enumerate(vocab)}
    unk = index.get(UNK)
    if limit is not None:
        tokens = tokens[:limit]
    try:
        ids = [index[t] if unk is None else index.get(t, unk) for t in tokens]
    except KeyError as e:
        raise ValueError(f"token {e.args[0]!r} is not in the vocabulary") from None
    return torch.tensor(ids, dtype=torch.int64)


def language_model(name: str, train: Sequence[str], val: Sequence[str], test: Sequence[str], *,
                   limit: int | None, meta: dict, vocab_size: int = VOCAB_SIZE) -> Dataset:
    """A language-model :class:`Dataset` with the vocabulary built on ``train``."""
    vocab = build_vocab(train, vocab_size)
    splits = [Split(encode(s, vocab, limit), None) for s in (train, val, test)]
    return Dataset(name, "language_model", *splits, len(vocab), {"vocab": vocab, **meta})


def lines_to_tokens(text: str, tokenize: Callable[[str], list[str]] = str.split) -> list[str]:
    """Tokens of each non-blank line followed by ``<eos>``."""
    out: list[str] = []
    for line in text.splitlines():
        words = tokenize(line)
        if words:
            out.extend(words)
            out.append(EOS)
    return out


def split_by_position(tokens: list[str], val: float = TEXT_VAL_FRACTION,
                      test: float = TEXT_TEST_FRACTION) -> tuple[list[str], ...]:
    """First ``1 - val - test`` of the tokens for train, then val, then test."""
    n = len(tokens)
    n_test, n_val = round(n * test), round(n * val)
    a, b = n - n_val - n_test, n - n_test
    return tokens[:a], tokens[a:b], tokens[b:]
