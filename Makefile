# The two commands a fresh clone needs:  `make demo`  and  `make test`.
PYTHON ?= python3
VENV   := .venv
PY     := $(VENV)/bin/python
PIP    := $(PY) -m pip
STAMP  := $(VENV)/.installed

.PHONY: install demo test test-slow bench clean

install: $(STAMP)

$(STAMP): pyproject.toml Makefile
	$(PYTHON) -m venv $(VENV)
	$(PIP) install -q --upgrade pip
	# CPU build of torch first (an unpinned torch would pull a multi-GB CUDA build).
	$(PIP) install -q torch==2.13.0
	$(PIP) install -q -e '.[dev]'
	# Waymo message classes only; their declared deps (TensorFlow, old numpy) are not needed.
	$(PIP) install -q --no-deps waymo-open-dataset-tf-2-12-0==1.6.7
	# Compile the scorer's numba kernels once (cached in __pycache__; ~30 s on 2 cores).
	$(VENV)/bin/rap bench-score --proposals 16 --scenes 2 --repeats 1 > /dev/null
	touch $(STAMP)

demo: install
	$(VENV)/bin/rap demo

test: install
	$(PY) -X dev -m pytest

test-slow: install
	$(PY) -m pytest -q -m slow

bench: install
	$(PY) benchmarks/bench_render.py
	$(PY) benchmarks/bench_photo.py
	$(PY) benchmarks/bench_generate.py
	$(PY) benchmarks/bench_score.py
	$(PY) benchmarks/bench_train.py
	$(PY) benchmarks/bench_closed_loop.py

clean:
	rm -rf $(VENV) out .pytest_cache
