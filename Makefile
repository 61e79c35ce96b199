# Fresh-machine entry points: `make demo` (main job on the embedded default) and `make test`.
PYTHON ?= python3
VENV   ?= .venv
BIN    := $(VENV)/bin
# The CPU wheel that lies on this kind of machine; elsewhere pip falls back to the package's range.
TORCH  ?= torch==2.13.0

.PHONY: setup demo test lint bench clean

setup: $(VENV)/.installed

$(VENV)/.installed: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install -q "$(TORCH)" || $(BIN)/pip install -q "torch>=2.1,<2.15"
	$(BIN)/pip install -q -e ".[test,fast]"
	touch $@

demo: setup
	$(BIN)/dualsae reproduce synthetic --quick --workers 2 --out runs/demo

test: setup lint
	$(BIN)/python -m pytest -p no:cacheprovider tests

# Layers (DESIGN.md: every import points down; contract in pyproject.toml) and ruff (lint + import order).
lint: setup
	$(BIN)/lint-imports
	$(BIN)/ruff check src tests benchmarks docs

bench: setup
	$(BIN)/python benchmarks/train_step.py
	$(BIN)/python benchmarks/topk.py
	$(BIN)/python benchmarks/correlation.py
	$(BIN)/python benchmarks/retrieval.py
	$(BIN)/python benchmarks/parallel_units.py

clean:
	rm -rf $(VENV) runs build src/*.egg-info
