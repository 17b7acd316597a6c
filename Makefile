# The two set-up commands: `make demo` runs the main job on embedded defaults, `make test` runs the test suite.
PY ?= python3.11
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
export NO_ALBUMENTATIONS_UPDATE := 1
export HF_HUB_OFFLINE := 1
export TRANSFORMERS_OFFLINE := 1
export DAGSTER_HOME ?= $(CURDIR)/.dagster_home
export TOKENIZERS_PARALLELISM := false

.PHONY: install demo test ui bench clean

$(STAMP): requirements-cpu.txt pyproject.toml
	test -d $(VENV) || $(PY) -m venv $(VENV)
	$(BIN)/pip install -q -r requirements-cpu.txt
	# xgrammar's hard dependency on triton (1 GB) is only used for GPU kernels; install it without deps on CPU.
	$(BIN)/pip install -q --no-deps xgrammar==0.2.8
	$(BIN)/pip install -q --no-deps --no-build-isolation -e .
	touch $(STAMP)

install: $(STAMP)

demo: $(STAMP)
	$(BIN)/npedit demo

test: $(STAMP)
	$(BIN)/python -m pytest

bench: $(STAMP)
	$(BIN)/python -m benchmarks.run_all

ui: $(STAMP)
	$(BIN)/npedit ui

clean:
	rm -rf $(VENV) .dagster_home build *.egg-info
