"""Differential check of compiled flows against the reference semantics on a real OVS.

For one cluster state: compile every node's flows, load them into that node's bridge of a
private userspace OVS (one bridge per node, ports created with the ofports the compiler
was told), then for every traceable (source, destination, protocol, port) trace the packet
through the bridges it really crosses and compare what OVS does with `decide()`:

* the source node's bridge (source pod's port, or the gateway port for an outside
  source) must forward the packet — to the destination pod's port, the tunnel or the
  gateway — iff the source side allows it (for a local destination: iff both sides do);
* a pod destination on another node: its bridge, entered from the tunnel (or for an
  outside source, from the gateway), must deliver iff the destination's ingress allows it;
* the same holds for original-direction packets of an established connection (`+est`),
  replies (`+est+rpl`) of an allowed connection always come back, and `+inv` never passes.

Established packets are traced with `ct_label` in the traced flow too: for each `Stamp` (the
fingerprints of a state the connection may have been committed under — the current one:
fast path; an earlier one, before a revocation: stale labels, slow path), each half holds
that state's fingerprint if that state's verdict admitted the connection in that direction
on that node (so it was stamped), else 0. Either way the verdict must be the current
state's.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, replace

from netaddr import IPAddress

from sdn_netpol.compiler.compile import compile_node
from sdn_netpol.compiler.fastpath import fingerprints
from sdn_netpol.compiler.ofctl import render_flows
from sdn_netpol.compiler.pipeline import FINGERPRINT_BITS, GATEWAY_MAC
from sdn_netpol.compiler.topology import NodeContext, assign_ports
from sdn_netpol.model.objects import Pod, Protocol
from sdn_netpol.ovs import OvsInstance, Tracer
from sdn_netpol.policy.state import ClusterState
from sdn_netpol.policy.verdict import Endpoint, connection_addresses, decide

NODES = ("node-1", "node-2")
MAX_PORTS = 10
TUNNEL_PORT = 100
GATEWAY_PORT = 101
NODE_ADDRESSES = {"node-1": IPAddress("192.168.0.1"), "node-2": IPAddress("192.168.0.2")}
_L4 = {("TCP", 4): "tcp", ("UDP", 4): "udp", ("SCTP", 4): "sctp",
       ("TCP", 6): "tcp6", ("UDP", 6): "udp6", ("SCTP", 6): "sctp6"}


def bridge_name(node: str) -> str:
    return "br-" + node.replace("node-", "n")


def create_bridges(ovs: OvsInstance, tag: str) -> None:
    """One br-int stand-in per node: internal ports 1..MAX_PORTS, a VXLAN tunnel, a gateway."""
    for index, node in enumerate(NODES):
        bridge = bridge_name(node)
        ovs.add_bridge(bridge)
        args: list[str] = []
        short = node.replace("node-", "")
        for ofport in range(1, MAX_PORTS + 1):
            name = f"{tag}{short}p{ofport}"
            args += ["--", "add-port", bridge, name, "--", "set", "Interface", name, "type=internal",
                     f"ofport_request={ofport}"]
        tunnel, gateway = f"{tag}{short}tun", f"{tag}{short}gw"
        args += ["--", "add-port", bridge, tunnel, "--", "set", "Interface", tunnel, "type=vxlan",
                 "options:remote_ip=flow", "options:key=flow", f"options:dst_port={4789 + index}",
                 f"ofport_request={TUNNEL_PORT}"]  # one OVS holds every bridge: distinct UDP ports
        args += ["--", "add-port", bridge, gateway, "--", "set", "Interface", gateway, "type=internal",
                 f"ofport_request={GATEWAY_PORT}"]
        ovs.vsctl(*args)


def node_contexts(state: ClusterState) -> dict[str, NodeContext]:
    contexts = {}
    for node in NODES:
        ctx = assign_ports(state, node, node_addresses=NODE_ADDRESSES)
        assert all(b.ofport <= MAX_PORTS for b in ctx.bindings)
        contexts[node] = replace(ctx, tunnel_port=TUNNEL_PORT, gateway_port=GATEWAY_PORT)
    return contexts


@dataclass(frozen=True)
class Stamp:
    """What a connection committed under `state` carries: its nodes' fingerprints then."""

    state: ClusterState
    prints: Mapping[str, Mapping[tuple[str, int], int]]


def stamp_of(state: ClusterState) -> Stamp:
    prints = {}
    for node, ctx in node_contexts(state).items():
        prints[node] = fingerprints(compile_node(state, ctx), [b.ofport for b in ctx.bindings])
    return Stamp(state, prints)


