"""The fast path for established connections, which still revokes (docs/pipeline.md,
"Established connections: the fast path").

A *verdict fingerprint* is a 64-bit digest of everything in one direction's rule tables that
can decide a local pod's verdicts: the flows that match the pod itself (its conjunction
clauses, direct allows, isolation drop, and the `conj_id` flows naming it: action and
priority), every conjunction it takes part in (the conjunction's other clauses — resolved
peer addresses, ports — and a `conj_id` flow naming no pod, as the tier tables have), and
the flows of those tables that match no pod at all (misses, node-local bypasses). Egress:
tables 38, 40, 41, 42 and the pod's `in_port`; ingress: 58, 60, 61, 62 and its `reg2`.

Committing a connection writes the fingerprints it was admitted under into its ct_label
(egress half: the source pod's, on the source's node; ingress half: the destination pod's,
on the destination's node). An original-direction TCP/UDP packet of an established
connection whose half still equals the pod's fingerprint skips that direction's rule
tables; any other walks them as before (and on allow is stamped again, on deny dropped).
Whatever could change a verdict changes the flows above, so it changes the fingerprint:
withdrawing or narrowing an allow, a peer relabelled out of a selector, a new deny. A change
that decides nothing for the pod (another pod's policy, another conjunction sharing a clause
flow) leaves it as it was. Adding an allow changes it too; that only costs one re-check per
connection.

Pure: a function of the compiled flows, digested with BLAKE2b over their ovs-ofctl text, so
a restarted controller computes the same values and sends nothing.
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from functools import lru_cache
from typing import Any, cast

from sdn_netpol.compiler.flow import Conjunction, Ct, Flow, FlowId, GotoTable, Match, SetField
from sdn_netpol.compiler.ofctl import render_actions, render_match
from sdn_netpol.compiler.pipeline import (
    CT_ZONE,
    FINGERPRINT_MASK,
    FLAG_FAST_ELIGIBLE,
    REG_FLAGS,
    REG_OUT_PORT,
    CookieCategory,
    Priority,
    Table,
    cookie,
    label_half,
    pod_object_id,
)
from sdn_netpol.compiler.topology import NodeContext, PortBinding

#: A direction's rule tables (the tiers the fast path skips) and the field naming the local pod.
RULE_TABLES: Mapping[str, tuple[int, ...]] = {
    "Egress": (Table.EGRESS_ADMIN, Table.EGRESS_RULE, Table.EGRESS_DEFAULT, Table.EGRESS_BASELINE),
    "Ingress": (Table.INGRESS_ADMIN, Table.INGRESS_RULE, Table.INGRESS_DEFAULT, Table.INGRESS_BASELINE),
}
POD_FIELD: Mapping[str, str] = {"Egress": "in_port", "Ingress": REG_OUT_PORT}
_DIRECTION_OF = {int(t): d for d, tables in RULE_TABLES.items() for t in tables}
_PERSON = b"sdn-netpol-fp"  # BLAKE2b personalisation: these digests are fingerprints, nothing else


@dataclass(frozen=True)
class _Entry:
    """What one rule-table flow contributes: its direction, the pod it names (None: every
    pod), its text (None for a pod-less clause flow: nothing reads it, and rendering a
    thousand conjunction() actions was most of a 50k compile's fingerprinting), and its
    conjunction clauses (id, text) if it is a clause flow."""

    direction: str
    pod: int | None
    conj_id: int | None
    text: str | None
    clauses: tuple[tuple[int, str], ...]

    @property
    def pooled_clauses(self) -> bool:
        """A clause flow naming no pod: only its (conjunction, clause) pairs count."""
        return self.pod is None and self.conj_id is None and bool(self.clauses)


@lru_cache(maxsize=1 << 19)
def _entry(flow: Flow) -> _Entry | None:
    """Cached per flow: unchanged flows are the same objects from one compile to the next."""
    direction = _DIRECTION_OF.get(flow.table)
    if direction is None:
        return None
    head = _head(flow.id)
    texts: dict[tuple[int, int], str] = {}  # a flow's clauses are few (k, n) pairs: format each once
    clauses = []
    for action in flow.actions:
        if isinstance(action, Conjunction):
            where = (action.clause, action.n_clauses)
            text = texts.get(where)
            if text is None:
                text = texts[where] = f"{head},{action.clause}/{action.n_clauses}"
            clauses.append((action.id, text))
    pod, conj_id = flow.match.value(POD_FIELD[direction]), flow.match.value("conj_id")
    text = None if pod is None and conj_id is None and clauses else f"{head},{render_actions(flow.actions)}"
    return _Entry(direction, pod, conj_id, text, tuple(clauses))


def fingerprints(flows: Iterable[Flow], ports: Iterable[int]) -> dict[tuple[str, int], int]:
    """{(direction, ofport): fingerprint} for the local pods at `ports`, from a node's flows.

    A fingerprint is never 0: a ct_label half of 0 means "never stamped" (a connection
    committed before the fast path existed, or by a path that does not stamp)."""
    return dict(FingerprintIndex.build(flows, ports).prints)


_Key = tuple[str, int]
_Bag = dict[str, int]


class FingerprintIndex:
    """The rule-table flows grouped as the fingerprints read them, and the fingerprints.

    `update` takes the flows a change removed and added and recomputes only the fingerprints
    it can have touched (pods whose own flows changed, pods in a conjunction whose clauses or
    verdict changed, every pod of a direction whose pod-less flows changed), so a pod change
    at 10k pods × 1,000 policies does not re-read 20k flows. A pod-less clause flow replaced
    under one identity (a shared peer address gaining one conjunction() of its thousand)
    counts as the conjunctions that came or went, not as all of them: only those are dirty.
    The previous index is left as it was (changed maps are copied), so a compilation can be
    updated from more than once."""

    __slots__ = (
        "_conj_digests",
        "_shared_digests",
        "changed_ports",
        "clauses",
        "members",
        "own",
        "own_ids",
        "ports",
        "prints",
        "shared",
        "verdicts",
    )

    def __init__(self) -> None:
        self.shared: dict[str, _Bag] = {"Egress": {}, "Ingress": {}}
        self.own: dict[_Key, _Bag] = {}
        self.own_ids: dict[_Key, dict[int, int]] = {}
        self.clauses: dict[int, _Bag] = {}
        self.verdicts: dict[int, _Bag] = {}
        self.members: dict[int, dict[_Key, int]] = {}  # conjunction id -> pods with a clause in it
        self.ports: frozenset[int] = frozenset()
        self.prints: dict[_Key, int] = {}
        self.changed_ports: frozenset[int] = frozenset()  # whose fingerprints the last update changed
        self._conj_digests: dict[int, bytes] = {}
        self._shared_digests: dict[str, bytes] = {}

    @classmethod
    def build(cls, flows: Iterable[Flow], ports: Iterable[int]) -> FingerprintIndex:
        index = cls()
        clauses = index.clauses
        for flow in flows:
            entry = _entry(flow)
            if entry is None:
                continue
            if entry.pooled_clauses:  # the bulk of a large node's pairs: counted inline
                for cid, text in entry.clauses:
                    inner = clauses.get(cid)
                    if inner is None:
                        inner = clauses[cid] = {}
                    inner[text] = inner.get(text, 0) + 1
            else:
                index._count(entry, 1, None)
        index.ports = frozenset(ports)
        index.prints = {(d, p): index._fingerprint((d, p)) for p in index.ports for d in RULE_TABLES}
        index.changed_ports = index.ports
        return index

    def update(self, removed: Iterable[Flow], added: Iterable[Flow], ports: Iterable[int]) -> FingerprintIndex:
        new = self._copy()
        dirty = _Dirty()
        removed, added, replaced = _pair_pooled(removed, added)
        for head, gone, came in replaced:
            for conjunction in gone:
                new._clause(conjunction, head, -1, dirty)
            for conjunction in came:
                new._clause(conjunction, head, 1, dirty)
        for flows, sign in ((removed, -1), (added, 1)):
            for flow in flows:
                entry = _entry(flow)
                if entry is not None:
                    new._count(entry, sign, dirty)
        new.ports = frozenset(ports)
        for cid in dirty.conjunctions:
            new._conj_digests.pop(cid, None)
        for direction in dirty.shared:
            new._shared_digests.pop(direction, None)
        touched = set(dirty.pods)
        for cid in dirty.conjunctions:
            touched.update(new.members.get(cid, ()))
        new.prints, new.changed_ports = new._reprint(self, touched, dirty.shared)
        return new

    def _reprint(self, previous: FingerprintIndex, touched: set[_Key],
                 shared: set[str]) -> tuple[dict[_Key, int], frozenset[int]]:
        """The fingerprints after an update, and the ports whose fingerprints changed. With
        the same ports and no pod-less flow changed (a pod change), only the touched keys
        are recomputed: a 100k-pod node's 20k keys are not walked for each change."""
        if self.ports == previous.ports and not shared:
            prints = dict(previous.prints)
            keys: Iterable[_Key] = (key for key in touched if key[1] in self.ports)
        else:
            prints = {key: value for key, value in previous.prints.items() if key[1] in self.ports}
            keys = [(d, p) for p in self.ports for d in RULE_TABLES
                    if (d, p) not in prints or (d, p) in touched or d in shared]
        changed = set(self.ports - previous.ports)
        for key in keys:
            value = self._fingerprint(key)
            if prints.get(key) != value:
                prints[key] = value
                changed.add(key[1])
        return prints, frozenset(changed)

    def _copy(self) -> FingerprintIndex:
        new = FingerprintIndex()
        new.shared = dict(self.shared)
        new.own, new.own_ids = dict(self.own), dict(self.own_ids)
        new.clauses, new.verdicts, new.members = dict(self.clauses), dict(self.verdicts), dict(self.members)
        new._conj_digests, new._shared_digests = dict(self._conj_digests), dict(self._shared_digests)
        return new

    def _clause(self, conjunction: Conjunction, head: str, sign: int, dirty: _Dirty) -> None:
        """One conjunction() of a pod-less clause flow came (1) or went (-1)."""
        text = f"{head},{conjunction.clause}/{conjunction.n_clauses}"
        _bump(self.clauses, conjunction.id, text, sign, dirty.copied)
        dirty.conjunctions.add(conjunction.id)

    def _count(self, entry: _Entry, sign: int, dirty: _Dirty | None) -> None:
        """Add (sign 1) or take away (-1) one flow. With `dirty` (an update), every inner map
        changed is a copy, and what changed is noted."""
        copied = None if dirty is None else dirty.copied
        if entry.pod is not None:  # its clauses, direct allows, isolation, conj_id flows naming it
            key = (entry.direction, entry.pod)
            _bump(self.own, key, entry.text, sign, copied)
            for cid, _ in entry.clauses:
                _bump(self.own_ids, key, cid, sign, copied)
                _bump(self.members, cid, key, sign, copied)
            if dirty is not None:
                dirty.pods.add(key)
        elif entry.conj_id is not None:  # a verdict for every pod of the conjunction (tier tables)
            _bump(self.verdicts, entry.conj_id, entry.text, sign, copied)
            if dirty is not None:
                dirty.conjunctions.add(entry.conj_id)
        elif entry.clauses:
            for cid, text in entry.clauses:
                _bump(self.clauses, cid, text, sign, copied)
                if dirty is not None:
                    dirty.conjunctions.add(cid)
        else:
            _bump(self.shared, entry.direction, entry.text, sign, copied)
            if dirty is not None:
                dirty.shared.add(entry.direction)

    def _fingerprint(self, key: _Key) -> int:
        direction = key[0]
        shared = self._shared_digests.get(direction)
        if shared is None:
            shared = self._shared_digests[direction] = _digest(sorted(self.shared[direction]))
        h = hashlib.blake2b(digest_size=8, person=_PERSON)
        h.update(direction.encode())
        h.update(shared)
        h.update(_digest(sorted(self.own.get(key, ()))))
        for cid in sorted(self.own_ids.get(key, ())):
            found = self._conj_digests.get(cid)
            if found is None:
                found = self._conj_digests[cid] = _digest(
                    [f"conj {cid}", *sorted(self.verdicts.get(cid, ())), *sorted(self.clauses.get(cid, ()))])
            h.update(found)
        return int.from_bytes(h.digest(), "big") & FINGERPRINT_MASK or 1


_Replaced = tuple[str, set[Conjunction], set[Conjunction]]  # head, gone, came


def _pair_pooled(removed: Iterable[Flow], added: Iterable[Flow]) -> tuple[list[Flow], list[Flow], list[_Replaced]]:
    """Pod-less clause flows removed and added under one identity, as the conjunction()s
    that went and came (their clause texts share the flow's head); every other flow as is.
    A shared peer address re-rendered because one policy's conjunction joined it is then
    one pair of the thousand, not a thousand conjunctions marked dirty twice."""
    removed, added = list(removed), list(added)
    old = {f.id: f for f in removed if _pooled(f)}
    new = {f.id: f for f in added if _pooled(f)}
    replaced: list[_Replaced] = []
    for fid in old.keys() & new.keys():
        before, after = set(old[fid].actions), set(new[fid].actions)
        gone, came = before - after, after - before
        if all(isinstance(a, Conjunction) for a in (*gone, *came)):
            del old[fid], new[fid]
            replaced.append((_head(fid), cast("set[Conjunction]", gone), cast("set[Conjunction]", came)))
    rest_removed = [f for f in removed if not _pooled(f) or f.id in old]
    rest_added = [f for f in added if not _pooled(f) or f.id in new]
    return rest_removed, rest_added, replaced


def _pooled(flow: Flow) -> bool:
    """A rule-table clause flow naming no pod (its actions are conjunction()s)."""
    return bool(flow.actions) and isinstance(flow.actions[0], Conjunction) and _pod_less(flow.id)


@lru_cache(maxsize=1 << 19)
def _pod_less(fid: FlowId) -> bool:
    direction = _DIRECTION_OF.get(fid.table)
    return direction is not None and fid.match.value(POD_FIELD[direction]) is None \
        and fid.match.value("conj_id") is None


@lru_cache(maxsize=1 << 19)
def _head(fid: FlowId) -> str:
    """A rule-table flow's table, priority and match as the fingerprints' texts begin."""
    return f"{fid.table},{fid.priority},{render_match(fid.match)}"


@dataclass
class _Dirty:
    pods: set[_Key] = field(default_factory=set)
    conjunctions: set[int] = field(default_factory=set)
    shared: set[str] = field(default_factory=set)
    copied: set[int] = field(default_factory=set)  # ids of inner maps this update made (its own)


def _bump(table: dict[Any, dict[Any, int]], key: Any, item: Any, sign: int, copied: set[int] | None) -> None:
    """table[key][item] += sign, dropping zeros. With `copied` (an update), an inner map not
    made by this update is replaced by a copy first, so the previous index keeps its own."""
    inner = table.get(key)
    if inner is None:
        inner = {}
        if copied is not None:
            copied.add(id(inner))
    elif copied is not None and id(inner) not in copied:
        inner = dict(inner)
        copied.add(id(inner))
    count = inner.get(item, 0) + sign
    if count:
        inner[item] = count
    else:
        inner.pop(item, None)
    if inner:
        table[key] = inner
    else:
        table.pop(key, None)


def _digest(texts: Iterable[str]) -> bytes:
    return hashlib.blake2b("".join(f"{text}\n" for text in texts).encode(), digest_size=16, person=_PERSON).digest()


#: Each local port's binding and its fast-path and stamp flows.
FastFlows = Mapping[int, tuple[PortBinding, tuple[Flow, ...]]]
_FastDict = dict[int, tuple[PortBinding, tuple[Flow, ...]]]


def fastpath_flows(node: NodeContext, prints: Mapping[tuple[str, int], int]) -> _FastDict:
    """Every local pod's fast-path and stamp flows (see pod_fastpath_flows), by port."""
    return {b.ofport: (b, pod_fastpath_flows(b, prints[("Egress", b.ofport)], prints[("Ingress", b.ofport)]))
            for b in node.bindings}


def refresh_fastpath(previous: FastFlows, gone: Iterable[PortBinding], new: Iterable[PortBinding],
                     index: FingerprintIndex) -> tuple[_FastDict, list[Flow], list[Flow]]:
    """The fast-path flows after a change, and the flows that went and came: only pods whose
    binding or fingerprints changed are rendered again (re-rendering and hashing every
    local pod's four flows cost a 50k-pod relabel ~0.3 s)."""
    fast = dict(previous)
    removed: list[Flow] = []
    for binding in gone:
        held = fast.pop(binding.ofport, None)
        if held is not None:
            removed.extend(held[1])
    stale = set(index.changed_ports)
    for binding in new:
        fast[binding.ofport] = (binding, ())
        stale.add(binding.ofport)
    added: list[Flow] = []
    for port in stale:
        held = fast.get(port)
        if held is None:
            continue
        binding, flows = held
        fresh = pod_fastpath_flows(binding, index.prints[("Egress", port)], index.prints[("Ingress", port)])
        before, after = set(flows), set(fresh)
        removed.extend(before - after)
        added.extend(after - before)
        fast[port] = (binding, fresh)
    return fast, removed, added


@lru_cache(maxsize=1 << 16)
def pod_fastpath_flows(binding: PortBinding, egress: int, ingress: int) -> tuple[Flow, ...]:
    """One local pod, with its egress and ingress fingerprints:
    - EgressFast (36): an established packet from the pod whose ct_label egress half is
      `egress` goes straight to L3Forwarding;
    - IngressFast (56): an established (eligible) packet to the pod whose ingress half is
      `ingress` goes straight to Commit;
    - EgressStamp (73) / IngressStamp (74), per address family of the pod: ct(commit) writing
      that half, for packets Commit sends here (a checked +new packet, or an established one
      that walked the rules)."""
    pod_cookie = cookie(CookieCategory.FAST_PATH, pod_object_id(str(binding.pod)))
    port = binding.ofport
    eligible = (FLAG_FAST_ELIGIBLE, FLAG_FAST_ELIGIBLE)
    flows = [
        Flow(Table.EGRESS_FAST, Priority.NORMAL,
             Match.build(None, in_port=port, ct_label=label_half("Egress", egress)),
             (GotoTable(Table.L3_FORWARDING),), pod_cookie),
        Flow(Table.INGRESS_FAST, Priority.NORMAL,
             Match.build(None, ct_label=label_half("Ingress", ingress), **{REG_OUT_PORT: port, REG_FLAGS: eligible}),
             (GotoTable(Table.COMMIT),), pod_cookie),
    ]
    for family in sorted({"ip" if ip.version == 4 else "ipv6" for ip in binding.ips}):
        for table, pod_field, direction, value in ((Table.EGRESS_STAMP, "in_port", "Egress", egress),
                                                   (Table.INGRESS_STAMP, REG_OUT_PORT, "Ingress", ingress)):
            stamp = Ct(commit=True, zone=CT_ZONE, exec_actions=(SetField("ct_label", *label_half(direction, value)),))
            flows.append(Flow(table, Priority.NORMAL, _stamp_match(family, pod_field, port), (stamp,), pod_cookie))
    return tuple(flows)


@lru_cache(maxsize=1 << 16)
def _stamp_match(family: str, pod_field: str, port: int) -> Match:
    """The same for every fingerprint: a pod whose fingerprints change (a new peer of 500
    policies changes 500 pods') builds only its two fingerprint matches again."""
    return Match.build(family, **{pod_field: port})
