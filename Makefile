# make run  : create .venv, install the pinned CPU torch (only when no torch is present) and the
#             package with its lab extra (Rich, Matplotlib, scikit-learn, SciPy): what the compare
#             needs, nothing more; then compare every mapping on digits (runs/compare-digits)
# make test : the same, plus the dev extra (pytest, Hypothesis, xdist, numba for the CPU kernels,
#             Triton for the interpreter tests, Ray, ruff and mypy), then the full test suite (the
#             Triton tests under the Triton interpreter on CPU; on a CUDA machine natively, then
#             once more under the interpreter)
# make lint : the run set-up plus the pinned [lint] extra if missing; ruff on src and tests, mypy
# Each set-up is remembered by a stamp in the venv, redone when pyproject.toml changes: a venv
# made by `make run` gets the dev extra on the first `make test`.
VENV   ?= .venv
PY     := $(VENV)/bin/python
TORCH  ?= torch==2.13.0
LAB    := $(VENV)/.installed-lab
DEV    := $(VENV)/.installed-dev

.PHONY: run test lint install install-dev clean clean-cache

install: $(LAB)

install-dev: $(DEV)

$(LAB): pyproject.toml
	test -x $(PY) || python3 -m venv $(VENV)
	$(PY) -c "import torch" 2>/dev/null || $(PY) -m pip install --quiet "$(TORCH)"
	$(PY) -m pip install --quiet -e ".[lab]"
	touch $(LAB)

$(DEV): $(LAB)
	$(PY) -m pip install --quiet -e ".[lab,dev]"
	touch $(DEV)

run: $(LAB)
	$(VENV)/bin/softmaxlab compare --dataset digits --out runs/compare-digits

lint: $(LAB)
	$(PY) -c "import ruff, mypy" 2>/dev/null || $(PY) -m pip install --quiet -e ".[lint]"
	$(PY) -m ruff check src tests
	$(PY) -m mypy

test: $(DEV)
	$(PY) -m pytest -q -n 2 --dist loadgroup --ignore=tests/kernels/triton
	$(PY) -m pytest -q -n 2 tests/kernels/triton
	if $(PY) -c "import sys, torch; sys.exit(not torch.cuda.is_available())"; then \
		TRITON_INTERPRET=1 $(PY) -m pytest -q -n 2 tests/kernels/triton; fi

clean:
	rm -rf $(VENV) build src/*.egg-info .pytest_cache .hypothesis .mypy_cache .ruff_cache

clean-cache:  # numba's kernel cache and the launch trampolines (after editing kernels/cpu/_jit.py)
	find src -name '*.nbi' -delete -o -name '*.nbc' -delete
	rm -rf $${SOFTMAXLAB_CACHE_DIR:-$$HOME/.cache/softmaxlab}
