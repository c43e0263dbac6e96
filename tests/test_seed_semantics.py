"""Every statement of the seed page (Kubernetes "Network Policies"), one named test each,
against the reference semantics `decide` / `explain`."""

from __future__ import annotations

import itertools

import pytest

from sdn_netpol.policy.matrix import build_matrix
from sdn_netpol.policy.state import ClusterState
from sdn_netpol.policy.verdict import explain
from tests.builders import allows, build, namespace, parse, pod, verdict

TEST_NETWORK_POLICY = """\
apiVersion: networking.k8s.io/v1
kind: NetworkPolicy
metadata:
  name: test-network-policy
  namespace: default
spec:
  podSelector:
    matchLabels:
      role: db
  policyTypes:
  - Ingress
  - Egress
  ingress:
  - from:
    - ipBlock:
        cidr: 172.17.0.0/16
        except:
        - 172.17.1.0/24
    - namespaceSelector:
        matchLabels:
          project: myproject
    - podSelector:
        matchLabels:
          role: frontend
    ports:
    - protocol: TCP
      port: 6379
  egress:
  - to:
    - ipBlock:
        cidr: 10.0.0.0/24
    ports:
    - protocol: TCP
      port: 5978
"""

SERVES = [("redis", 6379), (None, 5978)]
EXAMPLE_CLUSTER = [
    namespace("default"),
    namespace("myproject", project="myproject"),
    namespace("otherproject"),
    pod("default/db", "10.244.1.10", {"role": "db"}, SERVES),
    pod("default/db-replica", "10.244.2.10", {"role": "db"}, SERVES),
    pod("default/frontend", "10.244.1.11", {"role": "frontend"}, SERVES),
    pod("default/backend", "10.244.1.12", {"role": "backend"}, SERVES),
    pod("myproject/client", "10.244.2.20", {"app": "client"}, SERVES),
    pod("myproject/worker", "10.244.2.21", {}, SERVES),
    pod("otherproject/stranger", "10.244.3.30", {"role": "frontend"}, SERVES),
]
DB_PODS = ["default/db", "default/db-replica"]
ALL_PODS = [
    "default/backend", "default/db", "default/db-replica", "default/frontend",
    "myproject/client", "myproject/worker", "otherproject/stranger",
]


@pytest.fixture(scope="module")
def example() -> ClusterState:
    return build(*EXAMPLE_CLUSTER, TEST_NETWORK_POLICY)


# --- Isolated and non-isolated pods ----------------------------------------------------------


def test_pods_are_non_isolated_by_default_and_accept_traffic_from_any_source() -> None:
    state = build(*EXAMPLE_CLUSTER)
    for src, dst in itertools.product([*ALL_PODS, "203.0.113.9"], ALL_PODS):
        for protocol, port in (("TCP", 6379), ("UDP", 53), ("SCTP", 9)):
            assert allows(state, src, dst, port, protocol), (src, dst, protocol, port)


def test_pods_without_policy_can_send_anywhere() -> None:
    state = build(*EXAMPLE_CLUSTER)
    assert allows(state, "default/db", "203.0.113.9", 443)
    assert allows(state, "default/db", "fd00::99", 443)


def test_a_selected_pod_rejects_connections_no_policy_allows(example: ClusterState) -> None:
    assert not allows(example, "default/backend", "default/db", 6379)


def test_pods_of_the_namespace_not_selected_keep_accepting_all_traffic(example: ClusterState) -> None:
    for src in ALL_PODS:
        for dst in ("default/backend", "default/frontend"):
            side = verdict(example, src, dst, 5000, "UDP").ingress
            assert side.isolated_by == () and side.allowed
    assert allows(example, "otherproject/stranger", "default/backend", 5000)


def test_a_policy_only_selects_pods_of_its_own_namespace() -> None:
    state = build(*EXAMPLE_CLUSTER, pod("otherproject/db", "10.244.3.31", {"role": "db"}), TEST_NETWORK_POLICY)
    assert verdict(state, "default/backend", "otherproject/db", 6379).ingress.isolated_by == ()
    assert allows(state, "default/backend", "otherproject/db", 6379)


# --- The example NetworkPolicy ---------------------------------------------------------------


def test_example_isolates_role_db_pods_in_default_for_ingress_and_egress(example: ClusterState) -> None:
    for db in DB_PODS:
        assert verdict(example, "default/backend", db, 6379).ingress.isolated_by == ("default/test-network-policy",)
        assert verdict(example, db, "default/backend", 6379).egress.isolated_by == ("default/test-network-policy",)


