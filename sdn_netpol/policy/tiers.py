"""The reference semantics of the Admin and Baseline tiers (network-policy-api), per side.

For one direction of one pod (the source's egress, the destination's ingress):

1. Admin tier: policies whose subject selects the pod, lower priority first (then name, then
   kind: `ClusterPolicy.order`), each policy's rules of that direction in order. The first rule
   whose peer and ports match decides: Allow (Accept) allows, Deny denies, Pass skips the rest
   of the Admin tier.
2. NetworkPolicy: if a NetworkPolicy isolates the pod in that direction, its rules decide.
3. Baseline tier, as the Admin tier (BaselineAdminNetworkPolicy `default` after every
   Baseline ClusterNetworkPolicy; a Pass there skips the rest of the tier).
4. Otherwise allowed.

verdict.py combines the two sides (both must allow) and keeps the NetworkPolicy part.
"""

from __future__ import annotations

from dataclasses import dataclass

from netaddr import IPAddress

from sdn_netpol.model.cluster_objects import Action, AdminPeer, AdminRule, ClusterPolicy, Tier
from sdn_netpol.model.objects import Direction, Pod, Protocol
from sdn_netpol.policy.matching import in_pod_set, port_matches
from sdn_netpol.policy.state import ClusterState

_PAST = {"Allow": "Allowed", "Deny": "Denied", "Pass": "Passed"}


@dataclass(frozen=True)
class TierMatch:
    """The admin or baseline rule that matched a connection on one side, with the peer and
    port entries that matched (port None: the rule has no ports, so every port)."""

    policy: str  # as kubectl names it: ClusterNetworkPolicy/NAME
    kind: str
    name: str
    tier: Tier
    priority: int | None  # None: BaselineAdminNetworkPolicy (it has none)
    direction: Direction
    rule_index: int
    rule_name: str
    action: Action
    peer: str
    port: str | None

    @property
    def final(self) -> bool:
        """Allow and Deny decide; Pass hands the connection to the next tier."""
        return self.action != "Pass"

    def describe(self) -> str:
        """`Denied by ClusterNetworkPolicy deny-to-monitoring (Admin, priority 10) egress rule 0 "block-all"`."""
        where = self.tier if self.priority is None else f"{self.tier}, priority {self.priority}"
        named = f' "{self.rule_name}"' if self.rule_name else ""
        return (f"{_PAST[self.action]} by {self.kind} {self.name} ({where}) "
                f"{self.direction.lower()} rule {self.rule_index}{named}")


@dataclass(frozen=True)
class SideContext:
    """One side of a connection as the tiers see it: `subject` is the pod whose direction
    `direction` is judged; the peer is the other end (a pod, an address, or both)."""

    state: ClusterState
    direction: Direction
    subject: Pod
    peer_pod: Pod | None
    peer_ip: IPAddress | None
    dst_pod: Pod | None  # named ports resolve on the destination
    protocol: Protocol
    port: int


def tier_matches(side: SideContext, isolated: bool) -> tuple[TierMatch | None, TierMatch | None]:
    """(the Admin tier's matching rule, the Baseline tier's). The Baseline tier is consulted
    only when the Admin tier did not decide and no NetworkPolicy isolates the pod (`isolated`)."""
    admin = first_match(side, "Admin")
    if (admin is not None and admin.final) or isolated:
        return admin, None
    return admin, first_match(side, "Baseline")


def first_match(side: SideContext, tier: Tier) -> TierMatch | None:
    if not side.subject.in_policy_scope:
        return None
    for policy in side.state.cluster_policies:
        rules = policy.rules(side.direction)
        if policy.tier != tier or not rules or not in_pod_set(side.state, policy.subject, side.subject):
            continue
        for index, rule in enumerate(rules):
            found = _rule_match(side, policy, index, rule)
            if found is not None:
                return found
    return None


def _rule_match(side: SideContext, policy: ClusterPolicy, index: int, rule: AdminRule) -> TierMatch | None:
    peer = next((p for p in rule.peers if _peer_matches(side, p)), None)
    if peer is None:
        return None
    port_text: str | None = None
    if rule.ports:
        entry = next((e for e in rule.ports if port_matches(e, side.protocol, side.port, side.dst_pod)), None)
        if entry is None:
            return None
        port_text = entry.describe()
    priority = None if policy.kind == "BaselineAdminNetworkPolicy" else policy.priority
    return TierMatch(policy.ref, policy.kind, policy.name, policy.tier, priority, side.direction, index,
                     rule.name, rule.action, peer.describe(), port_text)


def _peer_matches(side: SideContext, peer: AdminPeer) -> bool:
    if peer.pod_set is not None:
        return in_pod_set(side.state, peer.pod_set, side.peer_pod)
    return side.peer_ip is not None and peer.contains_ip(side.peer_ip)


def side_allowed(admin: TierMatch | None, isolated: bool, allowed_by_rule: bool, baseline: TierMatch | None) -> bool:
    """The tiers in order: a final Admin rule, else NetworkPolicy when it isolates, else a
    final Baseline rule, else allowed."""
    if admin is not None and admin.final:
        return admin.action == "Allow"
    if isolated:
        return allowed_by_rule
    if baseline is not None and baseline.final:
        return baseline.action == "Allow"
    return True


def deciding_tier(admin: TierMatch | None, isolated: bool, baseline: TierMatch | None) -> str | None:
    """Which tier decided a side: Admin, NetworkPolicy, Baseline, or None (default allow)."""
    if admin is not None and admin.final:
        return "Admin"
    if isolated:
        return "NetworkPolicy"
    if baseline is not None and baseline.final:
        return "Baseline"
    return None
