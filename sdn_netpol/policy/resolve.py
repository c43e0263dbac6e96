"""Rules resolved into concrete sets: which local pods, which peer addresses, which ports.

The flow compiler consumes this. Each `Grant` is one conjunction: traffic between any of
`targets` (the pods the policy applies to) and any address in `peers`, on any of `ports`,
is allowed in `direction`. Named ports are resolved through the *destination* pod's
containerPorts, so a rule whose pods resolve a name differently yields several grants:
for ingress the targets are split, for egress the peer pods are.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Iterable
from dataclasses import dataclass
from functools import lru_cache

from netaddr import IPNetwork, IPSet

from sdn_netpol.model.objects import Direction, IPBlock, NetworkPolicy, Pod, PodKey, PolicyPort, Protocol, Rule
from sdn_netpol.policy.state import ClusterState


@dataclass(frozen=True, order=True)
class PortRange:
    protocol: Protocol
    lo: int
    hi: int


ALL_PORTS: tuple[PortRange, ...] = ()


@dataclass(frozen=True)
class Peers:
    """Peer addresses; `any` = every address (an empty from/to)."""

    any: bool = False
    cidrs: tuple[IPNetwork, ...] = ()

    @property
    def empty(self) -> bool:
        return not self.any and not self.cidrs


@dataclass(frozen=True)
class Grant:
    targets: frozenset[PodKey]
    peers: Peers
    ports: tuple[PortRange, ...]  # ALL_PORTS (empty) = any protocol, any port


@dataclass(frozen=True)
class ResolvedRule:
    policy: str
    direction: Direction
    index: int
    grants: tuple[Grant, ...]


@dataclass(frozen=True)
class ResolvedPolicy:
    ref: str
    applied_to: frozenset[PodKey]
    isolates: frozenset[Direction]
    rules: tuple[ResolvedRule, ...]


def resolve_all(state: ClusterState) -> tuple[ResolvedPolicy, ...]:
    return tuple(resolve_policy(state, p) for p in state.policies)


def resolve_policy(state: ClusterState, policy: NetworkPolicy) -> ResolvedPolicy:
    applied_to = state.index.applied_to(policy)
    rules: list[ResolvedRule] = []
    for direction in sorted(policy.policy_types):
        for index, rule in enumerate(policy.rules(direction)):
            grants = _rule_grants(state, policy, direction, rule, applied_to)
            rules.append(ResolvedRule(policy.ref, direction, index, grants))
    return ResolvedPolicy(policy.ref, applied_to, policy.policy_types, tuple(rules))


def _rule_grants(
    state: ClusterState, policy: NetworkPolicy, direction: Direction, rule: Rule, targets: frozenset[PodKey]
) -> tuple[Grant, ...]:
    if not targets:
        return ()
    peer_pods = _peer_pods(state, policy, rule)
    numeric = tuple(sorted({r for pp in rule.ports if not isinstance(pp.port, str) for r in _numeric(pp)}))
    named = [pp for pp in rule.ports if isinstance(pp.port, str)]
    grants: list[Grant] = []
    if not rule.ports or numeric:
        peers = _peers(state, rule, peer_pods)
        if not peers.empty:
            grants.append(Grant(targets, peers, numeric))
    if named:
        grants.extend(_named_grants(state, rule, direction, targets, peer_pods, named))
    return tuple(grants)


def _numeric(pp: PolicyPort) -> tuple[PortRange, ...]:
    if pp.port is None:
        return (PortRange(pp.protocol, 0, 65535),)  # the whole protocol, no port match
    assert isinstance(pp.port, int)
    return (PortRange(pp.protocol, pp.port, pp.end_port or pp.port),)


def _peer_pods(state: ClusterState, policy: NetworkPolicy, rule: Rule) -> frozenset[PodKey] | None:
    """Pods named by the rule's selector peers; None = all (an empty from/to)."""
    if not rule.peers:
        return None
    found: set[PodKey] = set()
    for peer in rule.peers:
        found |= state.index.peer_pods(policy.namespace, peer)
    return frozenset(found)


