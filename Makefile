# One entry point for newcomers: `make run` and `make test` set up everything they need.
PYTHON ?= python3
VENV   := .venv
PY     := $(VENV)/bin/python
STAMP  := $(VENV)/.installed

.PHONY: install system-deps run test lint lock bench soak clean

# Every package at the version in constraints.txt (the image and CI install the same).
$(STAMP): pyproject.toml constraints.txt
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q -c constraints.txt -e '.[dev,bench,otel]'
	touch $(STAMP)

install: $(STAMP)

# constraints.txt anew from pyproject.toml's dependencies (all extras), at today's newest
# versions that fit: the one command that updates it. Python 3.11 on Linux, as the image.
lock: install
	CUSTOM_COMPILE_COMMAND='make lock' $(VENV)/bin/pip-compile -q --upgrade --all-extras --strip-extras --no-emit-index-url \
	  --no-emit-find-links --output-file=constraints.txt pyproject.toml

# Real redis-server, redis-sentinel and nginx for the integration tests and benchmarks,
# wrk for the benchmarks' small-file load, promtool to check deploy/prometheus/alerts.yml
# (Debian packages; on a host where apt starts services, `systemctl disable --now
# prometheus` stops the server it brings along: only promtool is used).
system-deps:
	@missing=""; \
	command -v redis-server >/dev/null 2>&1 || missing="$$missing redis-server"; \
	command -v redis-sentinel >/dev/null 2>&1 || missing="$$missing redis-sentinel"; \
	command -v nginx >/dev/null 2>&1 || test -x /usr/sbin/nginx || missing="$$missing nginx"; \
	command -v curl >/dev/null 2>&1 || missing="$$missing curl"; \
	command -v wrk >/dev/null 2>&1 || missing="$$missing wrk"; \
	command -v promtool >/dev/null 2>&1 || missing="$$missing prometheus"; \
	if [ -n "$$missing" ]; then \
	  echo "installing:$$missing"; \
	  SUDO=""; [ "$$(id -u)" = 0 ] || SUDO=sudo; \
	  $$SUDO apt-get update -q && DEBIAN_FRONTEND=noninteractive $$SUDO apt-get install -y -q \
	    -o DPkg::Lock::Timeout=300 $$missing; \
	fi

run: install
	$(PY) -m ingester_gateway dev --data-dir .data

# The whole suite under coverage (branch, every Python process the tests start: see
# [tool.coverage.run] in pyproject.toml); then the figures by package. Reports in
# build/coverage/ (html/, coverage.xml); the last line repeats pytest's count. Fails when
# a test fails. `make test ARGS=tests/unit` runs a part.
COV := $(PY) -m coverage
# Test modules run on this many pytest-xdist workers (each module whole on one worker,
# so its servers start once); TEST_WORKERS=0 runs everything in one process.
TEST_WORKERS ?= 3
test: install system-deps
	@rm -rf build/coverage
	@status=0; $(COV) run -m pytest -n $(TEST_WORKERS) --dist loadfile \
	  --junitxml=build/coverage/junit.xml $(ARGS) || status=$$?; \
	{ $(COV) combine -q && $(COV) json -q && $(COV) xml -q && $(COV) html -q \
	  && $(PY) tests/coverage_summary.py build/coverage; } \
	  || { [ $$status -ne 0 ] || status=1; }; \
	exit $$status

lint: install
	$(VENV)/bin/ruff check src tests benchmarks
	$(VENV)/bin/ruff format --check src tests benchmarks
	$(VENV)/bin/mypy src
	$(VENV)/bin/lint-imports
	$(VENV)/bin/check-jsonschema --builtin-schema vendor.github-workflows .github/workflows/*.yml
	$(VENV)/bin/pre-commit validate-config .pre-commit-config.yaml
	$(PY) tests/constraints_check.py pyproject.toml constraints.txt

bench: install system-deps
	$(PY) benchmarks/run.py

# A bounded soak (issue 10): 5 minutes of mixed uploads and misbehaving clients while SEs
# restart and one is SIGKILLed, then every stored file accounted for; exits 1 on a failed
# upload, an orphan or an unregistered file. `make soak ARGS='--duration 60'` (see
# benchmarks/README.md, "Soak").
soak: install system-deps
	$(PY) benchmarks/soak.py $(ARGS)

clean:
	rm -rf $(VENV) .data .pytest_cache .mypy_cache .ruff_cache build/coverage
