# Inside an active virtual environment (or with PYTHON=... given) that interpreter is used; otherwise a
# project-local .venv is created first, so the commands also work where the system Python refuses pip
# installs (PEP 668: Debian 12, Ubuntu 23.04+).
ifeq ($(origin PYTHON),undefined)
ifdef VIRTUAL_ENV
PYTHON := python3
else
PYTHON := .venv/bin/python
VENV := .venv/bin/python
endif
endif
PIP := $(PYTHON) -m pip install --quiet --disable-pip-version-check
# A torch that is already installed and recent enough is kept; otherwise take the CPU 2.13 build.
TORCH_OK := $(PYTHON) -c "import sys, torch; sys.exit(tuple(int(x) for x in torch.__version__.split('+')[0].split('.')[:2]) < (2, 5))"

.PHONY: install install-dev assets demo test test-fast bench clean

.venv/bin/python:
	python3 -m venv .venv

install: $(VENV)
	@$(TORCH_OK) 2>/dev/null || $(PIP) "torch==2.13.0"
	$(PIP) -r requirements.txt

install-dev: install
	$(PIP) -r requirements-dev.txt
	$(PIP) --no-deps apollo-torch==1.0.3 badam==1.4

assets: install
	$(PYTHON) -m common.assets

demo: assets
	$(PYTHON) scripts/demo.py

# Parallel workers: much of the suite waits on subprocesses (torchrun, train.py runs), so 3 workers keep 2 cores busy.
JOBS ?= 3

test: install-dev assets
	$(PYTHON) -m pytest -q tests -n $(JOBS) --maxschedchunk 2

# the inner loop: everything but the slow, torchrun and other-library tests (pytest.ini lists the markers)
test-fast: install-dev assets
	$(PYTHON) -m pytest -q tests -n $(JOBS) --maxschedchunk 2 -m "not slow and not distributed and not interop"

clean:
	rm -rf runs .pytest_cache .hypothesis
