# make test: all set-up on a fresh machine (idempotent, cached steps skipped), then the tests.
# make demo: the same set-up, then JupyterHub with this spawner on http://127.0.0.1:8000
#   (examples/demo/; EXAMPLE=seed, cluster-weights, custom-module-gpu, incus-opentofu or course runs that example).
# make performance: the same set-up, then benchmarks/side_by_side.py regenerates docs/performance.md.
SHELL := /bin/bash
CACHE := $(CURDIR)/.cache
VENV := $(CURDIR)/.venv
CHP := $(CACHE)/npm/node_modules/.bin/configurable-http-proxy
# The oldest JupyterHub of the supported range, in a venv of its own (tests/e2e/test_jupyterhub52.py).
JH52 := $(CACHE)/jupyterhub-5.2
# Earlier releases, each from its source archive in tests/upgrade/ into a venv of its own
# (tests/e2e/test_upgrade.py runs a hub on each, then this release's on the same database).
UPGRADE_REVS := $(patsubst tests/upgrade/tf-lxd-spawner-%.tar.gz,%,$(wildcard tests/upgrade/tf-lxd-spawner-*.tar.gz))
UPGRADE_VENVS := $(UPGRADE_REVS:%=$(CACHE)/upgrade/%/.installed)
PYTEST_ARGS ?= --durations=15
# Host ids the tests map 1:1 into containers (raw.idmap): see setup/lxd-up.sh.
LXD_ALLOW_IDS ?= 2345

export CHECKPOINT_DISABLE := 1
export TF_CLI_CONFIG_FILE := $(CACHE)/terraform/cli.tfrc
# The Go-built tools (tofu; terraform where the machine has none) come after the machine's own.
export PATH := $(CACHE)/npm/node_modules/.bin:$(VENV)/bin:$(PATH):$(CACHE)/bin

.PHONY: setup setup-steps debs gotools lxd incus image provider old-releases test unit demo wheel fmt module-docs config-docs clean-state performance

# Independent steps run side by side (the Go builds are CPU-bound, the image build mostly waits
# on downloads); each step's output is printed in one piece.
setup:
	@$(MAKE) --no-print-directory -j3 --output-sync=target setup-steps
	@echo "setup: done"

setup-steps: debs gotools lxd incus image provider $(VENV)/.installed $(JH52)/.installed old-releases $(CHP)

debs:
	@bash setup/debian-packages.sh

gotools: debs
	@bash setup/go-tools.sh $(CACHE)

lxd: debs
	@LXD_ALLOW_IDS="$(LXD_ALLOW_IDS)" bash setup/lxd-up.sh

# After lxd: Incus reads the subordinate id lines lxd-up.sh writes.
incus: lxd
	@bash setup/incus-up.sh

image: lxd incus
	@bash image/build.sh $(CACHE) lxc incus

provider: gotools
	@bash setup/provider-mirror.sh $(CACHE) terraform tofu

$(VENV)/.installed: pyproject.toml | debs
	python3 -m venv $(VENV)
	$(VENV)/bin/pip install -q -e '.[test]'
	touch $@

$(JH52)/.installed: pyproject.toml | debs
	python3 -m venv $(JH52)
	$(JH52)/bin/pip install -q 'jupyterhub==5.2.1' -e '.[test]'
	touch $@

old-releases: $(UPGRADE_VENVS)

# With the JupyterHub of .venv, so the upgrade changes this package alone (the hub database's
# schema is the same on both sides). pip builds the archive with hatchling from PyPI.
$(CACHE)/upgrade/%/.installed: tests/upgrade/tf-lxd-spawner-%.tar.gz $(VENV)/.installed
	rm -rf $(CACHE)/upgrade/$*
	python3 -m venv $(CACHE)/upgrade/$*
	$(CACHE)/upgrade/$*/bin/pip install -q $< \
		"jupyterhub==$$($(VENV)/bin/python -c 'import jupyterhub; print(jupyterhub.__version__)')"
	touch $@

$(CHP): | debs
	npm install --no-audit --no-fund --silent --prefix $(CACHE)/npm configurable-http-proxy@5

# The tests that run daemons of their own (loopback clusters, network namespaces) run beside the
# others, which share the machine's main daemons; each group in order, one pytest each. The shared
# folders' hubs (names of their own) run in the first group too, so both groups end about together.
OWN_DAEMONS = tests/e2e/test_cluster.py tests/e2e/test_incus_cluster.py tests/e2e/test_remote_cluster.py \
	tests/e2e/test_remote_members.py tests/e2e/test_shared_folders.py
# The longest single test (30 spawn/stop cycles on LXD, about 5.5 min) runs in that group too.
BESIDE = tests/e2e/test_faults.py::test_thirty_cycles_leave_nothing_behind
test: setup
	@rm -f $(CACHE)/test-own-daemons.log
	@$(VENV)/bin/pytest $(PYTEST_ARGS) -p no:cacheprovider --basetemp=$(CACHE)/pytest-own-daemons $(OWN_DAEMONS) \
		$(BESIDE) > $(CACHE)/test-own-daemons.log 2>&1 & own=$$!; \
	$(VENV)/bin/pytest $(PYTEST_ARGS) $(addprefix --ignore=,$(OWN_DAEMONS)) $(addprefix --deselect=,$(BESIDE)); main=$$?; \
	wait $$own; own=$$?; \
	echo "==== the tests on daemons of their own, and those run beside ($(OWN_DAEMONS) $(BESIDE)):"; \
	cat $(CACHE)/test-own-daemons.log; \
	echo "test: the main daemons' tests exited $$main, the own daemons' $$own"; \
	[ $$main -eq 0 ] && [ $$own -eq 0 ]

unit: $(VENV)/.installed gotools  # gotools: terraform-config-inspect, for the module docs test
	$(VENV)/bin/pytest tests/unit $(PYTEST_ARGS)

# tf-lxd-spawner beside a direct-API baseline through real hubs (about half an hour, nothing else
# may spawn meanwhile): regenerates docs/performance.md, its figures and raw numbers.
performance: setup
	$(VENV)/bin/pip install -q -e '.[bench]'
	$(VENV)/bin/python benchmarks/side_by_side.py --write-docs

EXAMPLE ?= demo
demo: setup
	cd examples/$(EXAMPLE) && $(VENV)/bin/jupyterhub -f jupyterhub_config.py

wheel: $(VENV)/.installed
	$(VENV)/bin/python -m build --wheel --outdir dist .

fmt:
	terraform fmt -recursive terraform/

# The inputs/outputs tables in terraform/modules/{notebook,storage}/README.md, from their variables
# and outputs (tests/unit/test_module_docs.py fails while they are out of date).
module-docs: gotools
	python3 setup/module_docs.py

# The configuration table in README.md, from the help of the traits in tf_lxd_spawner/settings.py
# (tests/unit/test_readme.py fails while it is out of date).
config-docs: $(VENV)/.installed
	$(VENV)/bin/python setup/config_docs.py
