"""The per-snapshot caches of rule resolution: pod addresses, peer sets, named ports.

Speed: everything a rule needs that depends only on the snapshot — pod addresses (as ints
that sort in CIDR order, so peer sets are sorted and deduplicated as integers), the peer set of a
`from`/`to` list, the pods inside an ipBlock (binary search), named-port resolutions — is
computed once per ClusterState by `Resolver` and shared by every rule that asks again.

Why a module of its own: a ClusterState keeps its resolver (`state.resolver`, built on first
use and derived from the previous snapshot's by `inherit_caches`), as it keeps its label index
(policy/index.py), while policy/resolve.py turns rules into grants by asking both. So the
resolver sits below state.py and reads a snapshot through the `Snapshot` protocol instead of
importing ClusterState: the imports go one way only (resolve → state → resolver → index).
"""

from __future__ import annotations

from bisect import bisect_left, bisect_right
from collections import defaultdict
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from functools import cached_property, lru_cache
from typing import Protocol as StructuralType
from typing import TypeVar

from netaddr import IPNetwork, IPSet

from sdn_netpol.model.labels import LabelSelector
from sdn_netpol.model.objects import IPBlock, Peer, Pod, PodKey, PolicyPort, Protocol, Rule
from sdn_netpol.policy.index import SelectorIndex, peer_scope


@dataclass(frozen=True, order=True)
class PortRange:
    protocol: Protocol
    lo: int
    hi: int


ALL_PORTS: tuple[PortRange, ...] = ()


@dataclass(frozen=True)
class Peers:
    """Peer addresses; `any` = every address (an empty from/to). `source`: what selected
    them, as stable text (policy namespace where it matters, the peers' selectors and blocks;
    "" = unknown), not part of equality: the compiler shares one conjunction among the grants
    whose peers come from the same source and ports, and that key must not move when the
    selected addresses do (a pod joining a namespace would otherwise re-key every conjunction
    that admits the namespace)."""

    any: bool = False
    cidrs: tuple[IPNetwork, ...] = ()
    source: str = field(default="", compare=False)

    @property
    def empty(self) -> bool:
        return not self.any and not self.cidrs


class Snapshot(StructuralType):
    """What a resolver reads of a ClusterState (policy/state.py builds resolvers, so this
    module names the attributes it needs instead of importing the class)."""

    @property
    def index(self) -> SelectorIndex: ...

    @property
    def pods(self) -> Sequence[Pod]: ...

    @property
    def pods_by_key(self) -> Mapping[PodKey, Pod]: ...


MAX_CARRIED_RESOLUTIONS = 32
MAX_CARRIED_GROUPS = 16_384  # group_by_named_ports answers carried: beyond that, start afresh
_TargetsKey = tuple[tuple[PolicyPort, ...], frozenset[PodKey]]
_TargetGroups = list[tuple[tuple[PortRange, ...], frozenset[PodKey]]]
ANY_PEER = Peers(any=True)
NO_PEER = Peers()


