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
(allow), so overlapping conjunctions can never send a packet down different paths. That is
also why a match busy with thousands of conjunctions can be split over priority bands
(compiler/bands.py) when one flow could no longer carry them all.
"""

from __future__ import annotations

from bisect import bisect_left, insort
from collections import Counter, defaultdict
from collections.abc import Container, Hashable, Iterable, Iterator, Mapping
from dataclasses import dataclass, replace
from operator import attrgetter
from typing import Any, cast

from sdn_netpol.compiler import bands
from sdn_netpol.compiler.audit_flows import audit_deny_flow
from sdn_netpol.compiler.bands import band_priority, busy_matches, spread_of
from sdn_netpol.compiler.flow import Conjunction, Flow, Match
from sdn_netpol.compiler.pipeline import (
    REG_OUT_PORT,
    Priority,
    conjunction_ids,
    rule_cookie,
)
from sdn_netpol.compiler.rule_flows import (
    allow_flow,
    clause_flow,
    conj_id_match,
    conjunction,
    isolation_flow,
    merged_cookie,
    peer_matches,
    port_matches,
    target_match,
)
from sdn_netpol.compiler.topology import NodeContext
from sdn_netpol.model.objects import Direction, PodKey
from sdn_netpol.policy.resolve import Grant, ResolvedPolicy
from sdn_netpol.policy.resolver import Peers, PortRange


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
Rendered = Flow | tuple[Flow, ...]  # a key's flow; a busy clause match's flows, one per band


def policy_flows(policies: Iterable[ResolvedPolicy], node: NodeContext) -> Iterator[Flow]:
    ports = node.ofports
    return PolicyTables.build({p.ref: place(p, ports) for p in policies}).flows()


def place(policy: ResolvedPolicy, ports: Mapping[PodKey, int], memo: dict[Any, Any] | None = None,
          audit_denied: Container[str] = ()) -> Placement:
    """`memo`: shared by the placements of one compile, so a peer set many policies share
    (the resolver hands them one Peers object) is turned into matches once. `audit_denied`:
    namespaces whose isolated pods also get the denied-connection audit flow."""
    memo = {} if memo is None else memo
    conjs: list[_Conj] = []
    direct: list[tuple[Direction, Match, int]] = []
    local_targets = sorted(pod for pod in policy.applied_to if pod in ports)  # filtered first: a few of many
    isolated = [(d, str(pod), ports[pod]) for d in sorted(policy.isolates) for pod in local_targets]
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


# Per update: the matches that went and came between two versions of a dimension, by the
# identities of the two tuples (kept alive beside the result, so an id is never reused).
_MatchDiffs = dict[tuple[int, int], tuple[tuple[Match, ...], tuple[Match, ...], list[Match], list[Match]]]


def _delta(old: Placement | None, new: Placement | None,
           diffs: _MatchDiffs | None = None) -> Iterator[tuple[TableKey, Hashable, int]]:
    """How the contributions of two placements of one policy differ (+1 / -1 each): a policy
    placed again after one pod changed usually differs by one address or port, not by its
    hundreds of matches, and only keys that really change get rendered again. `diffs`:
    shared by the placements of one update (a new peer of 500 policies changes one peer
    tuple that 900 grants share: diffing its 600 matches once per grant cost 1 s at 50k pods)."""
    diffs = {} if diffs is None else diffs
    old, new = old or _NOTHING, new or _NOTHING
    before = {c.key: c for c in old.conjs}
    for conj in new.conjs:
        was = before.pop(conj.key, None)
        if was is None or (was.shared, was.cookie, len(was.dimensions)) != (conj.shared, conj.cookie,
                                                                            len(conj.dimensions)):
            yield from _difference(_conj_contributions(was) if was is not None else (), _conj_contributions(conj))
        elif was != conj:
            yield from _clause_delta(was, conj, diffs)
    for was in before.values():
        yield from ((key, item, -1) for key, item in _conj_contributions(was))
    if old.direct != new.direct or old.isolated != new.isolated or old.audited != new.audited:
        yield from _difference(_contributions(replace(old, conjs=())), _contributions(replace(new, conjs=())))


def _clause_delta(was: _Conj, conj: _Conj, diffs: _MatchDiffs) -> Iterator[tuple[TableKey, Hashable, int]]:
    """Two versions of one grant (same conjunction, cookie and clause count): per clause,
    only the matches that came or went, and the conj_id flows of pods that came or went."""
    n = len(conj.dimensions)
    if was.ports != conj.ports:
        yield from _difference(_verdict_contributions(was, was.ports), _verdict_contributions(conj, conj.ports))
    for clause, (old, new) in enumerate(zip(was.dimensions, conj.dimensions, strict=True), start=1):
        if old is new:
            continue
        gone, came = _changed_matches(old, new, diffs)
        item = (conj.shared, clause, n)
        yield from ((("clause", conj.direction, m), item, -1) for m in gone)
        yield from ((("clause", conj.direction, m), item, 1) for m in came)


def _changed_matches(old: tuple[Match, ...], new: tuple[Match, ...],
                     diffs: _MatchDiffs) -> tuple[list[Match], list[Match]]:
    """The matches of `old` that `new` lacks and those it adds, with their multiplicities."""
    found = diffs.get((id(old), id(new)))
    if found is None:
        counts = Counter(new)
        counts.subtract(old)
        gone = [m for m, delta in counts.items() if delta < 0 for _ in range(-delta)]
        came = [m for m, delta in counts.items() if delta > 0 for _ in range(delta)]
        found = diffs[(id(old), id(new))] = (old, new, gone, came)
    return found[2], found[3]


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
    `probed`: some conjunction id is not its key's first choice (a collision was probed).
    `busy`: the clause keys that need more than one priority band, and how many;
    `spread`: the conjunctions on them and their bands (compiler/bands.py)."""

    __slots__ = ("busy", "entries", "ids", "placements", "probed", "rendered", "spread", "uses")

    def __init__(self, placements: dict[str, Placement], entries: dict[TableKey, Multiset],
                 ids: dict[str, int], rendered: dict[TableKey, Rendered], probed: bool, uses: dict[str, int],
                 busy: dict[TableKey, int], spread: dict[str, int]) -> None:
        self.placements = placements
        self.entries = entries
        self.ids = ids
        self.rendered = rendered
        self.probed = probed
        self.uses = uses
        self.busy = busy
        self.spread = spread

    @staticmethod
    def build(placements: dict[str, Placement]) -> PolicyTables:
        entries: dict[TableKey, Multiset] = defaultdict(dict)
        for placement in placements.values():
            for key, item in _contributions(placement):
                found = entries[key]
                found[item] = found.get(item, 0) + 1
        uses = Counter(c.shared for p in placements.values() for c in p.conjs)
        ids = conjunction_ids(list(uses))
        busy = busy_matches((k, len(v)) for k, v in entries.items() if k[0] == "clause")
        spread = spread_of(busy, {key: _members(entries[key]) for key in busy})
        rendered = {key: _render(key, items, ids, spread) for key, items in entries.items()}
        probed = any(conj_id != _base_id(key) for key, conj_id in ids.items())
        return PolicyTables(placements, dict(entries), ids, rendered, probed, dict(uses), busy, spread)

    def flows(self) -> Iterator[Flow]:
        for rendered in self.rendered.values():
            if type(rendered) is tuple:
                yield from rendered
            else:
                yield cast(Flow, rendered)

    def update(self, changes: Mapping[str, Placement | None]) -> TablesUpdate | None:
        """Replace the placements of the policies in `changes` (None: the policy is gone).
        None when a conjunction id would need probing, or a conjunction that stays would
        change bands: ids and bands then depend on keys the change did not touch, and only
        a full build gives what a full compile gives."""
        uses = self._updated_uses(changes)
        ids = self._updated_ids(uses)
        if ids is None:
            return None
        placements = dict(self.placements)
        entries = dict(self.entries)
        copied: set[TableKey] = set()
        diffs: _MatchDiffs = {}
        for ref, new in changes.items():
            old = placements.pop(ref, None)
            for key, item, delta in _delta(old, new, diffs):
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
        spread = self._updated_spread(copied, entries, ids)
        if spread is None:
            return None
        removed: list[Flow] = []
        added: list[Flow] = []
        rendered = dict(self.rendered)
        for key in copied:
            if not entries[key]:
                del entries[key]
            before = self.rendered.get(key)
            if key not in entries:
                after = None
            elif key[0] == "clause" and type(before) is Flow:
                after = _rerender_clause(key, before, self.entries[key], entries[key], (self.ids, ids), spread)
            else:
                after = _render(key, entries[key], ids, spread)
            if after is None:
                rendered.pop(key, None)
            else:
                rendered[key] = after
            if before is after or before == after:
                continue
            _replaced(before, after, removed, added)
        tables = PolicyTables(placements, entries, ids, rendered, self.probed, uses, self.busy, spread)
        return TablesUpdate(tables, removed, added)

    def _updated_spread(self, copied: set[TableKey], entries: dict[TableKey, Multiset],
                        ids: Mapping[str, int]) -> dict[str, int] | None:
        """The conjunctions' bands after a change, or None when they need a full build: a
        clause key crossed a band threshold (every conjunction on it may move), or a
        conjunction that stays joined or left a busy key and so changes bands (its other
        flows were not touched). A conjunction that comes or goes is rendered anyway."""
        moved: set[str] = set()
        for key in copied:
            if key[0] != "clause":
                continue
            if bands.bands_for(len(entries[key])) != self.busy.get(key, 1):
                return None
            if key in self.busy:
                moved.update(_members(self.entries[key].keys() ^ entries[key].keys()))
        if not moved:
            return self.spread
        spread = dict(self.spread)
        for shared in moved:
            need = max((n for key, n in self.busy.items() if _on(entries[key], shared)), default=1)
            if shared in ids and shared in self.ids and need != self.spread.get(shared, 1):
                return None
            if need > 1 and shared in ids:
                spread[shared] = need
            else:
                spread.pop(shared, None)
        return spread

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


