"""Validation of ClusterNetworkPolicy (v1alpha2), AdminNetworkPolicy and
BaselineAdminNetworkPolicy (v1alpha1) as their CRD schemas and CEL rules validate them: each
invalid object is one error naming the object as `kubectl get` does and the field path."""

from __future__ import annotations

import copy
from typing import Any

import pytest

from sdn_netpol.model.cluster_objects import BANP_PRIORITY
from tests.builders import parse

V2 = "policy.networking.k8s.io/v1alpha2"
V1 = "policy.networking.k8s.io/v1alpha1"


def cnp(**spec: Any) -> dict[str, Any]:
    base = {"tier": "Admin", "priority": 10, "subject": {"namespaces": {}},
            "egress": [{"name": "block-all", "action": "Deny", "to": [{"namespaces": {}}],
                        "protocols": [{"tcp": {"destinationPort": {"number": 80}}}]}]}
    return {"apiVersion": V2, "kind": "ClusterNetworkPolicy", "metadata": {"name": "x"}, "spec": {**base, **spec}}


def anp(**spec: Any) -> dict[str, Any]:
    base = {"priority": 10, "subject": {"namespaces": {}},
            "ingress": [{"name": "r", "action": "Allow", "from": [{"namespaces": {}}],
                         "ports": [{"portNumber": {"protocol": "TCP", "port": 80}}]}]}
    return {"apiVersion": V1, "kind": "AdminNetworkPolicy", "metadata": {"name": "x"}, "spec": {**base, **spec}}


def banp(name: str = "default", **spec: Any) -> dict[str, Any]:
    base = {"subject": {"namespaces": {}}, "ingress": [{"action": "Deny", "from": [{"namespaces": {}}]}]}
    return {"apiVersion": V1, "kind": "BaselineAdminNetworkPolicy", "metadata": {"name": name},
            "spec": {**base, **spec}}


def errors_of(doc: dict[str, Any]) -> list[str]:
    return [str(e) for e in parse(doc).errors]


def with_rule(doc: dict[str, Any], direction: str, **rule: Any) -> dict[str, Any]:
    doc = copy.deepcopy(doc)
    doc["spec"][direction] = [rule]
    return doc


def test_valid_objects_of_all_three_kinds_parse_into_one_model() -> None:
    result = parse(cnp(), anp(), banp(), cnp(tier="Baseline"))
    assert result.errors == ()
    kinds = sorted((p.kind, p.tier, p.priority) for p in result.cluster_policies)
    assert kinds == [("AdminNetworkPolicy", "Admin", 10), ("BaselineAdminNetworkPolicy", "Baseline", BANP_PRIORITY),
                     ("ClusterNetworkPolicy", "Baseline", 10)]  # the later CNP x replaced the earlier one
    assert {p.ref for p in result.cluster_policies} == {
        "ClusterNetworkPolicy/x", "AdminNetworkPolicy/x", "BaselineAdminNetworkPolicy/default"}


def test_accept_and_allow_are_one_action() -> None:
    result = parse(cnp(egress=[{"action": "Accept", "to": [{"namespaces": {}}]}]),
                   anp(ingress=[{"action": "Allow", "from": [{"namespaces": {}}]}]))
    assert {p.rules("Egress" if p.kind == "ClusterNetworkPolicy" else "Ingress")[0].action
            for p in result.cluster_policies} == {"Allow"}


