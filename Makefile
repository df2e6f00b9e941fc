# make demo: set up and run the main job on the embedded default. make test: set up and run the tests.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
export PYTHONPATH := $(CURDIR)
export TF_CPP_MIN_LOG_LEVEL ?= 2

.PHONY: demo test lint data services-up services-down clean

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip

$(VENV)/.installed: requirements.txt requirements-dev.txt | $(BIN)/python
	$(BIN)/pip install --quiet -r requirements-dev.txt
	touch $@

demo: $(VENV)/.installed
	$(BIN)/python -m workers.demo

test: $(VENV)/.installed lint
	$(BIN)/python -m pytest -q tests

lint: $(VENV)/.installed
	$(BIN)/ruff check .

# Downloads LFW (deep-funneled) where there is internet; the project itself never downloads at run time.
data:
	bash infra/scripts/get-lfw.sh

services-up:
	bash infra/scripts/start-redis.sh
	bash infra/scripts/start-seaweedfs.sh

services-down:
	bash infra/scripts/stop-seaweedfs.sh
	bash infra/scripts/stop-redis.sh

clean:
	rm -rf var
