# One-command entry points. Each target installs what it needs into .venv first.
PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed-stamp

.PHONY: setup demo test lint format bench clean

$(STAMP): pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --disable-pip-version-check -e ".[dev]"
	touch $(STAMP)

setup: $(STAMP) ## create .venv and install the project with its dev tools

demo: setup ## segment the sample photographs with ccnet-tiny; results in out/demo
	$(BIN)/ccnet models
	$(BIN)/ccnet predict --sample astronaut --sample coffee --sample camera -o out/demo

test: setup lint ## lint, then the whole test suite
	$(BIN)/python -m pytest

lint: setup
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .

format: setup
	$(BIN)/ruff check --fix .
	$(BIN)/ruff format .

bench: setup ## the benchmarks behind BENCHMARKS.md
	$(BIN)/python -m bench.cca_op
	$(BIN)/python -m bench.rcca_vs_nonlocal

clean:
	rm -rf $(VENV) out .pytest_cache .ruff_cache *.egg-info
