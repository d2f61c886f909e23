# Two entry points for a newcomer (see README.md):
#   make demo   set everything up, then run `slmk demo` on the embedded tiny model
#   make test   set everything up, then lint (ruff) and run the test suite
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
# Where pip finds the CPU build of torch. Empty: pip's configured indexes (on these
# machines a CPU wheel of torch 2.13.0 lies in the configured find-links). Elsewhere on
# Linux: make setup TORCH_INDEX_URL=https://download.pytorch.org/whl/cpu
TORCH_INDEX_URL ?=
TORCH_VERSION := 2.13.0

export ORT_DISABLE_TELEMETRY := 1
export OLIVE_DISABLE_TELEMETRY := 1
export DO_NOT_TRACK := 1

.PHONY: setup test-tools demo lint test test-fast bench clean

setup: $(BIN)/.slmk-installed

$(BIN)/.slmk-installed: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	# torch first, pinned: an unpinned torch on Linux pulls a multi-GB CUDA build.
	$(BIN)/python -m pip install --quiet "torch==$(TORCH_VERSION)" $(if $(TORCH_INDEX_URL),--index-url $(TORCH_INDEX_URL))
	$(BIN)/python -m pip install --quiet -e ".[all,test]"
	$(BIN)/python -m pip check
	touch $@

demo: setup
	$(BIN)/slmk demo

lint: setup
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .

# tests/test_no_network.py watches every command with strace; installed only when missing
test-tools:
	@command -v strace >/dev/null 2>&1 || { apt-get update -qq && apt-get install -y -qq strace; } \
		|| echo "warning: strace is missing and could not be installed; tests/test_no_network.py will fail" >&2

test: setup test-tools lint
	$(BIN)/python -m pytest -q

test-fast: setup
	$(BIN)/python -m pytest -q -m "not slow"

bench: setup
	$(BIN)/python benchmarks/cli_and_convert.py

clean:
	rm -rf $(VENV) build .pytest_cache
