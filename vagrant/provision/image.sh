#!/usr/bin/env bash
# The sdn-netpol image, without a registry: node1 builds it (scripts/build-image.sh, from
# Debian packages and this checkout) and leaves it in the synced folder; every node imports
# it into containerd's k8s.io namespace, where the kubelet finds localhost/sdn-netpol:latest.
set -euo pipefail
N=$1
ARCHIVE=/sdn-netpol/vagrant/.image.tar
if [ "$N" = 1 ]; then
  bash /sdn-netpol/scripts/build-image.sh
  podman save --format oci-archive -o "$ARCHIVE.tmp" localhost/sdn-netpol:latest
  mv "$ARCHIVE.tmp" "$ARCHIVE"
fi
for _ in $(seq 120); do [ -s "$ARCHIVE" ] && break; sleep 10; done
ctr -n k8s.io images import "$ARCHIVE"
