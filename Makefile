# One-command entry points. Each target installs what it needs into .venv first.
PYTHON ?= python3
PORT   ?= 8000
HOST   ?= 127.0.0.1
VENV   := .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed-stamp

.PHONY: setup serve demo test lint format bench clean docker-lint help

$(STAMP): pyproject.toml
	@echo "==> installing the project and its dev tools into $(VENV) (once; a few minutes)"
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --disable-pip-version-check --progress-bar off -e ".[dev]"
	touch $(STAMP)
	@echo "==> installed: $(BIN)/ccnet"

help: ## list the targets
	@grep -E '^[a-z-]+:.*## ' $(MAKEFILE_LIST) | sed 's/:.*## /\t/' | expand -t 14

setup: $(STAMP) ## create .venv and install the project with its dev tools

serve: setup ## serve the demo models on http://127.0.0.1:8000, demo page at / (PORT=, HOST= change them)
	$(BIN)/ccnet serve --log-format text --host $(HOST) --port $(PORT)

demo: setup ## segment the sample photographs with the demo model; results in out/demo
	$(BIN)/ccnet predict --sample astronaut --sample coffee --sample camera -o out/demo

test: setup lint ## lint, then the whole test suite
	$(BIN)/python -m pytest

lint: setup
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .
	$(BIN)/lint-imports

format: setup
	$(BIN)/ruff check --fix .
	$(BIN)/ruff format .

docker-lint: setup ## hadolint both Dockerfiles, check docker-compose.yml against the Compose spec
	$(BIN)/hadolint --failure-threshold style docker/Dockerfile.cpu docker/Dockerfile.gpu
	$(BIN)/check-jsonschema --builtin-schema vendor.compose-spec docker-compose.yml

.PHONY: docker-test
docker-test: setup ## build and run the CPU image, compose, nginx, promtool (tests/deploy)
	-.ci/docker-engine.sh
	$(BIN)/python -m pytest tests/deploy -rs

bench: setup ## the benchmarks behind BENCHMARKS.md
	$(BIN)/python -m bench.cca_op
	$(BIN)/python -m bench.rcca_vs_nonlocal
	$(BIN)/python -m bench.service_load

clean:
	rm -rf $(VENV) out .pytest_cache .ruff_cache *.egg-info
