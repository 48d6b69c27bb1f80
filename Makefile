# Set-up is part of every target: a fresh clone needs only `make repro` or `make test`.
PYTHON ?= python3.11
VENV := .venv
STAMP := $(VENV)/.installed

# Stage commands in dvc.yaml call plain `python`/`dvc`; put the venv first on PATH for them.
export PATH := $(CURDIR)/$(VENV)/bin:$(PATH)

.PHONY: setup repro test repro-check

setup: $(STAMP)

$(STAMP): requirements.txt requirements-dev.txt
	$(PYTHON) -m venv $(VENV)
	$(VENV)/bin/python -m pip install -qq -r requirements-dev.txt
	touch $@

repro: $(STAMP)
	dvc repro

test: $(STAMP)
	python -m pytest -n 2 --dist loadfile

# Does this commit reproduce? Two clean runs of the CI configuration, compared with each other and
# with repro/reference.json (needs a clean work tree).
repro-check: $(STAMP)
	python -m pipeline.repro_check