def test_example_allows_role_frontend_pods_of_default_on_tcp_6379(example: ClusterState) -> None:
    for db in DB_PODS:
        assert allows(example, "default/frontend", db, 6379)


def test_example_pod_selector_peer_means_the_policy_namespace_only(example: ClusterState) -> None:
    assert not allows(example, "otherproject/stranger", "default/db", 6379)


def test_example_allows_any_pod_in_a_namespace_labelled_project_myproject(example: ClusterState) -> None:
    for src in ("myproject/client", "myproject/worker"):
        for db in DB_PODS:
            assert allows(example, src, db, 6379)


@pytest.mark.parametrize("source", ["172.17.0.0", "172.17.0.1", "172.17.0.255", "172.17.2.0", "172.17.128.5",
                                    "172.17.255.255"])
def test_example_allows_172_17_0_0_to_0_255_and_172_17_2_0_to_255_255(example: ClusterState, source: str) -> None:
    assert allows(example, source, "default/db", 6379)


@pytest.mark.parametrize("source", ["172.17.1.0", "172.17.1.1", "172.17.1.255"])
def test_example_denies_the_excepted_172_17_1_0_24(example: ClusterState, source: str) -> None:
    assert not allows(example, source, "default/db", 6379)


@pytest.mark.parametrize("source", ["172.16.255.255", "172.18.0.0", "10.0.0.1", "fd00::1"])
def test_example_denies_addresses_outside_the_ip_block(example: ClusterState, source: str) -> None:
    assert not allows(example, source, "default/db", 6379)


def test_example_ingress_is_only_on_tcp_port_6379(example: ClusterState) -> None:
    assert not allows(example, "default/frontend", "default/db", 6380)
    assert not allows(example, "default/frontend", "default/db", 5978)
    assert not allows(example, "default/frontend", "default/db", 6379, "UDP")
    assert not allows(example, "172.17.0.1", "default/db", 6379, "SCTP")


@pytest.mark.parametrize("destination", ["10.0.0.0", "10.0.0.1", "10.0.0.255"])
def test_example_egress_allows_10_0_0_0_24_on_tcp_5978(example: ClusterState, destination: str) -> None:
    for db in DB_PODS:
        assert allows(example, db, destination, 5978)


def test_example_egress_allows_nothing_else(example: ClusterState) -> None:
    assert not allows(example, "default/db", "10.0.1.0", 5978)
    assert not allows(example, "default/db", "10.0.0.1", 5979)
    assert not allows(example, "default/db", "10.0.0.1", 5978, "UDP")
    assert not allows(example, "default/db", "203.0.113.9", 443)
    for dst in ALL_PODS:
        if dst != "default/db":
            assert not allows(example, "default/db", dst, 5978), dst


def test_allowed_iff_source_egress_and_destination_ingress_both_allow(example: ClusterState) -> None:
    # db may not send to frontend (egress) although frontend accepts everything (ingress)
    v = verdict(example, "default/db", "default/frontend", 6379)
    assert (v.egress.allowed, v.ingress.allowed, v.allowed) == (False, True, False)
    # backend may send anything (egress) but db refuses it (ingress)
    v = verdict(example, "default/backend", "default/db", 6379)
    assert (v.egress.allowed, v.ingress.allowed, v.allowed) == (True, False, False)


# --- Behavior of to and from selectors ------------------------------------------------------

AND_POLICY = """\
apiVersion: networking.k8s.io/v1
kind: NetworkPolicy
metadata: {name: and, namespace: server}
spec:
  podSelector: {}
  ingress:
  - from:
    - namespaceSelector:
        matchLabels:
          user: alice
      podSelector:
        matchLabels:
          role: client
"""
OR_POLICY = """\
apiVersion: networking.k8s.io/v1
kind: NetworkPolicy
metadata: {name: or, namespace: server}
spec:
  podSelector: {}
  ingress:
  - from:
    - namespaceSelector:
        matchLabels:
          user: alice
    - podSelector:
        matchLabels:
          role: client
"""
ALICE_BOB = [
    namespace("server"),
    namespace("alice-ns", user="alice"),
    namespace("bob-ns", user="bob"),
    pod("server/api", "10.0.1.1", {"app": "api"}),
    pod("server/local-client", "10.0.1.2", {"role": "client"}),
    pod("server/local-other", "10.0.1.3", {"role": "other"}),
    pod("alice-ns/client", "10.0.2.1", {"role": "client"}),
    pod("alice-ns/other", "10.0.2.2", {"role": "other"}),
    pod("bob-ns/client", "10.0.3.1", {"role": "client"}),
]


