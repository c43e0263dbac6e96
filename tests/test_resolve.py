"""Rules resolved into Grants (targets × peer CIDRs × port ranges): the flow compiler's input."""

from __future__ import annotations

import pytest
from netaddr import IPNetwork

from sdn_netpol.model.labels import LabelSelector, Requirement
from sdn_netpol.model.objects import PodKey
from sdn_netpol.policy.resolve import Grant, ResolvedRule, resolve_all, resolve_policy
from sdn_netpol.policy.resolver import ALL_PORTS, Peers, PortRange
from sdn_netpol.policy.state import ClusterState
from sdn_netpol.policy.verdict import Endpoint, decide
from tests.builders import build, namespace, parse, pod
from tests.seed_examples import EXAMPLE_CLUSTER, TEST_NETWORK_POLICY


def nets(*texts: str) -> tuple[IPNetwork, ...]:
    return tuple(IPNetwork(t) for t in texts)


def keys(*refs: str) -> frozenset[PodKey]:
    return frozenset(PodKey(*ref.split("/")) for ref in refs)


def policy(spec: str, name: str = "p", ns: str = "default") -> str:
    head = f"apiVersion: networking.k8s.io/v1\nkind: NetworkPolicy\nmetadata: {{name: {name}, namespace: {ns}}}\n"
    return head + "spec:\n" + "".join(f"  {line}\n" for line in spec.splitlines())


def test_seed_example_resolves_to_targets_peer_cidrs_and_ports() -> None:
    state = build(*EXAMPLE_CLUSTER, TEST_NETWORK_POLICY)
    [resolved] = resolve_all(state)
    assert resolved.applied_to == keys("default/db", "default/db-replica")
    assert resolved.isolates == {"Ingress", "Egress"}
    egress, ingress = resolved.rules
    assert egress == ResolvedRule("default/test-network-policy", "Egress", 0, (
        Grant(resolved.applied_to, Peers(cidrs=nets("10.0.0.0/24")), (PortRange("TCP", 5978, 5978),)),))
    [grant] = ingress.grants
    assert (ingress.direction, grant.targets, grant.ports) == (
        "Ingress", resolved.applied_to, (PortRange("TCP", 6379, 6379),))
    # the except is a set difference (never a drop), plus the frontend and both myproject pods
    assert grant.peers == Peers(cidrs=nets(
        "10.244.1.11/32", "10.244.2.20/32", "10.244.2.21/32",
        "172.17.0.0/24", "172.17.2.0/23", "172.17.4.0/22", "172.17.8.0/21", "172.17.16.0/20", "172.17.32.0/19",
        "172.17.64.0/18", "172.17.128.0/17",
    ))


def test_empty_from_is_any_peer_and_empty_ports_all_ports() -> None:
    state = build(pod("default/a", "10.0.0.1"), policy("podSelector: {}\ningress: [{}]"))
    [rule] = resolve_all(state)[0].rules
    assert rule.grants == (Grant(keys("default/a"), Peers(any=True), ALL_PORTS),)


def test_protocol_without_port_is_the_whole_protocol_range() -> None:
    state = build(pod("default/a", "10.0.0.1"), policy("ingress: [{ports: [{protocol: UDP}]}]"))
    assert resolve_all(state)[0].rules[0].grants[0].ports == (PortRange("UDP", 0, 65535),)


def test_end_port_is_a_range() -> None:
    state = build(pod("default/a", "10.0.0.1"), policy("ingress: [{ports: [{port: 32000, endPort: 32768}]}]"))
    assert resolve_all(state)[0].rules[0].grants[0].ports == (PortRange("TCP", 32000, 32768),)


def test_named_port_in_ingress_splits_targets_by_what_the_name_means_on_them() -> None:
    state = build(
        pod("default/a", "10.0.0.1", ports=[("http", 8080)]),
        pod("default/b", "10.0.0.2", ports=[("http", 8080)]),
        pod("default/c", "10.0.0.3", ports=[("http", 9090)]),
        pod("default/none", "10.0.0.4", ports=[("web", 80)]),
        policy("ingress: [{ports: [{port: http}, {port: 443}]}]"),
    )
    grants = resolve_all(state)[0].rules[0].grants
    everyone = keys("default/a", "default/b", "default/c", "default/none")
    assert grants == (
        Grant(everyone, Peers(any=True), (PortRange("TCP", 443, 443),)),
        Grant(keys("default/a", "default/b"), Peers(any=True), (PortRange("TCP", 8080, 8080),)),
        Grant(keys("default/c"), Peers(any=True), (PortRange("TCP", 9090, 9090),)),
    )


def test_named_port_in_egress_splits_destination_pods_and_ip_blocks_reach_only_pods() -> None:
    state = build(
        pod("default/client", "10.0.0.9", {"app": "client"}),
        pod("other/a", "10.0.1.1", ports=[("metrics", 9100)]),
        pod("other/b", ["10.0.1.2", "fd00::2"], ports=[("metrics", 9200)]),
        pod("other/c", "10.0.2.1", ports=[("metrics", 9100)]),
        policy("podSelector: {matchLabels: {app: client}}\npolicyTypes: [Egress]\negress:\n"
               "- to: [{namespaceSelector: {}, podSelector: {}}]\n  ports: [{port: metrics}]\n"
               "- to: [{ipBlock: {cidr: 10.0.2.0/24}}]\n  ports: [{port: metrics}]"),
    )
    first, second = resolve_all(state)[0].rules
    client = keys("default/client")
    assert first.grants == (
        Grant(client, Peers(cidrs=nets("10.0.1.1/32", "10.0.2.1/32")), (PortRange("TCP", 9100, 9100),)),
        Grant(client, Peers(cidrs=nets("10.0.1.2/32", "fd00::2/128")), (PortRange("TCP", 9200, 9200),)),
    )
    assert second.grants == (Grant(client, Peers(cidrs=nets("10.0.2.1/32")), (PortRange("TCP", 9100, 9100),)),)


