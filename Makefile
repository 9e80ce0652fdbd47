# make run  : create .venv, install the pinned CPU torch (only when no torch is present), the package
#             with its lab extra, then compare every mapping on digits (report in runs/compare-digits)
# make test : same set-up, then the full test suite (the Triton tests under the Triton interpreter
#             on CPU; on a CUDA machine natively, then once more under the interpreter)
# make lint : same set-up, then ruff on src and tests and mypy on the core library (the [lint]
#             extra, pinned in pyproject.toml; installed here if the venv lacks it)
VENV   ?= .venv
PY     := $(VENV)/bin/python
TORCH  ?= torch==2.13.0
STAMP  := $(VENV)/.installed

.PHONY: run test lint install clean clean-cache

install: $(STAMP)

$(STAMP): pyproject.toml
	test -x $(PY) || python3 -m venv $(VENV)
	$(PY) -c "import torch" 2>/dev/null || $(PY) -m pip install --quiet "$(TORCH)"
	$(PY) -m pip install --quiet -e ".[lab,dev]"
	touch $(STAMP)

run: $(STAMP)
	$(VENV)/bin/softmaxlab compare --dataset digits --out runs/compare-digits

lint: $(STAMP)
	$(PY) -c "import ruff, mypy" 2>/dev/null || $(PY) -m pip install --quiet -e ".[lint]"
	$(PY) -m ruff check src tests
	$(PY) -m mypy

test: $(STAMP)
	$(PY) -m pytest -q -n 2 --ignore=tests/kernels/triton
	$(PY) -m pytest -q -n 2 tests/kernels/triton
	if $(PY) -c "import sys, torch; sys.exit(not torch.cuda.is_available())"; then \
		TRITON_INTERPRET=1 $(PY) -m pytest -q -n 2 tests/kernels/triton; fi

clean:
	rm -rf $(VENV) build src/*.egg-info .pytest_cache .hypothesis .mypy_cache .ruff_cache

clean-cache:  # numba's kernel cache and the launch trampolines (after editing kernels/cpu/_jit.py)
	find src -name '*.nbi' -delete -o -name '*.nbc' -delete
	rm -rf $${SOFTMAXLAB_CACHE_DIR:-$$HOME/.cache/softmaxlab}