class Resolver:
    """What resolution derives from one snapshot, computed once and shared by every rule.

    Only pods inside NetworkPolicy's scope have addresses here (the label index holds only
    them too). Pure caches: results are those of resolving every rule from scratch.
    Addresses are kept as `_net_key` ints (they sort as CIDRs sort, so a peer set is a
    sorted set of ints); `derive` builds the next snapshot's resolver from this one by
    patching the pods that changed, so a one-pod change does not pay for 10k pods again.
    """

    def __init__(self, state: Snapshot, addresses: dict[PodKey, tuple[int, ...]] | None = None,
                 resolutions: dict[tuple[PolicyPort, ...], dict[PodKey, tuple[PortRange, ...]]] | None = None,
                 target_groups: dict[_TargetsKey, _TargetGroups] | None = None) -> None:
        self._index = state.index
        self._pods = state.pods_by_key
        self._addresses: dict[PodKey, tuple[int, ...]] = (
            addresses if addresses is not None
            else {p.key: _host_keys(p) for p in state.pods if p.in_policy_scope})
        self._peers: dict[tuple[str, tuple[Peer, ...]], Peers] = {}
        self._peer_keys: dict[tuple[str, Peer], frozenset[int]] = {}
        self._block_keys: dict[IPBlock, tuple[int, ...]] = {}
        self._resolutions = resolutions if resolutions is not None else {}
        # group_by_named_ports' answers: they depend only on the targets' named ports, so they
        # carry over to the next snapshot for targets none of whose pods changed
        self._target_groups = target_groups if target_groups is not None else {}
        self._groups: dict[
            tuple[str, Peer | None, tuple[PolicyPort, ...]], list[tuple[tuple[PortRange, ...], frozenset[int]]]
        ] = {}

    def derive(self, state: Snapshot, changed: Iterable[PodKey]) -> Resolver:
        """The resolver of `state`, a snapshot that differs from this one's only in the pods
        `changed` (namespaces and the label index are the caller's to keep consistent).
        Addresses and named-port resolutions are patched; selector-dependent caches start empty.
        A map the change leaves as it was is shared, not copied (they are never written once
        built): a relabel keeps every pod's addresses, and copying 100k of them, and the
        named-port maps, cost a 100k-pod relabel ~10 ms."""
        pods = state.pods_by_key
        now = {key: _in_scope(pods.get(key)) for key in changed}
        addresses = _patched(self._addresses, {key: _host_keys(pod) if pod is not None else None
                                               for key, pod in now.items()})
        # named-port entry lists are few; many means policies came and went: start afresh
        carried = self._resolutions if len(self._resolutions) <= MAX_CARRIED_RESOLUTIONS else {}
        resolutions = {named: _patched(found, {key: (_named_ranges(pod, named) or None) if pod is not None else None
                                               for key, pod in now.items()})
                       for named, found in carried.items()}
        keys = set(now)
        target_groups = {k: v for k, v in self._target_groups.items() if k[1].isdisjoint(keys)} \
            if len(self._target_groups) <= MAX_CARRIED_GROUPS else {}
        return Resolver(state, addresses, resolutions, target_groups)

    # --- peer addresses ------------------------------------------------------------------

    def peers(self, namespace: str, peers: tuple[Peer, ...]) -> Peers:
        """The addresses of a `from`/`to` list: selected pods' addresses ∪ (ipBlock − except)."""
        if not peers:
            return ANY_PEER
        cache_key = (namespace, peers)
        found = self._peers.get(cache_key)
        if found is None:
            keys: set[int] = set()
            for peer in peers:
                if peer.ip_block is None:
                    keys |= self._selected_keys(namespace, peer)
            blocks = [block_networks(peer.ip_block) for peer in peers if peer.ip_block is not None]
            found = Peers(cidrs=_cidrs(keys, [n for nets in blocks for n in nets]),
                          source=peers_source(namespace, peers)) if keys or blocks else NO_PEER
            self._peers[cache_key] = found
        return found

    def _selected_keys(self, namespace: str, peer: Peer) -> frozenset[int]:
        cache_key = (peer_scope(namespace, peer), peer)
        found = self._peer_keys.get(cache_key)
        if found is None:
            addresses = self._addresses
            found = frozenset(k for pod in self._index.peer_pods(namespace, peer) for k in addresses[pod])
            self._peer_keys[cache_key] = found
        return found

    @cached_property
    def _sorted_keys(self) -> list[int]:
        """Every distinct pod address, in CIDR order (ipBlocks find theirs by binary search)."""
        return sorted({k for keys in self._addresses.values() for k in keys})

    def block_keys(self, block: IPBlock) -> tuple[int, ...]:
        """Pod addresses inside cidr and outside every except (binary search, no scan)."""
        found = self._block_keys.get(block)
        if found is None:
            inside = set(self._range(block.cidr))
            for ex in block.excepts:
                inside.difference_update(self._range(ex))
            found = tuple(sorted(inside))
            self._block_keys[block] = found
        return found

    def _range(self, net: IPNetwork) -> list[int]:
        keys = self._sorted_keys
        return keys[bisect_left(keys, _net_key(net.version, net.first, 0)):
                    bisect_right(keys, _net_key(net.version, net.last, 255))]

    @cached_property
    def _owners(self) -> dict[int, list[PodKey]]:
        """Address → the pods that have it (usually one)."""
        owners: dict[int, list[PodKey]] = defaultdict(list)
        for pod, keys in self._addresses.items():
            for key in keys:
                owners[key].append(pod)
        return owners

    # --- named ports ---------------------------------------------------------------------

    def resolutions(self, named: tuple[PolicyPort, ...]) -> dict[PodKey, tuple[PortRange, ...]]:
        """What the named entries mean on each in-scope pod (absent: nothing)."""
        found = self._resolutions.get(named)
        if found is None:
            found = {}
            for key in self._addresses:
                ranges = _named_ranges(self._pods[key], named)
                if ranges:
                    found[key] = ranges
            self._resolutions[named] = found
        return found

    def group_by_named_ports(
        self, keys: Iterable[PodKey], named: tuple[PolicyPort, ...]
    ) -> list[tuple[tuple[PortRange, ...], frozenset[PodKey]]]:
        """Pods that resolve the named entries to the same numbers share one grant;
        pods that resolve them to nothing get none. In the order of the numbers (each group
        has its own; sorting every group's pods as well cost a peer of 500 policies' add
        ~0.4 s at 50k pods). Kept across snapshots for targets that did not change: a peer of
        500 policies re-resolves them all, and grouping their targets again was most of that."""
        targets = keys if isinstance(keys, frozenset) else frozenset(keys)
        found = self._target_groups.get((named, targets))
        if found is not None:
            return found
        resolutions = self.resolutions(named)
        groups: dict[tuple[PortRange, ...], list[PodKey]] = defaultdict(list)
        for key in targets:
            ranges = resolutions.get(key)
            if ranges:
                groups[ranges].append(key)
        found = [(ports, frozenset(groups[ports])) for ports in sorted(groups)]
        self._target_groups[(named, targets)] = found
        return found

    def egress_named(
        self, namespace: str, rule: Rule, named: tuple[PolicyPort, ...]
    ) -> list[tuple[tuple[PortRange, ...], Peers]]:
        """Egress through named ports: destination pods grouped by what the names mean on them,
        each group with the addresses by which the rule reaches its pods.

        A name means something only on a pod, so an ipBlock peer reaches through a named port
        exactly the in-scope pods whose address lies in the block (by those addresses).
        """
        merged: dict[tuple[PortRange, ...], set[int]] = defaultdict(set)
        for peer in rule.peers or (None,):
            for ports, keys in self._named_groups(namespace, peer, named):
                merged[ports] |= keys
        source = f"named {[(p.protocol, p.port) for p in named]!r} {peers_source(namespace, rule.peers)}"
        return [(ports, Peers(cidrs=_cidrs(merged[ports], []), source=source))
                for ports in sorted(merged) if merged[ports]]

    def _named_groups(
        self, namespace: str, peer: Peer | None, named: tuple[PolicyPort, ...]
    ) -> list[tuple[tuple[PortRange, ...], frozenset[int]]]:
        """For one peer (None: every pod), the addresses it reaches, grouped by resolution."""
        scope = "" if peer is None else peer_scope(namespace, peer)
        cache_key = (scope, peer, named)
        found = self._groups.get(cache_key)
        if found is None:
            resolutions = self.resolutions(named)
            groups: dict[tuple[PortRange, ...], set[int]] = defaultdict(set)
            if peer is not None and peer.ip_block is not None:
                for address in self.block_keys(peer.ip_block):
                    for pod in self._owners[address]:
                        if pod in resolutions:
                            groups[resolutions[pod]].add(address)
            else:
                pods = self._addresses if peer is None else self._index.peer_pods(namespace, peer)
                for pod in pods:
                    if pod in resolutions:
                        groups[resolutions[pod]].update(self._addresses[pod])
            found = [(ports, frozenset(keys)) for ports, keys in groups.items()]
            self._groups[cache_key] = found
        return found


