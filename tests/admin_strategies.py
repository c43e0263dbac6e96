"""Hypothesis strategies for cluster-wide admin policies on the small clusters of
tests/strategies.py, and their manifests (any of the three kinds) for round trips through
the parser. Peers and subjects draw from the same small label alphabets, so rules hit pods."""

from __future__ import annotations

from typing import Any, cast

from hypothesis import strategies as st
from netaddr import IPNetwork

from sdn_netpol.model.cluster_objects import (
    BANP_NAME,
    BANP_PRIORITY,
    CLUSTER_API_VERSIONS,
    Action,
    AdminPeer,
    AdminRule,
    ClusterKind,
    ClusterPolicy,
    PodSet,
    Tier,
)
from sdn_netpol.model.objects import PROTOCOLS, Direction, PolicyPort
from sdn_netpol.policy.state import ClusterState
from tests.strategies import (
    PORT_NAMES,
    PORT_NUMBERS,
    V4_BASE,
    V6_BASE,
    cluster_states,
    namespace_selectors,
    protocols_st,
    selector_manifest,
    selectors,
)


@st.composite
def pod_sets(draw: st.DrawFn) -> PodSet:
    return PodSet(draw(namespace_selectors), draw(st.none() | selectors()))


@st.composite
def networks(draw: st.DrawFn) -> tuple[IPNetwork, ...]:
    found = set()
    for _ in range(draw(st.integers(1, 2))):
        version = draw(st.sampled_from((4, 4, 6)))
        bits = 32 if version == 4 else 128
        base = V4_BASE if version == 4 else V6_BASE
        prefix = draw(st.sampled_from((0, bits - 4, bits - 3, bits - 1, bits)))
        found.add(IPNetwork(f"{base + draw(st.integers(0, 15))}/{prefix}").cidr)
    return tuple(sorted(found))


@st.composite
def admin_ports(draw: st.DrawFn, named: bool) -> tuple[PolicyPort, ...]:
    """One ports entry as the parser makes it (a named port is one entry per protocol)."""
    kind = draw(st.sampled_from(("number", "range", "named") if named else ("number", "range")))
    if kind == "named":
        name = draw(st.sampled_from(PORT_NAMES))
        return tuple(PolicyPort(p, name) for p in PROTOCOLS)
    protocol = draw(protocols_st)
    port = draw(st.sampled_from(PORT_NUMBERS))
    if kind == "number":
        return (PolicyPort(protocol, port),)
    return (PolicyPort(protocol, port, draw(st.sampled_from([n for n in (*PORT_NUMBERS, 81, 8081) if n > port]))),)


@st.composite
def admin_rules(draw: st.DrawFn, direction: Direction, actions: tuple[Action, ...]) -> AdminRule:
    count = draw(st.integers(1, 2))
    peers = [AdminPeer(pod_set=draw(pod_sets())) if direction == "Ingress" or draw(st.booleans())
             else AdminPeer(networks=draw(networks())) for _ in range(count)]
    has_networks = any(p.networks for p in peers)
    ports = tuple(p for entry in draw(st.lists(admin_ports(not has_networks), max_size=2)) for p in entry)
    action = draw(st.sampled_from(actions))
    return AdminRule(draw(st.sampled_from(("", "r"))), action, tuple(peers), ports, action)


@st.composite
def cluster_policies(draw: st.DrawFn, name: str) -> ClusterPolicy:
    kind = cast(ClusterKind, draw(st.sampled_from(("ClusterNetworkPolicy", "AdminNetworkPolicy",
                                                    "BaselineAdminNetworkPolicy"))))
    tier: Tier = "Baseline" if kind == "BaselineAdminNetworkPolicy" else (
        draw(st.sampled_from(("Admin", "Baseline"))) if kind == "ClusterNetworkPolicy" else "Admin")
    actions: tuple[Action, ...] = ("Allow", "Deny") if kind == "BaselineAdminNetworkPolicy" else (
        "Allow", "Deny", "Pass")
    priority = BANP_PRIORITY if kind == "BaselineAdminNetworkPolicy" else draw(st.integers(0, 3))
    ingress = tuple(draw(st.lists(admin_rules("Ingress", actions), max_size=2)))
    egress = tuple(draw(st.lists(admin_rules("Egress", actions), max_size=2)))
    return ClusterPolicy(kind, BANP_NAME if kind == "BaselineAdminNetworkPolicy" else name, tier, priority,
                         draw(pod_sets()), ingress, egress)


