# `make demo` and `make test` install into .venv on first use; nothing needs to be installed by hand.
PYTHON ?= python3.11
VENV   := .venv
PY     := $(VENV)/bin/python
STAMP  := $(VENV)/.installed

.PHONY: demo test install clean build

install: $(STAMP)

# torch and torchvision first, as a pair that imports together: on this project's machines pip takes both from local
# disk for Python 3.11 (a CUDA build of ~5.5 GB that runs on the CPU; PyPI's torchvision fails to import beside the
# torch 2.13.0 CPU file). The package's own `torch>=2.4` / `torchvision` ranges are then already satisfied.
# The pair that imports together differs by processor (both on local disk for Python 3.11 on this project's machines).
ifeq ($(shell uname -m),aarch64)
TORCH_PAIR := torch==2.9.1 torchvision==0.24.1
else
TORCH_PAIR := torch==2.14.1 torchvision==0.29.1
endif

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q $(TORCH_PAIR)
	$(PY) -m pip install -q -e '.[test]'
	touch $(STAMP)

demo: $(STAMP)
	$(PY) scripts/demo.py --out demo_output

test: $(STAMP)
	$(PY) -m pytest -q -ra tests

build: $(STAMP)
	$(PY) build.py

clean:
	rm -rf $(VENV) demo_output dist build *.egg-info
