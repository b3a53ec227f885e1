# Two commands do everything on a fresh machine:
#   make demo   set up .venv and run the demo (bundled model, uncached vs cached: speedup, PSNR, accuracy)
#   make test   set up .venv and run the test suite (what CI runs)
PY ?= python3
VENV := .venv
BIN := $(VENV)/bin

$(BIN)/.installed: pyproject.toml
	$(PY) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip
	# torch first, pinned: this CPU build installs from the machine's disk; an unpinned torch pulls a multi-GB CUDA build
	$(BIN)/pip install -q torch==2.13.0
	$(BIN)/pip install -q -e ".[test]"
	touch $@

setup: $(BIN)/.installed

demo: setup
	$(BIN)/python -m cachedit.demo

test: setup
	$(BIN)/python -m pytest -q

bench: setup
	$(BIN)/python -m benchmarks.run

.PHONY: setup demo test bench
