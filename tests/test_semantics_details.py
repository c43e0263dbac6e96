"""The rest of the semantics, one named test per behaviour: protocols and ports (named ports,
ranges), IPv6 and outside addresses, pods outside NetworkPolicy, loopback, the node, and the
explanations `explain` gives."""

from __future__ import annotations

import pytest

from sdn_netpol.policy.state import ClusterState
from sdn_netpol.policy.verdict import explain
from tests.builders import allows, build, pod, verdict
from tests.seed_examples import (
    ALLOW_ALL_INGRESS,
    ALLOW_FROM,
    DEFAULT_DENY_ALL,
    DEFAULT_DENY_INGRESS,
    EXAMPLE_CLUSTER,
    NS_PAIR,
    OUT_OF_SCOPE,
    TEST_NETWORK_POLICY,
    example_state,
)


@pytest.fixture(scope="module")
def example() -> ClusterState:
    return example_state()


# --- Protocols, ports, named ports, port ranges ----------------------------------------------

PORTS_POLICY = """\
apiVersion: networking.k8s.io/v1
kind: NetworkPolicy
metadata: {{name: ports, namespace: default}}
spec:
  podSelector: {{}}
  ingress:
  - ports: {ports}
"""


def ports_state(ports: str, *pods: dict[str, object]) -> ClusterState:
    return build(pod("default/client", "10.1.0.9"), *pods, PORTS_POLICY.format(ports=ports))


def test_sctp_port_allows_sctp_only() -> None:
    state = ports_state("[{protocol: SCTP, port: 9999}]", pod("default/s", "10.1.0.1"))
    assert allows(state, "default/client", "default/s", 9999, "SCTP")
    assert not allows(state, "default/client", "default/s", 9999, "TCP")
    assert not allows(state, "default/client", "default/s", 9999, "UDP")


def test_udp_port_allows_udp_only() -> None:
    state = ports_state("[{protocol: UDP, port: 53}]", pod("default/s", "10.1.0.1"))
    assert allows(state, "default/client", "default/s", 53, "UDP")
    assert not allows(state, "default/client", "default/s", 53, "TCP")
    assert not allows(state, "default/client", "default/s", 54, "UDP")


def test_protocol_defaults_to_tcp() -> None:
    state = ports_state("[{port: 80}]", pod("default/s", "10.1.0.1"))
    assert allows(state, "default/client", "default/s", 80)
    assert not allows(state, "default/client", "default/s", 80, "UDP")


def test_empty_port_entry_means_every_tcp_port_only() -> None:
    state = ports_state("[{}]", pod("default/s", "10.1.0.1"))
    assert allows(state, "default/client", "default/s", 1)
    assert allows(state, "default/client", "default/s", 65535)
    assert not allows(state, "default/client", "default/s", 53, "UDP")


def test_protocol_without_port_allows_every_port_of_that_protocol() -> None:
    state = ports_state("[{protocol: UDP}]", pod("default/s", "10.1.0.1"))
    assert allows(state, "default/client", "default/s", 1, "UDP")
    assert allows(state, "default/client", "default/s", 65535, "UDP")
    assert not allows(state, "default/client", "default/s", 80, "TCP")


@pytest.mark.parametrize(("port", "expected"), [(31999, False), (32000, True), (32400, True), (32768, True),
                                                (32769, False)])
def test_end_port_allows_the_inclusive_range(port: int, expected: bool) -> None:
    state = ports_state("[{protocol: TCP, port: 32000, endPort: 32768}]", pod("default/s", "10.1.0.1"))
    assert allows(state, "default/client", "default/s", port) is expected


