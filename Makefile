# Set-up is part of every target: a fresh clone needs only `make repro` or `make test`.
PYTHON ?= python3.11
VENV := .venv
BASE := $(VENV)/.installed-base
TEAM := $(VENV)/.installed-team
DEV := $(VENV)/.installed-dev
PLOTS_PAGE := .dvc/plots-offline.html
PIP := $(VENV)/bin/python -m pip install --disable-pip-version-check

# Stage commands in dvc.yaml call plain `python`/`dvc`; put the venv first on PATH for them.
export PATH := $(CURDIR)/$(VENV)/bin:$(PATH)

.PHONY: setup setup-team setup-dev repro test test-fast repro-check lint format

# What `dvc repro` and predict need (torch's CUDA build, which also runs on the CPU: about 6.5 GB).
setup: $(BASE) $(PLOTS_PAGE)
# The team stack and sweeps on top (PostgreSQL driver, rclone, S3 for DVC, Optuna): docs/team.md.
setup-team: $(TEAM)
# Everything the test suite needs (the team layer and the test tools).
setup-dev: $(DEV) $(PLOTS_PAGE)

# The project itself is installed editable, so `import pipeline` works from anywhere without path tricks.
$(BASE): requirements.txt pyproject.toml
	@echo "set-up: creating $(VENV) with $(PYTHON) and installing requirements.txt (minutes on a first run)"
	@test -x $(VENV)/bin/python || $(PYTHON) -m venv $(VENV)
	@start=$$(date +%s); $(PIP) -r requirements.txt && $(PIP) -qq --no-deps -e . \
	  && echo "set-up: requirements.txt installed in $$(( $$(date +%s) - start )) s"
	@touch $@
$(TEAM): $(BASE) requirements-team.txt
	@$(PIP) -r requirements-team.txt && touch $@
$(DEV): $(TEAM) requirements-dev.txt
	@$(PIP) -r requirements-dev.txt && touch $@

# Vega bundled into DVC's plots page (from the npm registry, pinned), so `dvc plots show` draws offline.
$(PLOTS_PAGE): $(BASE) pipeline_tools/plots_template.py
	@echo "set-up: bundling Vega from the npm registry into $(PLOTS_PAGE) (a few seconds)"
	@python -m pipeline plots-template

repro: setup
	dvc repro

# Everything, as CI runs it. Whole files to each worker: a file's tests share one module-scoped
# project or stack, and test_team.py's build on each other (so not worksteal, which splits files;
# loadgroup stopped grouping with pytest 9.2, pytest-xdist#1386). xdist hands out the files with
# the most tests first.
test: setup-dev
	python -m pytest -n 2 --dist loadfile

# Unit and stage-error tests, no end-to-end pipeline runs: for iterating (under 2 minutes). No
# shared project here, so test by test: an idle worker takes over the other's queue.
test-fast: setup-dev
	python -m pytest -n 2 --dist worksteal -m "not e2e"

# Does this commit reproduce? Two clean runs of the CI configuration, compared with each other and
# with repro/reference.json (needs a clean work tree).
repro-check: setup
	python -m pipeline repro-check

# One formatter and linter (ruff, configured in pyproject.toml): `make lint` checks, `make format` fixes.
lint: setup-dev
	ruff check .
	ruff format --check .

format: setup-dev
	ruff format .
	ruff check --fix .
