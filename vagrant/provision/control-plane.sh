#!/usr/bin/env bash
# node1: kubeadm init (pod CIDRs allocated per node from 10.244.0.0/16), deploy/, the join
# command for the workers.
set -euo pipefail
kubeadm init --apiserver-advertise-address=192.168.56.11 --pod-network-cidr=10.244.0.0/16 \
  --node-name node1 >/root/kubeadm-init.log
export KUBECONFIG=/etc/kubernetes/admin.conf
mkdir -p /root/.kube
cp /etc/kubernetes/admin.conf /root/.kube/config
kubectl taint nodes node1 node-role.kubernetes.io/control-plane- || true
kubectl apply -k /sdn-netpol/deploy
kubeadm token create --print-join-command > /sdn-netpol/vagrant/.join.sh
kubectl -n sdn-netpol rollout status daemonset/sdn-netpol --timeout=10m
