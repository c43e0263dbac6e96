#!/usr/bin/env bash
# Every node: container runtime, kubeadm, Open vSwitch, sdn-netpol (CNI + controller unit).
set -euo pipefail
N=$1; NODES=$2
NODE_IP=192.168.56.1$N
export DEBIAN_FRONTEND=noninteractive

apt-get update -qq
apt-get install -y -qq containerd openvswitch-switch containernetworking-plugins python3-venv \
  apt-transport-https ca-certificates curl gpg ethtool >/dev/null
mkdir -p /etc/containerd && containerd config default | sed 's/SystemdCgroup = false/SystemdCgroup = true/' \
  > /etc/containerd/config.toml && systemctl restart containerd
modprobe br_netfilter overlay openvswitch
sysctl -qw net.ipv4.ip_forward=1
swapoff -a

# kubeadm from the Kubernetes package repository
KVER=v1.31
curl -fsSL https://pkgs.k8s.io/core:/stable:/$KVER/deb/Release.key | gpg --dearmor --yes -o /etc/apt/keyrings/k8s.gpg
echo "deb [signed-by=/etc/apt/keyrings/k8s.gpg] https://pkgs.k8s.io/core:/stable:/$KVER/deb/ /" \
  > /etc/apt/sources.list.d/kubernetes.list
apt-get update -qq && apt-get install -y -qq kubelet kubeadm kubectl >/dev/null
echo "KUBELET_EXTRA_ARGS=--node-ip=$NODE_IP" > /etc/default/kubelet

# sdn-netpol itself
python3 -m venv /opt/sdn-netpol && /opt/sdn-netpol/bin/pip install -q /sdn-netpol
ln -sf /opt/sdn-netpol/bin/sdn-netpol-cni /usr/lib/cni/sdn-netpol-cni

# br-int: secure fail mode (a controller outage keeps flows, never an open switch), VXLAN
# tunnel with flow-based remote, the controller on loopback (set before any flow is added).
ovs-vsctl --may-exist add-br br-int -- set Bridge br-int fail_mode=secure \
  other_config:disable-in-band=true protocols=OpenFlow10,OpenFlow13,OpenFlow14,OpenFlow15 \
  -- --may-exist add-port br-int tun0 -- set Interface tun0 type=vxlan \
     options:remote_ip=flow options:key=flow ofport_request=32766
ovs-vsctl set-controller br-int tcp:127.0.0.1:6653

# CNI: this node's pod CIDR, the virtual gateway .254 answered by the controller's ARP flows
mkdir -p /etc/cni/net.d
sed -e "s#10.244.1.0/24#10.244.$N.0/24#g" -e "s#10.244.1.254#10.244.$N.254#g" -e "s#10.244.1.253#10.244.$N.253#g" \
  /sdn-netpol/sdn_netpol/data/10-sdn-netpol.conflist > /etc/cni/net.d/10-sdn-netpol.conflist

install -m 0644 /sdn-netpol/vagrant/systemd/sdn-netpol-controller.service /etc/systemd/system/
