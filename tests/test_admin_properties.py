"""Invariants of the tiers' reference semantics on random clusters mixing NetworkPolicies and
all three admin-policy kinds (tests/admin_strategies.py)."""

from __future__ import annotations

import random
from collections.abc import Iterator

from hypothesis import given, settings
from hypothesis import strategies as st
from netaddr import IPNetwork

from sdn_netpol.model.cluster_objects import Action, AdminPeer, AdminRule, ClusterPolicy, PodSet
from sdn_netpol.model.labels import LabelSelector
from sdn_netpol.model.objects import Protocol
from sdn_netpol.model.parse import Document, parse_documents
from sdn_netpol.policy.state import ClusterState
from sdn_netpol.policy.verdict import Endpoint, Verdict, decide
from tests.admin_strategies import (
    admin_cluster_states,
    cluster_policies,
    cluster_policy_manifest,
    with_cluster_policies,
)
from tests.strategies import EXTERNAL_IPS, probes

EVERY_POD = PodSet(LabelSelector())
SETTINGS = settings(max_examples=60, deadline=None)


def verdicts(state: ClusterState) -> Iterator[tuple[tuple[str, str, Protocol, int], Verdict]]:
    ends = [Endpoint(pod=p) for p in state.pods] + [Endpoint(ip=ip) for ip in EXTERNAL_IPS[:2]]
    for protocol, port in probes(state)[:4]:
        for src in ends:
            for dst in ends:
                if src.pod is None and dst.pod is None:
                    continue
                yield (str(src), str(dst), protocol, port), decide(state, src, dst, protocol, port)


def allowed(state: ClusterState) -> dict[tuple[str, str, Protocol, int], bool]:
    return {key: v.allowed for key, v in verdicts(state)}


def everything(action: Action, name: str = "0-first") -> ClusterPolicy:
    """Admin tier, priority 0 and the first name: consulted before every other policy."""
    rules = (AdminRule("all", action, (AdminPeer(pod_set=EVERY_POD),)),)
    out = (*rules, AdminRule("outside", action, (AdminPeer(networks=(_ALL4, _ALL6)),)))
    return ClusterPolicy("ClusterNetworkPolicy", name, "Admin", 0, EVERY_POD, rules, out)


_ALL4 = IPNetwork("0.0.0.0/0")
_ALL6 = IPNetwork("::/0")


@SETTINGS
@given(admin_cluster_states())
def test_a_first_admin_deny_of_everything_leaves_only_what_is_always_allowed(state: ClusterState) -> None:
    """Ingress rules have no `networks` peer: an address outside the pods keeps its way in."""
    denied = with_cluster_policies(state, (*state.cluster_policies, everything("Deny")))
    in_scope = {str(p.key) for p in state.pods if p.in_policy_scope}
    addresses = {str(p.key): p.ips for p in state.pods} | {str(ip): (ip,) for ip in EXTERNAL_IPS}
    for key, v in verdicts(denied):
        src, dst = key[0] in in_scope, key[1] in in_scope
        if (src or dst) and not (v.loopback or v.node_local):
            reachable = dst or any(ip.version == v.family for ip in addresses.get(key[1], ()))
            deciding = [v.egress] if src and reachable else []  # a pod without an address matches no peer
            deciding += [v.ingress] if dst and src else []
            assert deciding == [] or not v.allowed, key
            assert all(side.decided_in == "Admin" and side.admin is not None for side in deciding), key


@SETTINGS
@given(admin_cluster_states())
def test_a_first_admin_accept_of_everything_allows_every_pod_to_pod_connection(state: ClusterState) -> None:
    """Between pods under NetworkPolicy (ingress rules have no `networks` peer)."""
    accepted = with_cluster_policies(state, (*state.cluster_policies, everything("Allow")))
    in_scope = {str(p.key) for p in state.pods if p.in_policy_scope}
    assert all(ok for (src, dst, _, _), ok in allowed(accepted).items() if src in in_scope and dst in in_scope)


@SETTINGS
@given(admin_cluster_states())
def test_a_first_pass_of_everything_leaves_only_network_policy_and_the_baseline(state: ClusterState) -> None:
    passed = with_cluster_policies(state, (*state.cluster_policies, everything("Pass")))
    no_admin = with_cluster_policies(state, [p for p in state.cluster_policies if p.tier == "Baseline"])
    assert allowed(passed) == allowed(no_admin)


@SETTINGS
@given(admin_cluster_states())
def test_without_cluster_policies_nothing_changes(state: ClusterState) -> None:
    plain = with_cluster_policies(state, ())
    for key, v in verdicts(plain):
        assert v.egress.admin is None and v.ingress.baseline is None, key
        sides = all(bool(side.allowed_by) or not side.isolated_by for side in (v.egress, v.ingress))
        assert v.allowed == (sides or v.loopback or v.node_local)


@SETTINGS
@given(admin_cluster_states())
def test_the_baseline_never_changes_a_side_a_network_policy_isolates(state: ClusterState) -> None:
    no_baseline = with_cluster_policies(state, [p for p in state.cluster_policies if p.tier == "Admin"])
    before = dict(verdicts(no_baseline))
    for key, v in verdicts(state):
        for side, old in ((v.egress, before[key].egress), (v.ingress, before[key].ingress)):
            if side.isolated_by or (side.admin is not None and side.admin.final):
                assert side.allowed == old.allowed, key
                assert side.baseline is None


@SETTINGS
@given(admin_cluster_states(), st.randoms(use_true_random=False))
def test_the_order_policies_are_given_in_changes_nothing(state: ClusterState, rnd: random.Random) -> None:
    shuffled = list(state.cluster_policies)
    rnd.shuffle(shuffled)
    assert with_cluster_policies(state, shuffled).cluster_policies == state.cluster_policies
    assert allowed(with_cluster_policies(state, shuffled)) == allowed(state)


@SETTINGS
@given(st.lists(cluster_policies("cp"), max_size=3))
def test_manifests_of_random_cluster_policies_parse_back_to_the_same_values(
        policies: list[ClusterPolicy]) -> None:
    result = parse_documents([Document(f"d{i}", cluster_policy_manifest(p)) for i, p in enumerate(policies)])
    assert result.errors == ()
    expected = {(p.kind, p.name): p for p in policies}  # a later object of one kind and name replaces
    assert sorted(result.cluster_policies, key=lambda p: p.order) == sorted(expected.values(), key=lambda p: p.order)
