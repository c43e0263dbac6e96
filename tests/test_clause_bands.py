"""A match shared by thousands of conjunctions is spread over priority bands
(compiler/bands.py): every flow still fits in one OpenFlow message, and the verdicts are
the ones a single band gives."""

from __future__ import annotations

from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from sdn_netpol.compiler import bands
from sdn_netpol.compiler.bands import bands_for, spread_of
from sdn_netpol.compiler.compile import compile_node, compile_node_incremental
from sdn_netpol.compiler.flow import Conjunction, Flow
from sdn_netpol.compiler.ofwire import encode_flow_mod
from sdn_netpol.compiler.pipeline import Priority, Table
from sdn_netpol.compiler.topology import assign_ports
from sdn_netpol.policy.state import ClusterState
from tests.band_fixtures import flows_of_at_most
from tests.builders import build, namespace, pod
from tests.flow_walk import tunnel_packet, walk

N1 = "node-1"
BUNDLE_ADD_HEADER = 16  # OFPT_BUNDLE_ADD_MESSAGE's own fields around the FlowMod it carries
OPENFLOW_MESSAGE_MAX = 65_535


def _server_with_peers(n: int, port: int | None = 80) -> ClusterState:
    """One server pod selected by `n` policies, each admitting its own /32 (n distinct peers)."""
    parts: list[Any] = [namespace("x"), pod("x/srv", "10.1.0.1", {"app": "srv"}, node=N1)]
    for i in range(n):
        rule: dict[str, Any] = {"from": [{"ipBlock": {"cidr": f"172.16.{i // 250}.{i % 250 + 1}/32"}}]}
        if port is not None:
            rule["ports"] = [{"protocol": "TCP", "port": port}]
        parts.append({"apiVersion": "networking.k8s.io/v1", "kind": "NetworkPolicy",
                      "metadata": {"name": f"p{i}", "namespace": "x"},
                      "spec": {"podSelector": {"matchLabels": {"app": "srv"}}, "ingress": [rule]}})
    return build(*parts)


def _rule_table(flows: Any) -> list[Flow]:
    return [f for f in flows if f.table == Table.INGRESS_RULE]


def _conjunction_priorities(flows: Any) -> dict[int, set[int]]:
    """{conjunction id: the priorities of its clause and conj_id flows}."""
    found: dict[int, set[int]] = {}
    for flow in _rule_table(flows):
        conj_id = flow.match.value("conj_id")
        ids = [conj_id] if conj_id is not None else [a.id for a in flow.actions if isinstance(a, Conjunction)]
        for each in ids:
            found.setdefault(each, set()).add(flow.priority)
    return found


def test_a_match_within_the_threshold_keeps_one_band() -> None:
    assert bands_for(bands.CLAUSE_CONJUNCTIONS) == 1
    assert bands_for(bands.CLAUSE_CONJUNCTIONS + 1) == 2
    assert bands_for(5 * bands.CLAUSE_CONJUNCTIONS) == 8  # a power of two: doubling moves only half
    assert bands_for(10**9) == bands.MAX_BANDS


def test_a_conjunction_takes_the_bands_of_its_busiest_match() -> None:
    spread = spread_of({"tcp80": 2, "pod7": 8}, {"tcp80": ["a", "b"], "pod7": ["b"]})
    assert spread == {"a": 2, "b": 8}


def test_a_pod_selected_by_five_thousand_rules_compiles_into_flows_openflow_can_carry() -> None:
    state = _server_with_peers(5_000)
    context = assign_ports(state, N1)
    flows = compile_node(state, context)
    sizes = [len(encode_flow_mod(f)) + BUNDLE_ADD_HEADER for f in flows]
    assert max(sizes) <= OPENFLOW_MESSAGE_MAX
    rule_flows = _rule_table(flows)
    pod_clauses = [f for f in rule_flows if f.match.value("reg2") is not None and f.match.value("conj_id") is None]
    assert len(pod_clauses) > 1  # the server's own clause is split over bands...
    assert sum(len(f.actions) for f in pod_clauses) == 5_000  # ...and still names every conjunction once
    assert all(len(f.actions) <= 2 * bands.CLAUSE_CONJUNCTIONS for f in rule_flows)
    assert all(Priority.DEFAULT < f.priority <= Priority.CONJUNCTION for f in rule_flows
               if f.priority != Priority.DIRECT_ALLOW and f.priority != Priority.MISS)