@st.composite
def admin_cluster_states(draw: st.DrawFn, max_admin: int = 4) -> ClusterState:
    base = draw(cluster_states(max_policies=3))
    found: dict[tuple[str, str], ClusterPolicy] = {}
    for i in range(draw(st.integers(0, max_admin))):
        policy = draw(cluster_policies(f"cp-{i}"))
        found[(policy.kind, policy.name)] = policy
    return with_cluster_policies(base, found.values())


def with_cluster_policies(state: ClusterState, policies: Any) -> ClusterState:
    return ClusterState.build(state.namespaces, state.pods, state.policies, 0, policies)


# -- manifests ------------------------------------------------------------------------------------

def _pod_set_manifest(pod_set: PodSet, kind: str) -> dict[str, Any]:
    if pod_set.pods is None:
        return {"namespaces": selector_manifest(pod_set.namespaces)}
    return {"pods": {"namespaceSelector": selector_manifest(pod_set.namespaces),
                     "podSelector": selector_manifest(pod_set.pods)}}


def _ports_manifest(ports: tuple[PolicyPort, ...], kind: str) -> list[dict[str, Any]]:
    out: list[dict[str, Any]] = []
    for entry in ports:
        if isinstance(entry.port, str):
            if entry.protocol == "TCP":  # the name's entries for UDP and SCTP come with it
                out.append({"destinationNamedPort": entry.port} if kind == "ClusterNetworkPolicy"
                           else {"namedPort": entry.port})
            continue
        assert entry.port is not None
        if kind == "ClusterNetworkPolicy":
            port: dict[str, Any] = {"number": entry.port} if entry.end_port is None else {
                "range": {"start": entry.port, "end": entry.end_port}}
            out.append({entry.protocol.lower(): {"destinationPort": port}})
        elif entry.end_port is None:
            out.append({"portNumber": {"protocol": entry.protocol, "port": entry.port}})
        else:
            out.append({"portRange": {"protocol": entry.protocol, "start": entry.port, "end": entry.end_port}})
    return out


def cluster_policy_manifest(policy: ClusterPolicy) -> dict[str, Any]:
    spec: dict[str, Any] = {"subject": _pod_set_manifest(policy.subject, policy.kind)}
    if policy.kind == "ClusterNetworkPolicy":
        spec["tier"] = policy.tier
    if policy.kind != "BaselineAdminNetworkPolicy":
        spec["priority"] = policy.priority
    for direction, field, peers_field in (("Ingress", "ingress", "from"), ("Egress", "egress", "to")):
        rules = []
        for rule in policy.rules(cast(Direction, direction)):
            body: dict[str, Any] = {
                "action": "Accept" if rule.action == "Allow" and policy.kind == "ClusterNetworkPolicy" else rule.action,
                peers_field: [{"networks": [str(n) for n in p.networks]} if p.networks
                              else _pod_set_manifest(cast(PodSet, p.pod_set), policy.kind) for p in rule.peers]}
            if rule.name:
                body["name"] = rule.name
            if rule.ports:
                body["protocols" if policy.kind == "ClusterNetworkPolicy" else "ports"] = _ports_manifest(
                    rule.ports, policy.kind)
            rules.append(body)
        if rules:
            spec[field] = rules
    return {"apiVersion": CLUSTER_API_VERSIONS[policy.kind], "kind": policy.kind,
            "metadata": {"name": policy.name}, "spec": spec}
