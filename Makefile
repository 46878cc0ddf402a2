# cvtool: `make demo` and `make test` each install into .venv first when needed.
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
CVTOOL := $(VENV)/bin/cvtool
DEMO_DIR ?= runs/demo

.PHONY: install demo test test-slow test-all lint bench clean gpu-check gpu-wheels

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

# The suite without the end-to-end tests marked slow (a few minutes on 2 cores); test-all adds
# them (CI runs both).
test: install
	$(PY) -m pytest -q -m "not slow"

test-slow: install
	$(PY) -m pytest -q -m slow

test-all: test test-slow

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

# The CUDA paths on one GPU in at most 8 minutes (tests/test_gpu.py, `cvtool bench train` for
# resnet18 64 px and efficientnet_b0 224 px through the loader and on_device, the side-by-side run
# with timm's train.py when .bench/timm holds it, one summary table); without CUDA the tests skip
# and it says so. It runs under GPU_PYTHON (the GPU machine's python3, not .venv); packages that machine
# lacks come from the wheels `make gpu-wheels` saves into GPU_WHEELS.
GPU_PYTHON ?= python3
GPU_WHEELS ?= .whl
# What a torch + torchvision + onnx + onnxruntime image usually lacks, pinned to the versions tested here
GPU_WHEEL_PINS ?= pydantic==2.14.4 pydantic-core==2.50.5 annotated-types==0.8.0 typing-inspection==0.4.5 \
  typing-extensions==4.16.0

GPU_CHECK_ARGS ?= --side-by-side

gpu-check:
	GPU_PYTHON=$(GPU_PYTHON) GPU_WHEELS=$(GPU_WHEELS) scripts/gpu_check.sh $(GPU_CHECK_ARGS)

gpu-wheels:
	$(PYTHON) -m pip download --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
	  --platform manylinux_2_28_x86_64 --platform manylinux_2_17_x86_64 --platform manylinux2014_x86_64 \
	  -d $(GPU_WHEELS) $(GPU_WHEEL_PINS)

clean:
	rm -rf runs data/digits .pytest_cache
