"""A snapshot's state patched from an earlier one equals the state built from its objects."""

from __future__ import annotations

from dataclasses import replace

import pytest
from hypothesis import assume, given, settings
from hypothesis import strategies as st
from netaddr import IPAddress, IPNetwork

from sdn_netpol.compiler.compile import compile_node, compile_node_incremental
from sdn_netpol.compiler.diff import diff
from sdn_netpol.compiler.flowset import DuplicateFlowError, FlowSet
from sdn_netpol.compiler.topology import NodeContext, assign_ports
from sdn_netpol.controller.nodes import NodeInfo, node_addresses, place_pods
from sdn_netpol.controller.store import Snapshot, Store, node_key
from sdn_netpol.model.labels import Labels
from sdn_netpol.model.objects import Namespace, NetworkPolicy, Pod
from sdn_netpol.model.parse import object_key
from sdn_netpol.policy.state import ClusterState
from tests.strategies import NAMESPACES, cluster_states, labels_st, pods, policies

KINDS = ("Namespace", "Pod", "NetworkPolicy", "Node")
NAMES = (*NAMESPACES, "ns-extra")  # one namespace no Namespace object declares
NODE = "node-1"


def built(snap: Snapshot) -> ClusterState:
    values = list(snap.objects.values())
    nodes = tuple(sorted(o for o in values if isinstance(o, NodeInfo)))
    assert snap.nodes == nodes  # a snapshot may carry the last one's Node objects only while none changed
    return ClusterState.build([o for o in values if isinstance(o, Namespace)],
                              place_pods([o for o in values if isinstance(o, Pod)], nodes),
                              [o for o in values if isinstance(o, NetworkPolicy)], snap.generation)


@settings(max_examples=150, deadline=None)
@given(st.data(), cluster_states())
def test_patched_states_equal_built_states(data: st.DataObject, state: ClusterState) -> None:
    store = Store()
    objects = {object_key(o): o for o in (*state.namespaces, *state.pods, *state.policies)}
    store.replace(KINDS, objects, {}, "1", synced=True)
    for step in range(data.draw(st.integers(1, 8))):
        action = data.draw(st.sampled_from(("pod", "remove-pod", "policy", "remove-policy", "namespace", "look")))
        current = store.snapshot().objects
        if action == "pod":
            pod = data.draw(pods(NAMES, data.draw(st.integers(0, 12))))
            store.put(object_key(pod), pod)
        elif action == "policy":
            policy = data.draw(policies(NAMES, f"pol-{data.draw(st.integers(0, 6))}"))
            store.put(object_key(policy), policy)
        elif action in ("remove-pod", "remove-policy"):
            kind = "Pod" if action == "remove-pod" else "NetworkPolicy"
            keys = sorted(k for k in current if k[0] == kind)
            if keys:
                store.delete(data.draw(st.sampled_from(keys)))
        elif action == "namespace":
            namespace = Namespace.implied(data.draw(st.sampled_from(NAMES)), Labels({"step": str(step)}))
            store.put(object_key(namespace), namespace)
        snap = store.snapshot()
        if data.draw(st.booleans()):  # the realizer does not look at every snapshot
            assert snap.state == built(snap)
    snap = store.snapshot()
    assert snap.state == built(snap)


def test_a_pod_change_patches_the_previous_state() -> None:
    store = Store()
    pod = Pod("ns-a", "p", Labels({"app": "x"}))
    store.replace(KINDS, {object_key(pod): pod}, {}, "1", synced=True)
    first = store.snapshot().state
    moved = Pod("ns-a", "q", Labels({"app": "y"}))
    store.put(object_key(moved), moved)
    snap = store.snapshot()
    assert snap.base is not None and snap.base[0] is first
    assert snap.state == built(snap) and snap.state.pods[0] is first.pods[0]


def _full_compile(state: ClusterState, node: NodeContext) -> FlowSet | None:
    try:
        return compile_node(ClusterState.build(state.namespaces, state.pods, state.policies), node)
    except DuplicateFlowError:  # two pods with one address on this node
        return None


