"""Properties of the semantics on random small clusters (strategies in tests/strategies.py).

The most important one for the flow compiler: the set-based Grants of `resolve_policy` allow
exactly what the reference `decide` allows, side by side, for every pod and outside address.
"""

from __future__ import annotations

import random
from collections.abc import Iterator

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from netaddr import IPAddress

from sdn_netpol.model.labels import Labels, LabelSelector
from sdn_netpol.model.objects import Direction, NetworkPolicy, Pod, Protocol
from sdn_netpol.model.parse import Document, parse_documents
from sdn_netpol.policy.resolve import Grant, ResolvedPolicy, resolve_all
from sdn_netpol.policy.resolver import PortRange
from sdn_netpol.policy.state import ClusterState
from sdn_netpol.policy.verdict import Endpoint, Verdict, connection_addresses, decide
from tests.strategies import EXTERNAL_IPS, cluster_states, policies, probes, to_manifests

# modest: the whole file runs in well under 30 s on 2 cores
AGREEMENT = settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
SETTINGS = settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.too_slow])

Key = tuple[str, str, Protocol, int]


def connections(state: ClusterState) -> Iterator[tuple[Endpoint, Endpoint]]:
    pods = [Endpoint(pod=p) for p in state.pods]
    outside = [Endpoint(ip=ip) for ip in EXTERNAL_IPS]
    for src in pods:
        for dst in pods + outside:
            yield src, dst
    for src in outside:
        for dst in pods:
            yield src, dst


def verdicts(state: ClusterState, ports: tuple[tuple[Protocol, int], ...]) -> dict[Key, Verdict]:
    return {
        (str(src), str(dst), protocol, port): decide(state, src, dst, protocol, port)
        for src, dst in connections(state)
        for protocol, port in ports
    }


def summary(v: Verdict) -> tuple[bool, bool, bool, frozenset[str], frozenset[str]]:
    return (v.allowed, v.egress.allowed, v.ingress.allowed, frozenset(v.egress.isolated_by),
            frozenset(v.ingress.isolated_by))


# --- a tiny evaluator over Grants: what the compiled flows will do ----------------------------


def _in_ports(ports: tuple[PortRange, ...], protocol: Protocol, port: int) -> bool:
    return not ports or any(r.protocol == protocol and r.lo <= port <= r.hi for r in ports)


def _grant_allows(grant: Grant, pod: Pod, peer_ip: IPAddress | None, protocol: Protocol, port: int) -> bool:
    if pod.key not in grant.targets or not _in_ports(grant.ports, protocol, port):
        return False
    if grant.peers.any:
        return True
    return peer_ip is not None and any(peer_ip in cidr for cidr in grant.peers.cidrs)


def grants_side_allow(
    resolved: tuple[ResolvedPolicy, ...], direction: Direction, pod: Pod | None, peer_ip: IPAddress | None,
    protocol: Protocol, port: int,
) -> bool:
    """Not isolated → allowed; isolated → some grant of a rule in that direction of an isolating
    policy has the pod in its targets, the peer address in its peers and the port in its ports."""
    if pod is None:
        return True
    isolating = [rp for rp in resolved if direction in rp.isolates and pod.key in rp.applied_to]
    return not isolating or any(
        _grant_allows(grant, pod, peer_ip, protocol, port)
        for rp in isolating
        for rule in rp.rules
        if rule.direction == direction
        for grant in rule.grants
    )


@AGREEMENT
@given(cluster_states())
def test_resolve_agrees_with_decide_on_every_connection(state: ClusterState) -> None:
    resolved = resolve_all(state)
    for src, dst in connections(state):
        src_ip, dst_ip = connection_addresses(src, dst)
        for protocol, port in probes(state):
            v = decide(state, src, dst, protocol, port)
            where = f"{src} -> {dst} {protocol}/{port}"
            # A side can be compared when the peer's address is known (a pod whose IP is not
            # known yet, or two pods with no common family, have no packets to match).
            if dst_ip is not None:
                egress = grants_side_allow(resolved, "Egress", src.pod, dst_ip, protocol, port)
                assert egress == v.egress.allowed, f"egress {where}: grants {egress}, decide {v.egress.allowed}"
            if src_ip is not None:
                ingress = grants_side_allow(resolved, "Ingress", dst.pod, src_ip, protocol, port)
                assert ingress == v.ingress.allowed, f"ingress {where}: grants {ingress}, decide {v.ingress.allowed}"


