# Two commands for a newcomer: `make demo` and `make test`. Both create .venv and install.
PYTHON ?= $(shell command -v python3.11 || command -v python3)
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

.PHONY: demo test fuzz bench bench-tools bench-heartbeat bench-eventlog bench-schedule bench-simulate bench-failover explore chaos clean

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	$(BIN)/pip install --quiet -e '.[test]'
	touch $(STAMP)

## make demo: the main job on the embedded server
demo: $(STAMP)
	$(BIN)/lessor demo

## make test: the whole suite against a real server the suite starts itself
test: $(STAMP)
	$(BIN)/python -m pytest -q -p no:cacheprovider

## benchmarks (not part of make test; numbers are ratios against the server's own limit)
bench: bench-eventlog bench-heartbeat bench-schedule bench-simulate bench-failover

bench-eventlog: $(STAMP)
	$(BIN)/lessor bench eventlog

# The C client that measures the server's limit (`bench heartbeat`): redis-benchmark from Debian's redis-tools.
bench-tools:
	@command -v redis-benchmark >/dev/null || command -v valkey-benchmark >/dev/null || \
	  { [ "$$(id -u)" = 0 ] && apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq redis-tools >/dev/null; } || \
	  { echo "bench heartbeat needs a C client: apt-get install redis-tools (as root)" >&2; exit 1; }

bench-heartbeat: $(STAMP) bench-tools
	$(BIN)/pip install --quiet -e '.[plot]'
	$(BIN)/lessor bench heartbeat --plot heartbeat.png --durability fsync
	$(BIN)/lessor bench heartbeat --no-uvloop

bench-schedule: $(STAMP)
	$(BIN)/lessor bench schedule --durability memory,fsync,memory,fsync

bench-failover: $(STAMP)
	$(BIN)/lessor bench failover --rounds 3

bench-simulate: $(STAMP)
	$(BIN)/lessor bench simulate --scenarios 100 --actions 50 --workers 5 --faults 10

## the boundary fuzz with 10,000 examples per test (make test runs 60)
fuzz: $(STAMP)
	LESSOR_FUZZ_EXAMPLES=10000 $(BIN)/python -m pytest -q -p no:cacheprovider tests/test_boundary_fuzz.py

## a longer exploration than make test runs (several minutes)
explore: $(STAMP)
	$(BIN)/lessor simulate --examples 2000 --workers 5 --actions 50 --faults 10

## live chaos: real worker processes, a proxy per worker, SIGSTOP/SIGKILL, a server restart
chaos: $(STAMP)
	$(BIN)/lessor chaos --duration 60

clean:
	rm -rf $(VENV) *.egg-info .pytest_cache .hypothesis
