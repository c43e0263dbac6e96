"""Fuzzed admin-policy manifests: any JSON value anywhere in a ClusterNetworkPolicy,
AdminNetworkPolicy or BaselineAdminNetworkPolicy is parsed without an exception; it is
either a valid policy (which the engine and the compiler then take) or rejected with errors
naming the object the way `kubectl get` does, never half-read."""

from __future__ import annotations

from typing import Any

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from sdn_netpol.compiler.compile import compile_node
from sdn_netpol.compiler.topology import assign_ports
from sdn_netpol.model.parse import Document, parse_documents
from sdn_netpol.policy.matrix import build_matrix
from sdn_netpol.policy.state import ClusterState
from tests.strategies import junk, mutated_tree

V2, V1 = "policy.networking.k8s.io/v1alpha2", "policy.networking.k8s.io/v1alpha1"
SELECTOR = {"matchLabels": {"app": "a"}, "matchExpressions": [{"key": "tier", "operator": "In", "values": ["x"]}]}
BASES: tuple[dict[str, Any], ...] = (
    {"apiVersion": V2, "kind": "ClusterNetworkPolicy", "metadata": {"name": "c"},
     "spec": {"tier": "Admin", "priority": 5, "subject": {"pods": {"namespaceSelector": {}, "podSelector": SELECTOR}},
              "ingress": [{"name": "i", "action": "Pass", "from": [{"namespaces": SELECTOR}],
                           "protocols": [{"tcp": {"destinationPort": {"number": 80}}},
                                         {"udp": {"destinationPort": {"range": {"start": 1, "end": 9}}}},
                                         {"destinationNamedPort": "http"}]}],
              "egress": [{"name": "e", "action": "Deny", "to": [{"networks": ["10.0.0.0/8", "fd00::/8"]}],
                          "protocols": [{"sctp": {"destinationPort": {"number": 9}}}]}]}},
    {"apiVersion": V1, "kind": "AdminNetworkPolicy", "metadata": {"name": "a"},
     "spec": {"priority": 7, "subject": {"namespaces": SELECTOR},
              "ingress": [{"action": "Allow", "from": [{"pods": {"namespaceSelector": SELECTOR, "podSelector": {}}}],
                           "ports": [{"portNumber": {"protocol": "TCP", "port": 80}},
                                     {"portRange": {"protocol": "UDP", "start": 1, "end": 9}},
                                     {"namedPort": "http"}]}],
              "egress": [{"action": "Pass", "to": [{"namespaces": {}}]}]}},
    {"apiVersion": V1, "kind": "BaselineAdminNetworkPolicy", "metadata": {"name": "default"},
     "spec": {"subject": {"namespaces": {}},
              "ingress": [{"action": "Deny", "from": [{"namespaces": {}}]}],
              "egress": [{"action": "Allow", "to": [{"networks": ["0.0.0.0/0"]}]}]}},
)
CLUSTER = (
    {"apiVersion": "v1", "kind": "Pod", "metadata": {"name": "p", "namespace": "x", "labels": {"app": "a"}},
     "spec": {"nodeName": "n1", "containers": [{"name": "c", "ports": [{"containerPort": 80, "name": "http"}]}]},
     "status": {"phase": "Running", "podIP": "10.244.1.2"}},
    {"apiVersion": "v1", "kind": "Pod", "metadata": {"name": "q", "namespace": "y", "labels": {"tier": "x"}},
     "spec": {"nodeName": "n1"}, "status": {"phase": "Running", "podIP": "10.244.1.3"}},
)


@settings(max_examples=400, deadline=None, suppress_health_check=list(HealthCheck))
@given(st.sampled_from(BASES).flatmap(lambda base: mutated_tree(base, junk)))
def test_mutated_admin_policies_are_valid_or_rejected_with_their_name(doc: Any) -> None:
    result = parse_documents([Document("fuzz", d) for d in (*CLUSTER, doc)])
    kind = doc.get("kind") if isinstance(doc, dict) else None
    for error in result.errors:
        assert "\n" not in str(error)
        if kind in ("ClusterNetworkPolicy", "AdminNetworkPolicy", "BaselineAdminNetworkPolicy"):
            assert error.obj.startswith(f"{kind}/") or error.obj == "fuzz", error
    if result.cluster_policies:
        assert not [e for e in result.errors if e.obj.startswith(result.cluster_policies[0].kind)]
        state = ClusterState.from_parse(result)
        build_matrix(state, "TCP", 80)
        compile_node(state, assign_ports(state, "n1"))
