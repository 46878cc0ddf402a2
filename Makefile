# cvtool: `make demo` and `make test` each install into .venv first when needed.
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
CVTOOL := $(VENV)/bin/cvtool
DEMO_DIR ?= runs/demo

.PHONY: install demo test lint bench clean

install: $(VENV)/.installed

$(VENV)/.installed: pyproject.toml
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -e ".[dev]"
	touch $@

demo: install
	$(CVTOOL) data digits data/digits
	$(CVTOOL) stats data/digits --recipe recipes/digits.yaml
	$(CVTOOL) train recipes/digits.yaml --out $(DEMO_DIR) --overwrite

test: install
	$(PY) -m pytest -q

lint: install
	$(VENV)/bin/ruff check cvtool tests

clean:
	rm -rf runs data/digits .pytest_cache