def test_named_port_resolves_through_each_destination_pods_container_ports() -> None:
    state = ports_state(
        "[{port: http}]",
        pod("default/one", "10.1.0.1", ports=[("http", 8080)]),
        pod("default/two", "10.1.0.2", ports=[("http", 9090)]),
        pod("default/none", "10.1.0.3", ports=[("web", 8080)]),
    )
    assert allows(state, "default/client", "default/one", 8080)
    assert not allows(state, "default/client", "default/one", 9090)
    assert allows(state, "default/client", "default/two", 9090)
    assert not allows(state, "default/client", "default/two", 8080)
    # a pod without a port of that name gets nothing from that entry
    assert not allows(state, "default/client", "default/none", 8080)


def test_named_port_must_match_the_protocol_of_the_container_port() -> None:
    state = ports_state("[{port: dns, protocol: UDP}]",
                        pod("default/tcp-dns", "10.1.0.1", ports=[("dns", 53, "TCP")]),
                        pod("default/udp-dns", "10.1.0.2", ports=[("dns", 53, "UDP")]))
    assert not allows(state, "default/client", "default/tcp-dns", 53, "UDP")
    assert not allows(state, "default/client", "default/tcp-dns", 53, "TCP")
    assert allows(state, "default/client", "default/udp-dns", 53, "UDP")


def test_named_port_in_egress_resolves_through_the_destination_pod() -> None:
    text = """\
apiVersion: networking.k8s.io/v1
kind: NetworkPolicy
metadata: {name: out, namespace: default}
spec:
  podSelector: {matchLabels: {app: client}}
  policyTypes: [Egress]
  egress:
  - ports: [{port: metrics}]
"""
    state = build(pod("default/client", "10.1.0.9", {"app": "client"}),
                  pod("other/one", "10.2.0.1", ports=[("metrics", 9100)]),
                  pod("other/two", "10.2.0.2", ports=[("metrics", 9200)]), text)
    assert allows(state, "default/client", "other/one", 9100)
    assert not allows(state, "default/client", "other/one", 9200)
    assert allows(state, "default/client", "other/two", 9200)
    # an address outside the cluster's pods has no port names
    assert not allows(state, "default/client", "203.0.113.5", 9100)


# --- IPv6, outside addresses -------------------------------------------------------------------

IPV6_POLICY = """\
apiVersion: networking.k8s.io/v1
kind: NetworkPolicy
metadata: {name: v6, namespace: default}
spec:
  podSelector: {matchLabels: {app: a}}
  policyTypes: [Ingress, Egress]
  ingress:
  - from:
    - ipBlock: {cidr: "2001:db8::/32", except: ["2001:db8:bad::/48"]}
    - podSelector: {matchLabels: {app: b}}
  egress:
  - to:
    - ipBlock: {cidr: "2001:db8:1::/64"}
    ports: [{port: 443}]
"""


def v6_state() -> ClusterState:
    return build(pod("default/a", ["10.1.0.1", "fd00::1"], {"app": "a"}),
                 pod("default/b", "fd00::2", {"app": "b"}),
                 pod("default/c", ["10.1.0.3", "fd00::3"], {"app": "c"}),
                 IPV6_POLICY)


def test_ipv6_ip_block_with_except_from_outside() -> None:
    state = v6_state()
    assert allows(state, "2001:db8:1::1", "default/a", 80)
    assert not allows(state, "2001:db8:bad::1", "default/a", 80)
    assert not allows(state, "2001:db9::1", "default/a", 80)
    assert not allows(state, "10.9.9.9", "default/a", 80)


def test_ipv6_pod_to_pod_by_selector() -> None:
    state = v6_state()
    assert allows(state, "default/b", "default/a", 80)
    assert not allows(state, "default/c", "default/a", 80)


def test_ipv6_egress_to_outside_address() -> None:
    state = v6_state()
    assert allows(state, "default/a", "2001:db8:1::99", 443)
    assert not allows(state, "default/a", "2001:db8:2::99", 443)
    assert not allows(state, "default/a", "2001:db8:1::99", 80)


def test_external_address_to_pod_and_pod_to_external_address(example: ClusterState) -> None:
    assert allows(example, "172.17.3.4", "default/db", 6379)
    assert allows(example, "default/db", "10.0.0.42", 5978)
    assert allows(example, "203.0.113.1", "default/backend", 1)
    assert allows(example, "default/backend", "203.0.113.1", 1)


