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
	$(CVTOOL) export $(DEMO_DIR) --onnx $(DEMO_DIR)/digits.onnx
	$(CVTOOL) predict $(DEMO_DIR)/digits.onnx data/digits/test --out $(DEMO_DIR)/submission.csv --quiet
	head -4 $(DEMO_DIR)/submission.csv

test: install
	$(PY) -m pytest -q

lint: install
	$(VENV)/bin/ruff check cvtool tests

# Issue 7's figures, each with its target (about 2 minutes on 2 cores; 3 the first time, when
# the data and models are made: 7200-image PNG folders at 64 and 28 px, resnet18 and
# efficientnet_b0 trained for two batches and exported). Measure on a quiet machine.
BENCH_DIR ?= runs/bench

bench: install
	test -d data/bench-64 || $(CVTOOL) data synthetic data/bench-64 --n 7200 --size 64 --seed 0
	test -d data/bench-28 || $(CVTOOL) data synthetic data/bench-28 --n 7200 --size 28 --seed 1
	for arch in resnet18 efficientnet_b0; do \
	  test -f $(BENCH_DIR)/$$arch.onnx || { \
	    $(CVTOOL) train recipes/bench/$${arch}_64.yaml --set train.max_batches=2 --out $(BENCH_DIR)/$$arch \
	      --overwrite --quiet > /dev/null && \
	    $(CVTOOL) export $(BENCH_DIR)/$$arch --onnx $(BENCH_DIR)/$$arch.onnx > /dev/null; } || exit 1; \
	done
	$(CVTOOL) bench startup
	$(CVTOOL) bench train recipes/bench/resnet18_64.yaml --target 0.95
	$(CVTOOL) bench train recipes/bench/simplenet_28.yaml --target 0.90 --rounds 8
	$(CVTOOL) bench predict $(BENCH_DIR)/resnet18.onnx --images data/bench-64/test
	$(CVTOOL) bench predict $(BENCH_DIR)/efficientnet_b0.onnx --images data/bench-64/test

clean:
	rm -rf runs data/digits .pytest_cache