def _members(items: Iterable[Hashable]) -> set[str]:
    """The conjunctions of a clause key's contributions ((shared key, clause, n) each)."""
    return {shared for shared, _, _ in cast("Iterable[tuple[str, int, int]]", items)}


def _on(items: Multiset, shared: str) -> bool:
    """Whether the conjunction `shared` has a clause on the key with these contributions."""
    return any((shared, clause, n) in items for n in (2, 3) for clause in range(1, n + 1))


def _replaced(before: Rendered | None, after: Rendered | None, removed: list[Flow], added: list[Flow]) -> None:
    """The flows that went and came when a key's rendering changed (per band, for busy keys)."""
    old, new = _each(before), _each(after)
    removed.extend(f for f in old if f not in new)
    added.extend(f for f in new if f not in old)


def _each(rendered: Rendered | None) -> tuple[Flow, ...]:
    if rendered is None:
        return ()
    return rendered if type(rendered) is tuple else (cast(Flow, rendered),)


def _render(key: TableKey, items: Multiset, ids: Mapping[str, int], spread: Mapping[str, int]) -> Rendered:
    """The flow a merged key stands for (a busy clause key: one per band it uses)."""
    kind, direction, subject = key
    if kind == "clause":
        by_priority: dict[int, list[Conjunction]] = defaultdict(list)
        for k, clause, n in cast("Iterable[tuple[str, int, int]]", items):
            conj_id = ids[k]
            by_priority[band_priority(conj_id, spread.get(k, 1))].append(conjunction(conj_id, clause, n))
        flows = tuple(clause_flow(direction, cast(Match, subject), tuple(sorted(found, key=_CONJ_ORDER)), priority)
                      for priority, found in sorted(by_priority.items(), reverse=True))
        return flows[0] if len(flows) == 1 else flows
    if kind == "direct":
        return allow_flow(direction, Priority.DIRECT_ALLOW, cast(Match, subject),
                           merged_cookie(set(cast("Iterable[int]", items))))
    if kind == "conj":
        shared, port = cast("tuple[str, int]", subject)
        conj_id = ids[shared]
        return allow_flow(direction, band_priority(conj_id, spread.get(shared, 1)),
                           conj_id_match(direction, conj_id, port), merged_cookie(set(cast("Iterable[int]", items))))
    pod, ofport = cast("tuple[str, int]", subject)
    if kind == "audit":
        return audit_deny_flow(direction, ofport, pod)
    return isolation_flow(direction, "in_port" if direction == "Egress" else REG_OUT_PORT, ofport, pod)


