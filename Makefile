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
# pip lists each package it collects and shows a bar per download; the lines around it say what is happening
# and for how long.
$(STAMP): requirements.txt requirements-dev.txt pyproject.toml
	@echo "set-up 1/3: creating $(VENV) with $(PYTHON)"
	@$(PYTHON) -m venv $(VENV)
	@echo "set-up 2/3: installing the pinned requirements into $(VENV): about 6.5 GB (torch's CUDA build)," \
	      "about 4 minutes with pip's cache warm, longer when everything is downloaded"
	@start=$$(date +%s); \
	  $(VENV)/bin/python -m pip install --disable-pip-version-check -r requirements-dev.txt \
	  && $(VENV)/bin/python -m pip install --disable-pip-version-check -qq --no-deps -e . \
	  && echo "set-up 2/3: done in $$(( $$(date +%s) - start )) s"
	@touch $@

# Vega bundled into DVC's plots page (from the npm registry, pinned), so `dvc plots show` draws offline.
$(PLOTS_PAGE): $(STAMP) pipeline_tools/plots_template.py
	@echo "set-up 3/3: bundling Vega from the npm registry into $(PLOTS_PAGE) (a few seconds)"
	@python -m pipeline plots-template

repro: setup
	dvc repro

# Everything, as CI runs it (about 17-19 minutes on 2 cores).
test: setup
	python -m pytest -n 2 --dist loadfile

# Unit and stage-error tests, no end-to-end pipeline runs: for iterating (under 2 minutes).
test-fast: setup
	python -m pytest -n 2 --dist loadfile -m "not e2e"

# Does this commit reproduce? Two clean runs of the CI configuration, compared with each other and
# with repro/reference.json (needs a clean work tree).
repro-check: setup
	python -m pipeline repro-check
