"""What the switches do with one packet, step by step, mapped back to policies and rules.

One engine for the lab and a live node: a :class:`Topology` says where pods and nodes are
and how to reach each node's ovs-vswitchd; the engine builds the packet as the source pod
sends it (its port, MAC and IP, to the virtual gateway MAC), runs ``ofproto/trace`` on the
source's node, and when the packet leaves through the tunnel it builds the packet as the
destination node receives it (tunnel port, tunnel addresses, VNI) and traces that node too.
Every flow met becomes a :class:`StepView` (table name from compiler/pipeline.py, cookie
decoded to its policy and rule); the verdict is the switches', the reasons are named with
the policy engine (which policies isolate the pod that dropped it).
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

from netaddr import IPAddress, IPNetwork

from sdn_netpol.compiler.pipeline import GATEWAY_MAC, TUNNEL_VNI, Table
from sdn_netpol.debug.names import Names, table_name
from sdn_netpol.model.objects import Protocol
from sdn_netpol.ovs.steps import Step, parse_steps
from sdn_netpol.ovs.trace import Tracer, parse_trace
from sdn_netpol.policy.state import ClusterState
from sdn_netpol.policy.verdict import Endpoint, decide

CT_STATES = {"new": ("trk,new",), "established": ("trk,est",), "reply": ("trk,est,rpl",)}
SOURCE_PORT = 40000


class DebugError(Exception):
    """Bad input or an unreachable switch: one line for the user (exit 2)."""


@dataclass(frozen=True)
class PodPlace:
    key: str
    node: str
    ofport: int | None  # None: the pod has no port on its node's bridge (yet)
    ip: str
    mac: str


@dataclass(frozen=True)
class NodePlace:
    name: str
    address: str
    pod_cidrs: tuple[str, ...]
    tunnel_ofport: int | None = None
    bridge: str | None = None  # when it is not the topology's (several nodes in one vswitchd)


@dataclass
class Topology:
    """Where things are, and a unixctl connection per node whose switch we can reach."""

    pods: Mapping[str, PodPlace]
    nodes: Mapping[str, NodePlace]
    bridge: str
    connect: Callable[[str], Tracer | None]  # node name -> its vswitchd, None if not reachable
    _open: dict[str, Tracer] = field(default_factory=dict)

    def tracer(self, node: str) -> Tracer | None:
        if node not in self._open:
            found = self.connect(node)
            if found is None:
                return None
            self._open[node] = found
        return self._open[node]

    def close(self) -> None:
        for tracer in self._open.values():
            tracer.close()
        self._open.clear()

    def node_at(self, address: str) -> NodePlace | None:
        return next((n for n in self.nodes.values() if n.address == address), None)

    def node_holding(self, ip: str) -> NodePlace | None:
        address = IPAddress(ip)
        return next((n for n in self.nodes.values() if any(address in IPNetwork(c) for c in n.pod_cidrs)), None)


@dataclass(frozen=True)
class StepView:
    node: str
    table: int
    table_name: str
    priority: int | None
    match: str
    actions: tuple[str, ...]
    cookie: str | None
    category: str | None
    policy: str | None
    direction: str | None
    rule: int | None
    pod: str | None

    def to_json(self) -> dict[str, Any]:
        return {"node": self.node, "table": self.table, "table_name": self.table_name, "priority": self.priority,
                "match": self.match, "actions": list(self.actions), "cookie": self.cookie,
                "category": self.category, "policy": self.policy, "direction": self.direction,
                "rule": self.rule, "pod": self.pod}


@dataclass(frozen=True)
class TraceReport:
    verdict: str  # "allowed" | "denied"
    reason: str
    nodes: tuple[str, ...]
    steps: tuple[StepView, ...]
    decided_by: dict[str, Any] | None
    isolated_by: tuple[str, ...] = ()
    continues_on: str | None = None  # a node whose switch this trace could not reach

    def to_json(self) -> dict[str, Any]:
        doc: dict[str, Any] = {"verdict": self.verdict, "reason": self.reason, "nodes": list(self.nodes),
                               "steps": [s.to_json() for s in self.steps], "decided_by": self.decided_by}
        if self.verdict == "denied" and self.isolated_by:
            doc["isolated_by"] = list(self.isolated_by)
        if self.continues_on:
            doc["continues_on"] = self.continues_on
        return doc


@dataclass(frozen=True)
class Packet:
    source: PodPlace | None  # None: the packet enters from the tunnel (live, remote source)
    source_ip: str
    source_mac: str
    destination_ip: str
    protocol: Protocol
    port: int
    state: str


def view(node: str, step: Step, names: Names) -> StepView:
    owner = names.owner(step.cookie)
    return StepView(node, step.table, table_name(step.table), step.priority, step.match, step.actions,
                    f"{step.cookie:#018x}" if step.cookie is not None else None,
                    owner.category, owner.policy, owner.direction, owner.rule, owner.pod)


def flow_text(packet: Packet, in_port: int, tunnel: tuple[str, str] | None = None) -> str:
    """The packet as ``ofproto/trace`` reads it (``udp_dst``/``sctp_dst``: its parser wants the
    protocol's own port fields; ``nw_ttl`` or ``dec_ttl`` would drop it)."""
    v6 = IPAddress(packet.source_ip).version == 6
    l4 = packet.protocol.lower()
    fields = [f"in_port={in_port}"]
    if tunnel:
        fields += [f"tun_id={TUNNEL_VNI:#x}", f"tun_src={tunnel[0]}", f"tun_dst={tunnel[1]}"]
    family = "ipv6" if v6 else "nw"
    fields += [l4 + ("6" if v6 else ""), f"dl_src={packet.source_mac}", f"dl_dst={GATEWAY_MAC}",
               f"{family}_src={packet.source_ip}", f"{family}_dst={packet.destination_ip}", "nw_ttl=64",
               f"{l4}_src={SOURCE_PORT}", f"{l4}_dst={packet.port}"]
    return ",".join(fields)


def trace_packet(topo: Topology, cluster: ClusterState, packet: Packet, start: NodePlace,
                 from_tunnel: tuple[str, str] | None = None) -> TraceReport:
    """Trace from `start` (the source pod's port, or the tunnel when `from_tunnel` names the
    sending and receiving node addresses) and on into the destination node."""
    names = Names.of(cluster)
    steps: list[StepView] = []
    nodes: list[str] = []
    if packet.source is not None and packet.destination_ip == packet.source_ip:
        return _finish(cluster, packet, steps, nodes, "allowed",
                       "a pod reaching its own address never leaves it (the pod's loopback); no switch sees it")
    node, tunnel = start, from_tunnel
    while True:
        tracer = topo.tracer(node.name)
        if tracer is None:
            return _finish(cluster, packet, steps, nodes, "allowed", f"forwarded to {node.name}, whose switch "
                           "is not reachable from here: trace there for the rest", continues_on=node.name)
        in_port = _in_port(packet, node, tunnel)
        bridge = node.bridge or topo.bridge
        raw = tracer.call("ofproto/trace", bridge, flow_text(packet, in_port, tunnel),
                          *[arg for flags in CT_STATES[packet.state] for arg in ("--ct-next", flags)])
        nodes.append(node.name)
        walked = [view(node.name, s, names) for s in parse_steps(raw) if s.bridge == bridge]
        steps += walked
        result = parse_trace(raw, bridge)
        if not result.of_outputs:
            return _denied(cluster, packet, steps, nodes, walked)
        if node.tunnel_ofport is not None and node.tunnel_ofport in result.of_outputs and tunnel is None:
            target = topo.node_at(result.tunnel_dst or "")
            if target is None:
                return _finish(cluster, packet, steps, nodes, "denied",
                               f"tunnelled to {result.tunnel_dst}, which is no known node")
            tunnel, node = (node.address, target.address), target
            continue
        how = "delivered to the pod" if tunnel or _is_local(topo, node, packet) else "sent out of the node"
        return _finish(cluster, packet, steps, nodes, "allowed", how)


def _in_port(packet: Packet, node: NodePlace, tunnel: tuple[str, str] | None) -> int:
    if tunnel is None:
        assert packet.source is not None and packet.source.ofport is not None
        return packet.source.ofport
    if node.tunnel_ofport is None:
        raise DebugError(f"node {node.name} has no tunnel port on its bridge")
    return node.tunnel_ofport


def _is_local(topo: Topology, node: NodePlace, packet: Packet) -> bool:
    holder = topo.node_holding(packet.destination_ip)
    return holder is not None and holder.name == node.name


def _denied(cluster: ClusterState, packet: Packet, steps: list[StepView], nodes: list[str],
            walked: list[StepView]) -> TraceReport:
    last = walked[-1] if walked else None
    if last is None:
        return _finish(cluster, packet, steps, nodes, "denied", "dropped before any flow")
    table = last.table
    if table == Table.EGRESS_DEFAULT or table == Table.INGRESS_DEFAULT:
        direction = "Egress" if table == Table.EGRESS_DEFAULT else "Ingress"
        verdict = _engine(cluster, packet)
        side = verdict.egress if direction == "Egress" else verdict.ingress
        policies = ", ".join(side.isolated_by) or "none known"
        report = _finish(cluster, packet, steps, nodes, "denied",
                         f"denied by {direction.lower()} isolation of {last.pod or side.subject} "
                         f"(policies {policies})")
        return TraceReport(report.verdict, report.reason, report.nodes, report.steps, None, side.isolated_by)
    if table in _TIER_TABLES and last.category == "rule":  # an admin or baseline Deny rule
        return _finish(cluster, packet, steps, nodes, "denied",
                       f"denied by {last.policy} {str(last.direction).lower()} rule {last.rule} ({last.table_name})")
    reasons = {Table.CLASSIFIER: "dropped: unknown port (no flows for it yet)",
               Table.SPOOF_GUARD: "dropped: spoofed source (address or MAC not the port's own)",
               Table.CONNTRACK_STATE: "dropped: invalid connection state",
               Table.L3_FORWARDING: "dropped: no route to the destination",
               Table.OUTPUT: "dropped: no output port"}
    return _finish(cluster, packet, steps, nodes, "denied",
                   reasons.get(Table(table), f"dropped in table {table} ({last.table_name})")
                   if table in Table._value2member_map_ else f"dropped in table {table}")


_TIER_TABLES = (Table.EGRESS_ADMIN, Table.EGRESS_BASELINE, Table.INGRESS_ADMIN, Table.INGRESS_BASELINE)


def _passes(cluster: ClusterState, step: StepView) -> bool:
    """A cluster policy's Pass rule: it hands the packet on (to NetworkPolicy, or out of the
    Baseline to the default allow); it admits nothing itself."""
    if step.table not in _TIER_TABLES or step.category != "rule" or step.rule is None:
        return False
    policy = next((p for p in cluster.cluster_policies if p.ref == step.policy), None)
    if policy is None or step.direction not in ("Ingress", "Egress"):
        return False
    rules = policy.ingress if step.direction == "Ingress" else policy.egress
    return step.rule < len(rules) and rules[step.rule].action == "Pass"


def _engine(cluster: ClusterState, packet: Packet) -> Any:
    src_pod = _pod_at(cluster, packet.source_ip)
    dst_pod = _pod_at(cluster, packet.destination_ip)
    src = Endpoint(pod=src_pod) if src_pod else Endpoint(ip=IPAddress(packet.source_ip))
    dst = Endpoint(pod=dst_pod) if dst_pod else Endpoint(ip=IPAddress(packet.destination_ip))
    return decide(cluster, src, dst, packet.protocol, packet.port)


def _pod_at(cluster: ClusterState, ip: str) -> Any:
    address = IPAddress(ip)
    return next((p for p in cluster.pods if address in p.ips), None)


def _finish(cluster: ClusterState, packet: Packet, steps: list[StepView], nodes: list[str], verdict: str,
            reason: str, continues_on: str | None = None) -> TraceReport:
    decided = None
    if verdict == "allowed":
        tables = {Table.EGRESS_ADMIN: "Egress", Table.EGRESS_RULE: "Egress", Table.EGRESS_BASELINE: "Egress",
                  Table.INGRESS_ADMIN: "Ingress", Table.INGRESS_RULE: "Ingress", Table.INGRESS_BASELINE: "Ingress"}
        allowing = [s for s in steps if s.table in tables and s.category in ("rule", "shared")
                    and not _passes(cluster, s)]
        ingress = [s for s in allowing if tables[Table(s.table)] == "Ingress"]
        chosen = (ingress or allowing)[-1:]
        if chosen:
            decided = _rule_of(cluster, packet, chosen[0], tables[Table(chosen[0].table)])
    return TraceReport(verdict, reason, tuple(nodes), tuple(steps), decided, continues_on=continues_on)


def _rule_of(cluster: ClusterState, packet: Packet, step: StepView, direction: str) -> dict[str, Any] | None:
    """The rule an allowing step stands for. A flow several rules need identically (two
    rules that both allow everything for a pod) carries the SHARED cookie and names none:
    then it stands for the rules the policy engine finds allowing in that direction."""
    if step.category == "rule":
        return {"policy": step.policy, "direction": step.direction, "rule": step.rule}
    side = _engine(cluster, packet)
    matches = (side.egress if direction == "Egress" else side.ingress).allowed_by
    first = matches[0] if matches else None
    return {"policy": first.policy, "direction": first.direction, "rule": first.rule_index} if first else None
