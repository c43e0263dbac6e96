"""Node objects: where each node's tunnel ends and which pod addresses it hosts.

The model skips `kind: Node` (policies never select nodes), but the controller needs two
facts from them: the tunnel endpoint of every node (`status.addresses` of type InternalIP,
IPv4 first because the compiler tunnels over IPv4) and the pod CIDRs (`spec.podCIDR(s)`),
which place a pod that names no node (a manifest without `spec.nodeName`, as the lab
writes them) on the node whose CIDR holds its IP.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any

from netaddr import AddrFormatError, IPAddress, IPNetwork

from sdn_netpol.model.errors import FieldErrors, ValidationError
from sdn_netpol.model.objects import Pod

NODE_KIND = "Node"


@dataclass(frozen=True, order=True)
class NodeInfo:
    name: str
    address: IPAddress | None = None
    pod_cidrs: tuple[IPNetwork, ...] = ()


def parse_node(body: Mapping[str, Any]) -> tuple[NodeInfo | None, list[ValidationError]]:
    """A Node manifest → NodeInfo, or None and the field errors (same shape as the model's)."""
    metadata = body.get("metadata") if isinstance(body.get("metadata"), dict) else {}
    name = metadata.get("name") if isinstance(metadata, dict) else None
    errors = FieldErrors(f"node {name if isinstance(name, str) and name else '<unnamed>'}")
    if not isinstance(name, str) or not name:
        errors.add("metadata.name", "Required value")
        return None, errors.items
    spec = body.get("spec") if isinstance(body.get("spec"), dict) else {}
    status = body.get("status") if isinstance(body.get("status"), dict) else {}
    assert isinstance(spec, dict) and isinstance(status, dict)
    address = _internal_address(status.get("addresses"), errors)
    cidrs = _pod_cidrs(spec, errors)
    if errors:
        return None, errors.items
    return NodeInfo(name, address, cidrs), []


def _internal_address(addresses: Any, errors: FieldErrors) -> IPAddress | None:
    if addresses is None:
        return None
    if not isinstance(addresses, list):
        errors.add("status.addresses", "must be a list")
        return None
    found: list[IPAddress] = []
    for i, entry in enumerate(addresses):
        if not isinstance(entry, dict) or entry.get("type") != "InternalIP":
            continue
        try:
            found.append(IPAddress(str(entry.get("address"))))
        except (AddrFormatError, ValueError):
            errors.add(f"status.addresses[{i}].address", f"{entry.get('address')!r}: must be a valid IP address")
    found.sort(key=lambda ip: ip.version)  # IPv4 first: the compiler tunnels over IPv4
    return found[0] if found else None


def _pod_cidrs(spec: dict[str, Any], errors: FieldErrors) -> tuple[IPNetwork, ...]:
    raw: list[tuple[str, Any]] = []
    if spec.get("podCIDR"):
        raw.append(("spec.podCIDR", spec["podCIDR"]))
    many = spec.get("podCIDRs") or []
    if not isinstance(many, list):
        errors.add("spec.podCIDRs", "must be a list")
        many = []
    raw.extend((f"spec.podCIDRs[{i}]", value) for i, value in enumerate(many))
    cidrs: list[IPNetwork] = []
    for path, value in raw:
        try:
            net = IPNetwork(str(value))
        except (AddrFormatError, ValueError):
            errors.add(path, f"{value!r}: must be a valid CIDR")
            continue
        if net not in cidrs:
            cidrs.append(net)
    return tuple(cidrs)


def node_addresses(nodes: Iterable[NodeInfo]) -> tuple[tuple[str, IPAddress], ...]:
    """For NodeContext.node_addresses: every node that has a tunnel endpoint, sorted."""
    return tuple(sorted((n.name, n.address) for n in nodes if n.address is not None))


def place_pods(pods: Iterable[Pod], nodes: Iterable[NodeInfo]) -> list[Pod]:
    """Pods without spec.nodeName get the node whose pod CIDR holds their IP (if exactly one
    does); the scheduler would have named it, and the compiler routes by node name."""
    cidrs = [(net, n.name) for n in nodes for net in n.pod_cidrs]
    placed = []
    for pod in pods:
        if pod.node_name is None and pod.ips and cidrs:
            owners = {name for net, name in cidrs for ip in pod.ips if ip in net}
            if len(owners) == 1:
                pod = dataclasses.replace(pod, node_name=owners.pop())
        placed.append(pod)
    return placed


@dataclass(frozen=True)
class NodeProblem:
    """What is wrong with the controller's own Node, and whether to hold realization."""

    message: str
    hold: bool


def own_node_problem(node: str, nodes: Iterable[NodeInfo]) -> NodeProblem | None:
    """A controller serving a node the cluster does not know (a DaemonSet without
    NODE_NAME falls back to the hostname) would compute an empty node and delete every
    pod's flows: it holds instead, keeping what the switch enforces. A source without any
    Node (a folder of manifests) has nothing to check against."""
    known = {n.name: n for n in nodes}
    if not known:
        return None
    if node not in known:
        names = ", ".join(sorted(known)[:5]) + (", …" if len(known) > 5 else "")
        return NodeProblem(f"node {node!r} is not a valid Node of the cluster (known: {names}): set --node or "
                           "NODE_NAME from the downward API (spec.nodeName); flows kept as they are", hold=True)
    if not known[node].pod_cidrs:
        return NodeProblem(f"node {node}: spec.podCIDR is empty: pods without spec.nodeName cannot be placed "
                           "and the CNI plugin has no range (kube-controller-manager --allocate-node-cidrs)",
                           hold=False)
    return None
