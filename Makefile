# Entry points for a fresh clone. Every target creates or reuses ./.venv.
#   make demo   set up, then run the built-in end-to-end job (no downloads)
#   make test   set up, then run the test suite (default: everything but `slow`)

PYTHON ?= $(shell command -v python3.11 || command -v python3)
VENV   := .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.setup-stamp
PYTEST_ARGS ?= -m "not slow"

.PHONY: setup demo test test-all lint env clean-venv

setup: $(STAMP)

# Order matters: torch first and pinned (a loose `torch` pulls a newer
# release), then fast-slic's build dependencies, then fast-slic without build
# isolation (its sdist cannot declare cython), then the project itself.
$(STAMP): pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install "torch==2.14.1" "torchvision==0.29.1"
	$(BIN)/python -m pip install cython "numpy>=1.26,<3"
	$(BIN)/python -m pip install --no-build-isolation "fast-slic==0.4.0"
	$(BIN)/python -m pip install -e ".[dev]"
	$(BIN)/python -c "import torch, torchvision, faiss, fast_slic, mmseg; print('setup ok: torch', torch.__version__)"
	touch $(STAMP)

demo: setup
	$(BIN)/auxseg demo

test: setup
	$(BIN)/python -m pytest $(PYTEST_ARGS)

test-all: setup
	$(BIN)/python -m pytest -m ""

lint: setup
	$(BIN)/ruff check .

env: setup
	$(BIN)/auxseg env

clean-venv:
	rm -rf $(VENV)
