"""An incremental compile gives exactly the flows of a full compile, and its change is
exactly what takes the previous flows to the new ones."""

from __future__ import annotations

from dataclasses import replace

import pytest
from hypothesis import assume, given, settings
from hypothesis import strategies as st

from sdn_netpol.compiler.compile import compile_node, compile_node_incremental
from sdn_netpol.compiler.diff import apply, diff
from sdn_netpol.compiler.flowset import DuplicateFlowError
from sdn_netpol.compiler.pipeline import conjunction_ids
from sdn_netpol.compiler.policy_flows import PolicyTables, place
from sdn_netpol.compiler.topology import NodeContext, assign_ports
from sdn_netpol.model.labels import Labels
from sdn_netpol.model.objects import Namespace
from sdn_netpol.policy.resolve import resolve_all
from sdn_netpol.policy.state import ClusterState
from tests.band_fixtures import flows_of_at_most
from tests.changes import change_chains
from tests.synthetic_cluster import make_pod, relabel, synthetic_state

NODE = "node-1"


@st.composite
def contexts(draw: st.DrawFn, state: ClusterState) -> NodeContext:
    """The node's view: its pods' ports, some of them renumbered (a pod re-attached)."""
    node = assign_ports(state, NODE)
    moved = draw(st.lists(st.integers(0, max(len(node.bindings) - 1, 0)), max_size=2))
    ports = {str(b.pod): b.ofport + (100 if i in moved else 0) for i, b in enumerate(node.bindings)}
    return assign_ports(state, NODE, ports)


def _compiles(state: ClusterState, node: NodeContext) -> bool:
    try:
        compile_node(_fresh(state), node)
    except DuplicateFlowError:
        return False
    return True


def _fresh(state: ClusterState) -> ClusterState:
    return ClusterState.build(state.namespaces, state.pods, state.policies)


@settings(max_examples=300, deadline=None)
@given(st.data(), change_chains())
def test_incremental_compiles_equal_full_compiles(data: st.DataObject, states: list[ClusterState]) -> None:
    _check_chain(data, states)


@settings(max_examples=150, deadline=None)
@given(st.data(), change_chains())
def test_incremental_compiles_equal_full_compiles_with_busy_matches_spread_over_bands(
        data: st.DataObject, states: list[ClusterState]) -> None:
    """The same with at most two conjunctions per clause flow: matches cross band thresholds,
    and conjunctions join and leave busy matches, at nearly every change."""
    with flows_of_at_most(2):
        _check_chain(data, states)


def _check_chain(data: st.DataObject, states: list[ClusterState]) -> None:
    node = data.draw(contexts(states[0]))
    assume(_compiles(states[0], node))
    compiled = compile_node_incremental(states[0], node)
    for state in states[1:]:
        node = data.draw(contexts(state))
        if not _compiles(state, node):  # two pods with one address on this node: both refuse
            with pytest.raises(DuplicateFlowError):
                compile_node_incremental(state, node, compiled)
            return
        previous, compiled = compiled, compile_node_incremental(state, node, compiled)
        assert compiled.flows == compile_node(_fresh(state), node)
        assert compiled.change == diff(previous.flows, compiled.flows)
        assert apply(previous.flows, compiled.change) == compiled.flows


def test_a_relabel_changes_only_the_flows_of_the_policies_it_affects() -> None:
    state = synthetic_state(1000, 100)
    node = assign_ports(state, "node0")
    first = compile_node_incremental(state, node)
    index = next(i for i, p in enumerate(state.pods) if p.node_name == "node0")
    changed = relabel(state, index, "a1")
    again = compile_node_incremental(changed, assign_ports(changed, "node0"), first)
    assert again.change is not None and 0 < len(again.change) < 20
    assert again.flows == compile_node(_fresh(changed), assign_ports(changed, "node0"))


def test_an_unrelated_label_changes_no_flow() -> None:
    state = synthetic_state(400, 40)
    node = assign_ports(state, "node0")
    first = compile_node_incremental(state, node)
    pods = list(state.pods)
    pods[5] = replace(pods[5], labels=Labels({**pods[5].labels, "unrelated": "x"}))
    again = compile_node_incremental(ClusterState.build(state.namespaces, pods, state.policies), node, first)
    assert again.change is not None and not again.change
    assert again.flows == first.flows


