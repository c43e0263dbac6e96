"""Cluster-wide admin policy → the tier tables around the NetworkPolicy tables.

    EgressAdmin 38 → EgressRule 40 → EgressDefault 41 → EgressBaseline 42 → L3Forwarding 50
    IngressAdmin 58 → IngressRule 60 → IngressDefault 61 → IngressBaseline 62 → Commit 70

Each grant of a rule (policy/admin_resolve.py) is a conjunction as for NetworkPolicy — the
subject's local pods × the peer addresses × the port matches, so the cost stays additive —
but its conj_id flow does the rule's action: Allow goes past the NetworkPolicy and Baseline
tables (to L3Forwarding for egress, to Commit for ingress), Deny drops, Pass goes on to the
NetworkPolicy table (in the Baseline tier: on past it). First match wins because every rule
has its own OpenFlow priority, from its rank (the policy's priority, the rule's place among
the rules of that priority): priorities are banded by policy priority, so adding a policy
moves no other policy's flows, unless a priority holds more than TIER_BAND rules of one
table (then ranks are numbered densely, still in order). One rule's flows carry its own
cookie (`rule_cookie(Kind/name, direction, index)`), so `dump-flows cookie=` finds them.
Only packets no NetworkPolicy isolates miss table 41/61 and reach the Baseline table.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Iterable, Iterator, Mapping
from typing import Any

from sdn_netpol.compiler.flow import Action, Conjunction, Flow, GotoTable, Match
from sdn_netpol.compiler.pipeline import (
    TIER_BAND,
    TIER_BANDS,
    TIER_RULE_BASE,
    Table,
    conjunction_ids,
    rule_cookie,
)
from sdn_netpol.compiler.policy_flows import place_grant
from sdn_netpol.model.cluster_objects import Action as RuleAction
from sdn_netpol.model.cluster_objects import Tier
from sdn_netpol.model.objects import Direction, PodKey
from sdn_netpol.policy.admin_resolve import ResolvedAdminRule

TABLES: dict[tuple[Tier, Direction], Table] = {
    ("Admin", "Egress"): Table.EGRESS_ADMIN, ("Admin", "Ingress"): Table.INGRESS_ADMIN,
    ("Baseline", "Egress"): Table.EGRESS_BASELINE, ("Baseline", "Ingress"): Table.INGRESS_BASELINE,
}
_PAST_POLICY = {"Egress": Table.L3_FORWARDING, "Ingress": Table.COMMIT}  # an allowed packet goes on here
_NETWORK_POLICY = {"Egress": Table.EGRESS_RULE, "Ingress": Table.INGRESS_RULE}


class TierOverflow(ValueError):
    """More rules in one tier table than OpenFlow priorities can order."""


def rule_actions(tier: Tier, direction: Direction, action: RuleAction) -> tuple[Action, ...]:
    if action == "Deny":
        return ()
    if action == "Pass" and tier == "Admin":
        return (GotoTable(_NETWORK_POLICY[direction]),)
    return (GotoTable(_PAST_POLICY[direction]),)  # Allow, or a Pass out of the Baseline tier


def tier_priorities(ranks: list[tuple[int, int]]) -> list[int]:
    """OpenFlow priorities for one table's rules, given in evaluation order as (policy
    priority, place among that priority's rules): higher for earlier, never two alike."""
    if all(place < TIER_BAND and 0 <= priority < TIER_BANDS for priority, place in ranks):
        return [TIER_RULE_BASE + (TIER_BANDS - 1 - priority) * TIER_BAND + (TIER_BAND - 1 - place)
                for priority, place in ranks]
    if len(ranks) > TIER_BANDS * TIER_BAND:
        raise TierOverflow(f"{len(ranks)} rules in one tier table: at most {TIER_BANDS * TIER_BAND} can be ordered")
    return [TIER_RULE_BASE + len(ranks) - 1 - i for i in range(len(ranks))]


def admin_flows(rules: Iterable[ResolvedAdminRule], ports: Mapping[PodKey, int]) -> list[Flow]:
    """The tier tables' flows of one node (`ports`: its local pods' OpenFlow ports)."""
    groups: dict[tuple[Tier, Direction], list[ResolvedAdminRule]] = defaultdict(list)
    for rule in rules:
        groups[(rule.tier, rule.direction)].append(rule)
    flows: list[Flow] = []
    for (tier, direction), group in sorted(groups.items()):
        flows.extend(_table_flows(TABLES[(tier, direction)], group, ports))
    return flows


def _table_flows(table: Table, rules: list[ResolvedAdminRule], ports: Mapping[PodKey, int]) -> Iterator[Flow]:
    memo: dict[Any, Any] = {}
    placed = []
    for rule, priority in zip(rules, tier_priorities([r.rank for r in rules]), strict=True):
        rcookie = rule_cookie(rule.policy, rule.direction, rule.index)
        actions = rule_actions(rule.tier, rule.direction, rule.action)
        for position, grant in enumerate(rule.grants):
            key = f"{rule.tier}|{rule.policy}|{rule.direction}|{rule.index}|{position}"
            conj = place_grant(key, rule.direction, rcookie, grant, ports, memo)
            if conj is not None:
                placed.append((conj, priority, actions))
    ids = conjunction_ids([conj.key for conj, _, _ in placed])
    clauses: dict[tuple[int, Match], tuple[int, list[Conjunction]]] = {}
    for conj, priority, actions in placed:
        n = len(conj.dimensions)
        if n == 1:  # one dimension (no peer or port to check): the rule's action directly
            for match in conj.dimensions[0]:
                yield Flow(table, priority, match, actions, conj.cookie)
            continue
        yield Flow(table, priority, Match.build(None, conj_id=ids[conj.key]), actions, conj.cookie)
        for clause, matches in enumerate(conj.dimensions, start=1):
            for match in matches:
                clauses.setdefault((priority, match), (conj.cookie, []))[1].append(
                    Conjunction(ids[conj.key], clause, n))
    for (priority, match), (cookie, conjunctions) in clauses.items():  # one rule per priority: one cookie
        ordered = tuple(sorted(set(conjunctions), key=lambda c: (c.id, c.clause)))
        yield Flow(table, priority, match, ordered, cookie)
