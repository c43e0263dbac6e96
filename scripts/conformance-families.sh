#!/usr/bin/env bash
# The conformance run (tests/test_lab_conformance.py's cases) on labs of every address family,
# in full: IPv4, IPv6 (`lab up --ip-family 6`) and dual-stack (`--ip-family dual`, every case
# in both families). `make test` runs the IPv4 and IPv6 ones in full and a subset of the dual
# one; this adds the rest of the dual one (SDN_NETPOL_CONFORMANCE_FULL=1). As root, from the
# checkout: `bash scripts/conformance-families.sh [pytest args]`; ~6-7 min on 2 quiet cores.
# The same cases on the kernel datapath (2 qemu VMs): scripts/conformance-kernel.sh.
set -euo pipefail
cd "$(dirname "$0")/.."
SDN_NETPOL_CONFORMANCE_FULL=1 exec .venv/bin/python -m pytest -q --durations=3 \
  tests/test_lab_conformance.py tests/test_lab_conformance_v6.py tests/test_lab_conformance_dual.py "$@"