def test_a_new_pod_elsewhere_adds_its_route_and_peer_flows() -> None:
    state = synthetic_state(400, 40)
    node = assign_ports(state, "node0")
    first = compile_node_incremental(state, node)
    pod = next(p for p in (make_pod(i) for i in range(400, 500)) if p.node_name != "node0")
    grown = ClusterState.build(state.namespaces, (*state.pods, pod), state.policies)
    again = compile_node_incremental(grown, node, first)
    assert again.change is not None and again.change.adds
    assert again.flows == compile_node(_fresh(grown), node)


def test_a_namespace_relabel_compiles_in_full_with_the_same_result() -> None:
    state = synthetic_state(400, 40)
    node = assign_ports(state, "node0")
    first = compile_node_incremental(state, node)
    namespaces = [Namespace(ns.name, Labels({**ns.labels, "team": "t9"})) if ns.name == "ns-001" else ns
                  for ns in state.namespaces]
    changed = ClusterState.build(namespaces, state.pods, state.policies)
    again = compile_node_incremental(changed, node, first)
    assert again.resolution.changed is None  # resolved from scratch
    assert again.flows == compile_node(_fresh(changed), node)
    assert again.change == diff(first.flows, again.flows)


def test_a_conjunction_id_collision_makes_the_tables_rebuild() -> None:
    """Probed ids depend on every key, so an update must not guess them."""
    state = synthetic_state(400, 40)
    ports = {b.pod: b.ofport for b in assign_ports(state, "node0").bindings}
    placements = {p.ref: place(p, ports) for p in resolve_all(state)}
    # a policy with a conjunction no other policy shares: its return brings a new id
    ref = next(ref for ref, p in placements.items() if p.conjs and not any(
        c.shared == p.conjs[0].shared for other, q in placements.items() if other != ref for c in q.conjs))
    without = {k: v for k, v in placements.items() if k != ref}
    tables = PolicyTables.build(without)
    assert not tables.probed and tables.update({ref: placements[ref]}) is not None
    # another key already holds the id the returning policy's first conjunction wants
    shared = placements[ref].conjs[0].shared
    wanted = conjunction_ids([shared])[shared]
    taken = PolicyTables(tables.placements, tables.entries, {**tables.ids, "other": wanted}, tables.rendered, False,
                         {**tables.uses, "other": 1}, tables.busy, tables.spread)
    assert taken.update({ref: placements[ref]}) is None
    probed = PolicyTables(tables.placements, tables.entries, tables.ids, tables.rendered, True, tables.uses,
                          tables.busy, tables.spread)
    assert probed.update({ref: placements[ref]}) is None
    assert probed.update({}) is not None  # no key changes: the ids stay valid


def test_shared_clause_flows_follow_pods_and_policies_of_a_namespace_many_policies_admit() -> None:
    """ns-000 is the monitoring namespace every namespace-wide policy admits: its pods'
    addresses carry one shared clause flow with many conjunction() actions and merged cookies."""
    state = synthetic_state(1000, 100)
    node = assign_ports(state, "node0")
    compiled = compile_node_incremental(state, node)
    monitor = next(p for p in (make_pod(i) for i in range(1000, 1400)) if p.namespace == "ns-000")
    namespace_wide = next(p for p in state.policies if not p.pod_selector.match_labels)
    steps = [
        state.with_changes({monitor.key: monitor}, {}, ()),
        state.with_changes({monitor.key: monitor}, {(namespace_wide.namespace, namespace_wide.name): None}, ()),
        state.with_changes({}, {(namespace_wide.namespace, namespace_wide.name): None}, ()),
        state,
    ]
    for step in steps:
        previous, compiled = compiled, compile_node_incremental(step, node, compiled)
        assert compiled.flows == compile_node(_fresh(step), node)
        assert compiled.change == diff(previous.flows, compiled.flows) and compiled.change
