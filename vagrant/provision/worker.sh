#!/usr/bin/env bash
# Workers: join with the command node1 left in the synced folder; the DaemonSet follows.
set -euo pipefail
N=$1
for _ in $(seq 60); do [ -s /sdn-netpol/vagrant/.join.sh ] && break; sleep 5; done
bash /sdn-netpol/vagrant/.join.sh --node-name "node$N"
