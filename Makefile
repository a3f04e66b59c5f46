# Two entry points (see README): `make demo` and `make test`. Both create .venv on first use.
PYTHON ?= python3
VENV   ?= .venv
PY     := $(VENV)/bin/python
STAMP  := $(VENV)/.fusegen-installed

.PHONY: demo test test-slow lint venv clean

venv: $(STAMP)

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -e ".[dev,text,bench,rl,ship]"
	touch $(STAMP)

demo: $(STAMP)   ## a short real experiment per capability, a results table and pictures under runs/demo/
	$(PY) -m experiments.demo

test: $(STAMP)   ## the default test suite (slow tests excluded)
	$(PY) -m pytest -q --durations=15

test-slow: $(STAMP)
	$(PY) -m pytest -q -m slow

lint: $(STAMP)   ## ruff (rules and line length in pyproject.toml)
	$(PY) -m ruff check .

clean:
	rm -rf runs .pytest_cache
