"""The reference semantics of the Admin and Baseline tiers, one test per behaviour the
network-policy-api documents (ClusterNetworkPolicy v1alpha2, AdminNetworkPolicy and
BaselineAdminNetworkPolicy v1alpha1): rule order, Pass, priority, tier order, NetworkPolicy in
between, named ports, port ranges, networks, subjects and peers."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from sdn_netpol.policy.matrix import build_matrix
from sdn_netpol.policy.verdict import explain
from tests.builders import allows, build, namespace, pod, verdict

V2 = "policy.networking.k8s.io/v1alpha2"
V1 = "policy.networking.k8s.io/v1alpha1"
ALL: dict[str, Any] = {"namespaces": {}}
Rules = Sequence[dict[str, Any]]


def ns_is(name: str) -> dict[str, Any]:
    return {"namespaces": {"matchLabels": {"kubernetes.io/metadata.name": name}}}


def rule(action: str, peers: list[dict[str, Any]] | None = None, name: str = "", direction: str = "egress",
         **extra: Any) -> dict[str, Any]:
    body: dict[str, Any] = {"action": action, ("to" if direction == "egress" else "from"): peers or [ALL], **extra}
    if name:
        body["name"] = name
    return body


def cnp(name: str, priority: int, egress: Rules = (), ingress: Rules = (),
        tier: str = "Admin", subject: dict[str, Any] = ALL) -> dict[str, Any]:
    spec: dict[str, Any] = {"tier": tier, "priority": priority, "subject": subject}
    if egress:
        spec["egress"] = list(egress)
    if ingress:
        spec["ingress"] = list(ingress)
    return {"apiVersion": V2, "kind": "ClusterNetworkPolicy", "metadata": {"name": name}, "spec": spec}


def anp(name: str, priority: int, egress: Rules = (), ingress: Rules = (),
        subject: dict[str, Any] = ALL) -> dict[str, Any]:
    doc = cnp(name, priority, egress, ingress, subject=subject)
    del doc["spec"]["tier"]
    return {**doc, "apiVersion": V1, "kind": "AdminNetworkPolicy"}


def banp(egress: Rules = (), ingress: Rules = (),
         subject: dict[str, Any] = ALL) -> dict[str, Any]:
    doc = anp("default", 0, egress, ingress, subject)
    del doc["spec"]["priority"]
    return {**doc, "kind": "BaselineAdminNetworkPolicy"}


def np_allow_ingress_from(namespace_name: str, to_ns: str, name: str = "np") -> dict[str, Any]:
    return {"apiVersion": "networking.k8s.io/v1", "kind": "NetworkPolicy",
            "metadata": {"name": name, "namespace": to_ns},
            "spec": {"podSelector": {}, "policyTypes": ["Ingress"],
                     "ingress": [{"from": [{"namespaceSelector": {"matchLabels": {
                         "kubernetes.io/metadata.name": namespace_name}}}]}]}}


def np_deny_all(ns: str, types: tuple[str, ...] = ("Ingress",)) -> dict[str, Any]:
    return {"apiVersion": "networking.k8s.io/v1", "kind": "NetworkPolicy",
            "metadata": {"name": "deny-all", "namespace": ns},
            "spec": {"podSelector": {}, "policyTypes": list(types)}}


PODS = (
    namespace("a", tenant="a"), namespace("b", tenant="b"), namespace("monitoring", team="ops"),
    pod("a/web", "10.244.1.2", {"app": "web"}, ports=[("http", 80), ("dns", 53, "UDP")]),
    pod("a/db", "10.244.1.3", {"app": "db"}, ports=[("sql", 5432)]),
    pod("b/web", "10.244.2.2", {"app": "web"}, ports=[("http", 8080), ("dns", 5353, "UDP")]),
    pod("monitoring/prom", "10.244.3.2", {"app": "prometheus"}, ports=[("http", 9090)]),
    pod("a/host", "192.168.0.10", {"app": "host"}, host_network=True, node="n1"),
)


def cluster(*policies: dict[str, Any]) -> Any:
    return build(*PODS, *policies)


# -- rule order ------------------------------------------------------------------------------------

def test_rules_of_a_policy_are_evaluated_in_order_and_the_first_match_decides() -> None:
    deny_first = cluster(cnp("p", 10, egress=[rule("Deny", [ns_is("b")]), rule("Accept", [ns_is("b")])]))
    accept_first = cluster(cnp("p", 10, egress=[rule("Accept", [ns_is("b")]), rule("Deny", [ALL])]),
                           np_deny_all("a", ("Egress",)))
    assert not allows(deny_first, "a/web", "b/web", 8080)
    assert allows(accept_first, "a/web", "b/web", 8080)  # accepted before the deny, and above the NetworkPolicy
    assert not allows(accept_first, "a/web", "a/db", 5432)


def test_a_rule_that_does_not_match_passes_evaluation_to_the_next_rule() -> None:
    state = cluster(cnp("p", 10, egress=[rule("Deny", [ns_is("b")], protocols=[{"udp": {"destinationPort": {
        "number": 5353}}}]), rule("Accept", [ALL])]), np_deny_all("a", ("Egress",)))
    assert not allows(state, "a/web", "b/web", 5353, "UDP")
    assert allows(state, "a/web", "b/web", 8080)


# -- priority --------------------------------------------------------------------------------------

def test_a_lower_priority_value_takes_precedence() -> None:
    state = cluster(cnp("allow", 5, egress=[rule("Accept", [ns_is("b")])]),
                    cnp("deny", 10, egress=[rule("Deny", [ALL])]))
    assert allows(state, "a/web", "b/web", 8080)
    assert not allows(state, "a/web", "monitoring/prom", 9090)
    swapped = cluster(cnp("allow", 50, egress=[rule("Accept", [ns_is("b")])]),
                      cnp("deny", 10, egress=[rule("Deny", [ALL])]))
    assert not allows(swapped, "a/web", "b/web", 8080)


def test_admin_network_policy_and_admin_tier_cluster_network_policy_share_one_priority_order() -> None:
    state = cluster(anp("allow-v1", 3, egress=[rule("Allow", [ns_is("b")])]),
                    cnp("deny-v2", 7, egress=[rule("Deny", [ALL])]))
    assert allows(state, "a/web", "b/web", 8080)
    v = verdict(state, "a/web", "b/web", 8080)
    assert v.egress.admin is not None and v.egress.admin.policy == "AdminNetworkPolicy/allow-v1"


def test_policies_at_the_same_priority_are_ordered_by_name_then_kind() -> None:
    state = cluster(cnp("b-deny", 10, egress=[rule("Deny", [ALL])]), anp("a-allow", 10, egress=[rule("Allow")]))
    assert allows(state, "a/web", "b/web", 8080)
    same_name = cluster(cnp("x", 10, egress=[rule("Deny", [ALL])]), anp("x", 10, egress=[rule("Allow")]))
    assert not allows(same_name, "a/web", "b/web", 8080)  # ClusterNetworkPolicy before AdminNetworkPolicy


# -- Pass ------------------------------------------------------------------------------------------

def test_pass_skips_the_rest_of_the_admin_tier() -> None:
    state = cluster(cnp("pass", 1, egress=[rule("Pass", [ns_is("b")])]),
                    cnp("deny", 2, egress=[rule("Deny", [ALL])]))
    assert allows(state, "a/web", "b/web", 8080)  # the deny is skipped; nothing else decides: default allow
    assert not allows(state, "a/web", "monitoring/prom", 9090)


def test_pass_hands_the_decision_to_network_policy() -> None:
    state = cluster(cnp("pass", 1, ingress=[rule("Pass", [ALL], direction="ingress")]),
                    np_allow_ingress_from("a", "b"))
    assert allows(state, "a/web", "b/web", 8080)
    assert not allows(state, "monitoring/prom", "b/web", 8080)


def test_pass_goes_to_the_baseline_tier_when_no_network_policy_selects_the_pod() -> None:
    state = cluster(cnp("pass", 1, ingress=[rule("Pass", [ns_is("a")], direction="ingress")]),
                    cnp("deny", 2, ingress=[rule("Accept", [ALL], direction="ingress")]),
                    banp(ingress=[rule("Deny", [ALL], direction="ingress")]))
    assert not allows(state, "a/web", "b/web", 8080)  # passed over the admin accept, denied by the baseline
    assert allows(state, "monitoring/prom", "b/web", 8080)  # accepted by the admin tier


def test_a_pass_in_the_baseline_tier_skips_the_rest_of_it() -> None:
    state = cluster(cnp("pass", 1, tier="Baseline", ingress=[rule("Pass", [ns_is("a")], direction="ingress")]),
                    banp(ingress=[rule("Deny", [ALL], direction="ingress")]))
    assert allows(state, "a/web", "b/web", 8080)
    assert not allows(state, "monitoring/prom", "b/web", 8080)


# -- tier order and NetworkPolicy in between --------------------------------------------------------

def test_admin_deny_overrides_a_network_policy_allow() -> None:
    state = cluster(cnp("deny", 10, ingress=[rule("Deny", [ns_is("a")], direction="ingress")]),
                    np_allow_ingress_from("a", "b"))
    assert not allows(state, "a/web", "b/web", 8080)


def test_admin_allow_overrides_network_policy_isolation() -> None:
    state = cluster(anp("allow", 10, ingress=[rule("Allow", [ns_is("monitoring")], direction="ingress")]),
                    np_deny_all("b"))
    assert allows(state, "monitoring/prom", "b/web", 8080)
    assert not allows(state, "a/web", "b/web", 8080)


def test_network_policy_overrides_the_baseline_tier() -> None:
    state = cluster(banp(ingress=[rule("Deny", [ALL], direction="ingress")]), np_allow_ingress_from("a", "b"))
    assert allows(state, "a/web", "b/web", 8080)  # the NetworkPolicy isolates b and allows a
    assert not allows(state, "monitoring/prom", "b/web", 8080)  # isolated by the NetworkPolicy: no rule
    assert not allows(state, "b/web", "a/web", 80)  # a has no NetworkPolicy: the baseline decides


def test_the_baseline_tier_is_consulted_only_in_the_isolated_direction_s_absence() -> None:
    state = cluster(banp(ingress=[rule("Deny", [ALL], direction="ingress")]), np_deny_all("b", ("Egress",)))
    assert not allows(state, "a/web", "b/web", 8080)  # b isolated for egress only: its ingress is the baseline's


def test_baseline_allow_overrides_nothing_a_network_policy_decides() -> None:
    state = cluster(banp(ingress=[rule("Allow", [ALL], direction="ingress")]), np_deny_all("b"))
    assert not allows(state, "a/web", "b/web", 8080)


def test_without_any_policy_everything_is_allowed() -> None:
    state = cluster(cnp("unrelated", 10, egress=[rule("Deny", [{"networks": ["203.0.113.0/24"]}])]))
    assert all(all(row.values()) for row in build_matrix(state, "TCP", 80).allowed.values())


def test_both_the_source_egress_and_the_destination_ingress_must_allow() -> None:
    state = cluster(cnp("allow-egress", 1, egress=[rule("Accept", [ALL])]),
                    cnp("deny-ingress", 2, subject=ns_is("b"), ingress=[rule("Deny", [ALL], direction="ingress")]))
    assert not allows(state, "a/web", "b/web", 8080)
    v = verdict(state, "a/web", "b/web", 8080)
    assert v.egress.allowed and not v.ingress.allowed
    assert v.ingress.decided_in == "Admin" and v.egress.decided_in == "Admin"


# -- subjects and peers ----------------------------------------------------------------------------

def test_subject_pods_selects_by_namespace_and_pod_labels() -> None:
    subject = {"pods": {"namespaceSelector": {"matchLabels": {"tenant": "a"}},
                        "podSelector": {"matchLabels": {"app": "db"}}}}
    state = cluster(cnp("p", 1, subject=subject, egress=[rule("Deny", [ALL])]))
    assert not allows(state, "a/db", "b/web", 8080)
    assert allows(state, "a/web", "b/web", 8080)


def test_peer_pods_needs_both_selectors_to_match() -> None:
    peer = {"pods": {"namespaceSelector": {"matchLabels": {"tenant": "b"}},
                     "podSelector": {"matchLabels": {"app": "web"}}}}
    state = cluster(cnp("p", 1, egress=[rule("Deny", [peer])]))
    assert not allows(state, "a/web", "b/web", 8080)
    assert allows(state, "a/web", "a/db", 5432)


def test_host_network_pods_are_neither_subjects_nor_pod_peers() -> None:
    state = cluster(cnp("p", 1, egress=[rule("Deny", [ALL])], ingress=[rule("Deny", [ALL], direction="ingress")]))
    assert allows(state, "a/host", "192.0.2.1", 80)
    assert verdict(state, "b/web", "a/host", 80).egress.admin is None


# -- ports -----------------------------------------------------------------------------------------

def test_named_port_resolves_on_the_destination_pod_for_any_protocol() -> None:
    state = cluster(cnp("p", 1, egress=[rule("Deny", [ALL], protocols=[{"destinationNamedPort": "dns"}])]))
    assert not allows(state, "b/web", "a/web", 53, "UDP")  # a/web's dns is UDP 53
    assert not allows(state, "a/web", "b/web", 5353, "UDP")  # b/web's dns is UDP 5353
    assert allows(state, "a/web", "b/web", 53, "UDP")
    assert allows(state, "b/web", "a/web", 53, "TCP")  # no TCP port named dns
    ingress = cluster(anp("p", 1, ingress=[rule("Deny", [ALL], direction="ingress", ports=[{"namedPort": "http"}])]))
    assert not allows(ingress, "a/web", "b/web", 8080) and allows(ingress, "a/web", "b/web", 80)


def test_port_ranges_are_inclusive_and_per_protocol() -> None:
    state = cluster(anp("p", 1, egress=[rule("Deny", [ALL], ports=[{"portRange": {"protocol": "UDP", "start": 5000,
                                                                                   "end": 6000}}])]))
    assert not allows(state, "a/web", "b/web", 5000, "UDP") and not allows(state, "a/web", "b/web", 6000, "UDP")
    assert allows(state, "a/web", "b/web", 6001, "UDP") and allows(state, "a/web", "b/web", 5353, "TCP")


def test_port_number_defaults_to_tcp_and_a_rule_without_ports_matches_every_protocol() -> None:
    state = cluster(anp("p", 1, egress=[rule("Deny", [ns_is("b")], ports=[{"portNumber": {"port": 8080}}]),
                                        rule("Deny", [ns_is("monitoring")])]))
    assert not allows(state, "a/web", "b/web", 8080) and allows(state, "a/web", "b/web", 8080, "UDP")
    for protocol in ("TCP", "UDP", "SCTP"):
        assert not allows(state, "a/web", "monitoring/prom", 9090, protocol)


# -- networks --------------------------------------------------------------------------------------

def test_networks_match_outside_addresses_and_pod_addresses_alike() -> None:
    state = cluster(cnp("p", 1, egress=[rule("Deny", [{"networks": ["169.254.169.254/32", "10.244.2.0/24"]}])]))
    assert not allows(state, "a/web", "169.254.169.254", 80)
    assert not allows(state, "a/web", "b/web", 8080)  # cluster-internal traffic is checked against networks too
    assert allows(state, "a/web", "a/db", 5432) and allows(state, "a/web", "8.8.8.8", 53)


def test_networks_match_the_node_address_of_a_host_network_pod() -> None:
    state = cluster(cnp("p", 1, egress=[rule("Deny", [{"networks": ["192.168.0.0/24"]}])]))
    assert not allows(state, "b/web", "a/host", 80)


def test_networks_with_host_bits_mean_the_network_and_ipv6_is_matched() -> None:
    state = build(pod("a/six", ["10.244.1.9", "fd00::9"]),
                  cnp("p", 1, egress=[rule("Deny", [{"networks": ["2001:db8::1/32", "10.0.0.1/8"]}])]))
    assert not allows(state, "a/six", "2001:db8:1::5", 443)
    assert not allows(state, "a/six", "10.1.2.3", 443)
    assert allows(state, "a/six", "2001:db9::1", 443)


# -- explain ---------------------------------------------------------------------------------------

def test_explain_names_tier_policy_rule_index_and_rule_name() -> None:
    state = cluster(cnp("deny-to-monitoring", 10, egress=[rule("Accept", [ns_is("b")], name="to-b"),
                                                          rule("Deny", [ns_is("monitoring")], name="block-all")]))
    lines = explain(verdict(state, "a/web", "monitoring/prom", 9090))
    assert lines[1] == ('  egress: Denied by ClusterNetworkPolicy deny-to-monitoring (Admin, priority 10) '
                        'egress rule 1 "block-all"')
    assert lines[0].startswith("DENIED")


def test_explain_shows_a_pass_then_what_decided() -> None:
    state = cluster(anp("owners", 20, ingress=[rule("Pass", [ns_is("a")], name="to-owners", direction="ingress")]),
                    banp(ingress=[rule("Deny", [ALL], name="default-deny", direction="ingress")]))
    lines = explain(verdict(state, "a/db", "a/web", 80))
    assert lines[2] == '  ingress: Passed by AdminNetworkPolicy owners (Admin, priority 20) ingress rule 0 "to-owners"'
    assert lines[3].endswith('Denied by BaselineAdminNetworkPolicy default (Baseline) ingress rule 0 "default-deny"')
