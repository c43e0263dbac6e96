"""The fast path for established connections, which still revokes (docs/pipeline.md,
"Established connections: the fast path").

A *verdict fingerprint* is a 64-bit digest of everything in one direction's rule tables that
can decide a local pod's verdicts: the flows that match the pod itself (its conjunction
clauses, direct allows, isolation drop), every conjunction it takes part in (the
conjunction's other clauses — resolved peer addresses, ports — and its `conj_id` flow: the
action and the priority), and the flows of those tables that match no pod at all (misses,
node-local bypasses). Egress: tables 38, 40, 41, 42 and the pod's `in_port`; ingress: 58,
60, 61, 62 and its `reg2`.

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
from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass
from functools import lru_cache

from sdn_netpol.compiler.flow import Conjunction, Ct, Flow, GotoTable, Match, SetField
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
    pod), its text, and its conjunction clauses (id, text) if it is a clause flow."""

    direction: str
    pod: int | None
    conj_id: int | None
    text: str
    clauses: tuple[tuple[int, str], ...]


@lru_cache(maxsize=1 << 18)
def _entry(flow: Flow) -> _Entry | None:
    """Cached per flow: unchanged flows are the same objects from one compile to the next."""
    direction = _DIRECTION_OF.get(flow.table)
    if direction is None:
        return None
    head = f"{flow.table},{flow.priority},{render_match(flow.match)}"
    conjunctions = [a for a in flow.actions if isinstance(a, Conjunction)]
    clauses = tuple((c.id, f"{head},{c.clause}/{c.n_clauses}") for c in conjunctions)
    return _Entry(direction, flow.match.value(POD_FIELD[direction]), flow.match.value("conj_id"),
                  f"{head},{render_actions(flow.actions)}", clauses)


def fingerprints(flows: Iterable[Flow], ports: Iterable[int]) -> dict[tuple[str, int], int]:
    """{(direction, ofport): fingerprint} for the local pods at `ports`, from a node's flows.

    A fingerprint is never 0: a ct_label half of 0 means "never stamped" (a connection
    committed before the fast path existed, or by a path that does not stamp)."""
    shared: dict[str, list[str]] = {"Egress": [], "Ingress": []}
    own: dict[tuple[str, int], list[str]] = {}
    own_ids: dict[tuple[str, int], set[int]] = {}
    clauses: dict[int, list[str]] = {}
    verdicts: dict[int, list[str]] = {}
    for flow in flows:
        entry = _entry(flow)
        if entry is None:
            continue
        if entry.conj_id is not None:
            verdicts.setdefault(entry.conj_id, []).append(entry.text)
        elif entry.pod is not None:
            key = (entry.direction, entry.pod)
            own.setdefault(key, []).append(entry.text)
            own_ids.setdefault(key, set()).update(cid for cid, _ in entry.clauses)
        elif entry.clauses:
            for cid, text in entry.clauses:
                clauses.setdefault(cid, []).append(text)
        else:
            shared[entry.direction].append(entry.text)
    conj_digests: dict[int, bytes] = {}

    def conj_digest(cid: int) -> bytes:
        found = conj_digests.get(cid)
        if found is None:
            found = _digest([f"conj {cid}", *sorted(verdicts.get(cid, ())), *sorted(clauses.get(cid, ()))])
            conj_digests[cid] = found
        return found

    shared_digest = {d: _digest(sorted(texts)) for d, texts in shared.items()}
    result: dict[tuple[str, int], int] = {}
    for port in ports:
        for direction in RULE_TABLES:
            key = (direction, port)
            h = hashlib.blake2b(digest_size=8, person=_PERSON)
            h.update(direction.encode())
            h.update(shared_digest[direction])
            h.update(_digest(sorted(own.get(key, ()))))
            for cid in sorted(own_ids.get(key, ())):
                h.update(conj_digest(cid))
            result[key] = int.from_bytes(h.digest(), "big") & FINGERPRINT_MASK or 1
    return result


def _digest(texts: Iterable[str]) -> bytes:
    h = hashlib.blake2b(digest_size=16, person=_PERSON)
    for text in texts:
        h.update(text.encode())
        h.update(b"\n")
    return h.digest()


def fastpath_flows(node: NodeContext, prints: Mapping[tuple[str, int], int]) -> Iterator[Flow]:
    """Every local pod's fast-path and stamp flows (see pod_fastpath_flows)."""
    for binding in node.bindings:
        yield from pod_fastpath_flows(binding, prints[("Egress", binding.ofport)],
                                      prints[("Ingress", binding.ofport)])


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
        for table, field, direction, value in ((Table.EGRESS_STAMP, "in_port", "Egress", egress),
                                               (Table.INGRESS_STAMP, REG_OUT_PORT, "Ingress", ingress)):
            stamp = Ct(commit=True, zone=CT_ZONE, exec_actions=(SetField("ct_label", *label_half(direction, value)),))
            flows.append(Flow(table, Priority.NORMAL, Match.build(family, **{field: port}), (stamp,), pod_cookie))
    return tuple(flows)