def _peers(state: ClusterState, rule: Rule, peer_pods: frozenset[PodKey] | None) -> Peers:
    if peer_pods is None:
        return Peers(any=True)
    cidrs = list(pod_networks(state, peer_pods))
    for peer in rule.peers:
        if peer.ip_block is not None:
            cidrs.extend(block_networks(peer.ip_block))
    return Peers(cidrs=tuple(sorted(set(cidrs))))


def pod_networks(state: ClusterState, keys: Iterable[PodKey]) -> Iterable[IPNetwork]:
    pods = state.pods_by_key
    for key in keys:
        for ip in pods[key].ips:
            yield _host_network(str(ip))


@lru_cache(maxsize=65536)
def _host_network(ip: str) -> IPNetwork:
    return IPNetwork(ip)


@lru_cache(maxsize=8192)
def block_networks(block: IPBlock) -> tuple[IPNetwork, ...]:
    """cidr minus every except, as the fewest CIDRs (a set difference, never a drop flow)."""
    remaining = IPSet([block.cidr]) - IPSet(block.excepts)
    return tuple(remaining.iter_cidrs())


def _named_grants(
    state: ClusterState,
    rule: Rule,
    direction: Direction,
    targets: frozenset[PodKey],
    peer_pods: frozenset[PodKey] | None,
    named: list[PolicyPort],
) -> list[Grant]:
    pods = state.pods_by_key
    if direction == "Ingress":
        peers = _peers(state, rule, peer_pods)
        if peers.empty:
            return []
        groups = _group_by_resolution((pods[k] for k in targets), named)
        return [Grant(frozenset(keys), peers, ports) for ports, keys in groups]
    addresses = _egress_destinations(state, rule, peer_pods)
    groups = _group_by_resolution((pods[k] for k in addresses), named)
    return [
        Grant(targets, Peers(cidrs=tuple(sorted({n for k in keys for n in addresses[k]}))), ports)
        for ports, keys in groups
        if any(addresses[k] for k in keys)
    ]


def _egress_destinations(
    state: ClusterState, rule: Rule, peer_pods: frozenset[PodKey] | None
) -> dict[PodKey, set[IPNetwork]]:
    """Destination pods of an egress rule with the addresses by which the rule reaches them.

    A named port means something only on a pod, so an ipBlock peer reaches through a named
    port exactly the in-scope pods whose address lies in the block.
    """
    if peer_pods is None:
        return {k: set(pod_networks(state, [k])) for k in _all_in_scope(state)}
    result = {k: set(pod_networks(state, [k])) for k in peer_pods}
    blocks = [peer.ip_block for peer in rule.peers if peer.ip_block is not None]
    if blocks:
        for pod in state.pods:
            if not pod.in_policy_scope:
                continue
            inside = {_host_network(str(ip)) for ip in pod.ips if any(b.contains(ip) for b in blocks)}
            if inside:
                result.setdefault(pod.key, set()).update(inside)
    return result


def _all_in_scope(state: ClusterState) -> frozenset[PodKey]:
    return frozenset(p.key for p in state.pods if p.in_policy_scope)


def _group_by_resolution(
    pods: Iterable[Pod], named: list[PolicyPort]
) -> list[tuple[tuple[PortRange, ...], list[PodKey]]]:
    """Pods that resolve the named ports to the same numbers share one grant."""
    groups: dict[tuple[PortRange, ...], list[PodKey]] = defaultdict(list)
    for pod in pods:
        ranges = set()
        for pp in named:
            assert isinstance(pp.port, str)
            for number in pod.resolve_named_port(pp.port, pp.protocol):
                ranges.add(PortRange(pp.protocol, number, number))
        if ranges:
            groups[tuple(sorted(ranges))].append(pod.key)
    return sorted((ports, sorted(keys)) for ports, keys in groups.items())
