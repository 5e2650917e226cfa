# The two commands a new user runs: `make demo` and `make test`.
# TORCH_SPEC picks the torch build; the default is the local CPU build. GPU users:
#   make demo TORCH_SPEC="torch"   (or any CUDA wheel spec)
PYTHON ?= python3
VENV ?= .venv
TORCH_SPEC ?= torch==2.13.0
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed

.PHONY: demo test lint bench venv clean

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet "$(TORCH_SPEC)"
	$(PY) -m pip install --quiet -e ".[dev,triton]"
	touch $(STAMP)

venv: $(STAMP)

demo: $(STAMP)
	$(VENV)/bin/depthkv demo $(DEMO_ARGS)

test: $(STAMP)
	$(VENV)/bin/ruff check depthkv tests benchmarks
	TRITON_INTERPRET=1 $(PY) -m pytest tests $(TEST_ARGS)

bench: $(STAMP)
	$(PY) -m pytest benchmarks --benchmark-only --benchmark-json=benchmarks/results/cpu.json

clean:
	rm -rf $(VENV) reports
