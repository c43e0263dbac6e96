"""Policy rules → conjunction flows, additive in cost: |targets| + |peers| + |port matches|.

Each resolved Grant takes part in a conjunction over up to three dimensions — the local
pods it applies to (in_port for egress, the chosen output port reg2 for ingress), the peer
addresses, the port matches — or, with only the pod dimension, becomes plain allow flows at
a higher priority. Grants whose peers come from the same source (Peers.source: the same
selectors in the same scope) with the same ports share one conjunction, whose pod dimension
is the union of their pods: templated policies (the same monitoring or DNS allow in every
namespace) then cost one conjunction() per peer address instead of one per policy — at 50k
pods × 5,000 policies 1.47M conjunction() actions were most of a compile. Each grant keeps
its own `conj_id=ID,<pod>=P` flow per local target pod, with its rule's cookie, so per-rule
counters and `dump-flows cookie=` still work; the clause flows, shared by construction,
carry the SHARED cookie. Clause flows with identical matches are merged into one flow
carrying all their conjunction() actions; every conj_id flow of a table does the same thing
(allow), so overlapping conjunctions can never send a packet down different paths.
"""

from __future__ import annotations

from bisect import bisect_left, insort
from collections import Counter, defaultdict
from collections.abc import Container, Hashable, Iterable, Iterator, Mapping
from dataclasses import dataclass, replace
from functools import lru_cache
from operator import attrgetter
from typing import Any, cast

from netaddr import IPNetwork

from sdn_netpol.compiler.audit_flows import audit_deny_flow
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
from sdn_netpol.policy.resolve import Grant, ResolvedPolicy
from sdn_netpol.policy.resolver import Peers, PortRange

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
    """One grant placed on this node, before ids are assigned: `key` names the grant (its
    rule and position), `shared` the conjunction it takes part in, `ports` its local pods."""

    key: str
    shared: str
    direction: Direction
    cookie: int
    dimensions: tuple[tuple[Match, ...], ...]
    ports: tuple[int, ...]


@dataclass(frozen=True)
class Placement:
    """One policy's share of this node's policy tables, before merging with the others."""

    conjs: tuple[_Conj, ...] = ()
    direct: tuple[tuple[Direction, Match, int], ...] = ()  # one-dimension grants: (direction, match, cookie)
    isolated: tuple[tuple[Direction, str, int], ...] = ()  # (direction, pod, ofport)
    audited: tuple[tuple[Direction, str, int], ...] = ()  # the isolated ones whose namespace audits denied


# A merged flow's key and one contribution to it. Kinds: "direct" (direction, match) ← rule
# cookie; "clause" (direction, match) ← (shared conj key, clause, n); "conj" (direction,
# (shared conj key, ofport)) ← rule cookie; "isolate" (direction, (pod, ofport)) ← None.
TableKey = tuple[str, Direction, Hashable]
Multiset = dict[Hashable, int]


def policy_flows(policies: Iterable[ResolvedPolicy], node: NodeContext) -> Iterator[Flow]:
    ports = {b.pod: b.ofport for b in node.bindings}
    return PolicyTables.build({p.ref: place(p, ports) for p in policies}).flows()


def place(policy: ResolvedPolicy, ports: Mapping[PodKey, int], memo: dict[Any, Any] | None = None,
          audit_denied: Container[str] = ()) -> Placement:
    """`memo`: shared by the placements of one compile, so a peer set many policies share
    (the resolver hands them one Peers object) is turned into matches once. `audit_denied`:
    namespaces whose isolated pods also get the denied-connection audit flow."""
    memo = {} if memo is None else memo
    conjs: list[_Conj] = []
    direct: list[tuple[Direction, Match, int]] = []
    isolated = [(d, str(pod), ports[pod]) for d in sorted(policy.isolates) for pod in sorted(policy.applied_to)
                if pod in ports]
    for rule in policy.rules:
        rcookie = rule_cookie(rule.policy, rule.direction, rule.index)
        for position, grant in enumerate(rule.grants):
            key = f"{rule.policy}|{rule.direction}|{rule.index}|{position}|{_ports_key(grant.ports)}"
            placed = place_grant(key, rule.direction, rcookie, grant, ports, memo)
            if placed is None:
                continue
            if len(placed.dimensions) == 1:
                direct.extend((rule.direction, match, rcookie) for match in placed.dimensions[0])
            else:
                conjs.append(placed)
    audited = tuple(i for i in isolated if i[1].partition("/")[0] in audit_denied)
    return Placement(tuple(conjs), tuple(direct), tuple(isolated), audited)


