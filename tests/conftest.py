"""Pytest hooks for the whole test suite (helpers live in ``_helpers.py``, tolerances in
``tolerances.py``; no test imports this file)."""

import torch


def pytest_configure(config):
    """One intra-op thread per test process: the tests use small tensors and run under
    ``pytest -n 2``; on a 2-core machine more threads only add barrier waits (a loaded
    machine made one training test 20x slower)."""
    torch.set_num_threads(1)
