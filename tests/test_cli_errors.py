"""No user error gives a traceback, in any subcommand: one line on stderr, exit status 2,
and nothing is trained or written first."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest
import torch

from softmaxlab.cli import main

pytest.importorskip("matplotlib", reason="the lab extra is not installed (pip install -e .[lab])")


def one_line_error(capsys) -> str:
    err = capsys.readouterr().err.strip()
    assert err.startswith("softmaxlab: error: ") and "\n" not in err, err
    assert "Traceback" not in err
    return err


NO_CUDA = pytest.mark.skipif(torch.cuda.is_available(), reason="this machine has CUDA")


@pytest.mark.parametrize("args, words", [
    (["--lr", "-1"], ["--lr", "-1"]),
    (["--lr", "0"], ["--lr", "got 0"]),
    (["--lr", "nan"], ["--lr", "nan"]),
    (["--lr", "fast"], ["--lr", "fast"]),
    (["--batch-size", "0"], ["--batch-size", "got 0"]),
    (["--epochs", "0"], ["--epochs", "got 0"]),
    (["--limit", "-5"], ["--limit", "-5"]),
    (["--seeds", "two"], ["--seeds", "two"]),
    pytest.param(["--device", "cuda"], ["--device", "'cuda'", "CUDA is not available"],
                 marks=NO_CUDA),
    (["--device", "banana"], ["--device", "'banana'", "not a torch device"]),
    (["--goal", "fame"], ["--goal", "fame", "accuracy"]),
], ids=lambda v: "_".join(v) if isinstance(v, list) and v[0].startswith("--") else None)
def test_every_compare_flag_is_checked_before_any_work(tmp_path, capsys, args, words):
    out = tmp_path / "out"
    assert main(["compare", "--out", str(out), *args]) == 2
    err = one_line_error(capsys)
    for w in words:
        assert w in err, err
    assert not out.exists()  # nothing trained, nothing written


def test_out_at_a_file_or_under_one_or_unwritable_is_refused_up_front(tmp_path, capsys):
    a_file = tmp_path / "notes.txt"
    a_file.write_text("mine")
    for out in (a_file, a_file / "run"):
        assert main(["compare", "--epochs", "1", "--out", str(out)]) == 2
        assert str(a_file) in one_line_error(capsys)
    assert a_file.read_text() == "mine"
    if os.geteuid() != 0:  # root writes anywhere
        locked = tmp_path / "locked"
        locked.mkdir(mode=0o500)
        assert main(["compare", "--epochs", "1", "--out", str(locked / "run")]) == 2
        assert "not writable" in one_line_error(capsys)
    assert main(["compare", "--epochs", "1", "--out", "/proc/softmaxlab/run"]) == 2
    assert "/proc/softmaxlab/run" in one_line_error(capsys)


def _data_file(tmp_path):
    path = tmp_path / "tiny.csv"
    rows = "".join(f"{i % 7},{(i * 3) % 5},{i % 2}\n" for i in range(40))
    path.write_text("a,b,label\n" + rows)
    return path


@pytest.mark.parametrize("command", [
    ["list", "--bogus"],
    ["demo", "--vector", "1,x"],
    ["env", "extra"],
    ["data", "nope"],
    ["data", "{tmp}/missing.csv"],
    ["data", "{tmp}/data.xyz"],
    ["compare", "--dataset", "{tmp}/missing.csv", "--out", "{tmp}/o"],
    ["compare", "--mappings", "entmax:alpha=0.5", "--out", "{tmp}/o"],
    ["compare", "--mappings", "entmax:beta=2", "--out", "{tmp}/o"],
    ["report", "{tmp}/nothing-here"],
    ["report", "{tmp}/data.xyz"],
    ["report", "{tmp}"],
    ["report", "{tmp}", "--goal", "fame"],
    ["bench", "--suite", "nope"],
    ["bench", "--repeat", "0"],
    ["bench", "--quick", "--out", "{tmp}"],
    ["bench", "--quick", "--out", "{tmp}/data.xyz/r.json"],
    ["bench", "--render", "{tmp}/missing.json"],
    ["bench", "--render", "{tmp}/data.xyz"],
], ids=lambda c: " ".join(c).replace("{tmp}/", "").replace("{tmp}", "TMP"))
def test_no_subcommand_gives_a_traceback_for_a_user_error(tmp_path, capsys, command):
    (tmp_path / "data.xyz").write_text("not data")
    args = [a.replace("{tmp}", str(tmp_path)) for a in command]
    assert main(args) == 2
    one_line_error(capsys)
    assert not (tmp_path / "o").exists()


def test_the_installed_command_prints_one_line_too(tmp_path):
    """Through the process entry point (``python -m softmaxlab``): no traceback either."""
    p = subprocess.run([sys.executable, "-m", "softmaxlab", "compare", "--lr", "-1",
                        "--out", str(tmp_path / "o")], capture_output=True, text=True)
    assert p.returncode == 2 and p.stdout == ""
    assert p.stderr.count("\n") == 1 and "--lr" in p.stderr and "-1" in p.stderr
