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
from dataclasses import dataclass
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


@dataclass(frozen=True)
class RulePart:
    """One rule's flows on this node and everything they were made from: a rule whose part
    has the same signature next time is not placed and rendered again (a thousand pods
    change without touching most rules)."""

    signature: tuple[object, ...]
    flows: tuple[Flow, ...]


AdminParts = dict[str, RulePart]  # by rule: tier|Kind/name|direction|index


def admin_flows(rules: Iterable[ResolvedAdminRule], ports: Mapping[PodKey, int],
                previous: Mapping[str, RulePart] | None = None) -> tuple[list[Flow], AdminParts]:
    """The tier tables' flows of one node (`ports`: its local pods' OpenFlow ports), and the
    parts to pass as `previous` next time."""
    groups: dict[tuple[Tier, Direction], list[ResolvedAdminRule]] = defaultdict(list)
    for rule in rules:
        groups[(rule.tier, rule.direction)].append(rule)
    parts: AdminParts = {}
    for (_, _), group in sorted(groups.items()):
        parts.update(_table_parts(group, ports, previous or {}))
    return [f for part in parts.values() for f in part.flows], parts


def _rule_key(rule: ResolvedAdminRule) -> str:
    return f"{rule.tier}|{rule.policy}|{rule.direction}|{rule.index}"


def _table_parts(rules: list[ResolvedAdminRule], ports: Mapping[PodKey, int],
                 previous: Mapping[str, RulePart]) -> Iterator[tuple[str, RulePart]]:
    """Conjunction ids over every grant of the table (placed on this node or not), so an id
    never depends on where pods run."""
    ids = conjunction_ids([f"{_rule_key(r)}|{i}" for r in rules for i in range(len(r.grants))])
    memo: dict[Any, Any] = {}
    local: dict[int, tuple[frozenset[PodKey], tuple[int, ...]]] = {}  # by id(targets): rules share subjects
    for rule, priority in zip(rules, tier_priorities([r.rank for r in rules]), strict=True):
        key = _rule_key(rule)
        actions = rule_actions(rule.tier, rule.direction, rule.action)
        signature = (priority, actions, tuple((ids[f"{key}|{i}"], grant, _local_ports(grant.targets, ports, local))
                                              for i, grant in enumerate(rule.grants)))
        old = previous.get(key)
        if old is not None and old.signature == signature:
            yield key, old
            continue
        yield key, RulePart(signature, tuple(_rule_flows(rule, key, priority, actions, ids, ports, memo)))


def _local_ports(targets: frozenset[PodKey], ports: Mapping[PodKey, int],
                 memo: dict[int, tuple[frozenset[PodKey], tuple[int, ...]]]) -> tuple[int, ...]:
    """The OpenFlow ports of the targets on this node (the memo keeps `targets` alive, so an
    id is never reused while it holds)."""
    found = memo.get(id(targets))
    if found is None:
        here = targets & ports.keys() if len(targets) > len(ports) else [k for k in targets if k in ports]
        found = memo[id(targets)] = (targets, tuple(sorted(ports[k] for k in here)))
    return found[1]


def _rule_flows(rule: ResolvedAdminRule, key: str, priority: int, actions: tuple[Action, ...],
                ids: Mapping[str, int], ports: Mapping[PodKey, int], memo: dict[Any, Any]) -> Iterator[Flow]:
    table = TABLES[(rule.tier, rule.direction)]
    rcookie = rule_cookie(rule.policy, rule.direction, rule.index)
    clauses: dict[Match, list[Conjunction]] = {}
    for position, grant in enumerate(rule.grants):
        conj_key = f"{key}|{position}"
        conj = place_grant(conj_key, rule.direction, rcookie, grant, ports, memo)
        if conj is None:
            continue
        n = len(conj.dimensions)
        if n == 1:  # one dimension (no peer or port to check): the rule's action directly
            for match in conj.dimensions[0]:
                yield Flow(table, priority, match, actions, rcookie)
            continue
        yield Flow(table, priority, Match.build(None, conj_id=ids[conj_key]), actions, rcookie)
        for clause, matches in enumerate(conj.dimensions, start=1):
            for match in matches:
                clauses.setdefault(match, []).append(Conjunction(ids[conj_key], clause, n))
    for match, conjunctions in clauses.items():  # a rule's grants share its priority: one flow per match
        ordered: tuple[Conjunction, ...] = tuple(sorted(set(conjunctions), key=lambda c: (c.id, c.clause)))
        yield Flow(table, priority, match, ordered, rcookie)