def _rerender_clause(key: TableKey, before: Flow, old: Multiset, new: Multiset,
                     id_maps: tuple[Mapping[str, int], Mapping[str, int]], spread: Mapping[str, int]) -> Rendered:
    """A shared clause flow after a few of its contributions came or went: its sorted
    conjunction() list patched by bisection rather than rebuilt from every contribution (a
    monitoring namespace's address can carry a thousand of them). Each distinct contribution
    stands for exactly one conjunction (its shared key fixes the id), so presence is 1:1;
    how many grants contribute it is only a count. Rendered whole when a conjunction that
    came sits in another band than the flow (`id_maps`: the ids before and after)."""
    old_ids, ids = id_maps
    actions = list(cast("tuple[Conjunction, ...]", before.actions))
    gone = cast("set[tuple[str, int, int]]", old.keys() - new.keys())
    came = cast("set[tuple[str, int, int]]", new.keys() - old.keys())
    if not gone and not came:
        return before  # only how many times something contributes changed
    if any(band_priority(ids[k], spread.get(k, 1)) != before.priority for k, _, _ in came):
        return _render(key, new, ids, spread)
    for conj_key, clause, _ in gone:
        del actions[bisect_left(actions, (old_ids[conj_key], clause), key=_CONJ_ORDER)]
    for conj_key, clause, n in came:
        insort(actions, conjunction(ids[conj_key], clause, n), key=_CONJ_ORDER)
    return clause_flow(key[1], cast(Match, key[2]), tuple(actions), before.priority)


