# npusim: `make sim` (the flagship co-simulation) and `make test` (the test suite) are all a fresh
# machine needs; both create .venv and install everything through `make install`.

PYTHON  ?= $(shell command -v python3.11 || command -v python3)
VENV    ?= .venv
PY      := $(VENV)/bin/python
STAMP   := $(VENV)/.npusim-installed
JOBS    ?= 2
PYTEST  := $(PY) -m pytest -p no:cacheprovider
APT_PKGS := liblz4-dev g++ perl

.DEFAULT_GOAL := help
.PHONY: help install sysdeps test test-slow test-all sim waves bench docs clean

help:  ## this list
	@awk 'BEGIN {FS = ":.*## "} /^[a-z-]+:.*## / {printf "  make %-10s %s\n", $$1, $$2}' $(MAKEFILE_LIST)
	@echo "  variables: JOBS=$(JOBS) (pytest workers), WAVES=1 (FST waves of RTL tests and of make sim);"
	@echo "  make sim: TP=$(TP) (devices) TOKENS=$(TOKENS) (decode steps) LAYERS=$(LAYERS) (of the 2 trained)"
	@echo "            ARRAY=$(ARRAY) (matrix-unit edge = vector lanes) SMALL=1 (short run) SIM_OUT=$(SIM_OUT)"

install: $(STAMP)  ## create .venv and install npusim with its test extras (idempotent)

$(STAMP): pyproject.toml | sysdeps
	@test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -e '.[test]'
	@touch $@

sysdeps:  ## install the Debian packages the RTL flow needs, when missing
	@missing=""; for p in $(APT_PKGS); do dpkg -s $$p >/dev/null 2>&1 || missing="$$missing $$p"; done; \
	if [ -n "$$missing" ]; then \
		echo "installing Debian packages:$$missing"; \
		SUDO=$$( [ "$$(id -u)" -eq 0 ] || echo sudo ); \
		$$SUDO apt-get update -qq && DEBIAN_FRONTEND=noninteractive $$SUDO apt-get install -y -qq $$missing; \
	fi

test: install  ## run the default test suite (no `slow` tests)
	$(PYTEST) -n $(JOBS) --durations=15

test-slow: install  ## run only the `slow` tests (long random sweeps, big systems)
	$(PYTEST) -n $(JOBS) -m slow

test-all: install  ## run every test, slow ones included
	$(PYTEST) -n $(JOBS) -m ''

# the flagship's parameters (`make sim TP=2 TOKENS=8 LAYERS=2 ARRAY=4 WAVES=1 SMALL=1`)
TP      ?= 2
TOKENS  ?= 8
LAYERS  ?= 2
ARRAY   ?= 4
SMALL   ?= 0
SIM_OUT ?= build/sim

sim: install  ## the flagship: the trained LLM at TP on the RTL system (TP= TOKENS= LAYERS= ARRAY= WAVES=1 SMALL=1)
	$(VENV)/bin/npusim sim --tp $(TP) --tokens $(TOKENS) --layers $(LAYERS) --array $(ARRAY) \
		-o $(SIM_OUT) $(if $(filter 1 yes true,$(WAVES)),--waves) $(if $(filter 1 yes true,$(SMALL)),--small)

waves:  ## open the flagship's waves (make sim WAVES=1) in GTKWave, or say what to open
	@if [ ! -f $(SIM_OUT)/system.fst ]; then echo "no $(SIM_OUT)/system.fst: run 'make sim WAVES=1' first"; exit 1; fi
	@if command -v gtkwave >/dev/null && [ -n "$$DISPLAY$$WAYLAND_DISPLAY" ]; then \
		gtkwave $(SIM_OUT)/system.fst $(SIM_OUT)/system.gtkw & \
	else \
		echo "open $(SIM_OUT)/system.fst with the layout $(SIM_OUT)/system.gtkw (GTKWave: gtkwave $(SIM_OUT)/system.fst $(SIM_OUT)/system.gtkw);"; \
		echo "the run's trace: $(SIM_OUT)/trace.json (https://ui.perfetto.dev), timeline: $(SIM_OUT)/timeline.png"; \
	fi

bench: install  ## run every benchmark and record its JSON under bench/results/
	$(VENV)/bin/npusim bench all --record bench/results

docs: install  ## regenerate the generated reference pages (docs/isa.md)
	$(VENV)/bin/npusim docs --write

clean:  ## remove build outputs (keeps .venv)
	rm -rf build