def _contributions(placement: Placement) -> Iterator[tuple[TableKey, Hashable]]:
    for conj in placement.conjs:
        yield from _conj_contributions(conj)
    for direction, match, rcookie in placement.direct:
        yield ("direct", direction, match), rcookie
    for direction, pod, ofport in placement.isolated:
        yield ("isolate", direction, (pod, ofport)), None
    for direction, pod, ofport in placement.audited:
        yield ("audit", direction, (pod, ofport)), None


def _conj_contributions(conj: _Conj) -> Iterator[tuple[TableKey, Hashable]]:
    yield from _verdict_contributions(conj, conj.ports)
    n = len(conj.dimensions)
    for clause, matches in enumerate(conj.dimensions, start=1):
        for match in matches:
            yield ("clause", conj.direction, match), (conj.shared, clause, n)


def _verdict_contributions(conj: _Conj, ports: Iterable[int]) -> Iterator[tuple[TableKey, Hashable]]:
    """The grant's conj_id flows: one per local target pod, with its rule's cookie."""
    for port in ports:
        yield ("conj", conj.direction, (conj.shared, port)), conj.cookie


_NOTHING = Placement()
_CONJ_ORDER = attrgetter("id", "clause")


def _delta(old: Placement | None, new: Placement | None) -> Iterator[tuple[TableKey, Hashable, int]]:
    """How the contributions of two placements of one policy differ (+1 / -1 each): a policy
    placed again after one pod changed usually differs by one address or port, not by its
    hundreds of matches, and only keys that really change get rendered again."""
    old, new = old or _NOTHING, new or _NOTHING
    before = {c.key: c for c in old.conjs}
    for conj in new.conjs:
        was = before.pop(conj.key, None)
        if was is None or (was.shared, was.cookie, len(was.dimensions)) != (conj.shared, conj.cookie,
                                                                            len(conj.dimensions)):
            yield from _difference(_conj_contributions(was) if was is not None else (), _conj_contributions(conj))
        elif was != conj:
            yield from _clause_delta(was, conj)
    for was in before.values():
        yield from ((key, item, -1) for key, item in _conj_contributions(was))
    if old.direct != new.direct or old.isolated != new.isolated or old.audited != new.audited:
        yield from _difference(_contributions(replace(old, conjs=())), _contributions(replace(new, conjs=())))


def _clause_delta(was: _Conj, conj: _Conj) -> Iterator[tuple[TableKey, Hashable, int]]:
    """Two versions of one grant (same conjunction, cookie and clause count): per clause,
    only the matches that came or went, and the conj_id flows of pods that came or went."""
    n = len(conj.dimensions)
    if was.ports != conj.ports:
        yield from _difference(_verdict_contributions(was, was.ports), _verdict_contributions(conj, conj.ports))
    for clause, (old, new) in enumerate(zip(was.dimensions, conj.dimensions, strict=True), start=1):
        if old == new:
            continue
        item = (conj.shared, clause, n)
        yield from _difference(((("clause", conj.direction, m), item) for m in old),
                               ((("clause", conj.direction, m), item) for m in new))


def _difference(old: Iterable[tuple[TableKey, Hashable]],
                new: Iterable[tuple[TableKey, Hashable]]) -> Iterator[tuple[TableKey, Hashable, int]]:
    counts = Counter(new)
    counts.subtract(old)
    for (key, item), delta in counts.items():
        for _ in range(abs(delta)):
            yield key, item, 1 if delta > 0 else -1


