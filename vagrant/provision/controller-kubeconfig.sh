#!/usr/bin/env bash
# A kubeconfig for the sdn-netpol ServiceAccount (read-only on what the controller watches).
set -euo pipefail
export KUBECONFIG=/etc/kubernetes/admin.conf
TOKEN=$(kubectl -n kube-system create token sdn-netpol --duration=8760h)
SERVER=$(kubectl config view --minify -o jsonpath='{.clusters[0].cluster.server}')
CA=$(kubectl config view --raw --minify -o jsonpath='{.clusters[0].cluster.certificate-authority-data}')
cat <<YAML
apiVersion: v1
kind: Config
clusters: [{name: k, cluster: {server: "$SERVER", certificate-authority-data: "$CA"}}]
users: [{name: sdn-netpol, user: {token: "$TOKEN"}}]
contexts: [{name: k, context: {cluster: k, user: sdn-netpol}}]
current-context: k
YAML
