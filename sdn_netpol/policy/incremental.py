"""Resolution that reuses the previous snapshot's results for the policies a change cannot touch.

A controller sees one pod or one policy change at a time; re-resolving a thousand policies
for it is what dominated realisation latency. A policy's resolved rules depend on pods only
through its own pod selector, its selector peers, and — for egress named ports — every pod
its peers can reach; a changed pod that none of these can see leaves the policy's result
unchanged. Anything broader (namespaces relabelled, many pods at once) resolves in full.
`tests/test_incremental.py` proves the result equal to a full resolution.
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from functools import cached_property
from typing import TypeVar

from sdn_netpol.model.labels import Labels
from sdn_netpol.model.objects import NetworkPolicy, Peer, Pod
from sdn_netpol.policy.resolve import ResolvedPolicy, resolve_all, resolve_policy
from sdn_netpol.policy.state import ClusterState

# More changed pods than this share (and than the floor): resolving everything is as cheap.
FULL_RESOLUTION_SHARE, FULL_RESOLUTION_FLOOR = 0.05, 16


PodChange = tuple[Pod | None, Pod | None]  # (before, after); None = absent
_T = TypeVar("_T")


@dataclass(frozen=True, eq=False)
class Resolution:
    """A snapshot and every policy of it resolved, in the snapshot's policy order.

    `changed`: the pods that differ from the previous resolution's snapshot (None: resolved
    from scratch, so nothing is known about what changed)."""

    state: ClusterState
    policies: tuple[ResolvedPolicy, ...]
    changed: tuple[PodChange, ...] | None = None

    @cached_property
    def scope(self) -> _Scope:
        return _Scope.of(self.state.policies)

    def warm(self) -> None:
        """Build now what the next pod change would otherwise build first (the policies'
        scope: ~60 ms at 5,000 policies the first time), e.g. while a controller is idle."""
        _ = self.scope


def resolve(state: ClusterState, previous: Resolution | None = None) -> Resolution:
    if previous is None or previous.state.namespaces != state.namespaces:
        return Resolution(state, resolve_all(state))
    changed = changed_pods(previous.state, state)
    if len(changed) > max(FULL_RESOLUTION_SHARE * len(state.pods), FULL_RESOLUTION_FLOOR):
        return Resolution(state, resolve_all(state))
    state.inherit_caches(previous.state, changed)
    changes = [_PodChange(was, now) for was, now in changed]
    labels = {ns.name: ns.labels for ns in state.namespaces}
    if state.policies is previous.state.policies:
        return _resolve_same_policies(state, previous, changes, labels, tuple(changed))
    before = {(p.namespace, p.name): (p, r) for p, r in zip(previous.state.policies, previous.policies, strict=True)}
    resolved = []
    for policy in state.policies:
        old = before.get((policy.namespace, policy.name))
        if (old is not None and (old[0] is policy or old[0] == policy)
                and not any(change.affects(policy, labels) for change in changes)):
            resolved.append(old[1])
        else:
            resolved.append(resolve_policy(state, policy))
    return Resolution(state, tuple(resolved), tuple(changed))


def _resolve_same_policies(state: ClusterState, previous: Resolution, changes: list[_PodChange],
                           labels: dict[str, Labels], changed: tuple[PodChange, ...]) -> Resolution:
    """No policy changed (the very same tuple): the previous resolutions pair with the policies
    by position, and only a policy of a changed pod's namespace or one not confined to its own
    can be affected (_PodChange.affects says no to every other): asking all 10,000 policies
    cost a 100k-pod relabel ~20 ms."""
    resolved = list(previous.policies)
    scope = previous.scope
    for at in sorted(scope.candidates(changes)):
        policy = state.policies[at]
        if any(change.affects(policy, labels) for change in changes):
            resolved[at] = resolve_policy(state, policy)
    result = Resolution(state, tuple(resolved), changed)
    result.__dict__["scope"] = scope  # the same policies: the same positions
    return result


@dataclass(frozen=True)
class _Scope:
    """Positions of a policy tuple: by namespace; of the policies whose peers may be pods of
    other namespaces (not `confined_to_namespace`); and by the pod label keys they read for
    a pod of their own namespace (`NetworkPolicy.pod_label_keys`: by namespace and key) and
    of another one (by key)."""

    by_namespace: dict[str, tuple[int, ...]]
    unconfined: tuple[int, ...]
    own_keys: dict[tuple[str, str], tuple[int, ...]]
    other_keys: dict[str, tuple[int, ...]]

    @staticmethod
    def of(policies: tuple[NetworkPolicy, ...]) -> _Scope:
        by_namespace: dict[str, list[int]] = {}
        own_keys: dict[tuple[str, str], list[int]] = {}
        other_keys: dict[str, list[int]] = {}
        for at, policy in enumerate(policies):
            by_namespace.setdefault(policy.namespace, []).append(at)
            for key in policy.pod_label_keys(True):
                own_keys.setdefault((policy.namespace, key), []).append(at)
            for key in policy.pod_label_keys(False):
                other_keys.setdefault(key, []).append(at)
        unconfined = tuple(at for at, policy in enumerate(policies) if not policy.confined_to_namespace)
        return _Scope(_tuples(by_namespace), unconfined, _tuples(own_keys), _tuples(other_keys))

    def candidates(self, changes: list[_PodChange]) -> set[int]:
        """The policies `_PodChange.affects` can say yes to for these changes (a superset).
        Relabels alone: only a policy reading a changed label key, for a pod of its own
        namespace or, through a namespaceSelector peer, of another (a policy of another
        namespace reads none there unless it is unconfined). Anything else: every policy of
        a changed pod's namespace, and every unconfined one."""
        found: set[int] = set()
        if all(change.relabel for change in changes):
            for change in changes:
                namespace = next(iter(change.namespaces))
                for key in change.label_keys:
                    found.update(self.own_keys.get((namespace, key), ()))
                    found.update(self.other_keys.get(key, ()))
            return found
        found.update(self.unconfined)
        for namespace in {ns for change in changes for ns in change.namespaces}:
            found.update(self.by_namespace.get(namespace, ()))
        return found


