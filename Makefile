# `make demo` and `make test` install into .venv on first use; nothing needs to be installed by hand.
PYTHON ?= python3.11
VENV   := .venv
PY     := $(VENV)/bin/python
STAMP  := $(VENV)/.installed

.PHONY: demo test install clean build

install: $(STAMP)

# torch==2.13.0 first: on this project's machines pip takes the CPU build from local disk (an unpinned torch would
# pull a multi-GB CUDA build); the package's own `torch>=2.4` is then already satisfied.
$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q torch==2.13.0
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
