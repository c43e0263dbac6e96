"""What an offline compile needs beyond policies and pods: node addresses and br-int ports.

Two sources, both read here so that the pure compiler never sees files:
- `kind: Node` manifests among the inputs (their `status.addresses` InternalIP is the
  node's tunnel endpoint). The policy model skips kind Node, so Nodes are picked out here
  before the remaining documents go to the model parser.
- a ports file (YAML or JSON) naming ofports as the CNI shim and the switch would:
  `{"pods": {"ns/pod": 3}, "tunnel": 100, "gateway": 101, "gateway_peer_mac": "..",
  "nodes": {"node1": "192.168.0.1"}}`. Everything in it is optional.

Every problem is collected (never the first one only), as `validate` does for manifests.
Here (an I/O package, above compiler/) because it reads files and builds the compiler's
NodeContext from them; `sdn-netpol compile` and the golden flow tables use it.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml
from netaddr import EUI, AddrFormatError, IPAddress, mac_unix_expanded

from sdn_netpol.compiler.flowfields import OFPP_MAX
from sdn_netpol.compiler.topology import NodeContext, assign_ports
from sdn_netpol.inputs.manifests import TOO_DEEP, ManifestError, read_paths, yaml_problem
from sdn_netpol.model.errors import one_line
from sdn_netpol.model.parse import Document, ParseResult, flatten, parse_documents
from sdn_netpol.policy.state import ClusterState

PORTS_KEYS = ("pods", "tunnel", "gateway", "gateway_peer_mac", "nodes")
LINE = 1000  # characters of one ports-file error at most (a key or value may be megabytes)


class InputError(Exception):
    """Inputs that cannot be compiled; `errors` lists every reason, each one printable line
    (names and keys from the files are shown escaped, and cut after LINE characters)."""

    def __init__(self, errors: Iterable[str]) -> None:
        self.errors = [one_line(e, LINE) for e in errors]
        super().__init__("\n".join(self.errors))


@dataclass(frozen=True)
class Inputs:
    """Manifests parsed by the model, plus the Node objects the model does not keep."""

    result: ParseResult
    node_addresses: Mapping[str, IPAddress]
    node_names: frozenset[str]
    node_errors: tuple[str, ...] = ()

    @property
    def errors(self) -> list[str]:
        return [str(e) for e in self.result.errors] + list(self.node_errors)


@dataclass
class PortsFile:
    """A parsed ports file. `tunnel`/`gateway`: absent = compiler default, None = no such port."""

    pods: dict[str, int] = field(default_factory=dict)
    tunnel: int | None = None
    gateway: int | None = None
    tunnel_given: bool = False
    gateway_given: bool = False
    gateway_peer_mac: EUI | None = None
    nodes: dict[str, IPAddress] = field(default_factory=dict)


# ---- manifests with Node objects ---------------------------------------------------------

def load_inputs(paths: Iterable[Path | str]) -> Inputs:
    """Read files/folders like `load_paths`, keeping `kind: Node` objects for their addresses."""
    try:
        documents = read_paths(paths)
    except ManifestError as exc:
        raise InputError([str(exc)]) from exc
    others: list[Document] = []
    addresses: dict[str, IPAddress] = {}
    names: set[str] = set()
    errors: list[str] = []
    for source, body in (item for doc in documents for item in flatten(doc.source, doc.body)):
        if isinstance(body, dict) and body.get("kind") == "Node":
            _add_node(source, body, names, addresses, errors)
        else:
            others.append(Document(source, body))
    return Inputs(parse_documents(others), addresses, frozenset(names), tuple(errors))


def _add_node(source: str, body: dict[str, Any], names: set[str], addresses: dict[str, IPAddress],
              errors: list[str]) -> None:
    """A Node's InternalIP (IPv4 first: VXLAN endpoints here are IPv4); a later Node replaces."""
    metadata = body.get("metadata")
    name = metadata.get("name") if isinstance(metadata, dict) else None
    if not isinstance(name, str) or not name:
        errors.append(f"{source}: node <unnamed>: metadata.name: Required value")
        return
    status = body.get("status")
    raw = (status.get("addresses") if isinstance(status, dict) else None) or []
    if not isinstance(raw, list):
        errors.append(f"node {name}: status.addresses: must be a list")
        return
    found: list[IPAddress] = []
    for i, entry in enumerate(raw):
        if isinstance(entry, dict) and entry.get("type") == "InternalIP":
            ip = _ip(entry.get("address"), f"node {name}: status.addresses[{i}].address", errors)
            if ip is not None:
                found.append(ip)
    names.add(name)
    addresses.pop(name, None)
    if found:
        addresses[name] = sorted(found, key=lambda ip: ip.version)[0]


def _ip(value: object, where: str, errors: list[str]) -> IPAddress | None:
    try:
        return IPAddress(str(value))
    except (AddrFormatError, ValueError):
        errors.append(f"{where}: {value!r}: must be a valid IP address")
        return None


# ---- the ports file ----------------------------------------------------------------------