def load(ovs: OvsInstance, state: ClusterState) -> dict[str, NodeContext]:
    contexts = node_contexts(state)
    for node, ctx in contexts.items():
        ovs.replace_flows(bridge_name(node), render_flows(compile_node(state, ctx)))
    return contexts


@dataclass(frozen=True)
class Mismatch:
    what: str
    source: str
    destination: str
    protocol: str
    port: int
    expected: bool
    got: tuple[int, ...]

    def __str__(self) -> str:
        verdict = "allow" if self.expected else "deny"
        return (f"{self.what}: {self.source} -> {self.destination} {self.protocol}/{self.port}: "
                f"semantics say {verdict}, OVS output to {self.got or 'nothing'}")


@dataclass(frozen=True)
class _Side:
    """Where a packet of one endpoint enters or leaves a given bridge."""

    node: str
    in_port: int
    mac: str


class Differential:
    def __init__(self, tracer: Tracer, state: ClusterState, contexts: dict[str, NodeContext],
                 stamps: Sequence[Stamp] = ()) -> None:
        self.tracer = tracer
        self.state = state
        self.contexts = contexts
        self.stamps = tuple(stamps)
        self._ports = {b.pod: (node, b) for node, ctx in contexts.items() for b in ctx.bindings}

    def endpoints(self, externals: tuple[IPAddress, ...]) -> list[Endpoint]:
        pods = [Endpoint(pod=p) for p in self.state.pods if p.key in self._ports]
        return pods + [Endpoint(ip=ip) for ip in externals]

    def check(self, protocols: tuple[tuple[Protocol, int], ...], externals: tuple[IPAddress, ...]) -> list[Mismatch]:
        found: list[Mismatch] = []
        points = self.endpoints(externals)
        for src in points:
            for dst in points:
                if src.pod is None and dst.pod is None:
                    continue
                if src.pod is not None and dst.pod is not None and src.pod.key == dst.pod.key:
                    continue  # loopback never reaches the switch
                for protocol, port in protocols:
                    found.extend(self._check_one(src, dst, protocol, port))
        return found

    def _check_one(self, src: Endpoint, dst: Endpoint, protocol: Protocol, port: int) -> Iterator[Mismatch]:
        src_ip, dst_ip = connection_addresses(src, dst)
        if src_ip is None or dst_ip is None or src_ip.version != dst_ip.version:
            return
        verdict = decide(self.state, src, dst, protocol, port)
        args = (src, dst, protocol, port, src_ip, dst_ip)
        for ct in ("trk,new", "trk,est"):
            yield from self._first_hop(*args, verdict.egress.allowed, verdict.ingress.allowed, ct)
            yield from self._last_hop(*args, verdict.ingress.allowed, ct)
        for stamp in self.stamps:
            then = decide(stamp.state, src, dst, protocol, port)
            if not then.egress.allowed:
                continue  # never committed: nothing was stamped (as plain "trk,est" above)
            labels = self._labels(stamp, src, dst, then.ingress.allowed)
            yield from self._first_hop(*args, verdict.egress.allowed, verdict.ingress.allowed, "trk,est",
                                       labels[0])
            yield from self._last_hop(*args, verdict.ingress.allowed, "trk,est", labels[1])
        yield from self._invalid(*args)

    def _labels(self, stamp: Stamp, src: Endpoint, dst: Endpoint, ingress_then: bool) -> tuple[int, int]:
        """The ct_label a connection committed under `stamp` has on the first hop's node and on
        the destination's node (last hop): the source pod's egress half where it is local,
        the destination pod's ingress half where it is local and ingress admitted it."""
        first = self._entry(src, dst).node
        last = self._ports[dst.pod.key][0] if dst.pod is not None else None
        labels = []
        for node in (first, last):
            label = 0
            if src.pod is not None and self._ports[src.pod.key][0] == node:
                label |= stamp.prints[node].get(("Egress", self._ports[src.pod.key][1].ofport), 0)
            if dst.pod is not None and last == node and ingress_then:
                label |= stamp.prints[node].get(("Ingress", self._ports[dst.pod.key][1].ofport), 0) << FINGERPRINT_BITS
            labels.append(label)
        return labels[0], labels[1]

    def _first_hop(self, src: Endpoint, dst: Endpoint, protocol: Protocol, port: int, src_ip: IPAddress,
                   dst_ip: IPAddress, egress: bool, ingress: bool, ct: str, label: int = 0) -> Iterator[Mismatch]:
        """The bridge the packet enters first: egress (and ingress when both ends are local)."""
        entry = self._entry(src, dst)
        exit_port, same_node = self._exit(entry.node, dst)
        expected = egress and (ingress or not same_node)
        got = self._trace(entry, protocol, src_ip, dst_ip, port, ct, label=label)
        want = (exit_port,) if expected else ()
        if got != want:
            what = f"first hop ({ct}{f', ct_label={label:#x}' if label else ''}) on {entry.node}"
            yield Mismatch(what, str(src), str(dst), protocol, port, expected, got)

    def _last_hop(self, src: Endpoint, dst: Endpoint, protocol: Protocol, port: int,
                  src_ip: IPAddress, dst_ip: IPAddress, ingress: bool, ct: str, label: int = 0) -> Iterator[Mismatch]:
        """A pod destination on another node: its bridge, entered from the tunnel."""
        if dst.pod is None:
            return
        dst_node, binding = self._ports[dst.pod.key]
        if self._entry(src, dst).node == dst_node:
            return
        entry = _Side(dst_node, TUNNEL_PORT, GATEWAY_MAC)
        got = self._trace(entry, protocol, src_ip, dst_ip, port, ct, label=label)
        want = (binding.ofport,) if ingress else ()
        if got != want:
            what = f"last hop ({ct}{f', ct_label={label:#x}' if label else ''}) on {dst_node}"
            yield Mismatch(what, str(src), str(dst), protocol, port, ingress, got)

    def _invalid(self, src: Endpoint, dst: Endpoint, protocol: Protocol, port: int,
                 src_ip: IPAddress, dst_ip: IPAddress) -> Iterator[Mismatch]:
        entry = self._entry(src, dst)
        got = self._trace(entry, protocol, src_ip, dst_ip, port, "trk,inv")
        if got:
            yield Mismatch("invalid packet", str(src), str(dst), protocol, port, False, got)

    def check_replies(self, protocol: Protocol, port: int) -> list[Mismatch]:
        """Replies of connections between local pods always return (policy bypass).

        Not for SCTP: its replies pass only by a 5-tuple the switch learns when it commits the
        association, which a trace cannot do (tests/test_pipeline_ovs.py sends real SCTP)."""
        if protocol == "SCTP":
            return []
        found = []
        pods = [p for p in self.state.pods if p.key in self._ports]
        for client in pods:
            for server in pods:
                if client.key == server.key:
                    continue
                found.extend(self._reply(client, server, protocol, port))
        return found

    def _reply(self, client: Pod, server: Pod, protocol: Protocol, port: int) -> Iterator[Mismatch]:
        c_ip, s_ip = connection_addresses(Endpoint(pod=client), Endpoint(pod=server))
        if c_ip is None or s_ip is None:
            return
        entry = self._entry(Endpoint(pod=server), Endpoint(pod=client))
        exit_port, _ = self._exit(entry.node, Endpoint(pod=client))
        got = self._trace(entry, protocol, s_ip, c_ip, 40000, "trk,est,rpl", src_port=port)
        if got != (exit_port,):
            yield Mismatch("reply", str(server), str(client), protocol, port, True, got)

    def _entry(self, src: Endpoint, dst: Endpoint) -> _Side:
        if src.pod is not None:
            node, binding = self._ports[src.pod.key]
            return _Side(node, binding.ofport, str(binding.mac))
        # an outside source enters through the gateway of the destination's node
        assert dst.pod is not None
        node, _ = self._ports[dst.pod.key]
        return _Side(node, GATEWAY_PORT, "02:ee:00:00:00:01")

    def _exit(self, node: str, dst: Endpoint) -> tuple[int, bool]:
        if dst.pod is None:
            return GATEWAY_PORT, False
        dst_node, binding = self._ports[dst.pod.key]
        return (binding.ofport, True) if dst_node == node else (TUNNEL_PORT, False)

    def _trace(self, entry: _Side, protocol: Protocol, src_ip: IPAddress, dst_ip: IPAddress, port: int,
               ct: str, src_port: int = 40000, label: int = 0) -> tuple[int, ...]:
        family = "ipv6" if src_ip.version == 6 else "nw"
        l4 = protocol.lower()  # the trace parser wants udp_dst/sctp_dst, not tp_dst, for those
        # a ct_label in the traced flow survives the ct() recirculation (ct_state comes from --ct-next)
        flow = (f"{f'ct_label={label:#x},' if label else ''}"
                f"{_L4[(protocol, src_ip.version)]},in_port={entry.in_port},dl_src={entry.mac},"
                f"dl_dst={GATEWAY_MAC},{family}_src={src_ip},{family}_dst={dst_ip},"
                f"{l4}_src={src_port},{l4}_dst={port},nw_ttl=64")
        return self.tracer.trace(bridge_name(entry.node), flow, [ct]).of_outputs
