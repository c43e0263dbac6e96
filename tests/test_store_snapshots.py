"""A snapshot's state patched from an earlier one equals the state built from its objects."""

from __future__ import annotations

from hypothesis import given, settings
from hypothesis import strategies as st

from sdn_netpol.controller.nodes import place_pods
from sdn_netpol.controller.store import Snapshot, Store
from sdn_netpol.model.labels import Labels
from sdn_netpol.model.objects import Namespace, NetworkPolicy, Pod
from sdn_netpol.model.parse import object_key
from sdn_netpol.policy.state import ClusterState
from tests.strategies import NAMESPACES, cluster_states, pods, policies

KINDS = ("Namespace", "Pod", "NetworkPolicy", "Node")
NAMES = (*NAMESPACES, "ns-extra")  # one namespace no Namespace object declares


def built(snap: Snapshot) -> ClusterState:
    values = list(snap.objects.values())
    return ClusterState.build([o for o in values if isinstance(o, Namespace)],
                              place_pods([o for o in values if isinstance(o, Pod)], snap.nodes),
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