@SETTINGS
@given(cluster_states())
def test_resolved_isolation_is_the_isolation_decide_reports(state: ClusterState) -> None:
    resolved = resolve_all(state)
    for pod in state.pods:
        v = decide(state, Endpoint(pod=pod), Endpoint(pod=pod), "TCP", 80)
        for direction, side in (("Egress", v.egress), ("Ingress", v.ingress)):
            isolating = {rp.ref for rp in resolved if direction in rp.isolates and pod.key in rp.applied_to}
            assert isolating == set(side.isolated_by), (pod.key, direction)


@SETTINGS
@given(cluster_states(), st.randoms(use_true_random=False))
def test_shuffling_policies_changes_nothing(state: ClusterState, rnd: random.Random) -> None:
    shuffled = list(state.policies)
    rnd.shuffle(shuffled)
    # the raw constructor keeps the given order, so decide really walks the policies differently
    other = ClusterState(state.namespaces, state.pods, tuple(shuffled))
    before, after = verdicts(state, probes(state)), verdicts(other, probes(state))
    assert {k: summary(v) for k, v in before.items()} == {k: summary(v) for k, v in after.items()}
    assert {k: frozenset(v.ingress.allowed_by) for k, v in before.items()} == {
        k: frozenset(v.ingress.allowed_by) for k, v in after.items()}


@SETTINGS
@given(cluster_states(), st.data())
def test_a_policy_that_selects_no_pod_changes_nothing(state: ClusterState, data: st.DataObject) -> None:
    extra = data.draw(policies([ns.name for ns in state.namespaces], "selects-nobody"))
    nobody = NetworkPolicy(extra.namespace, extra.name, LabelSelector(Labels({"nobody": "here"})),
                           extra.policy_types, extra.ingress, extra.egress)
    other = ClusterState.build(state.namespaces, state.pods, (*state.policies, nobody))
    ports = probes(other)
    assert {k: summary(v) for k, v in verdicts(state, ports).items()} == {
        k: summary(v) for k, v in verdicts(other, ports).items()}


@SETTINGS
@given(cluster_states(), st.data())
def test_adding_a_policy_never_removes_a_connection_of_an_already_isolated_side(
    state: ClusterState, data: st.DataObject
) -> None:
    extra = data.draw(policies([ns.name for ns in state.namespaces], "zz-added"))
    other = ClusterState.build(state.namespaces, state.pods, (*state.policies, extra))
    ports = probes(other)
    after = verdicts(other, ports)
    for key, v in verdicts(state, ports).items():
        if v.egress.isolated_by and v.egress.allowed:
            assert after[key].egress.allowed, key
        if v.ingress.isolated_by and v.ingress.allowed:
            assert after[key].ingress.allowed, key


@SETTINGS
@given(cluster_states())
def test_pods_outside_network_policy_are_never_isolated_and_loopback_is_allowed(state: ClusterState) -> None:
    for pod in state.pods:
        v = decide(state, Endpoint(pod=pod), Endpoint(pod=pod), "UDP", 53)
        assert v.allowed
        if not pod.in_policy_scope:
            assert v.egress.isolated_by == v.ingress.isolated_by == ()


@SETTINGS
@given(cluster_states())
def test_manifests_of_a_random_cluster_parse_back_to_the_same_values(state: ClusterState) -> None:
    result = parse_documents(Document("generated", doc) for doc in to_manifests(state))
    assert [str(e) for e in result.errors] == []
    assert ClusterState.from_parse(result) == state