def test_ip_block_matches_pod_addresses_too() -> None:
    text = PORTS_POLICY.format(ports="[{port: 80}]").replace(
        "  - ports:", "  - from: [{ipBlock: {cidr: 10.1.0.8/29}}]\n    ports:")
    state = build(pod("default/in-block", "10.1.0.9"), pod("default/outside", "10.1.0.20"),
                  pod("default/s", "10.1.0.1"), text)
    assert allows(state, "default/in-block", "default/s", 80)
    assert not allows(state, "default/outside", "default/s", 80)


# --- Pods outside NetworkPolicy ----------------------------------------------------------------

# --- Pods outside NetworkPolicy (OUT_OF_SCOPE in tests/seed_examples.py) ------------------


def test_host_network_no_ip_and_not_running_pods_are_not_selected() -> None:
    state = build(*EXAMPLE_CLUSTER, *OUT_OF_SCOPE, TEST_NETWORK_POLICY)
    for dst in ("default/host", "default/no-ip", "default/pending"):
        v = verdict(state, "otherproject/stranger", dst, 6379)
        assert v.ingress.isolated_by == () and v.allowed
        assert verdict(state, dst, "203.0.113.1", 80).egress.isolated_by == ()


def test_host_network_and_not_running_pods_are_not_peers() -> None:
    state = build(*EXAMPLE_CLUSTER, *OUT_OF_SCOPE, TEST_NETWORK_POLICY)
    # labelled role=frontend in default, but outside NetworkPolicy: the podSelector peer does not match
    assert not allows(state, "default/host-frontend", "default/db", 6379)
    assert not allows(state, "default/done", "default/db", 6379)
    assert allows(state, "default/frontend", "default/db", 6379)


def test_pod_manifest_without_status_is_selected_and_a_peer_by_labels() -> None:
    state = build(*EXAMPLE_CLUSTER, pod("default/new-db", labels={"role": "db"}, phase=None),
                  pod("default/new-frontend", labels={"role": "frontend"}, phase=None), TEST_NETWORK_POLICY)
    assert verdict(state, "default/backend", "default/new-db", 6379).ingress.isolated_by == (
        "default/test-network-policy",)
    assert allows(state, "default/new-frontend", "default/db", 6379)
    assert not allows(state, "default/backend", "default/new-db", 6379)


def test_pod_without_known_ip_is_never_matched_by_an_ip_block() -> None:
    text = PORTS_POLICY.format(ports="[{port: 80}]").replace(
        "  - ports:", "  - from: [{ipBlock: {cidr: 0.0.0.0/0}}]\n    ports:")
    state = build(pod("default/s", "10.1.0.1"), pod("default/new", phase=None), text)
    assert not allows(state, "default/new", "default/s", 80)
    assert allows(state, "10.9.9.9", "default/s", 80)


# --- Loopback ----------------------------------------------------------------------------------


def test_a_pod_cannot_block_access_to_itself() -> None:
    state = build(*NS_PAIR, DEFAULT_DENY_ALL)
    v = verdict(state, "default/a", "default/a", 80, "UDP")
    assert v.allowed and v.loopback
    assert not v.egress.allowed and not v.ingress.allowed


# --- The node a pod runs on ---------------------------------------------------------------------


