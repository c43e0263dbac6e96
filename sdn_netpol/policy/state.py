"""ClusterState: one immutable snapshot of everything a verdict or a compile depends on.

A snapshot also carries the caches derived from it (the label index, the rule resolver),
built on first use and seeded from the previous snapshot's; both live in modules below this
one (policy/index.py, policy/resolver.py), so that nothing here imports what uses it.
"""

from __future__ import annotations

import weakref
from bisect import bisect_left
from collections.abc import Callable, Container, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from functools import cached_property
from operator import attrgetter
from typing import Any, TypeVar

from sdn_netpol.model.cluster_objects import ClusterPolicy
from sdn_netpol.model.objects import Namespace, NetworkPolicy, Pod, PodKey
from sdn_netpol.model.parse import ParseResult
from sdn_netpol.policy.index import SelectorIndex
from sdn_netpol.policy.resolver import Resolver

_KEY = attrgetter("key")
_NAMESPACE = attrgetter("namespace")
_POLICY_KEY = attrgetter("namespace", "name")
_T = TypeVar("_T")


def _patched(items: tuple[_T, ...], changes: Mapping[Any, _T | None], key: Callable[[_T], Any]) -> list[_T]:
    """A sorted tuple with some entries replaced, inserted or removed (None), still sorted."""
    result = list(items)
    for wanted, item in changes.items():
        at = bisect_left(result, wanted, key=key)
        present = at < len(result) and key(result[at]) == wanted
        if item is None:
            if present:
                del result[at]
        elif present:
            result[at] = item
        else:
            result.insert(at, item)
    return result


def _holds(items: Sequence[_T], namespace: str, key: Callable[[_T], Any]) -> bool:
    """Does a list sorted by (namespace, name) hold anything of `namespace`?"""
    at = bisect_left(items, (namespace, ""), key=key)
    return at < len(items) and key(items[at])[0] == namespace


def in_order(policies: Iterable[ClusterPolicy]) -> tuple[ClusterPolicy, ...]:
    """Cluster policies in the order they are evaluated (tier, priority, name, kind)."""
    return tuple(sorted(policies, key=lambda p: p.order))


