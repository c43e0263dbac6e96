"""Policy rules → conjunction flows, additive in cost: |targets| + |peers| + |port matches|.

Each resolved Grant becomes one conjunction over up to three dimensions — the local pods it
applies to (in_port for egress, the chosen output port reg2 for ingress), the peer
addresses, the port matches — or, with only the pod dimension, plain allow flows at a
higher priority. Clause flows with identical matches are merged into one flow carrying all
their conjunction() actions; every conj_id flow of a table does the same thing (allow), so
overlapping conjunctions can never send a packet down different paths.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from functools import lru_cache

from netaddr import IPNetwork

from sdn_netpol.compiler.flow import Action, Conjunction, Flow, GotoTable, Match
from sdn_netpol.compiler.pipeline import (
    REG_OUT_PORT,
    CookieCategory,
    Priority,
    Table,
    conjunction_ids,
    cookie,
    pod_object_id,
    rule_cookie,
)
from sdn_netpol.compiler.portmask import port_range_masks
from sdn_netpol.compiler.topology import NodeContext
from sdn_netpol.model.objects import Direction, PodKey
from sdn_netpol.policy.resolve import Grant, PortRange, ResolvedPolicy

SHARED_COOKIE = cookie(CookieCategory.SHARED)
_L4 = {"TCP": ("tcp", "tcp6"), "UDP": ("udp", "udp6"), "SCTP": ("sctp", "sctp6")}


@dataclass(frozen=True)
class _Tables:
    rule: Table
    default: Table
    next: Table


_TABLES: dict[Direction, _Tables] = {
    "Egress": _Tables(Table.EGRESS_RULE, Table.EGRESS_DEFAULT, Table.L3_FORWARDING),
    "Ingress": _Tables(Table.INGRESS_RULE, Table.INGRESS_DEFAULT, Table.COMMIT),
}


@dataclass(frozen=True)
class _Conj:
    """One grant placed on this node, before ids are assigned."""

    key: str
    direction: Direction
    cookie: int
    dimensions: tuple[tuple[Match, ...], ...]


def policy_flows(policies: Iterable[ResolvedPolicy], node: NodeContext) -> Iterator[Flow]:
    ports = {b.pod: b.ofport for b in node.bindings}
    conjs: list[_Conj] = []
    direct: dict[tuple[Direction, Match], set[int]] = defaultdict(set)
    isolated: dict[Direction, set[PodKey]] = {"Ingress": set(), "Egress": set()}
    for policy in policies:
        for direction in policy.isolates:
            isolated[direction] |= policy.applied_to & ports.keys()
        for rule in policy.rules:
            rcookie = rule_cookie(rule.policy, rule.direction, rule.index)
            for position, grant in enumerate(rule.grants):
                key = f"{rule.policy}|{rule.direction}|{rule.index}|{position}|{_ports_key(grant.ports)}"
                placed = _place(key, rule.direction, rcookie, grant, ports)
                if placed is None:
                    continue
                if len(placed.dimensions) == 1:
                    for match in placed.dimensions[0]:
                        direct[(rule.direction, match)].add(rcookie)
                else:
                    conjs.append(placed)
    yield from _direct_flows(direct)
    yield from _conjunction_flows(conjs)
    yield from _isolation_flows(isolated, ports)


def _ports_key(ports: tuple[PortRange, ...]) -> str:
    return ",".join(f"{p.protocol}:{p.lo}-{p.hi}" for p in ports) or "all"


def _place(key: str, direction: Direction, rcookie: int, grant: Grant, ports: dict[PodKey, int]) -> _Conj | None:
    local = sorted(ports[k] for k in grant.targets if k in ports)
    if not local:
        return None
    dimensions: list[tuple[Match, ...]] = [tuple(_target_match(direction, p) for p in local)]
    if not grant.peers.any:
        dimensions.append(tuple(_peer_match(direction, net) for net in grant.peers.cidrs))
    if grant.ports:
        dimensions.append(tuple(m for pr in grant.ports for m in _port_matches(pr)))
    return _Conj(key, direction, rcookie, tuple(dimensions))


# Matches repeat across rules (the same pods are peers of many policies): build each once.
@lru_cache(maxsize=1 << 16)
def _target_match(direction: Direction, ofport: int) -> Match:
    return Match.build(None, **{"in_port" if direction == "Egress" else REG_OUT_PORT: ofport})


@lru_cache(maxsize=1 << 18)
def _peer_match(direction: Direction, net: IPNetwork) -> Match:
    """The peer is the destination of egress traffic and the source of ingress traffic."""
    side = "dst" if direction == "Egress" else "src"
    if net.version == 4:
        return Match.build("ip", **{f"nw_{side}": net})
    return Match.build("ipv6", **{f"ipv6_{side}": net})


@lru_cache(maxsize=1 << 12)
def _port_matches(port_range: PortRange) -> tuple[Match, ...]:
    matches = []
    for proto in _L4[port_range.protocol]:
        if port_range.lo == 0 and port_range.hi == 65535:
            matches.append(Match.build(proto))
            continue
        for value, mask in port_range_masks(port_range.lo, port_range.hi):
            matches.append(Match.build(proto, tp_dst=(value, mask)))
    return tuple(matches)


def _direct_flows(direct: dict[tuple[Direction, Match], set[int]]) -> Iterator[Flow]:
    for (direction, match), cookies in direct.items():
        yield _allow_flow(direction, Priority.DIRECT_ALLOW, match, _merged_cookie(cookies))


# Flows are cached by content so an unchanged rule yields the very same objects on the next
# compile: the controller's diff then skips them by identity instead of comparing them.
@lru_cache(maxsize=1 << 18)
def _allow_flow(direction: Direction, priority: int, match: Match, flow_cookie: int) -> Flow:
    tables = _TABLES[direction]
    return Flow(tables.rule, priority, match, (GotoTable(tables.next),), flow_cookie)


@lru_cache(maxsize=1 << 18)
def _clause_flow(direction: Direction, match: Match, actions: tuple[Action, ...], flow_cookie: int) -> Flow:
    return Flow(_TABLES[direction].rule, Priority.CONJUNCTION, match, actions, flow_cookie)


def _conjunction_flows(conjs: list[_Conj]) -> Iterator[Flow]:
    ids = conjunction_ids([c.key for c in conjs])
    clauses: dict[tuple[Direction, Match], list[tuple[Conjunction, int]]] = defaultdict(list)
    for conj in conjs:
        conj_id = ids[conj.key]
        yield _allow_flow(conj.direction, Priority.CONJUNCTION, _conj_id_match(conj_id), conj.cookie)
        n = len(conj.dimensions)
        for clause, matches in enumerate(conj.dimensions, start=1):
            for match in matches:
                clauses[(conj.direction, match)].append((Conjunction(conj_id, clause, n), conj.cookie))
    for (direction, match), entries in clauses.items():
        conjunctions = sorted({a for a, _ in entries}, key=lambda a: (a.id, a.clause))
        actions: tuple[Action, ...] = tuple(conjunctions)
        flow_cookie = _merged_cookie({c for _, c in entries})
        yield _clause_flow(direction, match, actions, flow_cookie)


@lru_cache(maxsize=1 << 18)
def _conj_id_match(conj_id: int) -> Match:
    return Match.build(None, conj_id=conj_id)


def _merged_cookie(cookies: set[int]) -> int:
    return next(iter(cookies)) if len(cookies) == 1 else SHARED_COOKIE


def _isolation_flows(isolated: dict[Direction, set[PodKey]], ports: dict[PodKey, int]) -> Iterator[Flow]:
    for direction, pods in isolated.items():
        field = "in_port" if direction == "Egress" else REG_OUT_PORT
        for pod in sorted(pods):
            yield _isolation_flow(direction, field, ports[pod], str(pod))


@lru_cache(maxsize=1 << 16)
def _isolation_flow(direction: Direction, field: str, ofport: int, pod_ref: str) -> Flow:
    pod_cookie = cookie(CookieCategory.ISOLATION, pod_object_id(pod_ref))
    return Flow(_TABLES[direction].default, Priority.DEFAULT, Match.build(None, **{field: ofport}), (), pod_cookie)
