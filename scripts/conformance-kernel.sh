#!/usr/bin/env bash
# The conformance cases on the kernel datapath, in full (issue 16): the matrix cases of
# tests/test_lab_conformance.py on a 2-VM kernel lab (tests/test_kernel_conformance.py,
# SDN_NETPOL_CONFORMANCE_FULL=1). `make test` runs the short version
# (tests/test_kernel_datapath.py). Needs the VM image (`make vm-image`). As root, from the
# checkout: `bash scripts/conformance-kernel.sh [pytest args]`; figures in docs/lab.md.
set -euo pipefail
cd "$(dirname "$0")/.."
make -s vm-image
SDN_NETPOL_CONFORMANCE_FULL=1 exec .venv/bin/python -m pytest -q --durations=5 \
  tests/test_kernel_conformance.py "$@"
