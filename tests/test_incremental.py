"""Incremental resolution gives exactly what resolving everything again gives."""

from __future__ import annotations

from dataclasses import replace

from hypothesis import given, settings
from hypothesis import strategies as st

from sdn_netpol.model.objects import Pod
from sdn_netpol.policy.incremental import resolve
from sdn_netpol.policy.resolve import resolve_all
from sdn_netpol.policy.state import ClusterState
from tests.strategies import cluster_states, labels_st, pods, policies


@st.composite
def one_change(draw: st.DrawFn) -> tuple[ClusterState, ClusterState]:
    state = draw(cluster_states())
    names = [n.name for n in state.namespaces]
    pod_list = list(state.pods)
    policy_list = list(state.policies)
    kind = draw(st.sampled_from(("relabel", "add", "remove", "replace", "policy", "unchanged")))
    if kind == "relabel" and pod_list:
        i = draw(st.integers(0, len(pod_list) - 1))
        pod_list[i] = replace(pod_list[i], labels=draw(labels_st))
    elif kind == "add":
        pod_list.append(draw(pods(names, len(pod_list) + 20)))
    elif kind == "remove" and pod_list:
        pod_list.pop(draw(st.integers(0, len(pod_list) - 1)))
    elif kind == "replace" and pod_list:
        i = draw(st.integers(0, len(pod_list) - 1))
        fresh: Pod = draw(pods(names, i))
        pod_list[i] = replace(fresh, namespace=pod_list[i].namespace, name=pod_list[i].name)
    elif kind == "policy":
        policy_list.append(draw(policies(names, "added")))
        if len(policy_list) > 1 and draw(st.booleans()):
            policy_list.pop(0)
    return state, ClusterState.build(state.namespaces, pod_list, policy_list)


@settings(max_examples=600, deadline=None)
@given(one_change())
def test_incremental_resolution_equals_a_full_one(change: tuple[ClusterState, ClusterState]) -> None:
    before, after = change
    assert resolve(after, resolve(before)).policies == resolve_all(after)


@settings(max_examples=100, deadline=None)
@given(cluster_states())
def test_an_unchanged_snapshot_reuses_every_result(state: ClusterState) -> None:
    first = resolve(state)
    again = resolve(ClusterState.build(state.namespaces, state.pods, state.policies), first)
    assert all(a is b for a, b in zip(again.policies, first.policies, strict=True))