@dataclass(frozen=True)
class TablesUpdate:
    tables: PolicyTables
    removed: list[Flow]
    added: list[Flow]


class PolicyTables:
    """Every policy's placement merged: one multiset of contributions per flow of the policy
    tables. Merging is what makes flows shared between policies (a clause flow carrying many
    conjunction() actions); keeping the contributions lets `update` re-place a few policies
    and re-render only the flows they contribute to, instead of merging a thousand again.

    A value: `update` returns a new PolicyTables that shares every untouched multiset.
    `rendered` keeps each key's flow, so an update renders only the new versions. `uses`
    counts the grants in each shared conjunction (its id goes when the last one does).
    `probed`: some conjunction id is not its key's first choice (a collision was probed)."""

    __slots__ = ("entries", "ids", "placements", "probed", "rendered", "uses")

    def __init__(self, placements: dict[str, Placement], entries: dict[TableKey, Multiset],
                 ids: dict[str, int], rendered: dict[TableKey, Flow], probed: bool, uses: dict[str, int]) -> None:
        self.placements = placements
        self.entries = entries
        self.ids = ids
        self.rendered = rendered
        self.probed = probed
        self.uses = uses

    @staticmethod
    def build(placements: dict[str, Placement]) -> PolicyTables:
        entries: dict[TableKey, Multiset] = defaultdict(dict)
        for placement in placements.values():
            for key, item in _contributions(placement):
                found = entries[key]
                found[item] = found.get(item, 0) + 1
        uses = Counter(c.shared for p in placements.values() for c in p.conjs)
        ids = conjunction_ids(list(uses))
        rendered = {key: _render(key, items, ids) for key, items in entries.items()}
        probed = any(conj_id != _base_id(key) for key, conj_id in ids.items())
        return PolicyTables(placements, dict(entries), ids, rendered, probed, dict(uses))

    def flows(self) -> Iterator[Flow]:
        return iter(self.rendered.values())

    def update(self, changes: Mapping[str, Placement | None]) -> TablesUpdate | None:
        """Replace the placements of the policies in `changes` (None: the policy is gone).
        None when a conjunction id would need probing: ids then depend on every key, and
        only a full build gives the ids a full compile gives."""
        uses = self._updated_uses(changes)
        ids = self._updated_ids(uses)
        if ids is None:
            return None
        placements = dict(self.placements)
        entries = dict(self.entries)
        copied: set[TableKey] = set()
        for ref, new in changes.items():
            old = placements.pop(ref, None)
            for key, item, delta in _delta(old, new):
                if key not in copied:
                    copied.add(key)
                    entries[key] = dict(entries.get(key, ()))
                found = entries[key]
                count = found.get(item, 0) + delta
                if count:
                    found[item] = count
                else:
                    del found[item]
            if new is not None:
                placements[ref] = new
        removed: list[Flow] = []
        added: list[Flow] = []
        rendered = dict(self.rendered)
        for key in copied:
            if not entries[key]:
                del entries[key]
            before = self.rendered.get(key)
            if key not in entries:
                after = None
            elif key[0] == "clause" and before is not None:
                after = _rerender_clause(key, before, self.entries[key], entries[key], self.ids, ids)
            else:
                after = _render(key, entries[key], ids)
            if after is None:
                rendered.pop(key, None)
            else:
                rendered[key] = after
            if before is after or before == after:
                continue
            if before is not None:
                removed.append(before)
            if after is not None:
                added.append(after)
        return TablesUpdate(PolicyTables(placements, entries, ids, rendered, self.probed, uses), removed, added)

    def _updated_uses(self, changes: Mapping[str, Placement | None]) -> dict[str, int]:
        """How many grants use each shared conjunction once `changes` are applied."""
        delta: Counter[str] = Counter()
        for ref, placement in changes.items():
            delta.update(c.shared for c in (placement.conjs if placement is not None else ()))
            delta.subtract(c.shared for c in (self.placements[ref].conjs if ref in self.placements else ()))
        if not any(delta.values()):
            return self.uses
        uses = dict(self.uses)
        for key, change in delta.items():
            count = uses.get(key, 0) + change
            if count:
                uses[key] = count
            else:
                uses.pop(key, None)
        return uses

    def _updated_ids(self, uses: dict[str, int]) -> dict[str, int] | None:
        if uses is self.uses or uses.keys() == self.ids.keys():
            return self.ids
        if self.probed:
            return None
        old_keys, new_keys = self.ids.keys() - uses.keys(), uses.keys() - self.ids.keys()
        ids = dict(self.ids)
        for key in old_keys:
            del ids[key]
        taken = set(ids.values())
        for key in new_keys:
            conj_id = _base_id(key)
            if conj_id in taken:
                return None
            taken.add(conj_id)
            ids[key] = conj_id
        return ids


