"""Deterministic synthetic clusters for the compiler's scale tests and benchmarks/compile.py.

A "realistic mix": 100 namespaces (team, env labels), pods spread round-robin over the
namespaces and over 10 nodes with app/tier labels and named containerPorts, and policies
cycling through ten shapes seen in real clusters — same-namespace podSelector allows on a
port, cross-namespace (namespaceSelector AND podSelector) allows on a named port, ipBlock
with except, egress to databases plus DNS, one-namespace allows on an endPort range,
namespace-wide isolation with a monitoring scrape allow, two-dimension allows without
ports, egress DNS only. Pods and namespaces are
built as values (50k pods through the YAML parser would dominate the set-up); policies go
through the parser, so a generator mistake fails loudly.
"""

from __future__ import annotations

from dataclasses import replace
from typing import Any

from netaddr import IPAddress

from sdn_netpol.model.labels import Labels
from sdn_netpol.model.objects import ContainerPort, Namespace, NetworkPolicy, Pod
from sdn_netpol.model.parse import Document, parse_documents
from sdn_netpol.policy.state import ClusterState

N_NAMESPACES = 100
N_NODES = 10
N_APPS = 20
TIERS = ("web", "api", "db", "cache")
ENVS = ("prod", "staging", "dev")


def node_name(i: int, n_nodes: int = N_NODES) -> str:
    """Pod i's node by a multiplicative hash, so a namespace's and an app's pods spread over nodes
    as a scheduler would spread them (plain i % 10 would put each namespace on one node)."""
    return f"node{(((i * 2654435761) & 0xFFFFFFFF) >> 16) % n_nodes}"


def namespaces() -> list[Namespace]:
    return [Namespace.implied(f"ns-{i:03d}", Labels({"team": f"t{i % 10}", "env": ENVS[i % 3]}))
            for i in range(N_NAMESPACES)]


def make_pod(i: int, n_nodes: int = N_NODES) -> Pod:
    """Pod i: namespace i % 100, app (i // 100) % 20, IP 10.0.0.0/8 + i + 1."""
    app = (i // N_NAMESPACES) % N_APPS
    labels = Labels({"app": f"a{app}", "tier": TIERS[app % 4], "pod-template-hash": f"h{i % 7}"})
    ports = (ContainerPort("http", 8080 if app % 3 else 8000), ContainerPort("metrics", 9090),
             ContainerPort("dns", 53, "UDP"))
    return Pod(f"ns-{i % N_NAMESPACES:03d}", f"pod-{i:05d}", labels, (IPAddress(0x0A000001 + i),),
               node_name(i, n_nodes), ports=ports)


def _selector(labels: dict[str, str]) -> dict[str, Any]:
    return {"matchLabels": labels}


def policy_doc(i: int) -> dict[str, Any]:
    """Policy i of shape i % 10, in namespace i % 100, applied to app (i // 100) % 20."""
    ns, app = f"ns-{i % N_NAMESPACES:03d}", f"a{(i // N_NAMESPACES) % N_APPS}"
    other = f"a{(i // N_NAMESPACES + 1) % N_APPS}"
    shape = i % 10
    spec: dict[str, Any] = {"podSelector": _selector({"app": app})}
    if shape in (0, 1, 2, 3):
        spec["ingress"] = [{"from": [{"podSelector": _selector({"app": other})}],
                            "ports": [{"port": 8080 + shape}]}]
    elif shape == 4:
        spec["ingress"] = [{"from": [{"namespaceSelector": _selector({"team": f"t{i % 10}"}),
                                      "podSelector": _selector({"tier": "web"})}],
                            "ports": [{"port": "http"}]}]
    elif shape == 5:
        spec["ingress"] = [{"from": [{"ipBlock": {"cidr": f"172.16.{i % 256}.0/24",
                                                  "except": [f"172.16.{i % 256}.16/28"]}}],
                            "ports": [{"port": 443}]}]
    elif shape == 6:
        spec["policyTypes"] = ["Egress"]
        spec["egress"] = [{"to": [{"podSelector": _selector({"tier": "db"})}], "ports": [{"port": 5432}]},
                          {"to": [{"ipBlock": {"cidr": "10.96.0.10/32"}}],
                           "ports": [{"port": 53, "protocol": "UDP"}, {"port": 53}]}]
    elif shape == 7:
        target = f"ns-{(i + 1) % N_NAMESPACES:03d}"
        spec["ingress"] = [{"from": [{"namespaceSelector": _selector({"kubernetes.io/metadata.name": target})}],
                            "ports": [{"port": 30000, "endPort": 30100}]}]
    elif shape == 8:  # namespace-wide: isolate everything, let the monitoring namespace scrape
        spec["podSelector"] = {}
        spec["ingress"] = [{"from": [{"namespaceSelector": _selector({"kubernetes.io/metadata.name": "ns-000"})}],
                            "ports": [{"port": "metrics"}, {"port": 9100}]}]
    else:
        spec["policyTypes"] = ["Ingress", "Egress"]
        spec["ingress"] = [{"from": [{"podSelector": _selector({"app": other})}]}]
        spec["egress"] = [{"ports": [{"port": 53, "protocol": "UDP"}]}]
    return {"apiVersion": "networking.k8s.io/v1", "kind": "NetworkPolicy",
            "metadata": {"name": f"pol-{i:05d}", "namespace": ns}, "spec": spec}


def policies(docs: list[dict[str, Any]]) -> tuple[NetworkPolicy, ...]:
    result = parse_documents(Document(f"synthetic {i}", d) for i, d in enumerate(docs))
    if result.errors:
        raise ValueError(f"synthetic policies are invalid: {[str(e) for e in result.errors]}")
    return result.policies


def synthetic_state(n_pods: int, n_policies: int, n_nodes: int = N_NODES) -> ClusterState:
    return ClusterState.build(namespaces(), (make_pod(i, n_nodes) for i in range(n_pods)),
                              policies([policy_doc(i) for i in range(n_policies)]))


def with_policy(state: ClusterState, doc: dict[str, Any]) -> ClusterState:
    return ClusterState.build(state.namespaces, state.pods, (*state.policies, *policies([doc])))


def relabel(state: ClusterState, index: int, app: str) -> ClusterState:
    """The same state with pod `index` (in sorted order) carrying label app=APP."""
    pods = list(state.pods)
    pod = pods[index]
    pods[index] = replace(pod, labels=Labels({**pod.labels, "app": app}))
    return ClusterState.build(state.namespaces, pods, state.policies)
