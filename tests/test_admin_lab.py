"""Admin and Baseline tiers on real packets (issue 18): a 3-node lab of the conformance model
(namespaces x, y, z labelled ns=NAME; pods a, b, c labelled pod=NAME; every pod serves 80
and 81 on TCP, UDP and SCTP, named serve-PORT-PROTO), cluster policies applied with
`lab apply`, and every pod pair probed with real packets against the engine's matrix. Each
documented behaviour: rule order, Pass, priority, tier order, NetworkPolicy in between,
named ports, port ranges, networks."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from sdn_netpol.compiler.pipeline import Table
from sdn_netpol.debug.flows import Selection
from sdn_netpol.lab import debug as lab_debug
from sdn_netpol.lab.lab import Lab
from tests.lab_fixtures import Cluster, allowed_pairs, deny_ingress, lab_up, netpol

V2 = "policy.networking.k8s.io/v1alpha2"
V1 = "policy.networking.k8s.io/v1alpha1"
ALL: dict[str, Any] = {"namespaces": {}}
PROTOCOLS = (("TCP", 80), ("UDP", 80), ("SCTP", 80))


def ns(name: str) -> dict[str, Any]:
    return {"namespaces": {"matchLabels": {"ns": name}}}


def pods(namespace: str, pod: str) -> dict[str, Any]:
    return {"pods": {"namespaceSelector": {"matchLabels": {"ns": namespace}},
                     "podSelector": {"matchLabels": {"pod": pod}}}}


def cnp(name: str, priority: int, tier: str = "Admin", subject: dict[str, Any] = ALL,
        **rules: list[dict[str, Any]]) -> dict[str, Any]:
    return {"apiVersion": V2, "kind": "ClusterNetworkPolicy", "metadata": {"name": name},
            "spec": {"tier": tier, "priority": priority, "subject": subject, **rules}}


def anp(name: str, priority: int, subject: dict[str, Any] = ALL, **rules: list[dict[str, Any]]) -> dict[str, Any]:
    return {"apiVersion": V1, "kind": "AdminNetworkPolicy", "metadata": {"name": name},
            "spec": {"priority": priority, "subject": subject, **rules}}


def banp(subject: dict[str, Any] = ALL, **rules: list[dict[str, Any]]) -> dict[str, Any]:
    return {"apiVersion": V1, "kind": "BaselineAdminNetworkPolicy", "metadata": {"name": "default"},
            "spec": {"subject": subject, **rules}}


@pytest.fixture(scope="module")
def lab(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Lab]:
    with lab_up(tmp_path_factory.mktemp("admin-lab"), 3) as made:
        yield made


@pytest.fixture
def cluster(lab: Lab, tmp_path: Path) -> Iterator[Cluster]:
    view = Cluster(lab, tmp_path)
    applied: list[dict[str, Any]] = []
    original = view.apply

    def apply(*docs: dict[str, Any]) -> None:
        original(*docs)
        applied.extend(d for d in docs if d["kind"] != "NetworkPolicy")

    view.apply = apply  # type: ignore[method-assign]
    yield view
    if applied:
        view.lab.delete([view._file(tuple(applied))])
    view.relabelled = False
    view.reset()


def check_all(cluster: Cluster, protocols: tuple[tuple[str, int], ...] = PROTOCOLS) -> set[tuple[str, str]]:
    """Probe every protocol; measured must equal the engine's; the TCP pairs allowed."""
    reports = [cluster.check(protocol, port) for protocol, port in protocols]
    return allowed_pairs(reports[0])


def test_admin_deny_drops_on_every_protocol(cluster: Cluster) -> None:
    cluster.apply(cnp("deny-to-x", 10, egress=[{"name": "block", "action": "Deny", "to": [ns("x")]}]))
    allowed = check_all(cluster)
    assert ("y/a", "x/a") not in allowed and ("y/a", "y/b") in allowed


def test_rule_order_first_match_decides(cluster: Cluster) -> None:
    cluster.apply(cnp("order", 10, ingress=[
        {"name": "accept-a", "action": "Accept", "from": [pods("y", "a")]},
        {"name": "deny-y", "action": "Deny", "from": [ns("y")]}]))
    allowed = check_all(cluster)
    assert ("y/a", "x/a") in allowed and ("y/b", "x/a") not in allowed


