"""Admin and Baseline rules resolved into grants, for the compiler's tier tables.

A cluster policy's subject and pod peers are NetworkPolicy peers with a namespaceSelector
(which mean the same from anywhere), and each `networks` CIDR is an ipBlock without except;
so the rules resolve through the same grants as NetworkPolicy rules (policy/resolve.py):
subject pods × peer addresses × port ranges, named ports split by what they mean on the
destination. What a grant *does* is the rule's action, in the rule's place of the tier's
order (`ResolvedAdminRule.rank`), which the compiler turns into an OpenFlow priority.
Agrees with tiers.py's first-match semantics: tests/test_admin_compile.py, and on real OVS.
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import lru_cache

from sdn_netpol.model.cluster_objects import Action, AdminPeer, AdminRule, ClusterPolicy, PodSet, Tier
from sdn_netpol.model.objects import DIRECTIONS, Direction, IPBlock, Peer, PodKey, Rule
from sdn_netpol.policy.resolve import Grant, rule_grants
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


def resolve_cluster_policies(state: ClusterState) -> tuple[ResolvedAdminRule, ...]:
    """Every rule of every cluster policy, per (tier, direction) in evaluation order."""
    found: list[ResolvedAdminRule] = []
    for tier in ("Admin", "Baseline"):
        for direction in DIRECTIONS:
            found.extend(_resolve_table(state, tier, direction))
    return tuple(found)


def _resolve_table(state: ClusterState, tier: Tier, direction: Direction) -> list[ResolvedAdminRule]:
    found: list[ResolvedAdminRule] = []
    place: dict[int, int] = {}  # per policy priority: how many rules came before
    for policy in state.cluster_policies:
        rules = policy.rules(direction)
        if policy.tier != tier or not rules:
            continue
        subject = subject_pods(state, policy)
        for index, rule in enumerate(rules):
            position = place.get(policy.priority, 0)
            place[policy.priority] = position + 1
            grants = rule_grants(state.resolver, "", direction, as_rule(rule), subject)
            found.append(ResolvedAdminRule(policy.ref, tier, direction, index, rule.action,
                                           (policy.priority, position), grants))
    return found


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
