# Two commands do everything on a fresh machine:
#   make demo   set up .venv and run the demo (bundled model, uncached vs cached: speedup, PSNR, accuracy)
#   make test   set up .venv and run the whole test suite, ComfyUI integration tests included (what CI runs)
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

# `make test` runs every test, and a skipped test fails it (scripts/pytest_no_skips.py):
# * tests/comfyui runs in ComfyUI: COMFYUI_PATH=/your/ComfyUI when set, else the pinned source tarball
#   (COMFYUI_TARBALL, default ../shared/comfyui/ComfyUI-a125cd84.tar.gz) unpacked once outside the
#   repository; its requirements go into .venv (scripts/comfyui_for_tests.sh);
# * the inductor compile test runs too (CACHEDIT_TEST_INDUCTOR=1, about a minute);
# * the node pack's behaviour outside ComfyUI is checked first, in a process without ComfyUI;
# * 2 pytest-xdist workers (each test uses one torch thread; worksteal: the few minute-long compile tests
#   don't leave one worker idle at the end). TEST_ARGS adds pytest arguments.
OUTSIDE_COMFYUI := tests/test_nodes.py::test_root_package_outside_comfyui_registers_nothing
PYTEST := $(BIN)/python -m pytest -p scripts.pytest_no_skips
TEST_ARGS ?=

test: setup
	env -u COMFYUI_PATH $(PYTEST) -q $(OUTSIDE_COMFYUI)
	comfy="$$(scripts/comfyui_for_tests.sh $(BIN)/python)" && \
	COMFYUI_PATH="$$comfy" CACHEDIT_TEST_INDUCTOR=1 $(PYTEST) -q -n 2 --dist worksteal --deselect $(OUTSIDE_COMFYUI) $(TEST_ARGS)

bench: setup
	$(BIN)/python -m benchmarks.run

.PHONY: setup demo test bench
