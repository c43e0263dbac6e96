#!/usr/bin/env bash
# Every node: container runtime, kubeadm, Open vSwitch on the host (the DaemonSet in deploy/
# uses it), python3 (runs the CNI plugin that the DaemonSet installs), the kernel modules.
set -euo pipefail
N=$1
NODE_IP=192.168.56.1$N
export DEBIAN_FRONTEND=noninteractive

apt-get update -qq
apt-get install -y -qq containerd openvswitch-switch containernetworking-plugins python3 \
  apt-transport-https ca-certificates curl gpg >/dev/null
mkdir -p /etc/containerd
containerd config default | sed 's/SystemdCgroup = false/SystemdCgroup = true/' > /etc/containerd/config.toml
systemctl restart containerd
modprobe br_netfilter
modprobe overlay
modprobe openvswitch
sysctl -qw net.ipv4.ip_forward=1
swapoff -a

# kubeadm from the Kubernetes package repository
KVER=v1.31
install -d -m 0755 /etc/apt/keyrings
curl -fsSL "https://pkgs.k8s.io/core:/stable:/$KVER/deb/Release.key" | gpg --dearmor --yes -o /etc/apt/keyrings/k8s.gpg
echo "deb [signed-by=/etc/apt/keyrings/k8s.gpg] https://pkgs.k8s.io/core:/stable:/$KVER/deb/ /" \
  > /etc/apt/sources.list.d/kubernetes.list
apt-get update -qq
apt-get install -y -qq kubelet kubeadm kubectl >/dev/null
# The Node's InternalIP is the private network: the VXLAN underlay the controller tunnels to.
echo "KUBELET_EXTRA_ARGS=--node-ip=$NODE_IP" > /etc/default/kubelet
# host-local and the other reference plugins where the kubelet looks for them
mkdir -p /opt/cni/bin
cp -n /usr/lib/cni/* /opt/cni/bin/