@dataclass(frozen=True, eq=False)
class ClusterState:
    """Sorted tuples so that equal inputs give equal outputs whatever their order.

    Namespaces referenced by a pod or policy but never declared are implied, with only the
    `kubernetes.io/metadata.name` label, as they would exist on a real cluster.
    `cluster_policies` (admin and baseline tiers) are in evaluation order (`ClusterPolicy.order`).
    """

    namespaces: tuple[Namespace, ...] = ()
    pods: tuple[Pod, ...] = ()
    policies: tuple[NetworkPolicy, ...] = ()
    generation: int = field(default=0, compare=False)
    cluster_policies: tuple[ClusterPolicy, ...] = ()

    @staticmethod
    def build(
        namespaces: Iterable[Namespace] = (),
        pods: Iterable[Pod] = (),
        policies: Iterable[NetworkPolicy] = (),
        generation: int = 0,
        cluster_policies: Iterable[ClusterPolicy] = (),
    ) -> ClusterState:
        pod_list = sorted(pods, key=_KEY)  # C-level key: the controller builds one per change
        policy_list = sorted(policies, key=lambda p: (p.namespace, p.name))
        declared = {ns.name: Namespace.implied(ns.name, ns.labels, ns.audit) for ns in namespaces}
        for name in set(map(_NAMESPACE, pod_list)) | {p.namespace for p in policy_list}:
            declared.setdefault(name, Namespace.implied(name))
        ns_list = sorted(declared.values(), key=lambda n: n.name)
        return ClusterState(tuple(ns_list), tuple(pod_list), tuple(policy_list), generation,
                            in_order(cluster_policies))

    def with_changes(
        self,
        pods: Mapping[PodKey, Pod | None],
        policies: Mapping[tuple[str, str], NetworkPolicy | None],
        declared: Container[str],
        generation: int = 0,
        cluster_policies: Iterable[ClusterPolicy] | None = None,
    ) -> ClusterState:
        """`build` of this snapshot's objects with `pods` and `policies` replaced (None: gone),
        in time proportional to the change: a controller takes one snapshot per event, and
        sorting 10k pods for each was a third of its latency. `declared`: which of the touched
        namespaces exist as Namespace objects (they stay without pods; implied ones do not).
        `cluster_policies`: every cluster policy, when they changed (None: this snapshot's)."""
        pod_list = _patched(self.pods, pods, _KEY)
        # the same tuple when no policy changed: the incremental resolution then pairs the
        # policies with their previous resolutions by position (policy/incremental.py)
        policy_list: Sequence[NetworkPolicy] = _patched(self.policies, policies, _POLICY_KEY) if policies \
            else self.policies
        namespaces = {ns.name: ns for ns in self.namespaces}
        for name in {key[0] for key in pods} | {key[0] for key in policies}:
            if _holds(pod_list, name, _KEY) or _holds(policy_list, name, _POLICY_KEY):
                namespaces.setdefault(name, Namespace.implied(name))
            elif name not in declared:
                namespaces.pop(name, None)
        ns_list = tuple(namespaces[name] for name in sorted(namespaces))
        admin = self.cluster_policies if cluster_policies is None else in_order(cluster_policies)
        patched = ClusterState(ns_list, tuple(pod_list), tuple(policy_list), generation, admin)
        # Where it came from (weakly: snapshots must not chain), so that the pods that differ
        # and the key map need not be found by walking every pod again.
        patched.__dict__["_patch"] = (weakref.ref(self), frozenset(pods))
        return patched

    def patched_from(self, base: ClusterState) -> frozenset[PodKey] | None:
        """The only pod keys that can differ from `base`, if this state was patched from it."""
        patch = self.__dict__.get("_patch")
        return patch[1] if patch is not None and patch[0]() is base else None

    @staticmethod
    def from_parse(result: ParseResult, generation: int = 0) -> ClusterState:
        return ClusterState.build(result.namespaces, result.pods, result.policies, generation,
                                  result.cluster_policies)

    @cached_property
    def index(self) -> SelectorIndex:
        return SelectorIndex(self.namespaces, self.pods, self.policies)

    @cached_property
    def resolver(self) -> Resolver:
        """Rule-resolution caches (addresses, peer sets, named ports) of this snapshot."""
        return Resolver(self)

    def inherit_caches(self, previous: ClusterState, changed: Sequence[tuple[Pod | None, Pod | None]]) -> None:
        """Seed this snapshot's index and resolver from `previous`, whose pods differ from these
        by `changed` (old, new versions), instead of building them over every pod again.

        Only caches are written, never content: what they answer is what building them from
        scratch answers (tests/test_incremental.py). Nothing is seeded across a namespace change.
        """
        if "index" in self.__dict__ or self.namespaces != previous.namespaces:
            return
        self.__dict__["index"] = previous.index.derive(changed, self.policies)
        if "resolver" in previous.__dict__:
            keys = {pod.key for pair in changed for pod in pair if pod is not None}
            self.__dict__["resolver"] = previous.resolver.derive(self, keys)

    @cached_property
    def pods_by_key(self) -> dict[PodKey, Pod]:
        patch: tuple[weakref.ref[ClusterState], frozenset[PodKey]] | None = self.__dict__.get("_patch")
        base = patch[0]() if patch is not None else None
        if patch is None or base is None or "pods_by_key" not in base.__dict__:
            return dict(zip(map(_KEY, self.pods), self.pods, strict=True))
        found = dict(base.pods_by_key)
        for key in patch[1]:
            at = bisect_left(self.pods, key, key=_KEY)
            if at < len(self.pods) and self.pods[at].key == key:
                found[key] = self.pods[at]
            else:
                found.pop(key, None)
        return found

    def pod(self, namespace: str, name: str) -> Pod | None:
        return self.pods_by_key.get(PodKey(namespace, name))

    def namespace(self, name: str) -> Namespace:
        return self.index.namespace(name)

    @cached_property
    def audited_namespaces(self) -> dict[str, Namespace]:
        """Namespaces with an `sdn-netpol.io/audit` mode: what the audit flows are made of."""
        return {ns.name: ns for ns in self.namespaces if ns.audit is not None}

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, ClusterState):
            return NotImplemented
        return (self.namespaces, self.pods, self.policies, self.cluster_policies) == (
            other.namespaces,
            other.pods,
            other.policies,
            other.cluster_policies,
        )

    def __hash__(self) -> int:
        return hash((self.namespaces, self.pods, self.policies, self.cluster_policies))
