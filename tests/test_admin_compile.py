"""The tier tables (compiler/admin_flows.py) as values: priorities from (policy priority,
rule place) without collisions and stable when other policies come, one cookie per rule,
Pass to the NetworkPolicy table, Baseline behind the isolation table, additive flow counts,
and incremental compiles equal to full ones. Real-OVS behaviour: tests/test_differential_ovs.py."""

from __future__ import annotations

from collections import defaultdict
from dataclasses import replace
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from netaddr import IPNetwork, cidr_merge

from sdn_netpol.compiler.admin_flows import TABLES, TierOverflow, rule_actions, tier_priorities
from sdn_netpol.compiler.compile import compile_node, compile_node_incremental
from sdn_netpol.compiler.flow import GotoTable
from sdn_netpol.compiler.pipeline import (
    CookieCategory,
    Priority,
    Table,
    decode_cookie,
    policy_cookie_and_mask,
    policy_object_id,
)
from sdn_netpol.compiler.topology import assign_ports
from sdn_netpol.inputs.node_inputs import load_inputs
from sdn_netpol.model.labels import Labels
from sdn_netpol.policy.state import ClusterState
from tests.admin_strategies import admin_cluster_states, cluster_policies, with_cluster_policies
from tests.builders import build

GOLDEN = Path(__file__).resolve().parent.parent / "flows"
TIER_TABLES = set(TABLES.values())


def golden() -> ClusterState:
    inputs = load_inputs([GOLDEN / "cluster.yaml", GOLDEN / "admin-tiers" / "policy.yaml"])
    assert not inputs.errors
    return ClusterState.from_parse(inputs.result)


def test_priorities_follow_the_evaluation_order_without_collisions() -> None:
    ranks = [(0, 0), (0, 1), (3, 0), (3, 1), (3, 2), (1000, 0), (1001, 0)]
    priorities = tier_priorities(ranks)
    assert priorities == sorted(priorities, reverse=True) and len(set(priorities)) == len(priorities)
    assert max(priorities) < Priority.TIER_BYPASS and min(priorities) > Priority.MISS


def test_a_priority_with_more_rules_than_a_band_is_numbered_densely_in_order() -> None:
    ranks = [(5, i) for i in range(100)] + [(6, 0)]
    priorities = tier_priorities(ranks)
    assert priorities == sorted(priorities, reverse=True) and len(set(priorities)) == len(priorities)
    with pytest.raises(TierOverflow):
        tier_priorities([(5, i) for i in range(70000)])


def test_actions_allow_skips_network_policy_pass_goes_to_it_deny_drops() -> None:
    assert rule_actions("Admin", "Egress", "Allow") == (GotoTable(Table.L3_FORWARDING),)
    assert rule_actions("Admin", "Ingress", "Allow") == (GotoTable(Table.COMMIT),)
    assert rule_actions("Admin", "Egress", "Pass") == (GotoTable(Table.EGRESS_RULE),)
    assert rule_actions("Admin", "Ingress", "Pass") == (GotoTable(Table.INGRESS_RULE),)
    assert rule_actions("Baseline", "Ingress", "Pass") == (GotoTable(Table.COMMIT),)
    assert rule_actions("Admin", "Egress", "Deny") == rule_actions("Baseline", "Ingress", "Deny") == ()


