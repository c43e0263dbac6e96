#!/usr/bin/env bash
# Idempotent install of everything sdn-netpol needs on a fresh Debian machine (run as root):
# Debian packages (OVS userspace datapath, CNI plugins, netns tools) and a project venv.
set -euo pipefail
cd "$(dirname "$0")/.."
VENV=${VENV:-.venv}
# vagrant and shellcheck: `make test` validates the Vagrant testbed offline (tests/test_vagrant.py);
# qemu-system-x86 and mmdebstrap: the kernel-datapath VMs and their image (scripts/vm-image.sh)
APT_PKGS=(openvswitch-switch containernetworking-plugins iproute2 ethtool iperf3 procps vagrant shellcheck
          qemu-system-x86 mmdebstrap)

missing=()
for p in "${APT_PKGS[@]}"; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
done
if [ "${#missing[@]}" -gt 0 ]; then
  echo "bootstrap: installing Debian packages: ${missing[*]}"
  export DEBIAN_FRONTEND=noninteractive
  apt-get -o DPkg::Lock::Timeout=900 update -qq
  apt-get -o DPkg::Lock::Timeout=900 install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
fi
# The Debian service would start a system-wide OVS in the root netns; the project runs
# private instances only, so keep the packaged one stopped if systemd started it.
if command -v systemctl >/dev/null 2>&1 && systemctl is-active --quiet openvswitch-switch 2>/dev/null; then
  systemctl stop openvswitch-switch || true
fi

# pip's own failure still fails the script (pipefail); only its noise is filtered.
quiet_pip() {
  "$VENV/bin/pip" "$@" 2>&1 | { grep -vE "^WARNING: Location|BuildBackendWarning|^ *[!*]|^ *$|Please be careful|name as your package|with strategy" || true; }
}
stamp="$VENV/.installed"
if [ ! -x "$VENV/bin/python" ]; then
  python3 -m venv "$VENV"
fi
if [ ! -f "$stamp" ] || [ requirements.txt -nt "$stamp" ] || [ requirements-dev.txt -nt "$stamp" ] || [ setup.py -nt "$stamp" ]; then
  echo "bootstrap: installing Python packages into $VENV"
  quiet_pip install -q --upgrade pip
  quiet_pip install -q -r requirements-dev.txt
  quiet_pip install -q --no-deps -e .
  touch "$stamp"
fi
