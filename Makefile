# Two commands for a newcomer: `make demo` and `make test`. Both create .venv and install.
PYTHON ?= $(shell command -v python3.11 || command -v python3)
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

.PHONY: demo test mutants fuzz bench bench-tools bench-heartbeat bench-eventlog bench-schedule bench-simulate bench-failover bench-reap-storm bench-capacity bench-cluster bench-idle explore chaos clean

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

## make test-browser: the dashboard (lessor ui) in headless Chromium, driven by Selenium: Debian's chromium and
## chromium-driver (installed here as root if missing). `make test` runs without a browser.
.PHONY: test-browser bench-ui
test-browser: $(STAMP)
	@command -v chromium >/dev/null && command -v chromedriver >/dev/null || \
	  { [ "$$(id -u)" = 0 ] && apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium chromium-driver >/dev/null; } || \
	  { echo "make test-browser needs chromium and chromium-driver: apt-get install chromium chromium-driver (as root)" >&2; exit 1; }
	$(BIN)/pip install --quiet -e '.[test,browser]'
	LESSOR_BROWSER_TESTS=1 $(BIN)/python -m pytest -q -p no:cacheprovider tests/browser

## the dashboard's page timings with many runs in the store (RUNS=100000 by default)
bench-ui: $(STAMP)
	$(BIN)/python -m lessor.ui.bench --runs $${RUNS:-100000}

## benchmarks (not part of make test; numbers are ratios against the server's own limit)
bench: bench-eventlog bench-heartbeat bench-schedule bench-simulate bench-failover bench-reap-storm

bench-eventlog: $(STAMP)
	$(BIN)/lessor bench eventlog

# The C client that measures the server's limit (`bench heartbeat`): redis-benchmark from Debian's redis-tools.
bench-tools:
	@command -v redis-benchmark >/dev/null || command -v valkey-benchmark >/dev/null || \
	  { [ "$$(id -u)" = 0 ] && apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq redis-tools >/dev/null; } || \
	  { echo "bench heartbeat needs a C client: apt-get install redis-tools (as root)" >&2; exit 1; }

bench-heartbeat: $(STAMP) bench-tools
	$(BIN)/pip install --quiet -e '.[plot]'
	$(BIN)/lessor bench heartbeat --plot heartbeat.png --durability fsync --processes 2
	$(BIN)/lessor bench heartbeat --no-uvloop

# lessor beside taskiq (the [peers] extra) and the minimal queue, alternating rounds in one run.
bench-schedule: $(STAMP)
	$(BIN)/pip install --quiet -e '.[peers]'
	$(BIN)/lessor bench schedule --durability memory,fsync,memory,fsync

bench-failover: $(STAMP)
	$(BIN)/lessor bench failover --rounds 3

bench-simulate: $(STAMP)
	$(BIN)/lessor bench simulate --scenarios 100 --actions 50 --workers 5 --faults 10

# 100k leases expire at once: the budgeted reaper against the old one (500 a call, no budget), alternating.
bench-reap-storm: $(STAMP)
	$(BIN)/lessor bench reap-storm --rounds 3

# The README's sizing figures: memory per live lease and per finished run, event-log bytes per action.
bench-capacity: $(STAMP)
	$(BIN)/python -m lessor.benchmarks.capacity --runs 20000

# bench heartbeat and bench schedule on a local 3x2 cluster against one server, alternating, same run.
bench-cluster: $(STAMP) bench-tools
	$(BIN)/python -m lessor.benchmarks.versus_cluster --rounds 2

# An idle worker's commands/s with and without its reaper (120 s windows: the reaper sleeps up to 40 s).
bench-idle: $(STAMP)
	$(BIN)/lessor bench schedule --idle --idle-s 120

## the mutation gate: small bugs of our own in the Lua scripts and the keeper; lessor simulate must
## catch each within 200 examples on seeds 1 and 2 (prints the catch table and rate; several minutes)
mutants: $(STAMP)
	$(BIN)/python -m lessor.simulations.mutants --examples 200 --seeds 1,2 --jobs 2

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
