# Patchwarden developer entry points. Every target sets up what it needs by itself (scripts/bootstrap).
VENV ?= .venv
PY := $(VENV)/bin/python
PATCHCTL := $(VENV)/bin/patchctl

.DEFAULT_GOAL := help
.PHONY: help install lock kube-apiserver kube-node image test test-clock lint crds verify bench demo agent clean

help: ## list the targets
	@grep -E '^[a-z-]+:.*## ' $(MAKEFILE_LIST) | awk -F':.*## ' '{printf "  make %-14s %s\n", $$1, $$2}'

# Debian packages the tests drive for real (apt/dpkg come with the system).
SYSTEM_PACKAGES ?= git gnupg openssh-server openssh-client \
	rpm dnf python3-dnf zypper createrepo-c libsolv-tools busybox-static \
	chromium swift swift-proxy swift-account swift-container swift-object \
	etcd-server golang-1.19-go rsync golang-github-modern-go-reflect2-dev dpkg-dev \
	faketime sudo mmdebstrap iproute2 uidmap postgresql-15 \
	prometheus prometheus-alertmanager \
	containerd runc containernetworking-plugins umoci python3-pip-whl conntrack

# patchctl lives in the virtualenv, which a new shell does not have on PATH: say how to get it,
# as the last line of the targets a newcomer runs first (absolute, so it works from anywhere).
ON_PATH = @echo "To run patchctl in a new shell: . $(abspath $(VENV))/bin/activate   (or, for every shell: pipx install $(CURDIR))"

install: ## virtualenv + system and Python packages (idempotent)
	@SYSTEM_PACKAGES="$(SYSTEM_PACKAGES)" scripts/bootstrap
	$(ON_PATH)

demo: install ## the main job: a local fleet of Debian roots patched by the reconciler from a Git repo
	$(PY) scripts/demo.py
	$(ON_PATH)

kube-apiserver: install ## build (once, ~4 min; cached) the real kube-apiserver the apiserver tests run
	scripts/kube-apiserver build

image: install ## the controller/agent image, dist/patchwarden-<version>.oci.tar (root; Debian root cached)
	$(PY) scripts/image build

# The apiserver is built here too: one source tree, one `make generated_files` and one Go build
# cache for all of them saves minutes of a cold `make test` (each name already cached is skipped).
kube-node: install ## build (once, ~15 min; cached) the apiserver, kubelet, controller-manager, scheduler, kube-proxy and pause of the real node
	nice -n 10 scripts/kube-apiserver build kube-apiserver kubelet kube-controller-manager kube-scheduler kube-proxy pause

# The suite starts patchctl thousands of times: where the environment says not to write bytecode
# (PYTHONDONTWRITEBYTECODE), each start would compile the package again. The agent bundle and the
# image leave __pycache__ out.
unexport PYTHONDONTWRITEBYTECODE

# The suite runs on every core: pytest-xdist, each test file on one worker (tests/conftest.py).
TEST_WORKERS ?= auto

test: install kube-node lint verify test-clock ## lint, verify, the clock a year ahead, then the whole suite on every core (CI)
	$(PY) -m pytest -q -n $(TEST_WORKERS) --dist loadfile --no-loadscope-reorder

# The date-sensitive tests, run a year ahead by Debian's libfaketime: each must take its time from
# an injected clock (--now, clock=...), never from the calendar. libfaketime follows the
# subprocesses that keep the environment (patchctl, Chromium, Swift: see tests/swift.py).
# libfaketime 0.9.10 moves the monotonic clock too (excluding it breaks Python 3.11's time.sleep,
# wolfcw/libfaketime#426) but not sem_clockwait, so a lock wait that runs into its timeout
# (Event.wait, Thread.join) lasts a year (#390); one ended by the event itself is fine. The one
# test that needs a timeout to expire (the export grace) is left out; it reads no date anyway.
CLOCK_TESTS ?= tests/test_engine_apt.py tests/test_engine_properties.py tests/test_engine_rpm.py \
	tests/test_engine_summary.py tests/test_engine_windows_macos.py \
	tests/test_schedule.py tests/test_schedule_properties.py tests/test_schedule_validation.py \
	tests/test_report_export.py tests/test_report_runs.py tests/test_report_s3.py \
	tests/test_report_schedule.py tests/test_compliance_views.py tests/test_findings.py \
	tests/test_dashboard_chromium.py tests/test_audit.py tests/test_state.py \
	--deselect tests/test_report_schedule.py::test_an_unreachable_destination_does_not_hold_up_the_passes
FAKETIME_AHEAD ?= +365d

test-clock: install ## the date-sensitive tests under faketime, a year ahead
	faketime -f '$(FAKETIME_AHEAD)' $(PY) -m pytest -q $(CLOCK_TESTS)

lock: install ## re-resolve pyproject.toml's ranges to today's newest into requirements.txt (PyPI)
	$(PY) scripts/lock update
	$(PY) scripts/lock check

lint: install ## the house rules: lock agrees, ruff, mypy --strict, import-linter, vermin, sizes
	$(PY) scripts/lock check
	$(VENV)/bin/ruff check reconciler tests bench
	$(VENV)/bin/ruff format --check reconciler tests bench
	$(VENV)/bin/mypy reconciler
	$(VENV)/bin/lint-imports
	$(VENV)/bin/vermin --no-tips --violations -t=3.6- --eval-annotations --backport typing reconciler/agent
	$(PY) scripts/sizes

agent: install ## build/patchwarden-agent.pyz: the agent as one file for any python3 >= 3.6
	$(PY) scripts/build-agent build/patchwarden-agent.pyz

crds: install ## regenerate crds/ (and the Helm chart's copy) and schemas/ from reconciler/api
	$(PATCHCTL) crds --out crds/
	$(PATCHCTL) crds --out charts/patchwarden/crds/
	$(PATCHCTL) schema --out schemas/

verify: install ## fail when crds/, schemas/ or docs/inventory.schema.json are stale
	$(PATCHCTL) crds --out crds/ --check
	$(PATCHCTL) crds --out charts/patchwarden/crds/ --check
	$(PATCHCTL) schema --check schemas/
	$(PATCHCTL) schema inventory --check docs/inventory.schema.json

bench: install ## benchmarks (not part of make test); results go to docs/benchmarks.md
	$(PY) bench/evaluate_fleet.py
	$(PY) bench/fleet_tables.py
	$(PY) bench/diff_fleet.py
	$(PY) bench/plan_fleet.py
	$(PY) bench/observe_history.py
	$(PY) bench/observe_history.py --backend postgresql
	$(PY) bench/fleet_convergence.py
	$(PY) bench/scan_apt.py
	$(PY) bench/scan_rpm.py
	$(PY) bench/uu_oracle.py
	$(PY) bench/ssh_fleet.py
	$(PY) bench/fleet_scale.py
	$(PY) bench/fleet_scale.py --backend sqlite
	$(PY) bench/startup.py

clean: ## remove the virtualenv and caches
	rm -rf $(VENV) .pytest_cache .mypy_cache .ruff_cache .hypothesis
