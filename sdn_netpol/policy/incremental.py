"""Resolution that reuses the previous snapshot's results for the policies a change cannot touch.

A controller sees one pod or one policy change at a time; re-resolving a thousand policies
for it is what dominated realisation latency. A policy's resolved rules depend on pods only
through its own pod selector, its selector peers, and — for egress named ports — every pod
its peers can reach; a changed pod that none of these can see leaves the policy's result
unchanged. Anything broader (namespaces relabelled, many pods at once) resolves in full.
`tests/test_incremental.py` proves the result equal to a full resolution.
"""

from __future__ import annotations

from dataclasses import dataclass

from sdn_netpol.model.labels import Labels
from sdn_netpol.model.objects import NetworkPolicy, Peer, Pod
from sdn_netpol.policy.resolve import ResolvedPolicy, resolve_all, resolve_policy
from sdn_netpol.policy.state import ClusterState

FULL_RESOLUTION_SHARE = 0.05  # more changed pods than this: resolving everything is as cheap


@dataclass(frozen=True, eq=False)
class Resolution:
    """A snapshot and every policy of it resolved, in the snapshot's policy order."""

    state: ClusterState
    policies: tuple[ResolvedPolicy, ...]


def resolve(state: ClusterState, previous: Resolution | None = None) -> Resolution:
    if previous is None or previous.state.namespaces != state.namespaces:
        return Resolution(state, resolve_all(state))
    changed = changed_pods(previous.state, state)
    if len(changed) > FULL_RESOLUTION_SHARE * max(len(state.pods), 1):
        return Resolution(state, resolve_all(state))
    before = {(p.namespace, p.name): (p, r) for p, r in zip(previous.state.policies, previous.policies, strict=True)}
    labels = {ns.name: ns.labels for ns in state.namespaces}
    resolved = []
    for policy in state.policies:
        old = before.get((policy.namespace, policy.name))
        if old is not None and old[0] == policy and not any(touches(policy, pod, labels) for pod in changed):
            resolved.append(old[1])
        else:
            resolved.append(resolve_policy(state, policy))
    return Resolution(state, tuple(resolved))


def changed_pods(old: ClusterState, new: ClusterState) -> list[Pod]:
    """Both versions of every pod that was added, removed or changed."""
    before = old.pods_by_key
    after = new.pods_by_key
    changed = [pod for key, pod in after.items() if before.get(key) != pod]
    changed += [pod for key, pod in before.items() if after.get(key) != pod]
    return changed


def touches(policy: NetworkPolicy, pod: Pod, namespace_labels: dict[str, Labels]) -> bool:
    """Could this version of a pod change what `policy` resolves to?"""
    if not pod.in_policy_scope:
        return False  # outside NetworkPolicy: neither selected nor a peer
    if pod.namespace == policy.namespace and policy.pod_selector.matches(pod.labels):
        return True
    for direction in policy.policy_types:
        for rule in policy.rules(direction):
            named = direction == "Egress" and any(isinstance(pp.port, str) for pp in rule.ports)
            if not rule.peers:
                if named:
                    return True  # egress named ports resolve through every destination pod
                continue
            for peer in rule.peers:
                if peer.ip_block is not None:
                    if named and pod.ips:
                        return True  # a pod inside the block may resolve the name
                elif _selects(policy, peer, pod, namespace_labels):
                    return True
    return False


def _selects(policy: NetworkPolicy, peer: Peer, pod: Pod, namespace_labels: dict[str, Labels]) -> bool:
    if peer.namespace_selector is None:
        in_namespace = pod.namespace == policy.namespace
    else:
        in_namespace = peer.namespace_selector.matches(namespace_labels.get(pod.namespace, Labels()))
    return in_namespace and (peer.pod_selector is None or peer.pod_selector.matches(pod.labels))