def _host_keys(pod: Pod) -> tuple[int, ...]:
    return tuple(sorted({_host_key(ip.version, int(ip)) for ip in pod.ips}))


def _named_ranges(pod: Pod, named: tuple[PolicyPort, ...]) -> tuple[PortRange, ...]:
    """What named port entries mean on one pod (empty: nothing)."""
    return tuple(sorted({
        PortRange(pp.protocol, number, number)
        for pp in named
        for number in pod.resolve_named_port(str(pp.port), pp.protocol)
    }))


def _cidrs(keys: Iterable[int], extra: list[IPNetwork]) -> tuple[IPNetwork, ...]:
    """Pod addresses (as keys) plus other networks, deduplicated, in CIDR sort order."""
    if not extra:
        return tuple(_network(k) for k in sorted(keys))
    merged: dict[int, IPNetwork | None] = dict.fromkeys(keys)
    for net in extra:
        merged.setdefault(_net_key(net.version, net.first, net.prefixlen), net)
    return tuple(net or _network(k) for k, net in sorted(merged.items(), key=lambda item: item[0]))


def _net_key(version: int, first: int, prefixlen: int) -> int:
    """One int that sorts CIDRs by family, first address, prefix length (ints are cheap to
    sort, hash and keep: no tuples for the garbage collector to walk)."""
    return (version << 140) | (first << 8) | prefixlen