@pytest.mark.parametrize(
    ("source", "expected"),
    [("alice-ns/client", True), ("alice-ns/other", False), ("server/local-client", False),
     ("bob-ns/client", False), ("server/local-other", False)],
)
def test_one_from_element_with_both_selectors_means_pods_in_namespaces(source: str, expected: bool) -> None:
    assert allows(build(*ALICE_BOB, AND_POLICY), source, "server/api", 80) is expected


@pytest.mark.parametrize(
    ("source", "expected"),
    [("alice-ns/client", True), ("alice-ns/other", True), ("server/local-client", True),
     ("bob-ns/client", False), ("server/local-other", False)],
)
def test_two_from_elements_mean_local_pods_or_any_pod_of_the_namespaces(source: str, expected: bool) -> None:
    assert allows(build(*ALICE_BOB, OR_POLICY), source, "server/api", 80) is expected


def test_namespace_selector_alone_selects_every_pod_of_the_namespaces_but_no_outside_address() -> None:
    everything = OR_POLICY.replace("matchLabels:\n          user: alice", "{}").replace(
        "    - podSelector:\n        matchLabels:\n          role: client\n", "")
    state = build(*ALICE_BOB, everything)
    for src in ("alice-ns/other", "bob-ns/client", "server/local-other"):
        assert allows(state, src, "server/api", 80)
    assert not allows(state, "203.0.113.1", "server/api", 80)


def test_namespaces_are_selectable_by_their_implied_metadata_name_label() -> None:
    by_name = OR_POLICY.replace("user: alice", "kubernetes.io/metadata.name: bob-ns")
    state = build(*ALICE_BOB, by_name)
    assert allows(state, "bob-ns/client", "server/api", 80)
    assert not allows(state, "alice-ns/other", "server/api", 80)


@pytest.mark.parametrize(
    ("expression", "allowed_sources"),
    [
        ("{key: role, operator: In, values: [client, other]}", {"server/local-client", "server/local-other"}),
        ("{key: role, operator: NotIn, values: [client]}", {"server/local-other", "server/api"}),
        ("{key: role, operator: Exists}", {"server/local-client", "server/local-other"}),
        ("{key: role, operator: DoesNotExist}", {"server/api"}),
    ],
    ids=["In", "NotIn-includes-pods-without-the-key", "Exists", "DoesNotExist"],
)
def test_match_expressions_select_peers(expression: str, allowed_sources: set[str]) -> None:
    text = (
        "apiVersion: networking.k8s.io/v1\nkind: NetworkPolicy\nmetadata: {name: expr, namespace: server}\n"
        "spec:\n  podSelector: {matchLabels: {app: api}}\n"
        f"  ingress:\n  - from: [{{podSelector: {{matchExpressions: [{expression}]}}}}]\n"
    )
    state = build(*ALICE_BOB, text)
    sources = {"server/local-client", "server/local-other", "server/api", "alice-ns/client"}
    found = {src for src in sources if allows(state, src, "server/api", 80)}
    # server/api reaches itself whatever the policy says (loopback)
    assert found == allowed_sources | {"server/api"}


# --- Default policies ------------------------------------------------------------------------
# The Kubernetes docs' files network-policy-*.yaml, as published (namespace "default").

DEFAULT_DENY_INGRESS = """\
---
apiVersion: networking.k8s.io/v1
kind: NetworkPolicy
metadata:
  name: default-deny-ingress
spec:
  podSelector: {}
  policyTypes:
  - Ingress
"""
ALLOW_ALL_INGRESS = """\
---
apiVersion: networking.k8s.io/v1
kind: NetworkPolicy
metadata:
  name: allow-all-ingress
spec:
  podSelector: {}
  ingress:
  - {}
  policyTypes:
  - Ingress
"""
DEFAULT_DENY_EGRESS = """\
---
apiVersion: networking.k8s.io/v1
kind: NetworkPolicy
metadata:
  name: default-deny-egress
spec:
  podSelector: {}
  policyTypes:
  - Egress
"""
ALLOW_ALL_EGRESS = """\
---
apiVersion: networking.k8s.io/v1
kind: NetworkPolicy
metadata:
  name: allow-all-egress
spec:
  podSelector: {}
  egress:
  - {}
  policyTypes:
  - Egress
"""
DEFAULT_DENY_ALL = """\
---
apiVersion: networking.k8s.io/v1
kind: NetworkPolicy
metadata:
  name: default-deny-all
spec:
  podSelector: {}
  policyTypes:
  - Ingress
  - Egress
"""
NS_PAIR = [
    pod("default/a", "10.1.0.1", {"app": "a"}),
    pod("default/b", "10.1.0.2", {"app": "b"}),
    pod("default/no-labels", "10.1.0.3"),
    pod("other/c", "10.2.0.1", {"app": "c"}),
]
DEFAULT_PODS = ["default/a", "default/b", "default/no-labels"]