def test_priority_lower_value_first(cluster: Cluster) -> None:
    cluster.apply(anp("allow-z", 5, ingress=[{"action": "Allow", "from": [ns("z")]}]),
                  cnp("deny-all", 50, ingress=[{"action": "Deny", "from": [ALL]}]))
    allowed = check_all(cluster)
    assert ("z/a", "x/b") in allowed and ("y/a", "x/b") not in allowed


def test_pass_hands_over_to_network_policy_and_admin_beats_it(cluster: Cluster) -> None:
    cluster.apply(deny_ingress("x"),
                  cnp("tiers", 10, subject=ns("x"), ingress=[
                      {"name": "z-always", "action": "Accept", "from": [ns("z")]},
                      {"name": "y-to-owners", "action": "Pass", "from": [ns("y")]}]))
    allowed = check_all(cluster)
    assert ("z/a", "x/a") in allowed  # the admin accept beats x's NetworkPolicy isolation
    assert ("y/a", "x/a") not in allowed  # passed to x's NetworkPolicy, which denies


def test_baseline_applies_only_where_no_network_policy_isolates(cluster: Cluster) -> None:
    cluster.apply(banp(ingress=[{"name": "default-deny", "action": "Deny", "from": [ALL]}]),
                  netpol("allow-from-y", "x", {"podSelector": {}, "policyTypes": ["Ingress"],
                                               "ingress": [{"from": [{"namespaceSelector": {
                                                   "matchLabels": {"ns": "y"}}}]}]}))
    allowed = check_all(cluster)
    assert ("y/a", "x/a") in allowed  # x's NetworkPolicy decides
    assert ("x/a", "y/a") not in allowed  # y has no NetworkPolicy: the baseline denies
    assert ("z/a", "x/a") not in allowed


def test_named_ports_and_port_ranges(cluster: Cluster) -> None:
    cluster.apply(cnp("ports", 10, subject=ns("x"), ingress=[
        {"name": "named", "action": "Deny", "from": [ns("y")], "protocols": [{"destinationNamedPort": "serve-80-udp"}]},
        {"name": "range", "action": "Deny", "from": [ns("z")],
         "protocols": [{"tcp": {"destinationPort": {"range": {"start": 79, "end": 80}}}}]}]))
    udp = allowed_pairs(cluster.check("UDP", 80))
    tcp = allowed_pairs(cluster.check("TCP", 80))
    tcp81 = allowed_pairs(cluster.check("TCP", 81))
    assert ("y/a", "x/a") not in udp and ("y/a", "x/a") in tcp
    assert ("z/a", "x/a") not in tcp and ("z/a", "x/a") in tcp81 and ("z/a", "x/a") in udp


def test_networks_match_pod_addresses(cluster: Cluster) -> None:
    target = cluster.pod("z/c")
    address = str(target.ips[0])
    cluster.apply(anp("networks", 10, egress=[{"name": "to-z-c", "action": "Deny",
                                               "to": [{"networks": [f"{address}/32"]}]}]))
    allowed = check_all(cluster)
    assert ("x/a", "z/c") not in allowed and ("x/a", "z/b") in allowed


def test_flows_and_stats_name_admin_rules_like_network_policy_rules(cluster: Cluster) -> None:
    cluster.apply(cnp("deny-to-x", 10, egress=[{"name": "block", "action": "Deny", "to": [ns("x")]}]))
    cluster.check("TCP", 80)  # y/a's probes to x hit the rule
    state, pods_cluster = cluster.lab.state(), cluster.lab.cluster()
    selection = Selection(policy="ClusterNetworkPolicy/deny-to-x", direction="Egress", rule=0)
    found = lab_debug.flows(state, pods_cluster, None, selection)
    assert found and {f.policy for f in found} == {"ClusterNetworkPolicy/deny-to-x"}
    assert {f.flow.table for f in found} == {Table.EGRESS_ADMIN}
    stats = lab_debug.rule_stats(state, pods_cluster)
    counted = [r for r in stats.rules if r.policy == "ClusterNetworkPolicy/deny-to-x"]
    assert counted and all(r.namespace == "" for r in counted) and sum(r.packets for r in counted) > 0
