# Every target creates .venv when it is missing; nothing needs a hand step.
PYTHON ?= python3
VENV   := .venv
PY     := $(VENV)/bin/python
PIP    := $(PY) -m pip
export LITELLM_LOCAL_MODEL_COST_MAP := True

.PHONY: venv install test clean

$(PY):
	$(PYTHON) -m venv $(VENV)
	$(PIP) install --upgrade --quiet pip

venv: $(PY)

# Installs the project with the test and proxy extras (the proxy tests start a real litellm proxy).
$(VENV)/.installed-test: pyproject.toml | $(PY)
	$(PIP) install --quiet -e ".[test,proxy]"
	touch $@

install: $(VENV)/.installed-test

test: $(VENV)/.installed-test
	$(PY) -m pytest -q

clean:
	rm -rf $(VENV) .pytest_cache build src/*.egg-info
