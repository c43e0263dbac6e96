"""Admin and Baseline rules resolved into grants, for the compiler's tier tables.

A cluster policy's subject and pod peers are NetworkPolicy peers with a namespaceSelector
(which mean the same from anywhere), and each `networks` CIDR is an ipBlock without except;
so the rules resolve through the same grants as NetworkPolicy rules (policy/resolve.py):
subject pods × peer addresses × port ranges, named ports split by what they mean on the
destination. What a grant *does* is the rule's action, in the rule's place of the tier's
order (`ResolvedAdminRule.rank`), which the compiler turns into an OpenFlow priority.
Peer addresses are merged into the fewest CIDRs that hold exactly them (a `namespaces: {}`
peer is every pod's address: consecutive ones become one prefix), so the flow count follows
the address plan, not only the pod count; the set of addresses is unchanged.
Agrees with tiers.py's first-match semantics: tests/test_admin_compile.py, and on real OVS.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, replace
from functools import lru_cache

from netaddr import IPNetwork

from sdn_netpol.model.cluster_objects import Action, AdminPeer, AdminRule, ClusterPolicy, PodSet, Tier
from sdn_netpol.model.objects import DIRECTIONS, Direction, IPBlock, Peer, Pod, PodKey, Rule
from sdn_netpol.policy.matching import in_pod_set
from sdn_netpol.policy.resolve import Grant, rule_grants
from sdn_netpol.policy.resolver import Peers
from sdn_netpol.policy.state import ClusterState


@dataclass(frozen=True)
class ResolvedAdminRule:
    """One rule of one cluster policy. `rank`: (the policy's priority, its place among the
    rules of that priority in the tier and direction): lower ranks are consulted first."""

    policy: str
    tier: Tier
    direction: Direction
    index: int
    action: Action
    rank: tuple[int, int]
    grants: tuple[Grant, ...]


PolicyGrants = dict[tuple[Direction, int], tuple[Grant, ...]]  # a policy's grants, per rule


def resolve_cluster_policies(state: ClusterState,
                             grants: Mapping[str, PolicyGrants] | None = None) -> tuple[ResolvedAdminRule, ...]:
    """Every rule of every cluster policy, per (tier, direction) in evaluation order.
    `grants`: each policy's `policy_grants`, when the caller kept them (by `Kind/name`)."""
    if grants is None:
        grants = {p.ref: policy_grants(state, p) for p in state.cluster_policies}
    found: list[ResolvedAdminRule] = []
    for tier in ("Admin", "Baseline"):
        for direction in DIRECTIONS:
            found.extend(_resolve_table(state, grants, tier, direction))
    return tuple(found)


def policy_grants(state: ClusterState, policy: ClusterPolicy) -> PolicyGrants:
    """What each rule of one policy admits, denies or passes. Depends on pods only through
    the pods the policy `sees`; ranks (from the other policies) are not part of it."""
    subject = subject_pods(state, policy)
    return {(direction, index): tuple(_merged(g) for g in rule_grants(state.resolver, "", direction,
                                                                      as_rule(rule), subject))
            for direction in DIRECTIONS for index, rule in enumerate(policy.rules(direction))}


def _resolve_table(state: ClusterState, grants: Mapping[str, PolicyGrants], tier: Tier,
                   direction: Direction) -> list[ResolvedAdminRule]:
    found: list[ResolvedAdminRule] = []
    place: dict[int, int] = {}  # per policy priority: how many rules came before
    for policy in state.cluster_policies:
        rules = policy.rules(direction)
        if policy.tier != tier or not rules:
            continue
        for index, rule in enumerate(rules):
            position = place.get(policy.priority, 0)
            place[policy.priority] = position + 1
            found.append(ResolvedAdminRule(policy.ref, tier, direction, index, rule.action,
                                           (policy.priority, position), grants[policy.ref][(direction, index)]))
    return found


_MERGE_MEMO: dict[tuple[int, ...], tuple[tuple[IPNetwork, ...], tuple[IPNetwork, ...]]] = {}
_MERGE_MEMO_SIZE = 1024


