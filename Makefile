# Two entry points for a newcomer: `make demo` (set up, then the main job end to end) and
# `make test` (set up, then the whole suite). Both create/update the local virtual environment .venv.
SHELL := /bin/bash
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
TORCH_VERSION ?= 2.13.0
# Where the GLUE folder is (tests that need it are skipped with a reason when it is missing).
AA_GLUE_DIR ?= $(abspath ../shared/data/glue)
THREADS ?= 2
STAMP := $(VENV)/.aa-deploy-installed
export AA_GLUE_DIR

.PHONY: setup demo test test-fast bench-train clean

setup: $(STAMP)

$(STAMP): pyproject.toml Makefile
	@test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	@# PyTorch: the CUDA build where an NVIDIA driver exists, else the (much smaller) CPU build.
	@if command -v nvidia-smi >/dev/null 2>&1; then \
		$(PY) -m pip install --quiet "torch==$(TORCH_VERSION)"; \
	else \
		$(PY) -m pip install --quiet "torch==$(TORCH_VERSION)" --extra-index-url https://download.pytorch.org/whl/cpu; \
	fi
	@# Linux x86_64 gets onnxruntime-gpu (its CPU provider works without a GPU); the two ORT wheels
	@# install the same module, so remove the CPU-only one first if something pulled it in.
	@if [ "$$(uname -s)-$$(uname -m)" = "Linux-x86_64" ] && $(PY) -m pip show -q onnxruntime >/dev/null 2>&1; then \
		$(PY) -m pip uninstall -y -q onnxruntime; \
	fi
	$(PY) -m pip install --quiet -e ".[test]"
	@$(PY) -c "import torch, onnxruntime; print('torch', torch.__version__, '| cuda build:', torch.version.cuda, '| onnxruntime', onnxruntime.__version__)"
	@touch $(STAMP)

demo: setup
	OMP_NUM_THREADS=$(THREADS) $(VENV)/bin/aa-deploy demo --output demo-output

test: setup
	OMP_NUM_THREADS=$(THREADS) $(PY) -m pytest -q

test-fast: setup
	OMP_NUM_THREADS=$(THREADS) $(PY) -m pytest -q -m "not slow"

bench-train: setup
	$(PY) benchmarks/train_step.py

clean:
	rm -rf $(VENV) demo-output .pytest_cache
