#!/usr/bin/env bash
# Start the heavy, once-per-machine builds in the background, niced, so that they build while
# the fast tiers of `make test` run: the real kube-apiserver (scripts/kube-apiserver.sh, 5-10
# min on a fresh machine), the image (scripts/build-image.sh, ~2 min) and the kernel-datapath
# VM image (scripts/vm-image.sh, ~2-4 min). Each is a no-op when
# its cache is current. The tiers that need them run last (tests/conftest.py) and call the
# same scripts, which wait on the build's lock and then find the cache; a failed background
# build is retried there and fails its tier with the build's output.
set -euo pipefail
cd "$(dirname "$0")/.."
LOGS=${SDN_NETPOL_CACHE:-/var/cache/sdn-netpol}/logs
mkdir -p "$LOGS"
for build in kube-apiserver.sh:build build-image.sh: vm-image.sh:build; do
  script=${build%%:*}
  action=${build#*:}
  log="$LOGS/${script%.sh}.log"
  # shellcheck disable=SC2086  # $action is empty or one word
  nohup nice -n 19 bash "scripts/$script" $action >"$log" 2>&1 </dev/null &
  echo "prebuild: scripts/$script $action in the background (pid $!, log $log)"
done