def _mutate(data: st.DataObject, store: Store) -> None:
    """One thing a source does: put or delete a pod, policy, namespace or node."""
    current = store.snapshot().objects
    action = data.draw(st.sampled_from(("pod", "relabel", "nodeless", "remove-pod", "policy", "remove-policy",
                                        "namespace", "node", "same-node")))
    pod_keys = sorted(k for k in current if k[0] == "Pod")
    if action == "pod":
        pod = data.draw(pods(NAMES, data.draw(st.integers(0, 12))))
        store.put(object_key(pod), pod)
    elif action in ("relabel", "nodeless") and pod_keys:
        key = data.draw(st.sampled_from(pod_keys))
        old = current[key]
        assert isinstance(old, Pod)
        new = replace(old, labels=data.draw(labels_st)) if action == "relabel" else replace(old, node_name=None)
        store.put(key, new)
    elif action == "policy":
        policy = data.draw(policies(NAMES, f"pol-{data.draw(st.integers(0, 6))}"))
        store.put(object_key(policy), policy)
    elif action in ("remove-pod", "remove-policy"):
        keys = pod_keys if action == "remove-pod" else sorted(k for k in current if k[0] == "NetworkPolicy")
        if keys:
            store.delete(data.draw(st.sampled_from(keys)))
    elif action == "namespace":
        name = data.draw(st.sampled_from(NAMES))
        store.put(object_key(Namespace.implied(name)), Namespace.implied(name, Labels({"team": data.draw(
            st.sampled_from("xy"))})))
    else:  # a node (again, unchanged, for "same-node": a status update)
        name = "node-2" if action == "same-node" else data.draw(st.sampled_from(("node-1", "node-2")))
        cidr = "10.0.0.8/29" if action == "same-node" else data.draw(st.sampled_from(("10.0.0.0/29", "10.0.0.0/28")))
        store.put(node_key(name), NodeInfo(name, IPAddress("192.168.0.2" if name == "node-2" else "192.168.0.1"),
                                           (IPNetwork(cidr),)))


@settings(max_examples=120, deadline=None)
@given(st.data(), cluster_states())
def test_the_controllers_path_compiles_what_a_full_compile_gives(data: st.DataObject, state: ClusterState) -> None:
    """Store → patched snapshots (some never looked at) → incremental resolution and compile,
    against a full build and a full compile at every snapshot the realizer takes."""
    store = Store()
    store.replace(KINDS, {object_key(o): o for o in (*state.namespaces, *state.pods, *state.policies)}, {}, "1",
                  synced=True)
    snap = store.snapshot()
    node = assign_ports(snap.state, NODE)
    assume(_full_compile(snap.state, node) is not None)
    compiled = compile_node_incremental(snap.state, node)
    for _ in range(data.draw(st.integers(1, 6))):
        for _ in range(data.draw(st.integers(1, 3))):
            _mutate(data, store)
            if data.draw(st.booleans()):
                store.snapshot()  # a snapshot nobody computes
        snap = store.snapshot()
        if data.draw(st.booleans()):
            continue  # the realizer was busy: it takes a later one
        assert snap.state == built(snap)
        moved = {str(b.pod): b.ofport + 50 for b in assign_ports(snap.state, NODE).bindings[:1]}
        node = assign_ports(snap.state, NODE, moved)
        if snap.nodes:  # as the controller's node_context: Node addresses and pod CIDRs
            node = replace(node, node_addresses=node_addresses(snap.nodes),
                           node_cidrs=tuple(sorted((n.name, net) for n in snap.nodes for net in n.pod_cidrs)))
        expected = _full_compile(snap.state, node)
        if expected is None:
            with pytest.raises(DuplicateFlowError):
                compile_node_incremental(snap.state, node, compiled)
            return
        previous, compiled = compiled, compile_node_incremental(snap.state, node, compiled)
        assert compiled.flows == expected
        assert compiled.change == diff(previous.flows, compiled.flows)


def test_an_unchanged_node_put_keeps_snapshots_patched() -> None:
    store = Store()
    pod = Pod("ns-a", "p", Labels({"app": "x"}))
    node = NodeInfo("node-1", IPAddress("192.168.0.1"), (IPNetwork("10.0.0.0/24"),))
    store.replace(KINDS, {object_key(pod): pod, node_key("node-1"): node}, {}, "1", synced=True)
    assert store.snapshot().state.pods == (pod,)
    store.put(node_key("node-1"), NodeInfo("node-1", IPAddress("192.168.0.1"), (IPNetwork("10.0.0.0/24"),)))
    snap = store.snapshot()
    assert snap.base is not None and not snap.base[1]