def test_pods_outside_network_policy_are_neither_targets_nor_peer_addresses() -> None:
    state = build(
        pod("default/ok", "10.0.0.1", {"app": "x"}),
        pod("default/host", "192.168.0.1", {"app": "x"}, host_network=True),
        pod("default/done", "10.0.0.2", {"app": "x"}, phase="Succeeded"),
        pod("default/new", labels={"app": "x"}, phase=None),
        policy("podSelector: {matchLabels: {app: x}}\ningress: [{from: [{podSelector: {matchLabels: {app: x}}}]}]"),
    )
    [resolved] = resolve_all(state)
    assert resolved.applied_to == keys("default/ok", "default/new")  # no status yet: selected by labels
    assert resolved.rules[0].grants[0].peers == Peers(cidrs=nets("10.0.0.1/32"))  # its IP is not known


def test_policy_that_selects_no_pod_has_no_grants_but_keeps_its_rules() -> None:
    state = build(pod("default/a", "10.0.0.1"), policy("podSelector: {matchLabels: {app: none}}\ningress: [{}]"))
    [resolved] = resolve_all(state)
    assert resolved.applied_to == frozenset()
    assert resolved.rules == (ResolvedRule("default/p", "Ingress", 0, ()),)


def test_selector_peers_that_select_nobody_give_no_grant() -> None:
    state = build(pod("default/a", "10.0.0.1"), policy("ingress: [{from: [{podSelector: {matchLabels: {x: y}}}]}]"))
    assert resolve_all(state)[0].rules[0].grants == ()


def test_rules_of_directions_not_in_policy_types_are_not_resolved() -> None:
    state = build(pod("default/a", "10.0.0.1"), policy("policyTypes: [Egress]\ningress: [{}]\negress: [{}]"))
    [rule] = resolve_all(state)[0].rules
    assert rule.direction == "Egress"


def test_hand_built_state_without_namespaces_resolves_like_decide() -> None:
    result = parse(pod("ghost/a", "10.0.0.1"), pod("srv/s", "10.0.0.2"),
                   policy("podSelector: {}\ningress: [{from: [{namespaceSelector: {}}]}]", ns="srv"))
    raw = ClusterState((), result.pods, result.policies)  # no Namespace objects at all
    [grant] = resolve_all(raw)[0].rules[0].grants
    assert grant.peers == Peers(cidrs=nets("10.0.0.1/32", "10.0.0.2/32"))
    a, s = raw.pod("ghost", "a"), raw.pod("srv", "s")
    assert decide(raw, Endpoint(pod=a), Endpoint(pod=s), "TCP", 80).allowed


def test_namespace_selector_on_the_implied_name_label_of_a_declared_namespace() -> None:
    state = build(namespace("team-a", env="prod"), pod("team-a/x", "10.0.0.1"), pod("default/s", "10.0.0.2"),
                  policy("ingress: [{from: [{namespaceSelector: {matchLabels: "
                         "{kubernetes.io/metadata.name: team-a}}}]}]"))
    assert resolve_all(state)[0].rules[0].grants[0].peers == Peers(cidrs=nets("10.0.0.1/32"))


def test_resolution_uses_label_indexes_not_a_scan_of_pods(monkeypatch: pytest.MonkeyPatch) -> None:
    state = build(*EXAMPLE_CLUSTER, TEST_NETWORK_POLICY,
                  policy("podSelector: {matchExpressions: [{key: role, operator: NotIn, values: [db]}]}\n"
                         "ingress: [{from: [{namespaceSelector: {matchExpressions: [{key: project, operator: Exists}]},"
                         " podSelector: {matchLabels: {app: client}}}]}]"))

    def no_scan(*_args: object) -> bool:
        raise AssertionError("a selector was evaluated pod by pod")

    monkeypatch.setattr(LabelSelector, "matches", no_scan)
    monkeypatch.setattr(Requirement, "matches", no_scan)
    resolved = {r.ref: r for r in resolve_all(state)}
    assert resolved["default/p"].applied_to == keys("default/backend", "default/frontend")
    assert resolved["default/p"].rules[0].grants[0].peers == Peers(cidrs=nets("10.244.2.20/32"))
    assert resolved["default/test-network-policy"].applied_to == keys("default/db", "default/db-replica")


def test_resolving_twice_gives_equal_results_and_resolve_policy_matches_resolve_all() -> None:
    parts = (*EXAMPLE_CLUSTER, TEST_NETWORK_POLICY)
    state = build(*parts)
    assert resolve_all(state) == resolve_all(build(*parts))
    assert resolve_all(state) == tuple(resolve_policy(state, p) for p in state.policies)
