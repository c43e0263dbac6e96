#!/usr/bin/env bash
# node1: kubeadm init, RBAC + kubeconfig for the controllers, join command for workers.
set -euo pipefail
kubeadm init --apiserver-advertise-address=192.168.56.11 --pod-network-cidr=10.244.0.0/16 \
  --node-name node1 >/root/kubeadm-init.log
export KUBECONFIG=/etc/kubernetes/admin.conf
mkdir -p /root/.kube && cp /etc/kubernetes/admin.conf /root/.kube/config
kubectl apply -f /sdn-netpol/vagrant/manifests/rbac.yaml
/sdn-netpol/vagrant/provision/controller-kubeconfig.sh > /sdn-netpol/vagrant/.controller-kubeconfig
kubeadm token create --print-join-command > /sdn-netpol/vagrant/.join.sh
install -D -m 0600 /sdn-netpol/vagrant/.controller-kubeconfig /etc/sdn-netpol/kubeconfig
systemctl enable --now sdn-netpol-controller
kubectl taint nodes node1 node-role.kubernetes.io/control-plane- || true
