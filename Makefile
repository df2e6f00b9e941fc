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

# The web pages and the API on http://127.0.0.1:$(PORT)/ with a worker, for what the demo trained.
PORT ?= 8000
web: $(VENV)/.installed
	$(BIN)/python -m workers.demo --web --port $(PORT)

# Two test processes (pytest-xdist), a module in each at a time: each has its own Redis database and
# system. Redis and SeaweedFS are started first if none answers, and only those are stopped after.
PYTEST := $(BIN)/python -m pytest -q -n 2 --dist loadfile --durations=15
TEST_SERVICES := var/test-services

test: $(VENV)/.installed lint browser
	bash infra/scripts/start-redis.sh $(TEST_SERVICES)/redis
	bash infra/scripts/start-seaweedfs.sh $(TEST_SERVICES)/seaweedfs
	$(PYTEST) tests; status=$$?; \
	bash infra/scripts/stop-seaweedfs.sh $(TEST_SERVICES)/seaweedfs; \
	bash infra/scripts/stop-redis.sh $(TEST_SERVICES)/redis; \
	exit $$status

# The fast tier while you work: every test that runs in the test process alone (no service, worker or
# other interpreter; see tests/conftest.py). make test runs all of them, as CI does.
test-fast: $(VENV)/.installed lint
	$(PYTEST) -m "not system" tests

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
