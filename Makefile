# Two entry points for a newcomer: `make demo` (set up, then the main job end to end) and
# `make test` (set up, then the whole suite). Both create/update the local virtual environment .venv
# with every extra (`.[all,test]`). `make serve-env` builds .venv-serve: only what `aa-deploy serve`
# needs (`aa-deploy[serve]`, no torch, no transformers), installed from a wheel as a deployment would.
SHELL := /bin/bash
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
TORCH_VERSION ?= 2.13.0
# Where the GLUE folder is (tests that need it are skipped with a reason when it is missing). Exported
# only when it exists: the CLI takes $AA_GLUE_DIR as an explicit --data-dir and refuses a missing one.
AA_GLUE_DIR ?= $(wildcard $(abspath ../shared/data/glue))
THREADS ?= 2
# The suite runs in TEST_WORKERS pytest-xdist processes (0: one process). Much of it waits on servers,
# subprocesses and Ray nodes, so on a 2-core runner two workers take ~11 min where one takes ~16.5.
# `--dist load` (not loadfile/loadgroup): those schedulers key tests by node id and run only one of
# the OpenAPI fuzz cases, which share one id. Tests that share something outside their tmp_path hold a
# lock fixture (tests/conftest.py: ray_cluster_slot, repo_build_slot).
TEST_WORKERS ?= 2
PYTEST_WORKERS := $(if $(filter 0,$(TEST_WORKERS)),,-n $(TEST_WORKERS) --dist load)
STAMP := $(VENV)/.aa-deploy-installed
OPTIMUM_VENV ?= .venv-optimum
OPTIMUM_STAMP := $(OPTIMUM_VENV)/.installed
ADAPTERS_VENV ?= .venv-adapters
ADAPTERS_STAMP := $(ADAPTERS_VENV)/.installed
KSERVE_VENV ?= .venv-kserve
KSERVE_STAMP := $(KSERVE_VENV)/.installed
INFINITY_VENV ?= .venv-infinity
INFINITY_STAMP := $(INFINITY_VENV)/.installed
TORCH_CPU_INDEX ?= https://download.pytorch.org/whl/cpu
SERVE_VENV ?= .venv-serve
SERVE_EXTRA ?= serve
SERVE_STAMP := $(SERVE_VENV)/.installed-$(SERVE_EXTRA)
SERVE_WHEELS := build/serve-wheel
PACKAGE_SOURCES := $(shell find aa_deploy export serving -name '*.py' -o -name '*.csv' -o -name '*.md' 2>/dev/null)
ifneq ($(AA_GLUE_DIR),)
export AA_GLUE_DIR
endif

.PHONY: setup demo test test-fast bench-train clean torch-into optimum-env adapters-env serve-env kserve-env peers-env bench-peers

setup: $(STAMP)

# Re-install when a top-level package appears or changes shape: the editable install maps packages.
$(STAMP): pyproject.toml Makefile $(wildcard */__init__.py)
	@test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	@$(MAKE) --no-print-directory torch-into VENV_PY=$(PY)
	@# Linux x86_64 gets onnxruntime-gpu (its CPU provider works without a GPU); the two ORT wheels
	@# install the same module, so remove the CPU-only one first if something pulled it in.
	@if [ "$$(uname -s)-$$(uname -m)" = "Linux-x86_64" ] && $(PY) -m pip show -q onnxruntime >/dev/null 2>&1; then \
		$(PY) -m pip uninstall -y -q onnxruntime; \
	fi
	$(PY) -m pip install --quiet -e ".[all,test]"
	@$(PY) -c "import torch, onnxruntime; print('torch', torch.__version__, '| cuda build:', torch.version.cuda, '| onnxruntime', onnxruntime.__version__)"
	@touch $(STAMP)

# PyTorch: the CUDA build where an NVIDIA driver exists, else the (much smaller) CPU build from
# PyTorch's CPU index (a local-version "+cpu" wheel outranks PyPI's CUDA build). --retries 0 keeps
# a machine that cannot reach that index from waiting on it; torch's own dependencies come from PyPI.
torch-into:
	@if $(VENV_PY) -c "import torch, sys; sys.exit(0 if torch.__version__.split('+')[0] == '$(TORCH_VERSION)' else 1)" 2>/dev/null; then \
		echo "torch $(TORCH_VERSION) already installed"; \
	elif command -v nvidia-smi >/dev/null 2>&1; then \
		$(VENV_PY) -m pip install --quiet "torch==$(TORCH_VERSION)"; \
	else \
		$(VENV_PY) -m pip install --quiet --retries 0 --no-deps "torch==$(TORCH_VERSION)" --extra-index-url $(TORCH_CPU_INDEX) 2>&1 | grep -v -e "Retrying" -e "is ignored" || true; \
		$(VENV_PY) -m pip install --quiet "torch==$(TORCH_VERSION)"; \
	fi

# Optimum (optimum-onnx) pins transformers<4.58, so its interop test runs in an environment of its own.
$(OPTIMUM_STAMP): Makefile
	@test -x $(OPTIMUM_VENV)/bin/python || $(PYTHON) -m venv $(OPTIMUM_VENV)
	$(OPTIMUM_VENV)/bin/python -m pip install --quiet --upgrade pip
	@$(MAKE) --no-print-directory torch-into VENV_PY=$(OPTIMUM_VENV)/bin/python
	$(OPTIMUM_VENV)/bin/python -m pip install --quiet "optimum-onnx==0.1.0" onnxruntime
	@touch $(OPTIMUM_STAMP)

