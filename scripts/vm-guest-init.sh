#!/bin/sh
# PID 1 of a kernel-datapath VM (issue 16), run by the image's stub init
# (scripts/vm-image.sh) from the project share mounted read-only at /opt/sdn-netpol/src.
# Kernel command line: sdnvm.name=NODE sdnvm.ip=ADDR/LEN (the underlay address of the first
# NIC; none without a NIC). Prints "SDN-NETPOL-VM: ..." markers on the serial console, which
# the host (sdn_netpol/lab/vm.py) waits for; then runs the command agent
# (sdn_netpol/lab/vmagent.py) on the virtio-serial port "sdn-netpol.ctl". Powers off when the
# agent ends or anything here fails.
export PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin
export PYTHONPATH=/opt/sdn-netpol/src
say() { echo "SDN-NETPOL-VM: $*"; }
die() { say "FAILED $*"; sync; echo o >/proc/sysrq-trigger; sleep 60; }
echo 1 >/proc/sys/kernel/sysrq

NAME=vm; IP=
read -r cmdline </proc/cmdline
for arg in $cmdline; do
  case $arg in sdnvm.name=*) NAME=${arg#sdnvm.name=} ;; sdnvm.ip=*) IP=${arg#sdnvm.ip=} ;; esac
done
hostname "$NAME"
ip link set lo up
say "init $NAME kernel $(uname -r) at $(cut -d' ' -f1 /proc/uptime) s"

modprobe openvswitch || die "modprobe openvswitch: $(modprobe openvswitch 2>&1 | tail -n 1)"
say "modprobe openvswitch OK"
modprobe virtio_console || die "modprobe virtio_console"
modprobe virtio_net || die "modprobe virtio_net"

if [ -n "$IP" ]; then
  nic=
  for dev in /sys/class/net/*/device; do nic=$(basename "$(dirname "$dev")"); break; done
  [ -n "$nic" ] || die "no network device for $IP"
  if ! { ip link set "$nic" name underlay && ip addr add "$IP" dev underlay && ip link set underlay up; }; then
    die "underlay address $IP"
  fi
fi

# The system OVS with the kernel datapath, as a node runs it; its DB starts empty.
mkdir -p /var/run/openvswitch /var/log/openvswitch /etc/openvswitch
/usr/share/openvswitch/scripts/ovs-ctl start --system-id="$NAME" >/tmp/ovs-ctl.log 2>&1 ||
  die "ovs-ctl start: $(tail -n 3 /tmp/ovs-ctl.log)"
ovs-vsctl --timeout=30 --no-wait init || die "ovs-vsctl init"
say "ovs $(ovs-vsctl --version | head -n 1 | awk '{print $NF}') up at $(cut -d' ' -f1 /proc/uptime) s"

say "agent starting"
/opt/sdn-netpol/venv/bin/python -m sdn_netpol.lab.vmagent
say "agent ended ($?)"
sync
echo o >/proc/sysrq-trigger
sleep 60
