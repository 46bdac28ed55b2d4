# ascend-conformance — the two quick-start commands are `make conformance` and `make test`.
# Everything runs in the checkout's own virtual environment .venv (created with access to the system
# site-packages, so an NPU host's torch / torch_npu / CANN Python packages are reused); PYTHON=... runs
# in an environment of your choice instead. The system interpreter is never installed into.
VENV ?= .venv
BASE_PYTHON ?= python3
PYTHON ?= $(VENV)/bin/python
PYTEST ?= $(PYTHON) -m pytest
# Systems under test: `pinned` keeps a host's vLLM / vllm-ascend and otherwise installs the pinned pair
# (ascend_conformance/sut/release.py); `none` skips them (their suites then skip, saying why).
STACK ?= pinned
# Parallel workers for the conformance run; on an 8-NPU host use `make conformance WORKERS=8`.
WORKERS ?= 2
# The platform of the conformance run (pytest --platform): empty = detected; npu-emulated runs the NPU code
# path on this CPU host (docs/emulation.md).
PLATFORM ?=
REPORTS ?= reports
export TORCH_DEVICE_BACKEND_AUTOLOAD = 0

.PHONY: setup setup-browser conformance report test selftest bench bench-harness clean distclean

# torch (the one installed, else the CPU build 2.13.0), this checkout editable with [dev], the stack;
# tools/ensure_setup.py checks each and installs only what is missing, so every target can depend on it.
setup:
	@if [ "$(PYTHON)" = "$(VENV)/bin/python" ] && [ ! -x "$(VENV)/bin/python" ]; then \
		echo "setup: creating $(VENV) (with system site-packages)"; \
		$(BASE_PYTHON) -m venv --system-site-packages $(VENV); fi
	@$(PYTHON) tools/ensure_setup.py --stack $(STACK)
	-@$(MAKE) --no-print-directory setup-browser

# Optional: headless Chromium for the HTML report's browser test (Debian packages chromium and
# chromium-driver). Never fails: without root apt-get (NPU hosts often have none) the test skips.
setup-browser:
	@if command -v chromium >/dev/null 2>&1 && command -v chromedriver >/dev/null 2>&1; then :; \
	elif command -v apt-get >/dev/null 2>&1 && [ "$$(id -u)" = 0 ]; then \
		(apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium chromium-driver) \
			|| echo "setup-browser: apt-get failed; the browser test will skip"; \
	else echo "setup-browser: no chromium/chromedriver and no root apt-get; the browser test will skip"; fi

# The conformance suites on the detected platform (cpu/gloo here; PLATFORM=... to choose), results under reports/: JUnit XML,
# allure-results, per-test records (results/, merged into results.json) and the HTML report index.html,
# which is built even when tests fail (the exit status is pytest's).
# (Not --clean-alluredir: every xdist worker applies it when it starts, so a worker restarted after a
# crash would delete the results written before.)
conformance: setup
	mkdir -p $(REPORTS)
	rm -rf $(REPORTS)/allure-results
	$(PYTEST) suites/ -n $(WORKERS) $(if $(PLATFORM),--platform $(PLATFORM)) --junitxml=$(REPORTS)/junit.xml \
		--alluredir=$(REPORTS)/allure-results --results-dir=$(REPORTS)/results --clean-results; \
	status=$$?; $(REPORT); exit $$status

# reports/index.html from the result records and every benchmark JSON under reports/.
REPORT = $(PYTHON) -m ascend_conformance report --results $(REPORTS)/results --out $(REPORTS)/index.html
report: setup
	$(REPORT)

# The self-tests of the harness and tools (on cpu on every host: tests/conftest.py), then the conformance
# run on the detected platform.
test: setup
	$(PYTEST) tests/ suites/ -n $(WORKERS)

selftest: setup
	$(PYTEST) tests/ -n $(WORKERS)

# Benchmarks run serially with the host to themselves; their JSON goes to $(REPORTS)/benchmarks/.
bench: setup
	mkdir -p $(REPORTS)
	$(PYTEST) suites/ -m bench -p no:xdist --results-dir=$(REPORTS)/results

bench-harness: setup
	mkdir -p $(REPORTS)
	$(PYTHON) benchmarks/harness_overhead.py --json $(REPORTS)/harness_overhead.json

clean:
	find $(REPORTS) -mindepth 1 ! -name README.md -exec rm -rf {} + 2>/dev/null; rm -rf .setup-stamp .pytest_cache

# Also the virtual environment (and the systems under test installed in it).
distclean: clean
	rm -rf $(VENV)
