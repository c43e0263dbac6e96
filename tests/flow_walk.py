"""A tiny, pure model of an OVS table walk, for behavioural compiler tests without a switch.

It implements only what the pipeline uses: highest-priority match per table, conjunctive
matches (all clauses of one id at one priority, then the `conj_id` flow), goto_table,
set_field on registers and Ethernet addresses, `ct(table=N)` as a recirculation with a
ct_state (and ct_label) the test chooses, `ct(commit)` (its exec writes to ct_label are
kept in `label`), resubmit, output and IN_PORT. Real OVS traces of the same
flows are in docs/pipeline.md and the differential tests; this model exists so that rule
tests can say "this packet is dropped" rather than "this flow exists".
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Iterable
from dataclasses import dataclass, field

from netaddr import EUI, IPAddress

from sdn_netpol.compiler.flow import (
    Action,
    Conjunction,
    Ct,
    Flow,
    GotoTable,
    Match,
    Output,
    OutputInPort,
    Resubmit,
    SetField,
)
from sdn_netpol.compiler.flowfields import parse_ct_state
from sdn_netpol.compiler.topology import NodeContext, PortBinding

Packet = dict[str, int]
_SET_AS = {"eth_src": "dl_src", "eth_dst": "dl_dst"}


@dataclass
class Walk:
    """Where a packet went: the flows it hit, where it was output, whether it was committed."""

    flows: list[Flow] = field(default_factory=list)
    outputs: list[int | str] = field(default_factory=list)
    committed: bool = False
    label: int = 0  # the ct_label after the walk's commits

    @property
    def dropped(self) -> bool:
        return not self.outputs

    @property
    def tables(self) -> list[int]:
        return [f.table for f in self.flows]


def matches(match: Match, packet: Packet) -> bool:
    for f in match:
        if f.name not in packet:
            return False
        mask = f.mask if f.mask is not None else (1 << 128) - 1
        if packet[f.name] & mask != f.value:
            return False
    return True


def lookup(flows: Iterable[Flow], packet: Packet) -> Flow | None:
    """OVS's choice in one table: by priority; a conjunctive match counts only once complete."""
    by_priority: dict[int, list[Flow]] = defaultdict(list)
    for flow in flows:
        if flow.match.get("conj_id") is None and matches(flow.match, packet):
            by_priority[flow.priority].append(flow)
    for priority in sorted(by_priority, reverse=True):
        candidates = by_priority[priority]
        plain = [f for f in candidates if not any(isinstance(a, Conjunction) for a in f.actions)]
        if plain:
            return plain[0]
        for conj_id in sorted(_complete(candidates)):
            found = [f for f in flows if f.priority == priority and f.match.value("conj_id") == conj_id
                     and matches(f.match, {**packet, "conj_id": conj_id})]
            if found:
                return found[0]
    return None


def _complete(clause_flows: list[Flow]) -> set[int]:
    seen: dict[int, set[int]] = defaultdict(set)
    sizes: dict[int, int] = {}
    for flow in clause_flows:
        for a in flow.actions:
            if isinstance(a, Conjunction):
                seen[a.id].add(a.clause)
                sizes[a.id] = a.n_clauses
    return {i for i, clauses in seen.items() if len(clauses) == sizes[i]}


def walk(flows: Iterable[Flow], packet: Packet, ct_state: str = "+new+trk", limit: int = 32,
         ct_label: int = 0) -> Walk:
    """Send `packet` into table 0 (registers zero, untracked); every ct(table=N) resumes at N
    with `ct_state` and `ct_label` set, as `ofproto/trace --ct-next` does with a ct_label in
    the traced flow."""
    tables: dict[int, list[Flow]] = defaultdict(list)
    for each in flows:
        tables[each.table].append(each)
    state = {**{f"reg{i}": 0 for i in range(8)}, "ct_state": 0, "ct_label": 0, **packet}
    result, table = Walk(label=ct_label), 0
    for _ in range(limit):
        flow = lookup(tables[table], state)
        if flow is None:
            return result
        result.flows.append(flow)
        next_table = _apply(flow.actions, tables, state, result, ct_state, ct_label)
        if next_table is None:
            return result
        table = next_table
    raise RuntimeError(f"walk did not end after {limit} tables: {result.tables}")


def _apply(actions: Iterable[Action], tables: dict[int, list[Flow]], state: Packet, result: Walk, ct_state: str,
           ct_label: int) -> int | None:
    """Run one flow's actions; the table a goto_table or ct(table=) continues in, if any."""
    next_table = None
    for action in actions:
        if isinstance(action, SetField):
            state[_SET_AS.get(action.field, action.field)] = action.value
        elif isinstance(action, GotoTable):
            next_table = action.table
        elif isinstance(action, Resubmit):
            found = lookup(tables[action.table], state)
            if found is not None:
                result.flows.append(found)
                _apply(found.actions, tables, state, result, ct_state, ct_label)
        elif isinstance(action, Ct):
            result.committed |= action.commit
            for write in action.exec_actions:
                mask = write.mask if write.mask is not None else (1 << 128) - 1
                result.label = result.label & ~mask | write.value
            if action.table is not None:
                state["ct_state"] = parse_ct_state(ct_state)[0]
                state["ct_label"] = ct_label
                next_table = action.table
        elif isinstance(action, Output):
            result.outputs.append(action.port)
        elif isinstance(action, OutputInPort):
            result.outputs.append("IN_PORT")
    return next_table


# ---- packets -------------------------------------------------------------------------------

GATEWAY_MAC = int(EUI("0a:00:00:00:00:fe"))


def ip_packet(binding: PortBinding, dst: str, port: int = 80, **override: int) -> Packet:
    """A TCP packet as the pod behind `binding` sends it to the virtual gateway MAC."""
    src = binding.ips[0]
    return {"in_port": binding.ofport, "dl_src": int(binding.mac), "dl_dst": GATEWAY_MAC, "dl_type": 0x0800,
            "nw_proto": 6, "nw_src": int(src), "nw_dst": int(IPAddress(dst)), "tp_dst": port, **override}


def arp_request(binding: PortBinding, target: str, **override: int) -> Packet:
    src = binding.ips[0]
    return {"in_port": binding.ofport, "dl_src": int(binding.mac), "dl_dst": 0xFFFFFFFFFFFF, "dl_type": 0x0806,
            "arp_op": 1, "arp_spa": int(src), "arp_sha": int(binding.mac), "arp_tpa": int(IPAddress(target)),
            **override}


def tunnel_packet(context: NodeContext, src: str, dst: str, port: int) -> Packet:
    """A new TCP connection arriving from another node (sources behind the tunnel are trusted)."""
    return {"in_port": context.tunnel_port or 0, "dl_type": 0x0800, "nw_proto": 6, "tp_dst": port,
            "nw_src": int(IPAddress(src)), "nw_dst": int(IPAddress(dst))}