def test_each_admin_rule_has_its_own_cookie_and_one_priority() -> None:
    state = golden()
    flows = compile_node(state, assign_ports(state, "node1"))
    names = {policy_object_id(p.ref): p.ref for p in state.cluster_policies}
    priorities: dict[tuple[str, str, int], set[int]] = defaultdict(set)
    for flow in flows:
        if flow.table in TIER_TABLES and flow.priority not in (Priority.MISS, Priority.TIER_BYPASS,
                                                                Priority.TIER_BYPASS - 1):
            info = decode_cookie(flow.cookie)
            assert info.category == CookieCategory.RULE
            assert info.direction is not None and info.rule_index is not None
            priorities[(names[info.object_id], info.direction, info.rule_index)].add(flow.priority)
    assert all(len(p) == 1 for p in priorities.values())
    per_table: dict[tuple[str, str], list[int]] = defaultdict(list)  # (tier, direction): a table
    tiers = {p.ref: p.tier for p in state.cluster_policies}
    for (ref, direction, _), found in priorities.items():
        per_table[(tiers[ref], direction)].extend(found)
    assert all(len(set(ps)) == len(ps) for ps in per_table.values())  # no two rules of a table share one
    assert ("ClusterNetworkPolicy/protect-default", "Ingress", 1) in priorities
    own = flows.by_cookie(*policy_cookie_and_mask("AdminNetworkPolicy/alice-and-outside"))
    assert {f.table for f in own} == {Table.EGRESS_ADMIN, Table.INGRESS_ADMIN}


def test_a_new_policy_moves_no_flow_of_the_others() -> None:
    state = golden()
    node = assign_ports(state, "node1")
    before = compile_node(state, node)
    extra = build("""
apiVersion: policy.networking.k8s.io/v1alpha2
kind: ClusterNetworkPolicy
metadata: {name: first}
spec:
  tier: Admin
  priority: 1
  subject: {namespaces: {}}
  egress: [{action: Deny, to: [{networks: [203.0.113.0/24]}]}]
""").cluster_policies
    grown = with_cluster_policies(state, (*state.cluster_policies, *extra))
    after = compile_node(grown, assign_ports(grown, "node1"))
    for ref in (p.ref for p in state.cluster_policies):
        cookie, mask = policy_cookie_and_mask(ref)
        assert after.by_cookie(cookie, mask) == before.by_cookie(cookie, mask), ref


def test_flows_stay_additive_in_subjects_peers_and_ports() -> None:
    """A rule costs |local subject pods| + |peer addresses| + |port matches| + 1 (its conj_id)."""
    state = golden()
    flows = compile_node(state, assign_ports(state, "node1"))
    cookie, mask = policy_cookie_and_mask("ClusterNetworkPolicy/protect-default")
    pass_rule = [f for f in flows.by_cookie(cookie, mask) if decode_cookie(f.cookie).rule_index == 1]
    local_default = 2  # default/db, default/backend on node1
    peers = cidr_merge([IPNetwork(str(ip)) for p in state.pods for ip in p.ips])  # every pod: .10-.14 of each node
    assert len(peers) == 6  # 10.244.N.10/31, .12/31, .14/32 for N = 1, 2: exactly those ten addresses
    assert len(pass_rule) == local_default + len(peers) + 1  # no ports


@settings(max_examples=80, deadline=None)
@given(admin_cluster_states(), st.data())
def test_incremental_compiles_with_admin_policies_equal_full_compiles(state: ClusterState,
                                                                     data: st.DataObject) -> None:
    """A chain of changes as the controller sees them: a pod relabelled, a pod gone (both
    patched snapshots), the cluster policies changed (a snapshot built anew)."""
    compiled = compile_node_incremental(state, assign_ports(state, "node-1"))
    declared = {ns.name for ns in state.namespaces}
    victim = data.draw(st.sampled_from(state.pods))
    relabelled = replace(victim, labels=Labels({**victim.labels, "app": data.draw(st.sampled_from(("x", "y")))}))
    other = data.draw(cluster_policies("cp-new"))
    chain = [
        state.with_changes({victim.key: relabelled}, {}, declared),
        state.with_changes({victim.key: None}, {}, declared),
        with_cluster_policies(state, [*(p for p in state.cluster_policies[1:] if p.ref != other.ref), other]),
    ]
    for step in chain:
        node = assign_ports(step, "node-1")
        compiled = compile_node_incremental(step, node, compiled)
        fresh = ClusterState.build(step.namespaces, step.pods, step.policies, 0, step.cluster_policies)
        assert compiled.flows == compile_node(fresh, node)
