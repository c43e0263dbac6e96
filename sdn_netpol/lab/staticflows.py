"""Debug path (`lab up --flows static`): the lab compiles and loads each node's flows itself.

Not the product path — that is one controller per node — but the same compiler, fed the
same facts (ports and external_ids from OVSDB, Node addresses, the manifests folder), so
when the lab misbehaves this tells a compiler bug from a controller bug.
"""

from __future__ import annotations

import json
from typing import Any

from netaddr import EUI, IPAddress, mac_unix_expanded

from sdn_netpol.compiler.compile import compile_node
from sdn_netpol.compiler.ofctl import render_flows
from sdn_netpol.compiler.topology import NodeContext, PortBinding
from sdn_netpol.lab.state import LabState, NodeState
from sdn_netpol.lab.store import Store
from sdn_netpol.lab.topology import ovs
from sdn_netpol.model.objects import PodKey
from sdn_netpol.policy.state import ClusterState


def _interfaces(node: NodeState) -> list[dict[str, Any]]:
    out = ovs(node).vsctl("--format=json", "--columns=name,ofport,type,external_ids", "list", "Interface")
    doc = json.loads(out)
    rows = []
    for name, ofport, kind, ext in doc["data"]:
        rows.append({"name": name, "ofport": ofport, "type": kind, "external_ids": dict(ext[1])})
    return rows


def node_context(state: LabState, node: NodeState) -> NodeContext:
    bindings = []
    tunnel = gateway = None
    peer_mac = None
    for row in _interfaces(node):
        ext, ofport = row["external_ids"], row["ofport"]
        if not isinstance(ofport, int) or ofport <= 0:
            continue
        if row["type"] in ("vxlan", "geneve"):
            tunnel = ofport
        elif ext.get("sdn-netpol-role") == "gateway":
            gateway = ofport
            peer_mac = EUI(ext["peer-mac"], dialect=mac_unix_expanded) if ext.get("peer-mac") else None
        elif "pod-name" in ext:
            bindings.append(PortBinding(PodKey(ext["pod-namespace"], ext["pod-name"]), ofport,
                                        EUI(ext["pod-mac"], dialect=mac_unix_expanded),
                                        (IPAddress(ext["pod-ip"]),)))
    addresses = tuple(sorted((n.name, IPAddress(n.address)) for n in state.nodes))
    return NodeContext(node.name, tuple(sorted(bindings)), tunnel, gateway, peer_mac, addresses)


def push(state: LabState) -> None:
    """Compile every node from the folder and make it the node's whole flow table."""
    cluster = ClusterState.from_parse(Store(state.manifests).parse())
    for node in state.nodes:
        context = node_context(state, node)
        known = {p.key for p in cluster.pods}
        context = NodeContext(context.name, tuple(b for b in context.bindings if b.pod in known),
                              context.tunnel_port, context.gateway_port, context.gateway_peer_mac,
                              context.node_addresses)
        ovs(node).replace_flows("br-int", render_flows(compile_node(cluster, context)))
