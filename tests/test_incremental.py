"""Incremental resolution gives exactly what resolving everything again gives."""

from __future__ import annotations

from dataclasses import replace

from hypothesis import given, settings

from sdn_netpol.model.labels import Labels
from sdn_netpol.model.parse import Document, parse_documents
from sdn_netpol.policy.incremental import resolve
from sdn_netpol.policy.resolve import resolve_all
from sdn_netpol.policy.state import ClusterState
from tests.changes import change_chains, one_change
from tests.controller_fixtures import pod_manifest, policy_manifest
from tests.strategies import cluster_states
from tests.synthetic_cluster import relabel, synthetic_state


@settings(max_examples=600, deadline=None)
@given(one_change())
def test_incremental_resolution_equals_a_full_one(change: tuple[ClusterState, ClusterState]) -> None:
    before, after = change
    assert resolve(after, resolve(before)).policies == resolve_all(after)


@settings(max_examples=200, deadline=None)
@given(change_chains())
def test_a_chain_of_incremental_resolutions_stays_equal_to_full_ones(states: list[ClusterState]) -> None:
    """Each snapshot's caches are derived from the previous one's, which were derived too."""
    resolution = resolve(states[0])
    for state in states[1:]:
        resolution = resolve(state, resolution)
        assert resolution.policies == resolve_all(ClusterState.build(state.namespaces, state.pods, state.policies))


def test_a_relabel_no_selector_sees_re_resolves_nothing() -> None:
    state = synthetic_state(400, 40)
    first = resolve(state)
    pods = list(state.pods)
    pods[3] = replace(pods[3], labels=Labels({**pods[3].labels, "unrelated": "x"}))
    again = resolve(ClusterState.build(state.namespaces, pods, state.policies), first)
    assert all(a is b for a, b in zip(again.policies, first.policies, strict=True))


def test_a_relabel_re_resolves_the_policies_whose_selection_changes() -> None:
    state = synthetic_state(400, 40)
    first = resolve(state)
    changed = relabel(state, 0, "a1")
    again = resolve(changed, first)
    redone = {new.ref for old, new in zip(first.policies, again.policies, strict=True) if old is not new}
    expected = {p.ref for p, old, new in zip(state.policies, first.policies, resolve_all(changed), strict=True)
                if old != new}
    assert expected and expected <= redone
    assert len(redone) < len(state.policies) // 4


@settings(max_examples=100, deadline=None)
@given(cluster_states())
def test_an_unchanged_snapshot_reuses_every_result(state: ClusterState) -> None:
    first = resolve(state)
    again = resolve(ClusterState.build(state.namespaces, state.pods, state.policies), first)
    assert all(a is b for a, b in zip(again.policies, first.policies, strict=True))


def _cross_namespace_cluster() -> ClusterState:
    """Policy a/p admits app=x pods of every namespace; b/q is app=y (not admitted)."""
    policy = policy_manifest("a", "p", "web", None)
    policy["spec"]["ingress"] = [{"from": [{"namespaceSelector": {}, "podSelector": {"matchLabels": {"app": "x"}}}]}]
    return ClusterState.from_parse(parse_documents([
        Document("cluster", pod_manifest("a", "w", "10.0.0.2", app="web")),
        Document("cluster", pod_manifest("b", "q", "10.0.0.3", app="y")),
        Document("cluster", policy)]))


def test_a_pod_relabelled_into_another_namespaces_peer_selector_is_resolved_again() -> None:
    """The controller's path (no policy changed: the same policy tuple): the relabelled pod is
    in namespace b, the policy that now admits it in a."""
    state = _cross_namespace_cluster()
    first = resolve(state)
    pod = state.pod("b", "q")
    assert pod is not None
    relabelled = state.with_changes({pod.key: replace(pod, labels=Labels({"app": "x"}))}, {}, ())
    assert relabelled.policies is state.policies
    again = resolve(relabelled, first)
    assert again.policies == resolve_all(relabelled) != first.policies