def test_default_deny_all_ingress_isolates_every_pod_of_the_namespace() -> None:
    state = build(*NS_PAIR, DEFAULT_DENY_INGRESS)
    for src, dst in itertools.product([*DEFAULT_PODS, "other/c", "198.51.100.1"], DEFAULT_PODS):
        assert allows(state, src, dst, 80) is (src == dst)


def test_default_deny_all_ingress_does_not_change_egress() -> None:
    state = build(*NS_PAIR, DEFAULT_DENY_INGRESS)
    for src in DEFAULT_PODS:
        assert allows(state, src, "other/c", 80)
        assert allows(state, src, "198.51.100.1", 443, "UDP")
        assert verdict(state, src, "other/c", 80).egress.isolated_by == ()


def test_default_deny_all_ingress_does_not_touch_other_namespaces() -> None:
    state = build(*NS_PAIR, DEFAULT_DENY_INGRESS)
    assert allows(state, "default/a", "other/c", 80)


def test_default_allow_all_ingress_wins_over_policies_that_isolate() -> None:
    state = build(*NS_PAIR, ALLOW_FROM.format(app="b", port=80), DEFAULT_DENY_INGRESS, ALLOW_ALL_INGRESS)
    for src, dst in itertools.product([*DEFAULT_PODS, "other/c", "198.51.100.1"], DEFAULT_PODS):
        assert allows(state, src, dst, 80, "UDP"), (src, dst)
    assert verdict(state, "other/c", "default/a", 80).ingress.isolated_by == (
        "default/allow-all-ingress", "default/default-deny-ingress", "default/from-b")


def test_default_deny_all_egress_isolates_every_pod_of_the_namespace() -> None:
    state = build(*NS_PAIR, DEFAULT_DENY_EGRESS)
    for src, dst in itertools.product(DEFAULT_PODS, [*DEFAULT_PODS, "other/c", "198.51.100.1"]):
        assert allows(state, src, dst, 80) is (src == dst)


def test_default_deny_all_egress_does_not_change_ingress() -> None:
    state = build(*NS_PAIR, DEFAULT_DENY_EGRESS)
    for dst in DEFAULT_PODS:
        assert allows(state, "other/c", dst, 80)
        assert allows(state, "198.51.100.1", dst, 80)


def test_default_allow_all_egress_wins_over_policies_that_isolate() -> None:
    state = build(*NS_PAIR, DEFAULT_DENY_EGRESS, ALLOW_ALL_EGRESS)
    for src, dst in itertools.product(DEFAULT_PODS, [*DEFAULT_PODS, "other/c", "198.51.100.1", "fd00::1"]):
        assert allows(state, src, dst, 5353, "SCTP")


def test_default_deny_all_ingress_and_egress() -> None:
    state = build(*NS_PAIR, DEFAULT_DENY_ALL)
    for src, dst in itertools.product(DEFAULT_PODS, [*DEFAULT_PODS, "other/c", "198.51.100.1"]):
        assert allows(state, src, dst, 80) is (src == dst)
    for src, dst in itertools.product(["other/c", "198.51.100.1"], DEFAULT_PODS):
        assert not allows(state, src, dst, 80)
    assert allows(state, "other/c", "198.51.100.1", 80)


# --- Policies are additive; order does not matter -------------------------------------------

ALLOW_FROM = """\
apiVersion: networking.k8s.io/v1
kind: NetworkPolicy
metadata: {{name: from-{app}, namespace: default}}
spec:
  podSelector: {{matchLabels: {{app: a}}}}
  ingress:
  - from: [{{podSelector: {{matchLabels: {{app: {app}}}}}}}]
    ports: [{{port: {port}}}]
"""


ALLOW_FROM_OTHER_NAMESPACE = """\
apiVersion: networking.k8s.io/v1
kind: NetworkPolicy
metadata: {name: from-other, namespace: default}
spec:
  podSelector: {matchLabels: {app: a}}
  ingress:
  - from: [{namespaceSelector: {matchLabels: {kubernetes.io/metadata.name: other}}}]
    ports: [{port: 443}]
"""