def _ports_key(ports: tuple[PortRange, ...]) -> str:
    return ",".join(f"{p.protocol}:{p.lo}-{p.hi}" for p in ports) or "all"


def place_grant(key: str, direction: Direction, rcookie: int, grant: Grant, ports: Mapping[PodKey, int],
           memo: dict[Any, Any]) -> _Conj | None:
    local = sorted(ports[k] for k in grant.targets if k in ports)
    if not local:
        return None
    dimensions: list[tuple[Match, ...]] = [tuple(target_match(direction, p) for p in local)]
    if not grant.peers.any:
        dimensions.append(peer_matches(direction, grant.peers, memo))
    if grant.ports:
        dimensions.append(tuple(m for pr in grant.ports for m in port_matches(pr)))
    shared = _shared_key(direction, grant, len(dimensions), memo)
    return _Conj(key, shared, direction, rcookie, tuple(dimensions), tuple(local))


def _shared_key(direction: Direction, grant: Grant, n: int, memo: dict[Any, Any]) -> str:
    """The conjunction a grant takes part in: direction, clause count, where its peers come
    from and its ports. Peers of unknown source (built outside the resolver) are named by
    their addresses instead (memoised per Peers object, as peer_matches)."""
    source = "any" if grant.peers.any else grant.peers.source
    if not source:
        found = memo.get(("source", id(grant.peers)))
        if found is None:
            found = memo[("source", id(grant.peers))] = (grant.peers, ",".join(map(str, grant.peers.cidrs)))
        source = f"cidrs {cast('tuple[Peers, str]', found)[1]}"
    return f"{direction}|{n}|{_ports_key(grant.ports)}|{source}"