@pytest.mark.parametrize(("doc", "expected"), [
    (cnp(priority=1001), "ClusterNetworkPolicy/x: spec.priority: 1001: must be between 0 and 1000, inclusive"),
    (cnp(priority=-1), "ClusterNetworkPolicy/x: spec.priority: -1: must be between 0 and 1000, inclusive"),
    (cnp(priority="5"), "ClusterNetworkPolicy/x: spec.priority: '5': must be an integer"),
    (cnp(priority=None), "ClusterNetworkPolicy/x: spec.priority: Required value"),
    (anp(priority=1001), "AdminNetworkPolicy/x: spec.priority: 1001: must be between 0 and 1000, inclusive"),
    (banp(priority=3), "BaselineAdminNetworkPolicy/default: spec.priority: unknown field"),
    (cnp(tier="NetworkPolicy"), "ClusterNetworkPolicy/x: spec.tier: 'NetworkPolicy': supported values: \"Admin\", "
                                "\"Baseline\""),
    (cnp(tier=None), "ClusterNetworkPolicy/x: spec.tier: Required value"),
    (banp(name="other"), "BaselineAdminNetworkPolicy/other: metadata.name: 'other': only one baseline admin network "
                         "policy with metadata.name=\"default\" can be created in the cluster"),
    (cnp(subject={}), "ClusterNetworkPolicy/x: spec.subject: must specify exactly one of namespaces, pods "
                      "(found no field)"),
    (cnp(subject={"namespaces": {}, "pods": {"podSelector": {}}}),
     "ClusterNetworkPolicy/x: spec.subject: must specify exactly one of namespaces, pods (found namespaces, pods)"),
    (anp(subject={"pods": {"podSelector": {}}}), "AdminNetworkPolicy/x: spec.subject.pods.namespaceSelector: "
                                                 "Required value"),
    (cnp(subject={"pods": {"namespaceSelector": {}}}), "ClusterNetworkPolicy/x: spec.subject.pods.podSelector: "
                                                       "Required value"),
    (cnp(ingres=[]), "ClusterNetworkPolicy/x: spec.ingres: unknown field"),
])
def test_spec_constraints(doc: dict[str, Any], expected: str) -> None:
    assert errors_of(doc) == [expected]


def test_a_cnp_allows_25_rules_per_direction_and_an_anp_100() -> None:
    rule = {"action": "Deny", "to": [{"namespaces": {}}]}
    assert errors_of(cnp(egress=[rule] * 25)) == []
    assert errors_of(cnp(egress=[rule] * 26)) == [
        "ClusterNetworkPolicy/x: spec.egress: Too many: 26: must have at most 25 items"]
    assert errors_of(anp(egress=[rule] * 100)) == []
    assert errors_of(anp(egress=[rule] * 101)) == [
        "AdminNetworkPolicy/x: spec.egress: Too many: 101: must have at most 100 items"]
    peers: list[dict[str, Any]] = [{"namespaces": {}}] * 26
    assert errors_of(cnp(egress=[{"action": "Deny", "to": peers}])) == [
        "ClusterNetworkPolicy/x: spec.egress[0].to: Too many: 26: must have at most 25 items"]


