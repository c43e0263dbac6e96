"""Rules resolved into concrete sets: which local pods, which peer addresses, which ports.

The flow compiler consumes this. Each `Grant` is one conjunction: traffic between any of
`targets` (the pods the policy applies to) and any address in `peers`, on any of `ports`,
is allowed in `direction`. Named ports are resolved through the *destination* pod's
containerPorts, so a rule whose pods resolve a name differently yields several grants:
for ingress the targets are split, for egress the peer pods are.

Orders are deterministic: a rule's numeric grant comes first, then its named-port grants by
port ranges; peer CIDRs are sorted by family, first address, prefix length.

The per-snapshot caches every rule shares (addresses, peer sets, named ports) are the
snapshot's `Resolver` (policy/resolver.py).
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from functools import lru_cache

from netaddr import IPNetwork

from sdn_netpol.model.objects import Direction, NetworkPolicy, PodKey, PolicyPort, Rule
from sdn_netpol.policy.resolver import Peers, PortRange, Resolver
from sdn_netpol.policy.state import ClusterState


@dataclass(frozen=True)
class Grant:
    targets: frozenset[PodKey]
    peers: Peers
    ports: tuple[PortRange, ...]  # resolver.ALL_PORTS (empty) = any protocol, any port


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
    resolver = state.resolver
    applied_to = state.index.applied_to(policy)
    rules: list[ResolvedRule] = []
    for direction in sorted(policy.policy_types):
        for index, rule in enumerate(policy.rules(direction)):
            grants = rule_grants(resolver, policy.namespace, direction, rule, applied_to)
            rules.append(ResolvedRule(policy.ref, direction, index, grants))
    return ResolvedPolicy(policy.ref, applied_to, policy.policy_types, tuple(rules))


def rule_grants(
    resolver: Resolver, namespace: str, direction: Direction, rule: Rule, targets: frozenset[PodKey]
) -> tuple[Grant, ...]:
    """A rule's grants; `namespace` is its policy's (what a peer without namespaceSelector means)."""
    if not targets:
        return ()
    numeric = tuple(sorted({r for pp in rule.ports if not isinstance(pp.port, str) for r in _numeric(pp)}))
    named = tuple(pp for pp in rule.ports if isinstance(pp.port, str))
    grants: list[Grant] = []
    if not rule.ports or numeric:
        peers = resolver.peers(namespace, rule.peers)
        if not peers.empty:
            grants.append(Grant(targets, peers, numeric))
    if named and direction == "Ingress":
        peers = resolver.peers(namespace, rule.peers)
        if not peers.empty:
            groups = resolver.group_by_named_ports(targets, named)
            grants.extend(Grant(keys, peers, ports) for ports, keys in groups)
    elif named:
        reached = resolver.egress_named(namespace, rule, named)
        grants.extend(Grant(targets, peers, ports) for ports, peers in reached)
    return tuple(grants)


def _numeric(pp: PolicyPort) -> tuple[PortRange, ...]:
    if pp.port is None:
        return (PortRange(pp.protocol, 0, 65535),)  # the whole protocol, no port match
    assert isinstance(pp.port, int)
    return (PortRange(pp.protocol, pp.port, pp.end_port or pp.port),)


def pod_networks(state: ClusterState, keys: Iterable[PodKey]) -> Iterable[IPNetwork]:
    """Every address of the given pods, each as a host network (/32, /128)."""
    pods = state.pods_by_key
    for key in keys:
        for ip in pods[key].ips:
            yield _host_network(str(ip))


@lru_cache(maxsize=65536)
def _host_network(ip: str) -> IPNetwork:
    return IPNetwork(ip)