def test_traffic_between_a_pod_and_the_node_it_runs_on_is_always_allowed() -> None:
    # the node is known by its host-network pods (kubelet, node agents): they have its address
    state = build(pod("default/db", "10.244.1.10", {"role": "db"}, node="node-1"),
                  pod("kube-system/agent-1", "192.168.0.1", host_network=True, node="node-1"),
                  pod("kube-system/agent-2", "192.168.0.2", host_network=True, node="node-2"),
                  DEFAULT_DENY_ALL.replace("name: default-deny-all", "name: deny-all\n  namespace: default"))
    assert allows(state, "kube-system/agent-1", "default/db", 10250)
    assert allows(state, "default/db", "kube-system/agent-1", 6443)
    assert verdict(state, "kube-system/agent-1", "default/db", 80).node_local
    # another node is just another address: the pod's policies decide
    assert not allows(state, "kube-system/agent-2", "default/db", 10250)
    assert not allows(state, "default/db", "kube-system/agent-2", 6443)
    assert explain(verdict(state, "kube-system/agent-1", "default/db", 80))[1:] == [
        "  traffic between a pod and the node it runs on is always allowed (the host-network end is that node)"]


# --- Explanations --------------------------------------------------------------------------------


def test_explain_names_isolating_policies_and_the_allowing_rule(example: ClusterState) -> None:
    assert explain(verdict(example, "default/frontend", "default/db", 6379)) == [
        "ALLOWED: default/frontend -> default/db TCP/6379",
        "  egress: default/frontend is not isolated for egress (no policy selects it with policyType Egress): allowed",
        "  ingress: default/db is isolated for ingress by default/test-network-policy",
        "    allowed by policy default/test-network-policy ingress[0] (peer: pods [role=frontend]; port: TCP 6379)",
    ]


def test_explain_says_when_no_rule_allows(example: ClusterState) -> None:
    assert explain(verdict(example, "default/db", "default/frontend", 6379)) == [
        "DENIED: default/db -> default/frontend TCP/6379",
        "  egress: default/db is isolated for egress by default/test-network-policy",
        "    no egress rule of those policies allows this connection: denied",
        "  ingress: default/frontend is not isolated for ingress (no policy selects it with policyType Ingress): "
        "allowed",
    ]


def test_explain_lists_every_isolating_policy_and_every_allowing_rule() -> None:
    state = build(*NS_PAIR, DEFAULT_DENY_INGRESS, ALLOW_ALL_INGRESS, ALLOW_FROM.format(app="b", port=80))
    lines = explain(verdict(state, "default/b", "default/a", 80))
    assert lines[2] == ("  ingress: default/a is isolated for ingress by default/allow-all-ingress, "
                        "default/default-deny-ingress, default/from-b")
    assert lines[3:] == [
        "    allowed by policy default/allow-all-ingress ingress[0] (peer: all peers; port: all ports)",
        "    allowed by policy default/from-b ingress[0] (peer: pods [app=b]; port: TCP 80)",
    ]


def test_explain_an_outside_address_and_ip_block_peer(example: ClusterState) -> None:
    assert explain(verdict(example, "172.17.0.9", "default/db", 6379))[1:] == [
        "  egress: 172.17.0.9 is not a pod: no egress policy applies",
        "  ingress: default/db is isolated for ingress by default/test-network-policy",
        "    allowed by policy default/test-network-policy ingress[0] "
        "(peer: ipBlock 172.17.0.0/16 except 172.17.1.0/24; port: TCP 6379)",
    ]


@pytest.mark.parametrize(
    ("pod_ref", "reason"),
    [("default/host", "default/host uses the host network"),
     ("default/pending", "default/pending is not running (phase Pending)"),
     ("default/no-ip", "default/no-ip has no IP address")],
)
def test_explain_says_why_network_policy_does_not_apply_to_a_pod(pod_ref: str, reason: str) -> None:
    state = build(*EXAMPLE_CLUSTER, *OUT_OF_SCOPE, TEST_NETWORK_POLICY)
    lines = explain(verdict(state, "default/frontend", pod_ref, 6379))
    assert lines[2] == f"  ingress: {reason}: no ingress policy applies"


def test_explain_loopback() -> None:
    state = build(*NS_PAIR, DEFAULT_DENY_ALL)
    assert explain(verdict(state, "default/a", "default/a", 80)) == [
        "ALLOWED: default/a -> default/a TCP/80",
        "  a pod cannot block access to itself (loopback is always allowed)",
    ]
