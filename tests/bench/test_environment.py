"""The environment report and the backend variable."""

from __future__ import annotations

import os

from softmaxlab.bench import environment


def test_backend_env_is_set_for_the_run_and_restored(monkeypatch):
    monkeypatch.delenv(environment.BACKEND_ENV, raising=False)
    with environment.backend_env("cpu"):
        assert os.environ[environment.BACKEND_ENV] == "cpu"
    assert environment.BACKEND_ENV not in os.environ
    monkeypatch.setenv(environment.BACKEND_ENV, "triton")
    with environment.backend_env(None):
        assert os.environ[environment.BACKEND_ENV] == "triton"
    with environment.backend_env("reference"):
        pass
    assert os.environ[environment.BACKEND_ENV] == "triton"


def test_env_reports_versions_machine_and_commit():
    rows = dict(environment.rows())
    assert rows["softmaxlab"] and rows["torch"] and "sklearn" in rows
    assert {"cpu", "cores usable", "torch threads", "gpu"} <= set(rows) and "git" in rows