def test_every_flow_of_a_conjunction_shares_its_band() -> None:
    state = _server_with_peers(5_000)
    priorities = _conjunction_priorities(compile_node(state, assign_ports(state, N1)))
    assert len(priorities) == 5_000
    assert all(len(found) == 1 for found in priorities.values())
    assert len({p for found in priorities.values() for p in found}) > 1


@pytest.mark.parametrize("source,allowed", [("172.16.0.1", True), ("172.16.3.200", True), ("172.16.19.250", True),
                                            ("172.16.20.1", False), ("172.17.0.1", False)])
def test_peers_in_every_band_are_admitted_and_others_dropped(source: str, allowed: bool) -> None:
    state = _server_with_peers(5_000)
    context = assign_ports(state, N1)
    flows = compile_node(state, context)
    server = next(b for b in context.bindings if str(b.pod) == "x/srv")
    for port, expected in ((80, allowed), (81, False)):
        result = walk(flows, tunnel_packet(context, source, "10.1.0.1", port))
        assert result.outputs == ([server.ofport] if expected else []), (source, port)


def test_an_unchanged_cluster_compiles_to_the_same_bands() -> None:
    state = _server_with_peers(300)
    with flows_of_at_most(40):
        first = compile_node(state, assign_ports(state, N1))
        again = compile_node(ClusterState.build(state.namespaces, state.pods, state.policies),
                             assign_ports(state, N1))
    assert set(first) == set(again)
    assert len({f.priority for f in _rule_table(first)}) > 2


@settings(max_examples=40, deadline=None)
@given(st.lists(st.integers(0, 11), min_size=1, max_size=10), st.integers(1, 4))
def test_removals_across_band_thresholds_equal_full_compiles(removed: list[int], threshold: int) -> None:
    """Policies removed one by one from a busy server: its matches cross band thresholds (a
    full build) or not (an incremental one); either way the flows are a full compile's."""
    state = _server_with_peers(12)
    with flows_of_at_most(threshold):
        compiled = compile_node_incremental(state, assign_ports(state, N1))
        for index in dict.fromkeys(removed):
            policies = [p for p in state.policies if p.name != f"p{index}"]
            state = ClusterState.build(state.namespaces, state.pods, policies)
            context = assign_ports(state, N1)
            compiled = compile_node_incremental(state, context, compiled)
            assert set(compiled.flows) == set(compile_node(state, context))


def _role_policy(i: int, target: str) -> dict[str, Any]:
    return {"apiVersion": "networking.k8s.io/v1", "kind": "NetworkPolicy",
            "metadata": {"name": f"r{i}", "namespace": "x"},
            "spec": {"podSelector": {"matchLabels": {"app": target}},
                     "ingress": [{"from": [{"podSelector": {"matchLabels": {f"r{i}": "y"}}}]}]}}


def test_a_conjunction_that_joins_a_busy_match_moves_to_that_match_s_bands() -> None:
    """Policy r9 (another server, so none of its matches is busy) gains a peer whose address
    is already on nine conjunctions: the peer's match stays at eight bands, but r9 must now
    sit in one of them, in every flow of its conjunction, exactly as a full compile puts it."""
    roles = {f"r{i}": "y" for i in range(9)}
    parts: list[Any] = [namespace("x"), pod("x/srv", "10.1.0.1", {"app": "srv"}, node=N1),
                        pod("x/srv2", "10.1.0.2", {"app": "srv2"}, node=N1),
                        pod("x/c0", "10.2.0.1", roles, node="node-2"), pod("x/c1", "10.2.0.2", roles, node="node-2"),
                        pod("x/c2", "10.2.0.3", {"r9": "y"}, node="node-2")]
    before = build(*parts, *(_role_policy(i, "srv") for i in range(9)), _role_policy(9, "srv2"))
    after = build(*parts[:4], pod("x/c1", "10.2.0.2", {**roles, "r9": "y"}, node="node-2"), parts[5],
                  *(_role_policy(i, "srv") for i in range(9)), _role_policy(9, "srv2"))
    with flows_of_at_most(2):
        compiled = compile_node_incremental(before, assign_ports(before, N1))
        changed = ClusterState.build(after.namespaces, after.pods, before.policies)
        context = assign_ports(changed, N1)
        full = compile_node(changed, context)
        assert set(compile_node_incremental(changed, context, compiled).flows) == set(full)
    assert all(len(found) == 1 for found in _conjunction_priorities(full).values())
    assert len({p for found in _conjunction_priorities(full).values() for p in found}) > 1
