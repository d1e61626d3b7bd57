# One entry point for newcomers: `make run` and `make test` set up everything they need.
PYTHON ?= python3
VENV   := .venv
PY     := $(VENV)/bin/python
STAMP  := $(VENV)/.installed

.PHONY: install system-deps run test lint bench clean

$(STAMP): pyproject.toml
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q -e '.[dev,bench,otel]'
	touch $(STAMP)

install: $(STAMP)

# Real redis-server and nginx for the integration tests and benchmarks, wrk for the
# benchmarks' small-file load, promtool to check deploy/prometheus/alerts.yml (Debian's
# prometheus package; on a host where apt starts services, `systemctl disable --now
# prometheus` stops the server it brings along: only promtool is used).
system-deps:
	@missing=""; \
	command -v redis-server >/dev/null 2>&1 || missing="$$missing redis-server"; \
	command -v nginx >/dev/null 2>&1 || test -x /usr/sbin/nginx || missing="$$missing nginx"; \
	command -v curl >/dev/null 2>&1 || missing="$$missing curl"; \
	command -v wrk >/dev/null 2>&1 || missing="$$missing wrk"; \
	command -v promtool >/dev/null 2>&1 || missing="$$missing prometheus"; \
	if [ -n "$$missing" ]; then \
	  echo "installing:$$missing"; \
	  SUDO=""; [ "$$(id -u)" = 0 ] || SUDO=sudo; \
	  $$SUDO apt-get update -q && DEBIAN_FRONTEND=noninteractive $$SUDO apt-get install -y -q $$missing; \
	fi

run: install
	$(PY) -m ingester_gateway dev --data-dir .data

# The whole suite under coverage (branch, every Python process the tests start: see
# [tool.coverage.run] in pyproject.toml); then the figures by package. Reports in
# build/coverage/ (html/, coverage.xml); the last line repeats pytest's count. Fails when
# a test fails. `make test ARGS=tests/unit` runs a part.
COV := $(PY) -m coverage
test: install system-deps
	@rm -rf build/coverage
	@status=0; $(COV) run -m pytest --junitxml=build/coverage/junit.xml $(ARGS) || status=$$?; \
	{ $(COV) combine -q && $(COV) json -q && $(COV) xml -q && $(COV) html -q \
	  && $(PY) tests/coverage_summary.py build/coverage; } \
	  || { [ $$status -ne 0 ] || status=1; }; \
	exit $$status

lint: install
	$(VENV)/bin/ruff check src tests benchmarks
	$(VENV)/bin/ruff format --check src tests benchmarks
	$(VENV)/bin/mypy src
	$(VENV)/bin/lint-imports

bench: install system-deps
	$(PY) benchmarks/run.py

clean:
	rm -rf $(VENV) .data .pytest_cache .mypy_cache .ruff_cache build/coverage
