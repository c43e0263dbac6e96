"""The matches and flows of the NetworkPolicy rule tables (40/41, 60/61), one constructor
each: policy_flows.py decides which to build, this module how they look.

Matches and flows repeat across rules and compiles (the same pods are peers of many
policies; an unchanged rule yields the same flows next time), so most are cached by
content: the controller's diff then skips unchanged flows by identity.
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import lru_cache
from typing import Any, cast

from netaddr import IPNetwork

from sdn_netpol.compiler.flow import Action, Conjunction, Flow, GotoTable, Match
from sdn_netpol.compiler.pipeline import REG_OUT_PORT, CookieCategory, Priority, Table, cookie, pod_object_id
from sdn_netpol.compiler.portmask import port_range_masks
from sdn_netpol.model.objects import Direction
from sdn_netpol.policy.resolver import Peers, PortRange

SHARED_COOKIE = cookie(CookieCategory.SHARED)
L4 = {"TCP": ("tcp", "tcp6"), "UDP": ("udp", "udp6"), "SCTP": ("sctp", "sctp6")}


@dataclass(frozen=True)
class RuleTables:
    rule: Table
    default: Table
    next: Table


RULE_TABLES: dict[Direction, RuleTables] = {
    "Egress": RuleTables(Table.EGRESS_RULE, Table.EGRESS_DEFAULT, Table.L3_FORWARDING),
    "Ingress": RuleTables(Table.INGRESS_RULE, Table.INGRESS_DEFAULT, Table.COMMIT),
}


@lru_cache(maxsize=1 << 16)
def target_match(direction: Direction, ofport: int) -> Match:
    return Match.build(None, **{"in_port" if direction == "Egress" else REG_OUT_PORT: ofport})


def peer_matches(direction: Direction, peers: Peers, memo: dict[Any, Any]) -> tuple[Match, ...]:
    """Memoised by the Peers object's identity: hashing a hundred netaddr networks is the
    expensive part, and `memo` keeps `peers` alive, so an id is never reused within it."""
    found = memo.get((id(peers), direction))
    if found is None:
        found = (peers, tuple(peer_match(direction, net) for net in peers.cidrs))
        memo[(id(peers), direction)] = found
    return cast("tuple[Match, ...]", found[1])


@lru_cache(maxsize=1 << 18)
def peer_match(direction: Direction, net: IPNetwork) -> Match:
    """The peer is the destination of egress traffic and the source of ingress traffic."""
    side = "dst" if direction == "Egress" else "src"
    if net.version == 4:
        return Match.build("ip", **{f"nw_{side}": net})
    return Match.build("ipv6", **{f"ipv6_{side}": net})


@lru_cache(maxsize=1 << 12)
def port_matches(port_range: PortRange) -> tuple[Match, ...]:
    matches = []
    for proto in L4[port_range.protocol]:
        if port_range.lo == 0 and port_range.hi == 65535:
            matches.append(Match.build(proto))
            continue
        for value, mask in port_range_masks(port_range.lo, port_range.hi):
            matches.append(Match.build(proto, tp_dst=(value, mask)))
    return tuple(matches)


@lru_cache(maxsize=1 << 18)
def allow_flow(direction: Direction, priority: int, match: Match, flow_cookie: int) -> Flow:
    tables = RULE_TABLES[direction]
    return Flow(tables.rule, priority, match, (GotoTable(tables.next),), flow_cookie)


def clause_flow(direction: Direction, match: Match, actions: tuple[Action, ...], priority: int) -> Flow:
    """Not cached by content: its actions can be a thousand conjunction()s long (PolicyTables
    keeps each rendered clause flow instead). A clause belongs to a conjunction that grants
    of several rules may share: its cookie is SHARED; the rules are told apart by their
    conj_id flows."""
    return Flow(RULE_TABLES[direction].rule, priority, match, actions, SHARED_COOKIE)


@lru_cache(maxsize=1 << 18)
def conjunction(conj_id: int, clause: int, n_clauses: int) -> Conjunction:
    return Conjunction(conj_id, clause, n_clauses)


@lru_cache(maxsize=1 << 18)
def conj_id_match(direction: Direction, conj_id: int, ofport: int) -> Match:
    """A grant's verdict for one of its pods: OVS looks up the conj_id flow with the packet's
    other fields too, so the pod field picks the rule (and its counter) within a shared conjunction."""
    return Match.build(None, conj_id=conj_id, **{"in_port" if direction == "Egress" else REG_OUT_PORT: ofport})


def merged_cookie(cookies: set[int]) -> int:
    return next(iter(cookies)) if len(cookies) == 1 else SHARED_COOKIE


@lru_cache(maxsize=1 << 16)
def isolation_flow(direction: Direction, field: str, ofport: int, pod_ref: str) -> Flow:
    pod_cookie = cookie(CookieCategory.ISOLATION, pod_object_id(pod_ref))
    return Flow(RULE_TABLES[direction].default, Priority.DEFAULT, Match.build(None, **{field: ofport}), (), pod_cookie)
