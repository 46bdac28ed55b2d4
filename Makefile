# ascend-conformance — the two quick-start commands are `make conformance` and `make test`.
PYTHON ?= python3
PYTEST ?= $(PYTHON) -m pytest
# Parallel workers for the conformance run; on an 8-NPU host use `make conformance WORKERS=8`.
WORKERS ?= 2
REPORTS ?= reports
export TORCH_DEVICE_BACKEND_AUTOLOAD = 0

.PHONY: setup conformance test selftest bench bench-harness clean

# Reuse the torch that is installed (NPU hosts ship torch + torch_npu as a pair); otherwise take the
# CPU build 2.13.0 — an unpinned `torch` would pull a multi-GB CUDA build.
.setup-stamp: pyproject.toml
	$(PYTHON) -c "import torch" 2>/dev/null || $(PYTHON) -m pip install "torch==2.13.0"
	$(PYTHON) -m pip install -e ".[dev]"
	touch $@

setup: .setup-stamp

# The conformance suites on the detected platform (cpu/gloo here), results under reports/.
conformance: setup
	mkdir -p $(REPORTS)
	$(PYTEST) suites/ -n $(WORKERS) --junitxml=$(REPORTS)/junit.xml --alluredir=$(REPORTS)/allure-results

# The self-tests of the harness and tools, then the CPU conformance run.
test: setup
	$(PYTEST) tests/ suites/ -n $(WORKERS)

selftest: setup
	$(PYTEST) tests/ -n $(WORKERS)

# Benchmarks run serially with the host to themselves.
bench: setup
	mkdir -p $(REPORTS)
	$(PYTEST) suites/ -m bench -p no:xdist

bench-harness: setup
	mkdir -p $(REPORTS)
	$(PYTHON) benchmarks/harness_overhead.py --json $(REPORTS)/harness_overhead.json

clean:
	rm -rf $(REPORTS)/* .setup-stamp .pytest_cache
