# pacsnode — the two set-up commands are `make run` and `make test`.
SHELL := /bin/bash
VENV  ?= .venv
PY    := $(VENV)/bin/python
STAMP := $(VENV)/.installed-stamp

.PHONY: run test bench deps system-deps clean

# Python side: a venv with pacsnode (editable); `deps` adds the test tools,
# `make run` needs only what the node itself needs.
RUNTIME_STAMP := $(VENV)/.runtime-stamp

$(RUNTIME_STAMP): pyproject.toml
	python3 -m venv $(VENV)
	$(VENV)/bin/pip install -q --upgrade pip
	$(VENV)/bin/pip install -q -e .
	touch $(RUNTIME_STAMP)

$(STAMP): $(RUNTIME_STAMP)
	$(VENV)/bin/pip install -q -e '.[test]'
	touch $(STAMP)

deps: $(STAMP)

# System side: DCMTK, Orthanc (+DICOMweb plugin), PostgreSQL, dicom3tools.
# Installed with apt when run as root; otherwise the tests needing them skip
# (or fail under CI=true) with a message naming what to install.
system-deps:
	bash scripts/install-system-deps.sh

run: $(RUNTIME_STAMP)
	$(VENV)/bin/pacsnode serve --data-dir ./pacsnode-data

test: system-deps deps
	TCP_NODELAY=1 $(VENV)/bin/python -m pytest -q

bench: system-deps deps
	TCP_NODELAY=1 $(VENV)/bin/python -m bench

clean:
	rm -rf $(VENV) build src/*.egg-info .pytest_cache