@pytest.mark.parametrize(("rule", "expected"), [
    ({"action": "Deny"}, "spec.egress[0].to: Required value"),
    ({"action": "Deny", "to": []}, "spec.egress[0].to: Invalid value: 0: must have at least 1 item"),
    ({"to": [{"namespaces": {}}]}, "spec.egress[0].action: Required value"),
    ({"action": "Allow", "to": [{"namespaces": {}}]}, "spec.egress[0].action: 'Allow': supported values: "
                                                      "\"Accept\", \"Deny\", \"Pass\""),
    ({"action": "Deny", "name": "n" * 101, "to": [{"namespaces": {}}]},
     "spec.egress[0].name: Too long: may not be more than 100 bytes"),
    ({"action": "Deny", "to": [{}]}, "spec.egress[0].to[0]: must specify exactly one of namespaces, pods, networks, "
                                     "nodes, domainNames (found no field)"),
    ({"action": "Deny", "to": [{"namespaces": {}, "networks": ["10.0.0.0/8"]}]},
     "spec.egress[0].to[0]: must specify exactly one of namespaces, pods, networks, nodes, domainNames "
     "(found namespaces, networks)"),
    ({"action": "Accept", "to": [{"domainNames": ["example.com"]}]},
     "spec.egress[0].to[0].domainNames: domainNames peers are not supported by sdn-netpol (use networks)"),
    ({"action": "Deny", "to": [{"nodes": {}}]},
     "spec.egress[0].to[0].nodes: nodes peers are not supported by sdn-netpol (use networks)"),
    ({"action": "Deny", "to": [{"networks": []}]}, "spec.egress[0].to[0].networks: Invalid value: 0: must have at "
                                                   "least 1 item"),
    ({"action": "Deny", "to": [{"networks": ["10.0.0.0/8", "10.0.0.0/8"]}]},
     "spec.egress[0].to[0].networks[1]: Duplicate value: '10.0.0.0/8'"),
    ({"action": "Deny", "to": [{"networks": ["10.0.0.0"]}]},
     "spec.egress[0].to[0].networks[0]: '10.0.0.0': Invalid CIDR format provided"),
    ({"action": "Deny", "to": [{"networks": ["010.0.0.0/8"]}]},
     "spec.egress[0].to[0].networks[0]: '010.0.0.0/8': Invalid CIDR format provided"),
    ({"action": "Deny", "to": [{"networks": ["10.0.0.0/33"]}]},
     "spec.egress[0].to[0].networks[0]: '10.0.0.0/33': Invalid CIDR format provided"),
    ({"action": "Deny", "to": [{"networks": [f"{i}.0.0.0/8" for i in range(1, 27)]}]},
     "spec.egress[0].to[0].networks: Too many: 26: must have at most 25 items"),
    ({"action": "Deny", "to": [{"networks": ["10.0.0.0/8"]}], "protocols": [{"destinationNamedPort": "web"}]},
     "spec.egress[0]: networks/nodes/domainNames peer cannot be set with namedPorts since there are no namedPorts "
     "for networks/nodes/domainNames"),
    ({"action": "Deny", "to": [{"namespaces": {}}], "protocols": []},
     "spec.egress[0].protocols: Invalid value: 0: must have at least 1 item"),
    ({"action": "Deny", "to": [{"namespaces": {}}], "protocols": [{"tcp": {}}]},
     "spec.egress[0].protocols[0].tcp.destinationPort: Required value"),
    ({"action": "Deny", "to": [{"namespaces": {}}], "protocols": [{"tcp": {"destinationPort": {"number": 0}}}]},
     "spec.egress[0].protocols[0].tcp.destinationPort.number: 0: must be between 1 and 65535, inclusive"),
    ({"action": "Deny", "to": [{"namespaces": {}}],
      "protocols": [{"udp": {"destinationPort": {"range": {"start": 90, "end": 80}}}}]},
     "spec.egress[0].protocols[0].udp.destinationPort.range: start 90, end 80: Start port must be less than End "
     "port"),
    ({"action": "Deny", "to": [{"namespaces": {}}],
      "protocols": [{"sctp": {"destinationPort": {"number": 80, "range": {"start": 1, "end": 2}}}}]},
     "spec.egress[0].protocols[0].sctp.destinationPort: must specify exactly one of number, range "
     "(found number, range)"),
    ({"action": "Deny", "to": [{"namespaces": {}}],
      "protocols": [{"tcp": {"destinationPort": {"number": 80}}, "destinationNamedPort": "web"}]},
     "spec.egress[0].protocols[0]: must specify exactly one of tcp, udp, sctp, destinationNamedPort "
     "(found tcp, destinationNamedPort)"),
    ({"action": "Deny", "to": [{"namespaces": {"matchExpressions": [{"key": "a", "operator": "Is"}]}}]},
     "spec.egress[0].to[0].namespaces.matchExpressions[0].operator: 'Is': not a valid selector operator "
     "(\"In\", \"NotIn\", \"Exists\", \"DoesNotExist\")"),
])
def test_cnp_rule_constraints(rule: dict[str, Any], expected: str) -> None:
    assert errors_of(with_rule(cnp(), "egress", **rule)) == [f"ClusterNetworkPolicy/x: {expected}"]


