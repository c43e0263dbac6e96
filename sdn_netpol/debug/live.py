"""`sdn-netpol trace` and `sdn-netpol flows` on a live node: this node's switch, the cluster
as a source gives it (the API server, or a folder of manifests).

What a node can see: its own ovs-vswitchd (``--ovs-rundir``), its bridge's interfaces and
their ``external_ids`` (the CNI shim names each pod port), and the cluster objects. A packet
that leaves this node through the tunnel is traced up to the tunnel; the report names the
node it continues on (run the same command there). A packet from a pod on another node to
a pod here is traced from the tunnel port, as this node receives it.
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any, cast

from sdn_netpol.compiler.topology import mac_for_ip
from sdn_netpol.controller.nodes import NodeInfo, place_pods
from sdn_netpol.controller.sources.objects import convert, is_wanted
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
from sdn_netpol.model.objects import PROTOCOLS, Namespace, NetworkPolicy, Pod, Protocol
from sdn_netpol.ovs.instance import OvsError, OvsInstance
from sdn_netpol.ovs.trace import Tracer
from sdn_netpol.policy.state import ClusterState

TUNNEL_TYPES = ("vxlan", "geneve")


def cluster_from(bodies: Iterable[Mapping[str, Any]]) -> tuple[ClusterState, list[NodeInfo]]:
    """Raw manifests (a folder's or the API server's) -> the cluster and its nodes, as the
    controller's store sees them (invalid objects are left out, as the store would)."""
    namespaces, pods, policies, nodes = [], [], [], []
    for body in bodies:
        if not is_wanted(body):
            continue
        converted = convert(body)
        obj = converted.obj
        if isinstance(obj, Namespace):
            namespaces.append(obj)
        elif isinstance(obj, Pod):
            pods.append(obj)
        elif isinstance(obj, NetworkPolicy):
            policies.append(obj)
        elif isinstance(obj, NodeInfo):
            nodes.append(obj)
    return ClusterState.build(namespaces, place_pods(pods, nodes), policies), nodes


def read_source(source: str, kubeconfig: str | None) -> list[dict[str, Any]]:
    if source.startswith("dir:"):
        from sdn_netpol.inputs.manifests import read_paths

        folder = Path(source[len("dir:"):])
        if not folder.exists():
            raise DebugError(f"--source {source}: no such folder")
        return [dict(doc.body) for doc in read_paths([folder]) if isinstance(doc.body, dict)]
    if source == "kube":
        return _list_kube(kubeconfig)
    raise DebugError(f"--source {source}: use kube or dir:PATH")


def _list_kube(kubeconfig: str | None) -> list[dict[str, Any]]:
    from kubernetes import client, config  # slow to import: only for --source kube

    try:
        if kubeconfig:
            config.load_kube_config(kubeconfig)
        else:
            try:
                config.load_incluster_config()
            except config.ConfigException:
                config.load_kube_config()
    except (config.ConfigException, OSError) as exc:
        raise DebugError(f"no Kubernetes configuration: {exc}") from exc
    core, net = client.CoreV1Api(), client.NetworkingV1Api()
    listers = (("Namespace", core.list_namespace), ("Pod", core.list_pod_for_all_namespaces),
               ("NetworkPolicy", net.list_network_policy_for_all_namespaces), ("Node", core.list_node))
    bodies = []
    for kind, lister in listers:
        try:
            response: Any = lister(_preload_content=False)  # raw JSON: the model parses dicts
            doc = json.loads(response.data)
        except Exception as exc:  # the client raises ApiException, urllib3 errors, ...
            raise DebugError(f"listing {kind}s failed: {exc}") from exc
        api_version = doc.get("apiVersion", "v1")
        bodies += [{"kind": kind, "apiVersion": api_version, **item} for item in doc.get("items", [])]
    return bodies


def _ovsdb_map(value: Any) -> dict[str, str]:
    return dict(value[1]) if isinstance(value, list) and value and value[0] == "map" else {}


def interfaces(ovs: OvsInstance) -> list[dict[str, Any]]:
    try:
        doc = json.loads(ovs.vsctl("--format=json", "--columns=name,type,ofport,external_ids", "list", "Interface"))
    except OvsError as exc:
        raise DebugError(f"cannot read the switch's interfaces: {exc.stderr.strip() or exc}") from exc
    heads = doc["headings"]
    return [dict(zip(heads, row, strict=True)) for row in doc["data"]]


