# Two entry points that work on a fresh machine as root: `make demo` and `make test`.
VENV ?= .venv
PY := $(VENV)/bin/python
CORE := sdn_netpol/model sdn_netpol/policy sdn_netpol/compiler
PYTEST_ARGS ?=

.PHONY: bootstrap prebuild image vm-image kube-apiserver demo test lint typecheck unit flows bench clean

bootstrap:
	@bash scripts/bootstrap.sh

demo: bootstrap
	$(VENV)/bin/sdn-netpol demo

lint: bootstrap
	$(VENV)/bin/ruff check sdn_netpol tests benchmarks scripts

typecheck: bootstrap
	$(VENV)/bin/mypy --strict $(CORE)

# The real kube-apiserver, the image and the VM image, built once per machine into /var/cache/sdn-netpol:
# started in the background first, so they build while the fast tiers run (tests/conftest.py
# runs the tiers needing them last; they wait for the builds).
prebuild: bootstrap
	@bash scripts/prebuild.sh

kube-apiserver: bootstrap
	bash scripts/kube-apiserver.sh build

image: bootstrap
	bash scripts/build-image.sh

# The kernel-datapath VMs' image (qemu TCG; docs/lab.md, "Kernel datapath").
vm-image: bootstrap
	bash scripts/vm-image.sh build

unit: bootstrap
	$(PY) -m pytest -q $(PYTEST_ARGS) tests

test: prebuild lint typecheck unit

# Regenerate the golden flow tables in flows/ from their manifests (review the diff!).
flows: bootstrap
	$(VENV)/bin/sdn-netpol flows-regen flows
	$(PY) scripts/pipeline_doc.py

# Short versions (docs/benchmarks.md); bulk.py brings up a 3-node lab (root, ~1 min),
# dataplane.py a 2-node lab for iperf3 and connections/s with 0 and 1,000 policies (~1.5 min).
bench: bootstrap
	$(PY) benchmarks/resolve.py
	$(PY) benchmarks/bulk.py --quick
	$(PY) benchmarks/dataplane.py --quick

clean:
	rm -rf $(VENV) .mypy_cache .ruff_cache .pytest_cache .hypothesis *.egg-info