optimum-env: $(OPTIMUM_STAMP)

# AdapterHub's `adapters` 1.3.0 pins transformers~=4.57.6, so the test that loads our converted adapters
# with it (`aa-deploy convert --to adapters`) runs that environment's interpreter (AA_ADAPTERS_PYTHON).
$(ADAPTERS_STAMP): Makefile
	@test -x $(ADAPTERS_VENV)/bin/python || $(PYTHON) -m venv $(ADAPTERS_VENV)
	$(ADAPTERS_VENV)/bin/python -m pip install --quiet --upgrade pip
	@$(MAKE) --no-print-directory torch-into VENV_PY=$(ADAPTERS_VENV)/bin/python
	$(ADAPTERS_VENV)/bin/python -m pip install --quiet "adapters==1.3.0" safetensors
	@touch $(ADAPTERS_STAMP)

adapters-env: $(ADAPTERS_STAMP)

# The serving-only install, the same steps as docker/Dockerfile: build the project's wheel, then install
# it with one extra (SERVE_EXTRA=serve-cpu for the CPU-only ONNX Runtime) into a fresh environment.
$(SERVE_STAMP): pyproject.toml Makefile $(PACKAGE_SOURCES)
	@test -x $(SERVE_VENV)/bin/python || $(PYTHON) -m venv $(SERVE_VENV)
	$(SERVE_VENV)/bin/python -m pip install --quiet --upgrade pip
	rm -rf $(SERVE_WHEELS) && $(SERVE_VENV)/bin/python -m pip wheel --quiet --no-deps -w $(SERVE_WHEELS) .
	$(SERVE_VENV)/bin/python -m pip install --quiet --force-reinstall --no-deps $(SERVE_WHEELS)/aa_deploy-*.whl
	$(SERVE_VENV)/bin/python -m pip install --quiet "$$(ls $(SERVE_WHEELS)/aa_deploy-*.whl)[$(SERVE_EXTRA)]"
	@rm -f $(SERVE_VENV)/.installed-* && touch $(SERVE_STAMP)
	@du -sh $(SERVE_VENV)

serve-env: $(SERVE_STAMP)

# The KServe SDK pins protobuf<7, psutil<6 and python-dateutil<3 (older than this project's), so the tests
# that check our manifests against its typed models run its interpreter (AA_KSERVE_PYTHON) on a script.
$(KSERVE_STAMP): Makefile
	@test -x $(KSERVE_VENV)/bin/python || $(PYTHON) -m venv $(KSERVE_VENV)
	$(KSERVE_VENV)/bin/python -m pip install --quiet --upgrade pip
	$(KSERVE_VENV)/bin/python -m pip install --quiet "kserve==0.21.0" "kubernetes==37.0.1" pyyaml
	@touch $(KSERVE_STAMP)

kserve-env: $(KSERVE_STAMP)

# Peer servers for benchmarks/peers.py, each in its own environment: Infinity pins numpy<2 and (through
# optimum-onnx) transformers<4.58, which clash with this project's pins. Optimum 2 (optimum-onnx) is the
# line that imports with the CPU torch used here (Optimum 1.x needs a torch.onnx helper gone since 2.9).
$(INFINITY_STAMP): Makefile
	@test -x $(INFINITY_VENV)/bin/python || $(PYTHON) -m venv $(INFINITY_VENV)
	$(INFINITY_VENV)/bin/python -m pip install --quiet --upgrade pip
	@$(MAKE) --no-print-directory torch-into VENV_PY=$(INFINITY_VENV)/bin/python
	$(INFINITY_VENV)/bin/python -m pip install --quiet "infinity-emb[server,optimum]==0.0.78" \
		"optimum==2.1.0" "optimum-onnx[onnxruntime]==0.1.0" "numpy<2"
	@touch $(INFINITY_STAMP)

peers-env: $(INFINITY_STAMP)

bench-peers: setup peers-env
	$(PY) benchmarks/peers.py

demo: setup
	OMP_NUM_THREADS=$(THREADS) $(VENV)/bin/aa-deploy demo --output demo-output

test: setup optimum-env adapters-env kserve-env
	OMP_NUM_THREADS=$(THREADS) AA_OPTIMUM_PYTHON=$(abspath $(OPTIMUM_VENV))/bin/python \
		AA_ADAPTERS_PYTHON=$(abspath $(ADAPTERS_VENV))/bin/python \
		AA_KSERVE_PYTHON=$(abspath $(KSERVE_VENV))/bin/python $(PY) -m pytest -q $(PYTEST_WORKERS)

test-fast: setup
	OMP_NUM_THREADS=$(THREADS) $(PY) -m pytest -q -m "not slow" $(PYTEST_WORKERS)

bench-train: setup
	$(PY) benchmarks/train_step.py

clean:
	rm -rf $(VENV) $(OPTIMUM_VENV) $(ADAPTERS_VENV) $(KSERVE_VENV) $(INFINITY_VENV) $(SERVE_VENV) .venv-serve-cpu $(SERVE_WHEELS) demo-output .pytest_cache