def topology(ovs: OvsInstance, bridge: str, this_node: str, cluster: ClusterState,
             nodes: list[NodeInfo]) -> Topology:
    try:
        ovs.vsctl("br-exists", bridge)
    except OvsError as exc:
        raise DebugError(f"--bridge {bridge}: no such bridge on this switch") from exc
    ifaces = interfaces(ovs)
    ports = {_ovsdb_map(i["external_ids"]).get("iface-id"): i for i in ifaces}
    tunnel = next((i["ofport"] for i in ifaces if i["type"] in TUNNEL_TYPES and isinstance(i["ofport"], int)), None)
    places = {}
    for pod in cluster.pods:
        key = f"{pod.namespace}/{pod.name}"
        if not pod.ips or pod.node_name is None:
            continue
        iface = ports.get(key) if pod.node_name == this_node else None
        ofport = iface["ofport"] if iface and isinstance(iface["ofport"], int) and iface["ofport"] > 0 else None
        mac = _ovsdb_map(iface["external_ids"]).get("pod-mac") if iface else None
        places[key] = PodPlace(key, pod.node_name, ofport, str(pod.ips[0]), mac or str(mac_for_ip(pod.ips[0])))
    node_places = {n.name: NodePlace(n.name, str(n.address or ""), tuple(str(c) for c in n.pod_cidrs),
                                     tunnel if n.name == this_node else None) for n in nodes}
    if this_node not in node_places:
        raise DebugError(f"--node {this_node}: no such Node in the cluster")
    return Topology(places, node_places, bridge, lambda name: Tracer(ovs) if name == this_node else None)


def switch(rundir: Path) -> OvsInstance:
    ovs = OvsInstance(rundir)
    try:
        ovs.vswitchd_ctl  # noqa: B018  (raises when no vswitchd runs there)
    except FileNotFoundError as exc:
        raise DebugError(f"--ovs-rundir {rundir}: {exc}") from exc
    return ovs


def trace(ovs: OvsInstance, bridge: str, node: str, cluster: ClusterState, nodes: list[NodeInfo],
          source: str, destination: str, port: int, protocol: str = "TCP", ct_state: str = "new") -> TraceReport:
    protocol = protocol.upper()
    if protocol not in PROTOCOLS or ct_state not in CT_STATES or not 1 <= port <= 65535:
        raise DebugError(f"bad packet: {protocol}/{port} {ct_state}")
    topo = topology(ovs, bridge, node, cluster, nodes)
    src = _pod(topo, source, "--from")
    if "/" in destination:
        dst_ip = _pod(topo, destination, "--to").ip
    else:
        dst_ip = destination
        if topo.node_holding(dst_ip) is None and topo.node_at(dst_ip) is None:
            raise DebugError(f"--to {destination}: outside every node's pod CIDR and not a node address")
    here = topo.nodes[node]
    packet = Packet(src, src.ip, src.mac, dst_ip, cast(Protocol, protocol), port, ct_state)
    try:
        if src.node == node:
            if src.ofport is None:
                raise DebugError(f"pod {src.key} has no port on this bridge yet")
            return trace_packet(topo, cluster, packet, here)
        holder = topo.node_holding(dst_ip)
        if holder is None or holder.name != node:
            raise DebugError(f"neither {src.key} nor {destination} is on this node ({node}): "
                             f"trace on {src.node}")
        sender = topo.nodes.get(src.node)
        if sender is None or not sender.address:
            raise DebugError(f"node {src.node} of {src.key} has no known address")
        return trace_packet(topo, cluster, packet, here, from_tunnel=(sender.address, here.address))
    except OvsError as exc:
        raise DebugError(f"ofproto/trace failed: {exc.stderr.strip() or exc}") from exc
    finally:
        topo.close()


def _pod(topo: Topology, text: str, option: str) -> PodPlace:
    found = topo.pods.get(text) if "/" in text else next((p for p in topo.pods.values() if p.ip == text), None)
    if found is None:
        raise DebugError(f"{option} {text}: no such pod (with an address) in the cluster")
    return found


def flows(ovs: OvsInstance, bridge: str, node: str, cluster: ClusterState, selection: Selection) -> list[FlowView]:
    selection.check(cluster)

    return select(node, dumper(ovs, bridge), selection, Names.of(cluster))