def _base_id(key: str) -> int:
    return conjunction_ids([key])[key]


def _render(key: TableKey, items: Multiset, ids: Mapping[str, int]) -> Flow:
    """The one flow a merged key stands for."""
    kind, direction, subject = key
    if kind == "clause":
        entries = cast("Iterable[tuple[str, int, int]]", items)
        conjunctions = sorted([_conjunction(ids[k], clause, n) for k, clause, n in entries], key=_CONJ_ORDER)
        return _clause_flow(direction, cast(Match, subject), tuple(conjunctions))
    if kind == "direct":
        return _allow_flow(direction, Priority.DIRECT_ALLOW, cast(Match, subject),
                           _merged_cookie(set(cast("Iterable[int]", items))))
    if kind == "conj":
        shared, port = cast("tuple[str, int]", subject)
        return _allow_flow(direction, Priority.CONJUNCTION, _conj_id_match(direction, ids[shared], port),
                           _merged_cookie(set(cast("Iterable[int]", items))))
    pod, ofport = cast("tuple[str, int]", subject)
    if kind == "audit":
        return audit_deny_flow(direction, ofport, pod)
    return _isolation_flow(direction, "in_port" if direction == "Egress" else REG_OUT_PORT, ofport, pod)


def _rerender_clause(key: TableKey, before: Flow, old: Multiset, new: Multiset,
                     old_ids: Mapping[str, int], ids: Mapping[str, int]) -> Flow:
    """A shared clause flow after a few of its contributions came or went: its sorted
    conjunction() list patched by bisection rather than rebuilt from every contribution (a
    monitoring namespace's address can carry a thousand of them). Each distinct contribution
    stands for exactly one conjunction (its shared key fixes the id), so presence is 1:1;
    how many grants contribute it is only a count."""
    actions = list(cast("tuple[Conjunction, ...]", before.actions))
    gone = cast("set[tuple[str, int, int]]", old.keys() - new.keys())
    came = cast("set[tuple[str, int, int]]", new.keys() - old.keys())
    if not gone and not came:
        return before  # only how many times something contributes changed
    for conj_key, clause, _ in gone:
        del actions[bisect_left(actions, (old_ids[conj_key], clause), key=_CONJ_ORDER)]
    for conj_key, clause, n in came:
        insort(actions, _conjunction(ids[conj_key], clause, n), key=_CONJ_ORDER)
    return _clause_flow(key[1], cast(Match, key[2]), tuple(actions))


def _ports_key(ports: tuple[PortRange, ...]) -> str:
    return ",".join(f"{p.protocol}:{p.lo}-{p.hi}" for p in ports) or "all"


def place_grant(key: str, direction: Direction, rcookie: int, grant: Grant, ports: Mapping[PodKey, int],
           memo: dict[Any, Any]) -> _Conj | None:
    local = sorted(ports[k] for k in grant.targets if k in ports)
    if not local:
        return None
    dimensions: list[tuple[Match, ...]] = [tuple(_target_match(direction, p) for p in local)]
    if not grant.peers.any:
        dimensions.append(_peer_matches(direction, grant.peers, memo))
    if grant.ports:
        dimensions.append(tuple(m for pr in grant.ports for m in _port_matches(pr)))
    shared = _shared_key(direction, grant, len(dimensions), memo)
    return _Conj(key, shared, direction, rcookie, tuple(dimensions), tuple(local))


