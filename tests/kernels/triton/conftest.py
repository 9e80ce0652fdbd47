"""Set-up of the Triton tests: the interpreter on CPU, the device, numpy's error state.

``TRITON_INTERPRET=1`` must be set before the kernels are defined (``@triton.jit`` reads it
when ``softmaxlab.kernels.triton`` is imported). Where no CUDA device is available it is set
here, when pytest collects this folder, before the test module imports the kernels; the
repository-root conftest keeps the doctest pass from importing them first. ``make test`` runs
this folder in a pytest invocation of its own: ``torch.compile`` (inductor) in the other
tests imports triton in the same worker process, which breaks the interpreter's kernels.
"""

from __future__ import annotations

import os
import sys

import numpy as np
import pytest
import torch

if not torch.cuda.is_available():
    os.environ.setdefault("TRITON_INTERPRET", "1")
    _defined = sys.modules.get("softmaxlab.kernels.triton._softmax")
    if _defined is not None and any(type(v).__name__ == "JITFunction"
                                    for v in vars(_defined).values()):
        raise RuntimeError(
            "softmaxlab.kernels.triton was imported before TRITON_INTERPRET=1 was set, so its "
            "kernels cannot run on CPU: run tests/kernels/triton in a pytest invocation of its "
            "own (TRITON_INTERPRET=1 pytest tests/kernels/triton)")


@pytest.fixture(autouse=True)
def _interpreter_floating_point():
    """The interpreter evaluates log(0) and inf - inf in masked lanes (numpy warnings)."""
    with np.errstate(all="ignore"):
        torch.manual_seed(0)
        yield


@pytest.fixture
def device(monkeypatch):
    """``"cuda"`` when the kernels run natively, ``"cpu"`` under the interpreter; the public
    functions (the reference side) run the reference (``SOFTMAXLAB_BACKEND=reference``)."""
    monkeypatch.setenv("SOFTMAXLAB_BACKEND", "reference")
    return "cpu" if os.environ.get("TRITON_INTERPRET") == "1" else "cuda"