def _merged(grant: Grant) -> Grant:
    cidrs = grant.peers.cidrs
    if len(cidrs) < 2:
        return grant
    # A cache, as the resolver's: its networks are shared objects across snapshots, so the
    # same peer set comes back as the same objects; keyed by their ids, which the entry keeps
    # alive (an id is never another object's while it is cached).
    key = tuple(map(id, cidrs))
    found = _MERGE_MEMO.get(key)
    if found is None:
        if len(_MERGE_MEMO) >= _MERGE_MEMO_SIZE:
            _MERGE_MEMO.clear()
        found = _MERGE_MEMO[key] = (cidrs, merge_cidrs(cidrs))
    merged = found[1]
    return grant if len(merged) == len(cidrs) else replace(grant, peers=Peers(cidrs=merged))


def merge_cidrs(cidrs: tuple[IPNetwork, ...]) -> tuple[IPNetwork, ...]:
    """The fewest CIDRs holding exactly the addresses of `cidrs` (sorted as the resolver sorts
    them: family, first address). netaddr's cidr_merge does the same but took 16 ms for 10k
    addresses; on plain ints this is a few, and an unmerged network is kept as it was."""
    out: list[IPNetwork] = []
    run: list[IPNetwork] = []
    last = version = -2
    for net, first, size in zip(cidrs, [n.value for n in cidrs], [_size(n) for n in cidrs], strict=True):
        if first <= last + 1 and net.version == version:
            run.append(net)
            last = max(last, first + size - 1)
            continue
        out.extend(_span(run, version, last) if len(run) > 1 else run)
        run, version, last = [net], net.version, first + size - 1
    out.extend(_span(run, version, last) if len(run) > 1 else run)
    return tuple(out)


def _size(net: IPNetwork) -> int:
    return 1 << ((32 if net.version == 4 else 128) - int(net.prefixlen))


def _span(run: list[IPNetwork], version: int, last: int) -> list[IPNetwork]:
    """One merged interval, from the first network of `run` to `last`, as CIDRs."""
    bits = 32 if version == 4 else 128
    lo, found = run[0].value, []
    while lo <= last:
        size = lo & -lo if lo else 1 << bits
        while size > last - lo + 1:
            size >>= 1
        found.append(IPNetwork((lo, bits - size.bit_length() + 1), version))
        lo += size
    return found


def sees(state: ClusterState, policy: ClusterPolicy, pod: Pod | None) -> bool:
    """Can this pod's presence, labels or addresses change the policy's grants (is it a
    subject or a pod peer of it)? If not, a change of it leaves the policy's flows alone."""
    if pod is None or not pod.in_policy_scope:
        return False
    if in_pod_set(state, policy.subject, pod):
        return True
    peers = (p.pod_set for rule in (*policy.ingress, *policy.egress) for p in rule.peers)
    return any(pod_set is not None and in_pod_set(state, pod_set, pod) for pod_set in peers)


def subject_pods(state: ClusterState, policy: ClusterPolicy) -> frozenset[PodKey]:
    return state.index.peer_pods("", as_peer(policy.subject))


@lru_cache(maxsize=4096)
def as_peer(pod_set: PodSet) -> Peer:
    """A pod set as the NetworkPolicy peer that selects the same pods (namespaceSelector set)."""
    return Peer(pod_selector=pod_set.pods, namespace_selector=pod_set.namespaces)


@lru_cache(maxsize=8192)
def as_rule(rule: AdminRule) -> Rule:
    """The NetworkPolicy rule with the same peers and ports (what the action applies to)."""
    return Rule(tuple(peer for admin_peer in rule.peers for peer in _peers(admin_peer)), rule.ports)


def _peers(peer: AdminPeer) -> tuple[Peer, ...]:
    if peer.pod_set is not None:
        return (as_peer(peer.pod_set),)
    return tuple(Peer(ip_block=IPBlock(net)) for net in peer.networks)
