#!/usr/bin/env bash
# Workers: join with the command node1 left in the synced folder, start the controller.
set -euo pipefail
N=$1
for _ in $(seq 60); do [ -s /sdn-netpol/vagrant/.join.sh ] && break; sleep 5; done
bash /sdn-netpol/vagrant/.join.sh --node-name "node$N"
install -D -m 0600 /sdn-netpol/vagrant/.controller-kubeconfig /etc/sdn-netpol/kubeconfig
systemctl enable --now sdn-netpol-controller