def read_ports_file(path: Path) -> PortsFile:
    """Every problem is one line naming the file (read, decode and each invalid entry)."""
    try:
        text = path.read_bytes().decode("utf-8-sig")
    except OSError as exc:
        raise InputError([f"{path}: {exc.strerror or exc}"]) from exc
    except UnicodeDecodeError as exc:
        raise InputError([f"{path}: not UTF-8 text ({exc.reason} at byte {exc.start})"]) from exc
    try:
        data = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        raise InputError([f"{path}: invalid YAML/JSON: {yaml_problem(exc)}"]) from exc
    except RecursionError:
        raise InputError([f"{path}: invalid YAML/JSON: {TOO_DEEP}"]) from None
    errors: list[str] = []
    parsed = parse_ports(data if data is not None else {}, errors)
    if errors:
        raise InputError(f"{path}: {e}" for e in errors)
    return parsed


def parse_ports(data: object, errors: list[str]) -> PortsFile:
    """Validate a decoded ports file; appends every problem to `errors`."""
    ports = PortsFile()
    if not isinstance(data, dict):
        errors.append("must be a mapping with keys " + ", ".join(PORTS_KEYS))
        return ports
    errors.extend(f"{key}: unknown key (expected one of {', '.join(PORTS_KEYS)})"
                  for key in data if key not in PORTS_KEYS)
    pods = data.get("pods") or {}
    if isinstance(pods, dict):
        for ref, port in pods.items():
            if not isinstance(ref, str) or ref.count("/") != 1:
                errors.append(f"pods: {ref!r}: must be NAMESPACE/POD")
            elif (ofport := _ofport(port, f"pods[{ref}]", errors)) is not None:
                ports.pods[ref] = ofport
    else:
        errors.append("pods: must be a mapping NAMESPACE/POD -> ofport")
    for key in ("tunnel", "gateway"):
        if key in data:
            value = None if data[key] is None else _ofport(data[key], key, errors)
            setattr(ports, key, value)
            setattr(ports, f"{key}_given", True)
    ports.gateway_peer_mac = _mac(data.get("gateway_peer_mac"), errors)
    nodes = data.get("nodes") or {}
    if isinstance(nodes, dict):
        for name, address in nodes.items():
            ip = _ip(address, f"nodes[{name}]", errors)
            if ip is not None:
                ports.nodes[str(name)] = ip
    else:
        errors.append("nodes: must be a mapping NODE -> IP address")
    return ports


def _ofport(value: object, where: str, errors: list[str]) -> int | None:
    if isinstance(value, bool) or not isinstance(value, int) or not 0 < value < OFPP_MAX:
        errors.append(f"{where}: {value!r}: an ofport must be an integer 1..{OFPP_MAX - 1}")
        return None
    return value


def _mac(value: object, errors: list[str]) -> EUI | None:
    if value is None:
        return None
    if isinstance(value, int):  # YAML 1.1 reads an unquoted 52:54:00:00:01:01 as a number
        errors.append("gateway_peer_mac: a number, not a MAC: quote it (\"52:54:00:00:01:01\")")
        return None
    try:
        return EUI(str(value), dialect=mac_unix_expanded)
    except (AddrFormatError, ValueError, TypeError):
        errors.append(f"gateway_peer_mac: {value!r}: must be a MAC address")
        return None


# ---- the node context --------------------------------------------------------------------

def node_context(state: ClusterState, node: str, inputs: Inputs, ports: PortsFile | None) -> NodeContext:
    """assign_ports with the ports file's choices; raises InputError on clashes or unknowns."""
    ports = ports or PortsFile()
    errors = _check_node(state, node, inputs, ports)
    addresses = {**inputs.node_addresses, **ports.nodes}
    edges = {name: port for name, port in (("tunnel", ports.tunnel), ("gateway", ports.gateway))
             if port is not None}
    # assign_ports treats every given value as taken, so an edge port is never handed to a pod.
    reserved = {f"<{name} port>": port for name, port in edges.items()}
    context = assign_ports(state, node, {**ports.pods, **reserved}, addresses)
    if ports.tunnel_given:
        context = dataclasses.replace(context, tunnel_port=ports.tunnel)
    if ports.gateway_given:
        context = dataclasses.replace(context, gateway_port=ports.gateway)
    context = dataclasses.replace(context, gateway_peer_mac=ports.gateway_peer_mac)
    errors += _clashes(context)
    if errors:
        raise InputError(errors)
    return context


def _check_node(state: ClusterState, node: str, inputs: Inputs, ports: PortsFile) -> list[str]:
    known = {p.node_name for p in state.pods if p.node_name} | inputs.node_names | ports.nodes.keys()
    errors = []
    if node not in known:
        errors.append(f"--node {node}: no pod, Node object or ports-file node has that name "
                      f"(known: {', '.join(sorted(known)) or 'none'})")
    for ref in sorted(ports.pods):
        namespace, _, name = ref.partition("/")
        pod = state.pod(namespace, name)
        if pod is None or pod.node_name != node:
            errors.append(f"ports file: pods[{ref}]: no such pod on node {node} in the manifests")
        elif not pod.ips or not pod.in_policy_scope:
            errors.append(f"ports file: pods[{ref}]: the pod has no IP or is not running, so no port")
    return errors


def _clashes(context: NodeContext) -> list[str]:
    owners: dict[int, list[str]] = {}
    for binding in context.bindings:
        owners.setdefault(binding.ofport, []).append(str(binding.pod))
    for name, port in (("tunnel", context.tunnel_port), ("gateway", context.gateway_port)):
        if port is not None:
            owners.setdefault(port, []).append(name)
    return [f"ports file: ofport {port} is given to {' and '.join(names)}"
            for port, names in sorted(owners.items()) if len(names) > 1]
