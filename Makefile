# convlens: `make demo` opens the explainer on the bundled model, `make test` runs every check.
# Both build .venv on first use. torch is pinned to the CPU build first so that pip never
# resolves the range in pyproject.toml to a multi-GB CUDA wheel.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
TORCH := torch==2.13.0
APT_TEST_PKGS := chromium dataset-fashion-mnist

.PHONY: demo test lint typecheck pytest nodetest node-test-deps test-data venv dev-env system-packages demo-model clean

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	$(BIN)/pip install --quiet $(TORCH)

venv: $(BIN)/python

# The stamp is rebuilt when pyproject.toml changes, so `make test` also updates .venv.
$(VENV)/.dev-stamp: pyproject.toml | $(BIN)/python
	$(BIN)/pip install --quiet $(TORCH)
	$(BIN)/pip install --quiet -e '.[dev]'
	touch $@

$(VENV)/.demo-stamp: pyproject.toml | $(BIN)/python
	$(BIN)/pip install --quiet $(TORCH)
	$(BIN)/pip install --quiet -e '.[web]'
	touch $@

dev-env: $(VENV)/.dev-stamp

# Debian packages the tests use: Chromium for the browser tests, Fashion-MNIST for training.
system-packages:
	@missing=""; for p in $(APT_TEST_PKGS); do dpkg -s $$p >/dev/null 2>&1 || missing="$$missing $$p"; done; \
	if [ -n "$$missing" ]; then \
	  if [ "$$(id -u)" = 0 ]; then \
	    echo "installing Debian packages:$$missing"; \
	    apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq $$missing >/dev/null; \
	  else echo "warning: not root, cannot install:$$missing (the tests that need them will skip)"; fi; \
	fi

demo: $(VENV)/.demo-stamp
	$(BIN)/convlens demo

lint: dev-env
	$(BIN)/ruff check src tests benchmarks
	$(BIN)/ruff format --check src tests benchmarks

typecheck: dev-env
	$(BIN)/mypy

# TF.js in node (and published TF.js models) as the TF.js readers' reference runtime. Without
# npm, or if the install fails, those tests compare with committed TF.js outputs or skip.
NODE_TEST_STAMP := tests/js/node_modules/.convlens-stamp
$(NODE_TEST_STAMP): tests/js/package.json tests/js/package-lock.json
	@if command -v npm >/dev/null 2>&1; then \
	  npm ci --prefix tests/js --no-audit --no-fund --loglevel=error && touch $@ \
	    || echo "warning: npm ci failed; the TF.js reference tests use committed outputs or skip"; \
	else echo "warning: npm not found; the TF.js reference tests use committed outputs or skip"; fi

node-test-deps: $(NODE_TEST_STAMP)

# ONNX's own backend node tests ship in onnx wheels up to 1.17 (the venv has a newer onnx):
# the conformance tests read them from this wheel, downloaded once like any package.
ONNX_NODE_TESTS := tests/.cache/onnx-1.17.0-cp311-cp311-manylinux_2_17_x86_64.manylinux2014_x86_64.whl
$(ONNX_NODE_TESTS): | $(BIN)/python
	$(BIN)/pip download --quiet --no-deps --only-binary=:all: onnx==1.17.0 -d tests/.cache \
	  || echo "warning: could not fetch onnx 1.17.0; the ONNX conformance tests will skip"

test-data: $(ONNX_NODE_TESTS)

# --durations: the slowest tests named at the end of every run (the suite should stay under ~10 min)
pytest: dev-env system-packages node-test-deps test-data
	$(BIN)/pytest -q --durations=15

nodetest:
	@if [ -d src/convlens/web/static/tests ]; then node --test src/convlens/web/static/tests/; fi

test: lint typecheck nodetest pytest

# Regenerates the bundled demo weights (see README, "The demo model"). One thread keeps the
# run bit-for-bit repeatable (and is the fastest setting for this tiny network on a busy CPU).
demo-model: dev-env system-packages
	$(BIN)/convlens train --model tiny-vgg:in_channels=1,input_size=28 --dataset fashion-mnist \
	  --epochs 20 --lr-schedule cosine --seed 0 --threads 1 --out runs/demo --overwrite
	$(BIN)/python -m convlens.train.export_demo runs/demo

clean:
	rm -rf $(VENV) .pytest_cache .mypy_cache .ruff_cache

# Long fuzzing of every parser that reads untrusted bytes (images, model files) and of the web
# API; CI runs the same tests in their short, derandomized mode. Not part of `make test`.
.PHONY: fuzz
fuzz: dev-env
	CONVLENS_FUZZ=long KERAS_BACKEND=torch $(BIN)/pytest -q -p no:cacheprovider \
	  tests/test_fuzz_parsers.py $(wildcard tests/test_fuzz_web.py)
