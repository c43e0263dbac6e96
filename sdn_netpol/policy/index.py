"""Label indexes: selectors are answered by set intersections, not by scanning every pod.

Only pods inside NetworkPolicy's scope are indexed (running, with an IP or an unknown IP,
not on the host network), so everything resolved here is automatically limited to them.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Iterable

from sdn_netpol.model.labels import LabelSelector, Requirement
from sdn_netpol.model.objects import NAMESPACE_NAME_LABEL, Namespace, NetworkPolicy, Peer, Pod, PodKey

_EMPTY: frozenset[PodKey] = frozenset()


class _LabelIndex:
    """key → value → members, plus key → members, over one universe of members."""

    def __init__(self) -> None:
        self.universe: set[object] = set()
        self.by_pair: dict[str, dict[str, set[object]]] = defaultdict(lambda: defaultdict(set))
        self.by_key: dict[str, set[object]] = defaultdict(set)

    def add(self, member: object, labels: Iterable[tuple[str, str]]) -> None:
        self.universe.add(member)
        for key, value in labels:
            self.by_pair[key][value].add(member)
            self.by_key[key].add(member)

    def remove(self, member: object, labels: Iterable[tuple[str, str]]) -> None:
        self.universe.discard(member)
        for key, value in labels:
            self.by_pair[key][value].discard(member)
            self.by_key[key].discard(member)

    def copy(self) -> _LabelIndex:
        twin = _LabelIndex()
        twin.universe = set(self.universe)
        for key, values in self.by_pair.items():
            twin.by_pair[key] = defaultdict(set, {value: set(members) for value, members in values.items()})
        for key, members in self.by_key.items():
            twin.by_key[key] = set(members)
        return twin

    def select(self, selector: LabelSelector) -> set[object]:
        result = set(self.universe)
        for key, value in selector.match_labels.items():
            result &= self.by_pair.get(key, {}).get(value, set())
        for req in selector.match_expressions:
            result = self._apply(result, req)
        return result

    def _apply(self, current: set[object], req: Requirement) -> set[object]:
        if req.operator in ("In", "NotIn"):
            values = self.by_pair.get(req.key, {})
            having: set[object] = set().union(*(values.get(v, set()) for v in req.values))
            return current & having if req.operator == "In" else current - having
        keyed = self.by_key.get(req.key, set())
        return current & keyed if req.operator == "Exists" else current - keyed


class SelectorIndex:
    """Answers "which pods does this selector / peer / policy select" with memoisation."""

    def __init__(
        self,
        namespaces: Iterable[Namespace],
        pods: Iterable[Pod],
        policies: Iterable[NetworkPolicy],
    ) -> None:
        self._policy_source: object = policies  # what _policies_by_ns was built from
        pods, policies = list(pods), list(policies)
        # Namespaces as the API server has them: every namespace a pod or policy lives in
        # exists, and carries kubernetes.io/metadata.name (even in a hand-built state).
        self._namespaces = {ns.name: _with_name_label(ns) for ns in namespaces}
        for name in {p.namespace for p in pods} | {p.namespace for p in policies}:
            self._namespaces.setdefault(name, Namespace.implied(name))
        self._ns_index = _LabelIndex()
        for ns in self._namespaces.values():
            self._ns_index.add(ns.name, ns.labels.items())
        self._pod_index: dict[str, _LabelIndex] = defaultdict(_LabelIndex)
        for pod in pods:
            if pod.in_policy_scope:
                self._pod_index[pod.namespace].add(pod.key, pod.labels.items())
        self._policies_by_ns: dict[str, list[NetworkPolicy]] = defaultdict(list)
        for policy in policies:
            self._policies_by_ns[policy.namespace].append(policy)
        self._pod_cache: dict[tuple[str, LabelSelector], frozenset[PodKey]] = {}
        self._ns_cache: dict[LabelSelector, frozenset[str]] = {}
        self._peer_cache: dict[tuple[str, Peer], frozenset[PodKey]] = {}

    def derive(self, pods: Iterable[tuple[Pod | None, Pod | None]], policies: Iterable[NetworkPolicy]) -> SelectorIndex:
        """The index of a snapshot with the same namespaces whose pods differ from this one's by
        `pods` (old, new version; None = absent). Namespaces without a changed pod share their
        label index and cached answers with this one (nothing here is mutated once built)."""
        source, policies = policies, list(policies) if not isinstance(policies, tuple) else policies
        limit = 4 * len(policies) + 256  # answers for selectors of policies long gone: start afresh
        twin = object.__new__(SelectorIndex)
        twin._namespaces, twin._ns_index = self._namespaces, self._ns_index
        twin._ns_cache = dict(self._ns_cache) if len(self._ns_cache) <= limit else {}
        twin._pod_index = defaultdict(_LabelIndex, self._pod_index)
        touched: set[str] = set()
        for old, new in pods:
            for pod, add in ((old, False), (new, True)):
                if pod is None or not pod.in_policy_scope:
                    continue
                if pod.namespace not in touched:
                    touched.add(pod.namespace)
                    found = self._pod_index.get(pod.namespace)
                    twin._pod_index[pod.namespace] = found.copy() if found is not None else _LabelIndex()
                index = twin._pod_index[pod.namespace]
                (index.add if add else index.remove)(pod.key, pod.labels.items())
        twin._policy_source = source
        if source is self._policy_source:  # the same tuple (no policy changed): 10,000 appends saved
            twin._policies_by_ns = self._policies_by_ns
        else:
            twin._policies_by_ns = defaultdict(list)
            for policy in policies:
                twin._policies_by_ns[policy.namespace].append(policy)
        twin._pod_cache = {k: v for k, v in self._pod_cache.items() if k[0] not in touched} \
            if len(self._pod_cache) <= limit else {}
        twin._peer_cache = {k: v for k, v in self._peer_cache.items() if not self._peer_sees(k, touched)} \
            if len(self._peer_cache) <= limit else {}
        return twin

    def _peer_sees(self, cache_key: tuple[str, Peer], namespaces: set[str]) -> bool:
        """Can a cached peer answer include pods of these namespaces?"""
        scope, peer = cache_key
        if peer.namespace_selector is None:
            return scope in namespaces
        return not namespaces.isdisjoint(self.namespaces(peer.namespace_selector))

    def namespace(self, name: str) -> Namespace:
        return self._namespaces.get(name) or Namespace.implied(name)

    def policies_in(self, namespace: str) -> list[NetworkPolicy]:
        return self._policies_by_ns.get(namespace, [])

    def pods(self, namespace: str, selector: LabelSelector) -> frozenset[PodKey]:
        key = (namespace, selector)
        found = self._pod_cache.get(key)
        if found is None:
            index = self._pod_index.get(namespace)
            found = frozenset(index.select(selector)) if index else _EMPTY  # type: ignore[arg-type]
            self._pod_cache[key] = found
        return found

    def namespaces(self, selector: LabelSelector) -> frozenset[str]:
        found = self._ns_cache.get(selector)
        if found is None:
            found = frozenset(self._ns_index.select(selector))  # type: ignore[arg-type]
            self._ns_cache[selector] = found
        return found

    def applied_to(self, policy: NetworkPolicy) -> frozenset[PodKey]:
        return self.pods(policy.namespace, policy.pod_selector)

    def peer_pods(self, policy_namespace: str, peer: Peer) -> frozenset[PodKey]:
        """Pods a selector peer names; ipBlock peers name no pod here."""
        if peer.ip_block is not None:
            return _EMPTY
        key = (peer_scope(policy_namespace, peer), peer)
        found = self._peer_cache.get(key)
        if found is None:
            found = self._select_peer(policy_namespace, peer)
            self._peer_cache[key] = found
        return found

    def _select_peer(self, policy_namespace: str, peer: Peer) -> frozenset[PodKey]:
        pod_selector = peer.pod_selector or LabelSelector()
        if peer.namespace_selector is None:
            return self.pods(policy_namespace, pod_selector)
        result: set[PodKey] = set()
        for ns in self.namespaces(peer.namespace_selector):
            result |= self.pods(ns, pod_selector)
        return frozenset(result)


def _with_name_label(ns: Namespace) -> Namespace:
    if ns.labels.get(NAMESPACE_NAME_LABEL) == ns.name:
        return ns
    return Namespace.implied(ns.name, ns.labels, ns.audit)


def peer_scope(policy_namespace: str, peer: Peer) -> str:
    """The part of a peer's meaning that comes from where its policy lives: a peer with a
    namespaceSelector means the same pods from any namespace (a cache key, "" = anywhere)."""
    return "" if peer.namespace_selector is not None else policy_namespace