def _tuples(lists: dict[_T, list[int]]) -> dict[_T, tuple[int, ...]]:
    return {key: tuple(found) for key, found in lists.items()}


def changed_pods(old: ClusterState, new: ClusterState) -> list[PodChange]:
    """Every pod that was added, removed or changed: a merge of the two sorted pod lists.
    Snapshots share unchanged pod objects, so identity settles almost every pod; a snapshot
    patched from `old` names the only pods that can differ."""
    keys = new.patched_from(old)
    if keys is not None:
        pairs = [(old.pods_by_key.get(key), new.pods_by_key.get(key)) for key in sorted(keys)]
        return [(a, b) for a, b in pairs if a is not b and a != b]
    before, after = old.pods, new.pods
    changed: list[PodChange] = []
    i = j = 0
    while i < len(before) and j < len(after):
        was, now = before[i], after[j]
        if was is now:
            i, j = i + 1, j + 1
        elif was.key == now.key:
            if was != now:
                changed.append((was, now))
            i, j = i + 1, j + 1
        elif was.key < now.key:
            changed.append((was, None))
            i += 1
        else:
            changed.append((None, now))
            j += 1
    changed += [(was, None) for was in before[i:]]
    changed += [(None, now) for now in after[j:]]
    return changed


class _PodChange:
    """One changed pod, with what is known of it once rather than once per policy."""

    __slots__ = ("label_keys", "namespaces", "now", "relabel", "was")

    def __init__(self, was: Pod | None, now: Pod | None) -> None:
        self.was, self.now = was, now
        self.relabel = was is not None and now is not None and replace(was, labels=now.labels) == now
        self.namespaces = {pod.namespace for pod in (was, now) if pod is not None}
        self.label_keys: frozenset[str] = frozenset()  # for a relabel: the keys whose value changed
        if self.relabel:
            assert was is not None and now is not None
            self.label_keys = frozenset(k for k in {*was.labels, *now.labels} if was.labels.get(k) != now.labels.get(k))

    def affects(self, policy: NetworkPolicy, namespace_labels: dict[str, Labels]) -> bool:
        """Could this change alter what `policy` resolves to?

        A relabel alone changes only which selectors pick the pod: if the policy's target and
        peer selectors pick it before exactly as after, its addresses and ports count the same.
        """
        if policy.confined_to_namespace and policy.namespace not in self.namespaces:
            return False
        if self.relabel:
            assert self.was is not None and self.now is not None
            if policy.pod_label_keys(policy.namespace == self.now.namespace).isdisjoint(self.label_keys):
                return False  # no selector of it that can see the pod reads a label that changed
            return _selection(policy, self.was, namespace_labels) != _selection(policy, self.now, namespace_labels)
        return any(pod is not None and touches(policy, pod, namespace_labels) for pod in (self.was, self.now))


def _selection(policy: NetworkPolicy, pod: Pod, namespace_labels: dict[str, Labels]) -> tuple[bool, ...]:
    """Which of the policy's selectors (target, then each selector peer) pick this pod."""
    if not pod.in_policy_scope:
        return ()
    picked = [pod.namespace == policy.namespace and policy.pod_selector.matches(pod.labels)]
    for direction in sorted(policy.policy_types):
        for rule in policy.rules(direction):
            picked.extend(_selects(policy, peer, pod, namespace_labels) for peer in rule.peers
                          if peer.ip_block is None)
    return tuple(picked)


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
