# make demo: set up and run the main job on the embedded default. make test: set up and run the tests.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
export PYTHONPATH := $(CURDIR)
export TF_CPP_MIN_LOG_LEVEL ?= 2

.PHONY: demo web test test-fast lint browser data services-up services-down clean

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip

$(VENV)/.installed: requirements.txt requirements-dev.txt pyproject.toml | $(BIN)/python
	$(BIN)/pip install --quiet -r requirements-dev.txt
	# The project itself, editable: installs the `facerec` command (setuptools comes with the venv).
	$(BIN)/pip install --quiet --no-build-isolation -e .
	touch $@

demo: $(VENV)/.installed
	$(BIN)/python -m workers.demo

# The web pages and the API on http://127.0.0.1:8000/ with a worker, for what the demo trained.
web: $(VENV)/.installed
	$(BIN)/python -m workers.demo --web

test: $(VENV)/.installed lint browser
	$(BIN)/python -m pytest -q tests

# The fast tier while you work: every test that runs in this one process (no service, worker or child
# interpreter; see tests/conftest.py). make test runs all of them, as CI does.
test-fast: $(VENV)/.installed lint
	$(BIN)/python -m pytest -q -m "not system" tests

# Headless Chromium and its driver for the browser test (Debian packages; installed only if missing).
browser:
	bash infra/scripts/install-browser.sh

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