def _host_key(version: int, address: int) -> int:
    return _net_key(version, address, 32 if version == 4 else 128)


@lru_cache(maxsize=1 << 17)
def _network(key: int) -> IPNetwork:
    """Shared across snapshots: building netaddr objects is most of a resolver's set-up."""
    version, first, prefixlen = key >> 140, (key >> 8) & ((1 << 132) - 1), key & 0xFF
    return IPNetwork((first, prefixlen), version)



@lru_cache(maxsize=8192)
def block_networks(block: IPBlock) -> tuple[IPNetwork, ...]:
    """cidr minus every except, as the fewest CIDRs (a set difference, never a drop flow)."""
    remaining = IPSet([block.cidr]) - IPSet(block.excepts)
    return tuple(remaining.iter_cidrs())


def peers_source(namespace: str, peers: Iterable[Peer | None]) -> str:
    """Stable text naming a from/to list's meaning: each peer's scope (the policy namespace,
    unless a namespaceSelector makes it anywhere) and its selectors or block, as the repr of
    sorted tuples of strings (never of sets: their order changes between processes)."""
    return repr(tuple(("", "*") if p is None else (peer_scope(namespace, p), _peer_text(p)) for p in peers))


def _peer_text(peer: Peer) -> tuple[object, ...]:
    if peer.ip_block is not None:
        return ("block", str(peer.ip_block.cidr), tuple(str(e) for e in peer.ip_block.excepts))
    return ("select", _selector_text(peer.namespace_selector), _selector_text(peer.pod_selector))


def _selector_text(selector: LabelSelector | None) -> tuple[object, ...] | None:
    if selector is None:
        return None
    return (tuple(selector.match_labels.items()),
            tuple(sorted((r.key, r.operator, tuple(sorted(r.values))) for r in selector.match_expressions)))


def _in_scope(pod: Pod | None) -> Pod | None:
    return pod if pod is not None and pod.in_policy_scope else None


_K = TypeVar("_K")
_V = TypeVar("_V")


def _patched(held: dict[_K, _V], changes: Mapping[_K, _V | None]) -> dict[_K, _V]:
    """`held` with `changes` applied (None: absent); `held` itself when they change nothing."""
    if all(held.get(key) == value for key, value in changes.items()):
        return held
    patched = dict(held)
    for key, value in changes.items():
        if value is None:
            patched.pop(key, None)
        else:
            patched[key] = value
    return patched