def test_policies_are_additive_the_union_of_their_rules_applies() -> None:
    state = build(*NS_PAIR, ALLOW_FROM.format(app="b", port=80), ALLOW_FROM_OTHER_NAMESPACE)
    assert allows(state, "default/b", "default/a", 80)
    assert allows(state, "other/c", "default/a", 443)
    assert not allows(state, "default/b", "default/a", 443)
    assert not allows(state, "other/c", "default/a", 80)
    assert not allows(state, "default/no-labels", "default/a", 80)


def test_a_second_policy_never_narrows_the_first() -> None:
    wide = ALLOW_FROM.format(app="b", port=80)
    state_one = build(*NS_PAIR, wide)
    state_two = build(*NS_PAIR, wide, DEFAULT_DENY_INGRESS)
    assert allows(state_one, "default/b", "default/a", 80) and allows(state_two, "default/b", "default/a", 80)


def test_order_of_policies_does_not_affect_the_result() -> None:
    policies = [ALLOW_FROM.format(app="b", port=80), DEFAULT_DENY_INGRESS, ALLOW_ALL_EGRESS, DEFAULT_DENY_EGRESS,
                ALLOW_FROM.format(app="c", port=443)]
    matrices = set()
    for order in itertools.permutations(policies):
        result = parse(*NS_PAIR, *order)
        # build the state without sorting so that decide really sees another order
        state = ClusterState(ClusterState.from_parse(result).namespaces, result.pods, result.policies)
        matrices.add(tuple(sorted(build_matrix(state, "TCP", 80).to_json()["allowed"]["default/b"].items())))
    assert len(matrices) == 1


# --- policyTypes ----------------------------------------------------------------------------

TYPES_POLICY = """\
apiVersion: networking.k8s.io/v1
kind: NetworkPolicy
metadata: {{name: types, namespace: default}}
spec:
  podSelector: {{matchLabels: {{app: a}}}}
{types}
  ingress:
  - from: [{{podSelector: {{matchLabels: {{app: b}}}}}}]
{egress}
"""
EGRESS_TO_B = "  egress:\n  - to: [{podSelector: {matchLabels: {app: b}}}]"


def isolation(text: str) -> tuple[bool, bool]:
    state = build(*NS_PAIR, text)
    v = verdict(state, "default/a", "default/a", 80)
    return bool(v.ingress.isolated_by), bool(v.egress.isolated_by)


def test_without_policy_types_ingress_is_always_set() -> None:
    assert isolation(TYPES_POLICY.format(types="", egress="")) == (True, False)


def test_without_policy_types_egress_is_set_iff_there_are_egress_rules() -> None:
    assert isolation(TYPES_POLICY.format(types="", egress=EGRESS_TO_B)) == (True, True)
    state = build(*NS_PAIR, TYPES_POLICY.format(types="", egress=EGRESS_TO_B))
    assert allows(state, "default/a", "default/b", 80) and not allows(state, "default/a", "other/c", 80)


def test_explicit_egress_only_ignores_ingress_rules_and_does_not_isolate_ingress() -> None:
    text = TYPES_POLICY.format(types="  policyTypes: [Egress]", egress=EGRESS_TO_B)
    assert isolation(text) == (False, True)
    state = build(*NS_PAIR, text)
    assert allows(state, "default/no-labels", "default/a", 80)


def test_explicit_ingress_only_ignores_egress_rules() -> None:
    text = TYPES_POLICY.format(types="  policyTypes: [Ingress]", egress=EGRESS_TO_B)
    assert isolation(text) == (True, False)
    assert allows(build(*NS_PAIR, text), "default/a", "other/c", 80)


def test_explicit_egress_without_egress_rules_denies_all_egress() -> None:
    text = TYPES_POLICY.format(types="  policyTypes: [Ingress, Egress]", egress="")
    state = build(*NS_PAIR, text)
    assert not allows(state, "default/a", "default/b", 80)
    assert allows(state, "default/b", "default/a", 80)


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

OUT_OF_SCOPE = [
    pod("default/host", "192.168.0.10", {"role": "db"}, host_network=True),
    pod("default/host-frontend", "192.168.0.11", {"role": "frontend"}, host_network=True),
    pod("default/no-ip", None, {"role": "db"}),
    pod("default/done", "10.244.1.50", {"role": "frontend"}, phase="Succeeded"),
    pod("default/pending", "10.244.1.51", {"role": "db"}, phase="Pending"),
]


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
