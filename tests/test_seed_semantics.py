"""Every statement of the seed page (Kubernetes "Network Policies"), one named test each,
against the reference semantics `decide` / `explain`."""

from __future__ import annotations

import itertools

import pytest

from sdn_netpol.policy.matrix import build_matrix
from sdn_netpol.policy.state import ClusterState
from tests.builders import allows, build, namespace, parse, pod, verdict
from tests.seed_examples import (
    ALL_PODS,
    ALLOW_ALL_EGRESS,
    ALLOW_ALL_INGRESS,
    ALLOW_FROM,
    DB_PODS,
    DEFAULT_DENY_ALL,
    DEFAULT_DENY_EGRESS,
    DEFAULT_DENY_INGRESS,
    DEFAULT_PODS,
    EXAMPLE_CLUSTER,
    NS_PAIR,
    TEST_NETWORK_POLICY,
    example_state,
)


@pytest.fixture(scope="module")
def example() -> ClusterState:
    return example_state()


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


# --- Default policies (the Kubernetes docs' files, in tests/seed_examples.py) ----------------


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


