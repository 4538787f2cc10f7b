# Two commands for a newcomer: `make demo` and `make test`. Both create .venv and install.
PYTHON ?= $(shell command -v python3.11 || command -v python3)
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

.PHONY: demo test bench bench-heartbeat bench-eventlog explore clean

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
bench: bench-eventlog bench-heartbeat

bench-eventlog: $(STAMP)
	$(BIN)/lessor bench eventlog

bench-heartbeat: $(STAMP)
	$(BIN)/pip install --quiet -e '.[plot]'
	$(BIN)/lessor bench heartbeat --plot heartbeat.png
	$(BIN)/lessor bench heartbeat --no-uvloop

clean:
	rm -rf $(VENV) *.egg-info .pytest_cache .hypothesis
