# The two commands of the README. Each sets up .venv on first use (idempotent: the
# stamp is rebuilt only when pyproject.toml changes).
PY      := .venv/bin/python
STAMP   := .venv/.hwq-setup
PYTEST_ARGS ?=

.PHONY: setup demo test test-fast docs clean

setup: $(STAMP)

$(STAMP): pyproject.toml
	test -x $(PY) || python3 -m venv .venv
	$(PY) -m pip install -q --upgrade pip
	# the CPU wheel first: an unpinned torch would pull a multi-GB CUDA build
	$(PY) -m pip install -q torch==2.13.0
	$(PY) -m pip install -q -e '.[dev]'
	@if command -v iverilog >/dev/null; then :; \
	elif [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null; then \
	  (apt-get update -qq && apt-get install -y -qq iverilog) >/dev/null \
	    || echo "setup: could not install iverilog; Icarus tests will be skipped"; \
	else echo "setup: not root, iverilog not installed; Icarus tests will be skipped"; fi
	touch $(STAMP)

demo: setup
	.venv/bin/hwq demo

# Two test workers (pytest-xdist): the RTL builds and bitstreams run beside the rest, and
# parallel workers build each simulator and bitstream once (hwq/sim/rtl_sim.py's lock).
test: setup
	$(PY) -m pytest -q -n 2 $(PYTEST_ARGS)

test-fast: setup
	$(PY) -m pytest -q -n 2 -m "not slow" $(PYTEST_ARGS)

docs: setup
	.venv/bin/hwq isa-doc > docs/isa.md

clean:
	rm -rf build .pytest_cache