@pytest.mark.parametrize(("direction", "rule", "expected"), [
    ("ingress", {"action": "Deny", "from": [{"networks": ["10.0.0.0/8"]}]}, "spec.ingress[0].from[0].networks: "
                                                                             "unknown field"),
    ("ingress", {"action": "Deny", "from": [{"namespaces": {}}], "ports": [{}]},
     "spec.ingress[0].ports[0]: must specify exactly one of portNumber, namedPort, portRange (found no field)"),
    ("ingress", {"action": "Deny", "from": [{"namespaces": {}}], "ports": [{"portNumber": {"protocol": "ICMP",
                                                                                         "port": 1}}]},
     "spec.ingress[0].ports[0].portNumber.protocol: 'ICMP': supported values: \"TCP\", \"UDP\", \"SCTP\""),
    ("ingress", {"action": "Deny", "from": [{"namespaces": {}}], "ports": [{"portNumber": {"protocol": "TCP"}}]},
     "spec.ingress[0].ports[0].portNumber.port: Required value"),
    ("ingress", {"action": "Deny", "from": [{"namespaces": {}}], "ports": [{"portRange": {"start": 5, "end": 5}}]},
     "spec.ingress[0].ports[0].portRange: start 5, end 5: Start port must be less than End port"),
    ("ingress", {"action": "Deny", "from": [{"namespaces": {}}], "ports": [{"portRange": {"start": 5,
                                                                                        "end": 65536}}]},
     "spec.ingress[0].ports[0].portRange.end: 65536: must be between 1 and 65535, inclusive"),
    ("ingress", {"action": "Deny", "from": [{"namespaces": {}}], "ports": [{"namedPort": ""}]},
     "spec.ingress[0].ports[0].namedPort: '': must be a non-empty port name"),
    ("egress", {"action": "Allow", "to": [{"networks": ["10.0.0.0/8"]}], "ports": [{"namedPort": "dns"}]},
     "spec.egress[0]: networks/nodes/domainNames peer cannot be set with namedPorts since there are no namedPorts "
     "for networks/nodes/domainNames"),
    ("egress", {"action": "Accept", "to": [{"namespaces": {}}]}, "spec.egress[0].action: 'Accept': supported "
                                                                 "values: \"Allow\", \"Deny\", \"Pass\""),
])
def test_anp_rule_constraints(direction: str, rule: dict[str, Any], expected: str) -> None:
    assert errors_of(with_rule(anp(), direction, **rule)) == [f"AdminNetworkPolicy/x: {expected}"]


def test_banp_has_no_pass_and_no_domain_names() -> None:
    assert errors_of(with_rule(banp(), "ingress", action="Pass", **{"from": [{"namespaces": {}}]})) == [
        "BaselineAdminNetworkPolicy/default: spec.ingress[0].action: 'Pass': supported values: \"Allow\", \"Deny\""]
    assert errors_of(with_rule(banp(), "egress", action="Allow", to=[{"domainNames": ["a.io"]}])) == [
        "BaselineAdminNetworkPolicy/default: spec.egress[0].to[0].domainNames: unknown field"]


def test_port_forms_of_both_versions_mean_the_same_ports() -> None:
    v1 = with_rule(anp(), "egress", action="Deny", to=[{"namespaces": {}}], ports=[
        {"portNumber": {"port": 53, "protocol": "UDP"}}, {"portRange": {"start": 8000, "end": 8080}},
        {"namedPort": "web"}])
    v2 = with_rule(cnp(), "egress", action="Deny", to=[{"namespaces": {}}], protocols=[
        {"udp": {"destinationPort": {"number": 53}}}, {"tcp": {"destinationPort": {"range": {"start": 8000,
                                                                                              "end": 8080}}}},
        {"destinationNamedPort": "web"}])
    [a] = parse(v1).cluster_policies
    [b] = parse(v2).cluster_policies
    assert a.egress[0].ports == b.egress[0].ports
    assert [p.describe() for p in a.egress[0].ports] == ["UDP 53", "TCP 8000-8080", "TCP web", "UDP web", "SCTP web"]


def test_a_cluster_policy_of_another_api_version_is_skipped_with_a_note() -> None:
    result = parse({**cnp(), "apiVersion": "policy.networking.k8s.io/v1alpha1"})
    assert result.cluster_policies == () and result.errors == ()
    assert "is not policy.networking.k8s.io/v1alpha2 ClusterNetworkPolicy; skipped" in result.skipped[0]


def test_cluster_policies_are_cluster_scoped_a_namespace_is_ignored() -> None:
    doc = cnp()
    doc["metadata"]["namespace"] = "Not_A_Namespace"
    assert parse(doc).errors == ()


def test_every_error_of_an_object_is_reported_at_once() -> None:
    doc = cnp(priority=2000, subject={})
    doc["spec"]["egress"][0]["action"] = "Drop"
    assert [e.path for e in parse(doc).errors] == ["spec.priority", "spec.subject", "spec.egress[0].action"]
