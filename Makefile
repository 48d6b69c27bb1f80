# Set-up is part of every target: a fresh clone needs only `make repro` or `make test`.
PYTHON ?= python3.11
VENV := .venv
STAMP := $(VENV)/.installed
PLOTS_PAGE := .dvc/plots-offline.html

# Stage commands in dvc.yaml call plain `python`/`dvc`; put the venv first on PATH for them.
export PATH := $(CURDIR)/$(VENV)/bin:$(PATH)

.PHONY: setup repro test test-fast repro-check

setup: $(STAMP) $(PLOTS_PAGE)

# The project itself is installed editable, so `import pipeline` works from anywhere without path tricks.
$(STAMP): requirements.txt requirements-dev.txt pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(VENV)/bin/python -m pip install -qq -r requirements-dev.txt
	$(VENV)/bin/python -m pip install -qq --no-deps -e .
	touch $@

# Vega bundled into DVC's plots page (from the npm registry, pinned), so `dvc plots show` draws offline.
$(PLOTS_PAGE): $(STAMP) pipeline/tools/plots_template.py
	python -m pipeline plots-template

repro: setup
	dvc repro

# Everything, as CI runs it (about 16 minutes on 2 cores).
test: setup
	python -m pytest -n 2 --dist loadfile

# Unit and stage-error tests, no end-to-end pipeline runs: for iterating (under 2 minutes).
test-fast: setup
	python -m pytest -n 2 --dist loadfile -m "not e2e"

# Does this commit reproduce? Two clean runs of the CI configuration, compared with each other and
# with repro/reference.json (needs a clean work tree).
repro-check: setup
	python -m pipeline repro-check
