# celeb-smile: every command a user or CI runs. `make help` lists them.
SHELL := /bin/bash
PYTHON ?= python3.11
VENV := .venv
BIN := $(VENV)/bin
REGISTRY ?= localhost:5001
TRAIN_IMAGE := $(REGISTRY)/celeb-smile-train:0.1.0
# A detached sweep's controller (driver.py --detach): beside the training image, same tag.
CONTROLLER_IMAGE := $(REGISTRY)/celeb-smile-controller:0.1.0
# MLproject's docker_env image: `mlflow run --build-image` layers the project on it locally.
PROJECT_IMAGE := localhost:5001/celeb-smile-train:0.1.0
# The server's tag is k8s/tracking/kustomization.yaml's (bumped whenever the image changes).
SERVER_IMAGE := $(REGISTRY)/celeb-smile-mlflow:3.17.2-r6
# The images' base: a tag, or tag@sha256:<digest> to pin it (a registry's digest; the local
# stand-in has none). PostgreSQL's image: k8s/tracking/kustomization.yaml (`digest:` pins it).
PYTHON_IMAGE ?= python:3.11-slim
NAMESPACE ?= celeb-smile
# Trials, controllers and the people running sweeps work here; the server and its database
# (and their Secrets) in $(NAMESPACE) (celeb_smile/deploy.py SWEEPS_SUFFIX).
SWEEPS_NAMESPACE := $(NAMESPACE)-sweeps
KUBECTL ?= kubectl
PYTEST_ARGS ?=

.PHONY: help venv test test-unit sweep cluster images deploy ui data port-forward undeploy clean

help:  ## list the targets
	@grep -E '^[a-z-]+:.*## ' $(MAKEFILE_LIST) | awk -F':.*## ' '{printf "  %-14s %s\n", $$1, $$2}'

$(BIN)/.installed: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	$(BIN)/pip install --quiet -e '.[driver,test]'
	touch $@

venv: $(BIN)/.installed  ## create .venv with the project, driver and test dependencies

test: venv  ## run every test (cluster tests skip, loudly, when no cluster is reachable)
	$(BIN)/pytest $(PYTEST_ARGS)

test-unit: venv  ## run the fast unit tests only
	$(BIN)/pytest -m "not integration and not docker and not cluster" $(PYTEST_ARGS)

sweep: venv  ## run the default sweep locally (synthetic data, sqlite store in ./mlflow.db)
	$(BIN)/python driver.py

cluster:  ## create (or reuse) a kind cluster wired to a registry on localhost:5001
	scripts/kind-cluster.sh

images:  ## build the training, controller and tracking-server images and push them to $(REGISTRY)
	docker build --build-arg PYTHON_IMAGE=$(PYTHON_IMAGE) -t $(TRAIN_IMAGE) -t $(PROJECT_IMAGE) .
	docker build --build-arg PYTHON_IMAGE=$(PYTHON_IMAGE) -t $(CONTROLLER_IMAGE) -f k8s/controller/Dockerfile .
	docker build --build-arg PYTHON_IMAGE=$(PYTHON_IMAGE) -t $(SERVER_IMAGE) -f k8s/server/Dockerfile .
	docker push $(TRAIN_IMAGE)
	docker push $(CONTROLLER_IMAGE)
	docker push $(SERVER_IMAGE)

deploy:  ## deploy the tracking server and PostgreSQL into $(NAMESPACE), the sweeps' part into $(NAMESPACE)-sweeps
	@# Writes .deploy/$(NAMESPACE)/ (git-ignored: the overlay, the backend config, and random
	@# secrets made on first use), applies it, and waits until both Deployments are ready.
	overlay=$$($(PYTHON) -m celeb_smile.deploy --namespace '$(NAMESPACE)' --registry '$(REGISTRY)') \
	  && $(KUBECTL) apply -k "$$overlay" \
	  && $(KUBECTL) -n '$(NAMESPACE)' rollout status deployment/postgres --timeout=300s \
	  && $(KUBECTL) -n '$(NAMESPACE)' rollout status deployment/mlflow --timeout=300s \
	  && echo "deployed: tracking server in namespace $(NAMESPACE), sweeps in $(SWEEPS_NAMESPACE); backend config: $$overlay/kubernetes_config.json"

ui: venv  ## open the in-cluster MLflow UI on http://127.0.0.1:5000 (follows the server's pod; Ctrl-C ends)
	$(BIN)/python scripts/tracking.py --namespace $(NAMESPACE)

data:  ## prepare CelebA into the tfds-data volume (a Job; needs `make images` and a network reaching CelebA)
	scripts/prepare-data.sh $(SWEEPS_NAMESPACE) $(TRAIN_IMAGE)

port-forward:  ## plain `kubectl port-forward` to the server (ends when its pod does; prefer `make ui`)
	$(KUBECTL) -n '$(NAMESPACE)' port-forward service/mlflow 5000:5000

undeploy:  ## delete namespaces $(NAMESPACE) and $(NAMESPACE)-sweeps: server, database, volumes, every Job
	$(KUBECTL) delete namespace '$(SWEEPS_NAMESPACE)' '$(NAMESPACE)' --ignore-not-found --wait=true --timeout=300s

clean:  ## remove the local venv, tracking store and caches
	rm -rf $(VENV) mlruns mlartifacts mlflow.db .pytest_cache *.egg-info
