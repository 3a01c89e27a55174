# One-command entry points. Each target installs what it needs into .venv first.
PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed-stamp

.PHONY: setup serve demo test lint format bench clean docker-lint

$(STAMP): pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --disable-pip-version-check -e ".[dev]"
	touch $(STAMP)

setup: $(STAMP) ## create .venv and install the project with its dev tools

serve: setup ## serve the demo models on http://127.0.0.1:8000 (demo page at /)
	$(BIN)/ccnet serve --log-format text

demo: setup ## segment the sample photographs with the demo model; results in out/demo
	$(BIN)/ccnet predict --sample astronaut --sample coffee --sample camera -o out/demo

test: setup lint ## lint, then the whole test suite
	$(BIN)/python -m pytest

lint: setup
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .

format: setup
	$(BIN)/ruff check --fix .
	$(BIN)/ruff format .

docker-lint: setup ## hadolint both Dockerfiles, check docker-compose.yml against the Compose spec
	$(BIN)/hadolint --failure-threshold style docker/Dockerfile.cpu docker/Dockerfile.gpu
	$(BIN)/check-jsonschema --builtin-schema vendor.compose-spec docker-compose.yml

bench: setup ## the benchmarks behind BENCHMARKS.md
	$(BIN)/python -m bench.cca_op
	$(BIN)/python -m bench.rcca_vs_nonlocal
	$(BIN)/python -m bench.service_load

clean:
	rm -rf $(VENV) out .pytest_cache .ruff_cache *.egg-info
