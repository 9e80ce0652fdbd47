"""The command line (list, demo, env) and the README's promises about it."""

from __future__ import annotations

import pathlib
import shutil
import subprocess
import sys

import pytest

import softmaxlab as sl
from softmaxlab.cli import main

ROOT = pathlib.Path(__file__).resolve().parents[1]


def test_list_prints_every_registered_mapping_with_its_properties(capsys):
    assert main(["list", "--formulas"]) == 0
    out = capsys.readouterr().out
    for m in sl.mappings():
        line = next(l for l in out.splitlines() if l.startswith(m.name + " "))
        assert (m.log_fn.__name__ if m.log_fn else "-") in line
        assert ("yes" in line) == any((m.normalized, m.sparse, m.shift_invariant,
                                       m.scale_invariant, m.training_only))
        assert m.formula in out
        for p in m.params:
            assert f"{p.name}={p.default!r}" in line


def test_demo_shows_the_articles_examples_and_every_mapping(capsys):
    assert main(["demo"]) == 0
    out = capsys.readouterr().out
    # softmax vs normalization: [1, 2] and [10, 20] normalize identically, softmax does not
    assert "[0.2689, 0.7311]" in out and "[4.5e-05, 1.0000]" in out
    assert out.count("[0.3333, 0.6667]") == 2
    # softmax of [z, 0] equals sigmoid(z)
    assert "[0.8176, 0.1824]  0.8176" in out
    # the published test vector
    assert "[0.0000, 0.3260, 0.6740]  [0.0000, 0.3260, 0.6740]" in out
    section = out.split("4. Every mapping")[1]
    for m in sl.mappings():
        assert f"\n{m.name} " in section


def test_demo_rejects_a_bad_vector(capsys):
    assert main(["demo", "--vector", "1,x"]) == 2
    assert "--vector must be comma-separated numbers, got '1,x'" in capsys.readouterr().err


def test_env_and_version(capsys):
    assert main(["env"]) == 0
    assert "torch" in capsys.readouterr().out
    with pytest.raises(SystemExit):
        main(["--version"])
    assert sl.__version__ in capsys.readouterr().out


def test_python_dash_m_runs_the_cli():
    out = subprocess.run([sys.executable, "-m", "softmaxlab", "list"], capture_output=True,
                         text=True, check=True).stdout
    assert "sparsemax" in out


def test_readme_table_names_every_mapping_and_log_form():
    readme = (ROOT / "README.md").read_text()
    for m in sl.mappings():
        assert f"| `{m.name}` |" in readme, m.name
        if m.log_fn:
            assert f"`{m.log_fn.__name__}`" in readme
    assert "make run" in readme and "make test" in readme


def test_readme_says_how_to_reach_the_installed_command():
    readme = (ROOT / "README.md").read_text()
    assert "source .venv/bin/activate" in readme and ".venv/bin/softmaxlab" in readme
    assert ".venv/bin/python -m pip install" in readme


MAKE = shutil.which("make")


@pytest.mark.skipif(MAKE is None, reason="make is not installed")
def test_make_run_installs_only_the_lab_extra_and_make_test_adds_dev(tmp_path):
    def dry(target: str) -> str:
        return subprocess.run([MAKE, "-n", "-C", str(ROOT), target, f"VENV={tmp_path}"],
                              capture_output=True, text=True, check=True).stdout

    run = dry("run")
    assert '-e ".[lab]"' in run and "lab,dev" not in run and "softmaxlab compare" in run
    assert '-e ".[lab,dev]"' in dry("test")
    # a venv that `make run` set up: `make test` adds the dev extra only
    (tmp_path / ".installed-lab").touch()
    again = dry("test")
    assert '-e ".[lab,dev]"' in again and '-e ".[lab]"' not in again
    (tmp_path / ".installed-dev").touch()
    assert "pip install" not in dry("test")
