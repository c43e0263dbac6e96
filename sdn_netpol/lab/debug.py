"""`lab trace` and `lab flows`: the debugging engine (sdn_netpol/debug/) on the lab's nodes.

The lab knows everything the engine needs: pods' nodes, addresses and MACs (its state),
their OpenFlow ports (each controller's /status), every node's address, pod CIDR and
tunnel port, and every node's vswitchd (its rundir).
"""

from __future__ import annotations

from pathlib import Path
from typing import cast

from netaddr import AddrFormatError, IPAddress

from sdn_netpol.debug import stats
from sdn_netpol.debug.flows import FlowView, Selection, dumper, select
from sdn_netpol.debug.names import Names
from sdn_netpol.debug.trace import (
    CT_STATES,
    DebugError,
    NodePlace,
    Packet,
    PodPlace,
    Topology,
    TraceReport,
    trace_packet,
)
from sdn_netpol.lab import controllers
from sdn_netpol.lab.state import LabState
from sdn_netpol.model.objects import PROTOCOLS, Protocol
from sdn_netpol.ovs.instance import OvsError, OvsInstance
from sdn_netpol.ovs.trace import Tracer
from sdn_netpol.policy.state import ClusterState

BRIDGE = "br-int"


def topology(state: LabState) -> Topology:
    ports: dict[str, dict[str, int]] = {}
    nodes = {}
    for node in state.nodes:
        try:
            ports[node.name] = dict(controllers.status(node).get("ports") or {})
        except (OSError, ValueError):
            ports[node.name] = {}
        nodes[node.name] = NodePlace(node.name, node.address, tuple(node.pod_cidrs), _tunnel_ofport(node.rundir))
    pods = {key: PodPlace(key, p.node, ports.get(p.node, {}).get(key), p.ip, p.mac) for key, p in state.pods.items()}
    rundirs = {n.name: Path(n.rundir) for n in state.nodes}
    return Topology(pods, nodes, BRIDGE, lambda name: Tracer(OvsInstance(rundirs[name])))


def _tunnel_ofport(rundir: str) -> int | None:
    try:
        return int(OvsInstance(Path(rundir)).vsctl("get", "Interface", "tun0", "ofport").strip())
    except (OvsError, ValueError):
        return None


def trace(state: LabState, cluster: ClusterState, source: str, destination: str, port: int,
          protocol: str = "TCP", ct_state: str = "new") -> TraceReport:
    protocol = protocol.upper()
    if protocol not in PROTOCOLS:
        raise DebugError(f"--protocol {protocol}: use TCP, UDP or SCTP")
    if ct_state not in CT_STATES:
        raise DebugError(f"--state {ct_state}: use {', '.join(CT_STATES)}")
    if not 1 <= port <= 65535:
        raise DebugError(f"--port {port}: out of range 1-65535")
    topo = topology(state)
    src = _pod(topo, source, "--from")
    dst_ip = _destination(topo, destination)
    if src.ofport is None:
        raise DebugError(f"pod {src.key} has no port on {src.node}'s bridge yet (not realized by its controller)")
    packet = Packet(src, src.ip, src.mac, dst_ip, cast(Protocol, protocol), port, ct_state)
    try:
        return trace_packet(topo, cluster, packet, topo.nodes[src.node])
    except OvsError as exc:
        raise DebugError(f"ofproto/trace failed: {exc.stderr.strip() or exc}") from exc
    finally:
        topo.close()


def _pod(topo: Topology, text: str, option: str) -> PodPlace:
    if "/" not in text:
        by_ip = next((p for p in topo.pods.values() if p.ip == text), None)
        if by_ip is None:
            raise DebugError(f"{option} {text}: use NS/POD (or a pod's IP); no pod has that address")
        return by_ip
    if text not in topo.pods:
        raise DebugError(f"{option} {text}: no such pod in the lab")
    return topo.pods[text]


def _destination(topo: Topology, text: str) -> str:
    if "/" in text:
        return _pod(topo, text, "--to").ip
    try:
        address = IPAddress(text)
    except (AddrFormatError, ValueError) as exc:
        raise DebugError(f"--to {text}: neither NS/POD nor an IP address") from exc
    if topo.node_holding(str(address)) is None and topo.node_at(str(address)) is None:
        raise DebugError(f"--to {text}: outside every node's pod CIDR and not a node address")
    return str(address)


def flows(state: LabState, cluster: ClusterState, node: str | None, selection: Selection) -> list[FlowView]:
    """The selected flows of one node's bridge, or of every node's."""
    selection.check(cluster)
    names = {n.name: n for n in state.nodes}
    if node is not None and node not in names:
        raise DebugError(f"--node {node}: no such node in the lab ({', '.join(sorted(names))})")
    shown = []
    for name in [node] if node else sorted(names):
        instance = _settled(OvsInstance(Path(names[name].rundir)))

        shown += select(name, dumper(instance, BRIDGE), selection, Names.of(cluster))
    return shown


def rule_stats(state: LabState, cluster: ClusterState) -> stats.Stats:
    """Every node's rule and isolation-drop counters (debug/stats.py), read now."""
    names = Names.of(cluster)
    parts = []
    for node in state.nodes:
        instance = _settled(OvsInstance(Path(node.rundir)))

        parts.append(stats.read(node.name, dumper(instance, BRIDGE), names))
    return stats.merge(parts)


def _settled(instance: OvsInstance) -> OvsInstance:
    """Packets that hit a cached megaflow reach the OpenFlow counters when a revalidator
    pushes its stats (about twice a second): wait for one round, so counters are current."""
    try:
        instance.appctl("revalidator/wait")
    except OvsError as exc:
        why = exc.stderr.strip() or str(exc)
        raise DebugError(f"ovs-vswitchd of {instance.rundir.name} does not answer: {why}") from exc
    return instance