def _shared_key(direction: Direction, grant: Grant, n: int, memo: dict[Any, Any]) -> str:
    """The conjunction a grant takes part in: direction, clause count, where its peers come
    from and its ports. Peers of unknown source (built outside the resolver) are named by
    their addresses instead (memoised per Peers object, as _peer_matches)."""
    source = "any" if grant.peers.any else grant.peers.source
    if not source:
        found = memo.get(("source", id(grant.peers)))
        if found is None:
            found = memo[("source", id(grant.peers))] = (grant.peers, ",".join(map(str, grant.peers.cidrs)))
        source = f"cidrs {cast('tuple[Peers, str]', found)[1]}"
    return f"{direction}|{n}|{_ports_key(grant.ports)}|{source}"


# Matches repeat across rules (the same pods are peers of many policies): build each once.
@lru_cache(maxsize=1 << 16)
def _target_match(direction: Direction, ofport: int) -> Match:
    return Match.build(None, **{"in_port" if direction == "Egress" else REG_OUT_PORT: ofport})


def _peer_matches(direction: Direction, peers: Peers, memo: dict[Any, Any]) -> tuple[Match, ...]:
    """Memoised by the Peers object's identity: hashing a hundred netaddr networks is the
    expensive part, and `memo` keeps `peers` alive, so an id is never reused within it."""
    found = memo.get((id(peers), direction))
    if found is None:
        found = (peers, tuple(_peer_match(direction, net) for net in peers.cidrs))
        memo[(id(peers), direction)] = found
    return cast("tuple[Match, ...]", found[1])


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


# Flows are cached by content so an unchanged rule yields the very same objects on the next
# compile: the controller's diff then skips them by identity instead of comparing them.
@lru_cache(maxsize=1 << 18)
def _allow_flow(direction: Direction, priority: int, match: Match, flow_cookie: int) -> Flow:
    tables = _TABLES[direction]
    return Flow(tables.rule, priority, match, (GotoTable(tables.next),), flow_cookie)


def _clause_flow(direction: Direction, match: Match, actions: tuple[Action, ...]) -> Flow:
    """Not cached by content: its actions can be a thousand conjunction()s long (PolicyTables
    keeps each rendered clause flow instead). A clause belongs to a conjunction that grants
    of several rules may share: its cookie is SHARED; the rules are told apart by their
    conj_id flows."""
    return Flow(_TABLES[direction].rule, Priority.CONJUNCTION, match, actions, SHARED_COOKIE)


@lru_cache(maxsize=1 << 18)
def _conjunction(conj_id: int, clause: int, n_clauses: int) -> Conjunction:
    return Conjunction(conj_id, clause, n_clauses)


@lru_cache(maxsize=1 << 18)
def _conj_id_match(direction: Direction, conj_id: int, ofport: int) -> Match:
    """A grant's verdict for one of its pods: OVS looks up the conj_id flow with the packet's
    other fields too, so the pod field picks the rule (and its counter) within a shared conjunction."""
    return Match.build(None, conj_id=conj_id, **{"in_port" if direction == "Egress" else REG_OUT_PORT: ofport})


def _merged_cookie(cookies: set[int]) -> int:
    return next(iter(cookies)) if len(cookies) == 1 else SHARED_COOKIE


@lru_cache(maxsize=1 << 16)
def _isolation_flow(direction: Direction, field: str, ofport: int, pod_ref: str) -> Flow:
    pod_cookie = cookie(CookieCategory.ISOLATION, pod_object_id(pod_ref))
    return Flow(_TABLES[direction].default, Priority.DEFAULT, Match.build(None, **{field: ofport}), (), pod_cookie)
