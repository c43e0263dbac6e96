"""Hypothesis strategies for cluster changes: one change to a snapshot, and chains of them
(what a controller sees), for the incremental resolution and compile tests."""

from __future__ import annotations

import itertools
from dataclasses import replace

from hypothesis import strategies as st

from sdn_netpol.model.labels import Labels
from sdn_netpol.model.objects import Pod
from sdn_netpol.policy.state import ClusterState
from tests.strategies import cluster_states, labels_st, pods, policies


@st.composite
def one_change(draw: st.DrawFn, start: ClusterState | None = None) -> tuple[ClusterState, ClusterState]:
    state = start if start is not None else draw(cluster_states())
    names = [n.name for n in state.namespaces]
    pod_list = list(state.pods)
    policy_list = list(state.policies)
    kind = draw(st.sampled_from(("relabel", "add", "remove", "replace", "policy", "unchanged", "relabel-keep")))
    if kind == "relabel" and pod_list:
        i = draw(st.integers(0, len(pod_list) - 1))
        pod_list[i] = replace(pod_list[i], labels=draw(labels_st))
    elif kind == "relabel-keep" and pod_list:  # a label no selector is likely to look at
        i = draw(st.integers(0, len(pod_list) - 1))
        pod_list[i] = replace(pod_list[i], labels=Labels({**pod_list[i].labels, "unrelated": "x"}))
    elif kind == "add":  # a name no pod has (one key is one pod in Kubernetes; a removal shrank the list)
        used = {p.name for p in pod_list}
        index = next(i for i in itertools.count(len(pod_list) + 20) if f"pod-{i}" not in used)
        pod_list.append(draw(pods(names, index)))
    elif kind == "remove" and pod_list:
        pod_list.pop(draw(st.integers(0, len(pod_list) - 1)))
    elif kind == "replace" and pod_list:
        i = draw(st.integers(0, len(pod_list) - 1))
        fresh: Pod = draw(pods(names, i))
        pod_list[i] = replace(fresh, namespace=pod_list[i].namespace, name=pod_list[i].name)
    elif kind == "policy":  # a name no policy has: two policies with one key cannot exist either
        taken = {p.name for p in policy_list}
        name = next(f"added-{i}" for i in itertools.count() if f"added-{i}" not in taken)
        policy_list.append(draw(policies(names, name)))
        if len(policy_list) > 1 and draw(st.booleans()):
            policy_list.pop(0)
    after = ClusterState.build(state.namespaces, pod_list, policy_list)
    if after.policies == state.policies and draw(st.booleans()):
        # as a controller's patched snapshot: no policy changed, so the very same tuple
        # (the incremental resolution then pairs policies by position)
        after = replace(after, policies=state.policies)
    return state, after


@st.composite
def change_chains(draw: st.DrawFn) -> list[ClusterState]:
    states = [draw(cluster_states())]
    for _ in range(draw(st.integers(2, 5))):
        states.append(draw(one_change(states[-1]))[1])
    return states
