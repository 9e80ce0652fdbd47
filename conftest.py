"""Repository-wide pytest set-up for the doctest pass over ``src`` (``--doctest-modules``).

* Doctest examples may use ``torch`` without importing it.
* Kernel modules whose imports need an optional package are not collected where it is
  missing: every ``src/softmaxlab/kernels/cpu/*.py`` but ``__init__.py`` without numba, every
  ``src/softmaxlab/kernels/triton/*.py`` without triton. The Triton modules (no doctests) are
  not collected either where no CUDA device is available: importing them there would import
  ``triton`` before ``tests/kernels/triton`` sets ``TRITON_INTERPRET=1``.
* ``src/softmaxlab/lab/_tune.py`` (no doctests) imports Ray, an optional extra and seconds
  to import: never collected; ``tests/lab/test_ray.py`` runs it.
* ``src/softmaxlab/integrations/transformers.py`` is not collected without transformers.
"""

from __future__ import annotations

import importlib.util
from pathlib import Path

import pytest
import torch

_KERNELS = Path(__file__).parent / "src" / "softmaxlab" / "kernels"

collect_ignore: list[str] = [str(Path(__file__).parent / "src" / "softmaxlab" / "lab" / "_tune.py")]
if importlib.util.find_spec("numba") is None:
    collect_ignore += [str(p) for p in sorted((_KERNELS / "cpu").glob("*.py"))
                       if p.name != "__init__.py"]
if importlib.util.find_spec("transformers") is None:
    collect_ignore.append(str(_KERNELS.parent / "integrations" / "transformers.py"))
collect_ignore_glob: list[str] = []
if importlib.util.find_spec("triton") is None or not torch.cuda.is_available():
    collect_ignore_glob.append(str(_KERNELS / "triton" / "*.py"))


@pytest.fixture(autouse=True)
def _doctest_torch(doctest_namespace):
    doctest_namespace["torch"] = torch
