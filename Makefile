VENV ?= .venv
BIN := $(VENV)/bin

.PHONY: setup demo test test-fast lint figures bench

setup: $(VENV)/.installed

$(VENV)/.installed: pyproject.toml scripts/setup.sh
	VENV=$(VENV) bash scripts/setup.sh
	touch $@

## Entropy profile of a real packaged model (SmolLM2-135M-Instruct) on the built-in prompts.
demo: setup
	$(BIN)/layerpolicy entropy --model smollm2-135m-instruct --limit 8 --out runs/demo

## The whole test suite: tiny random models, the packaged SmolLM2, the notebooks, the slow tests.
test: setup
	$(BIN)/ruff check .
	$(BIN)/pytest -q

## The tests without the slow ones (process launches, notebooks, Chromium, training runs,
## the real packaged models), on one thread (the tiny models run fastest so): a few minutes.
test-fast: setup
	OMP_NUM_THREADS=1 $(BIN)/pytest -q -m "not slow"

lint: setup
	$(BIN)/ruff check . && $(BIN)/ruff format --check .

## The README's figures, from the real packaged models on MATH-500.
figures: setup
	LAYERPOLICY_DATA=$${LAYERPOLICY_DATA:-$(CURDIR)/../shared/data} $(BIN)/python -m scripts.make_figures

## Speed and memory against the naive path, TransformerLens's logit lens and the matmul floor.
bench: setup
	LAYERPOLICY_DATA=$${LAYERPOLICY_DATA:-$(CURDIR)/../shared/data} $(BIN)/python benchmarks/bench_engine.py
