# `make run` and `make test` each set up .venv when needed, then run.
PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed
CHECKOV_STAMP := .venv-checkov/.installed

.PHONY: setup run test lint format clean images

REGISTRY ?= ghcr.io/clipcite
VERSION  ?= 0.1.0

$(STAMP): requirements.txt requirements-pipeline.txt requirements-dev.txt pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip
	$(BIN)/python -m pip install -q -r requirements.txt -r requirements-pipeline.txt -r requirements-dev.txt
	$(BIN)/python -m pip install -q --no-deps -e .
	touch $(STAMP)

# checkov scans manifests/ and docker/ in the tests; it lives in its own venv (its pins clash with the runtime's).
$(CHECKOV_STAMP): requirements-checkov.txt
	test -x .venv-checkov/bin/python || $(PYTHON) -m venv .venv-checkov
	.venv-checkov/bin/python -m pip install -q -r requirements-checkov.txt
	touch $(CHECKOV_STAMP)

setup: $(STAMP)

run: setup
	$(BIN)/python pipeline.py run

lint: setup
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .

test: lint $(CHECKOV_STAMP)
	$(BIN)/python -m pytest -q

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
