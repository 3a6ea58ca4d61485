# Two commands on a fresh Debian/Ubuntu machine (as root, or with sudo):
#   make run    set up and start the server with the embedded defaults
#   make test   set up and run the whole test suite
#   make bolt   bolt.diy on the local server: the server, a scripted LLM and bolt.diy switched
#               by integrations/bolt-diy/kit.py, on http://127.0.0.1:5173/
#   make image  build the sandbox root filesystem and load it into Docker as the docker runtime's
#               image cloudcontainer/sandbox:latest (needs a running Docker Engine)
PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin

.PHONY: run test bolt image setup setup-dev lint system-deps-run system-deps-image system-deps-test system-deps-bench bench clean

# The sandbox root filesystem first: a few minutes the first time, nothing to do after.
run: setup
	$(BIN)/cloudcontainer image build
	$(BIN)/cloudcontainer serve

test: system-deps-test setup-dev lint
	$(BIN)/pytest

bolt: setup
	@scripts/install-system-deps.sh bolt
	$(BIN)/cloudcontainer image build
	$(BIN)/python integrations/bolt-diy/local.py

image: system-deps-image setup
	$(BIN)/cloudcontainer image build --docker

setup: system-deps-run $(VENV)/.installed
setup-dev: setup $(VENV)/.installed-dev

lint: setup-dev
	$(BIN)/ruff check src tests bench integrations
	$(BIN)/ruff format --check src tests bench integrations
	$(BIN)/mypy src
	$(BIN)/lint-imports

bench: system-deps-bench setup-dev
	$(BIN)/python -m bench

system-deps-run:
	@scripts/install-system-deps.sh run

system-deps-image:
	@scripts/install-system-deps.sh image

system-deps-test:
	@scripts/install-system-deps.sh test

system-deps-bench:
	@scripts/install-system-deps.sh bench

$(VENV)/.installed: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	$(BIN)/pip install --quiet -e .
	touch $@

$(VENV)/.installed-dev: pyproject.toml $(VENV)/.installed
	$(BIN)/pip install --quiet -e '.[dev]'
	touch $@

clean:
	rm -rf $(VENV) .pytest_cache .mypy_cache .ruff_cache
