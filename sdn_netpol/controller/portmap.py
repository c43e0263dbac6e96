"""The pod-to-port map: which OpenFlow port of the bridge is which pod (docs/controller.md).

Two halves, joined by interface name (an OpenFlow port's name is its Interface's name):
- the switch: OpenFlow port numbers from the port description at connect and port-status
  events after (app.py feeds `PortMap.set_switch_ports` / `switch_port`), so a port counts
  only once the switch we talk to really has it;
- OVSDB: each Interface's `type` and `external_ids`, as the CNI shim wrote them
  (`iface-id` NS/NAME or `pod-namespace`+`pod-name`, `pod-ip`, `pod-mac`), monitored
  through the OVSDB IDL (`InterfaceMonitor`), limited to the ports of our bridge.
`node_context` then turns the joined view, the cluster state and the Node objects into
the compiler's NodeContext.
"""

from __future__ import annotations

import logging
import threading
import warnings
import weakref
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from functools import lru_cache
from operator import attrgetter, itemgetter
from typing import Any

from netaddr import EUI, AddrFormatError, IPAddress, mac_unix_expanded

from sdn_netpol.compiler.topology import Datapath, NodeContext, PortBinding, mac_for_ip
from sdn_netpol.controller.nodes import NodeInfo, node_addresses
from sdn_netpol.controller.worker import Worker
from sdn_netpol.model.objects import Pod, PodKey
from sdn_netpol.policy.state import ClusterState

with warnings.catch_warnings():  # ovs.poller probes for eventlet, whose import warns it is deprecated
    warnings.simplefilter("ignore")
    import ovs.db.idl
    import ovs.jsonrpc
    import ovs.poller
    import ovs.stream

LOG = logging.getLogger(__name__)
_POD = attrgetter("pod")
DB_NAME = "Open_vSwitch"
COLUMNS = {"Bridge": ["name", "ports", "datapath_type"], "Port": ["name", "interfaces"],
           "Interface": ["name", "type", "external_ids"]}
TUNNEL_TYPES = ("vxlan", "geneve")
ROLE_KEY, GATEWAY_ROLE, PEER_MAC_KEY = "sdn-netpol-role", "gateway", "peer-mac"


@dataclass(frozen=True)
class Interface:
    name: str
    type: str
    external_ids: Mapping[str, str]


@dataclass(frozen=True)
class PortView:
    """One consistent picture: OpenFlow ports of the bridge and its OVSDB Interfaces."""

    switch_ports: Mapping[str, int] = field(default_factory=dict)
    interfaces: Mapping[str, Interface] = field(default_factory=dict)
    switch_known: bool = False
    interfaces_known: bool = False
    datapath: Datapath = "netdev"  # the bridge's: what its flows may do (compiler/topology.py)

    @property
    def complete(self) -> bool:
        return self.switch_known and self.interfaces_known


class PortMap:
    """Thread-safe holder of both halves; `on_change` fires after each update."""

    def __init__(self, on_change: Callable[[], None] = lambda: None) -> None:
        self.on_change = on_change
        self._view = PortView()
        self._lock = threading.Lock()

    def view(self) -> PortView:
        with self._lock:
            return self._view

    def _update(self, **changes: Any) -> None:
        with self._lock:
            self._view = PortView(**{**self._view.__dict__, **changes})
        self.on_change()

    def set_switch_ports(self, ports: Mapping[str, int]) -> None:
        """The port description of a (re)connected switch replaces what we knew."""
        self._update(switch_ports=dict(ports), switch_known=True)

    def switch_port(self, name: str, number: int | None) -> None:
        """A port-status event: added/modified (number) or deleted (None)."""
        ports = dict(self.view().switch_ports)
        if number is None:
            ports.pop(name, None)
        else:
            ports[name] = number
        self._update(switch_ports=ports)

    def switch_gone(self) -> None:
        self._update(switch_ports={}, switch_known=False)

    def set_interfaces(self, interfaces: Mapping[str, Interface], bridge_exists: bool = True,
                       datapath: Datapath = "netdev") -> None:
        """Without the bridge in OVSDB nothing is known: an empty picture would read as
        "no pods here" and delete every pod's flows."""
        known = bridge_exists
        view = self.view()
        if view.interfaces_known == known and view.interfaces == interfaces and view.datapath == datapath:
            return
        self._update(interfaces=dict(interfaces), interfaces_known=known, datapath=datapath)


# ---- OVSDB ------------------------------------------------------------------------------


def _fetch_schema(remote: str) -> Any:
    error, stream = ovs.stream.Stream.open_block(ovs.stream.Stream.open(remote), 5000)
    if error:
        raise OSError(error, f"cannot connect to OVSDB {remote}")
    rpc = ovs.jsonrpc.Connection(stream)
    try:
        error, reply = rpc.transact_block(ovs.jsonrpc.Message.create_request("get_schema", [DB_NAME]))
        if error or reply is None or reply.error:
            raise OSError(error or 0, f"get_schema from {remote} failed: {reply.error if reply else error}")
        return reply.result
    finally:
        rpc.close()


class InterfaceMonitor(Worker):
    """An OVSDB IDL replica of Bridge/Port/Interface; publishes our bridge's Interfaces."""

    thread_name = "ovsdb-idl"

    def __init__(self, remote: str, bridge: str, ports: PortMap, report: Callable[[str | None], None] = lambda _m: None,
                 retry: float = 1.0) -> None:
        self.remote = remote
        self.bridge = bridge
        self.ports = ports
        self.report = report
        self.retry = retry
        super().__init__()

    def run(self) -> None:
        while not self._stop.is_set():
            try:
                helper = ovs.db.idl.SchemaHelper(schema_json=_fetch_schema(self.remote))
            except (OSError, ValueError) as exc:
                LOG.warning("OVSDB %s: %s; retrying", self.remote, exc)
                self.report(f"{self.remote}: {exc}")
                self._stop.wait(self.retry)
                continue
            self.report(None)
            for table, columns in COLUMNS.items():
                helper.register_columns(table, columns)
            idl = ovs.db.idl.Idl(self.remote, helper)
            try:
                self._loop(idl)
            finally:
                idl.close()

    def _loop(self, idl: Any) -> None:
        seen = -1
        while not self._stop.is_set():
            idl.run()
            if idl.has_ever_connected() and idl.change_seqno != seen:
                seen = idl.change_seqno
                self.ports.set_interfaces(self._interfaces(idl), self._report_bridge(idl), self._datapath(idl))
            poller = ovs.poller.Poller()
            idl.wait(poller)
            poller.timer_wait(500)  # wake up now and then to notice stop()
            poller.block()

    def _report_bridge(self, idl: Any) -> bool:
        """A bridge that OVSDB lacks (a conflist or --bridge naming another one, or a node
        never set up) leaves pods unattached and the switch unconnected: say so."""
        if any(bridge.name == self.bridge for bridge in idl.tables["Bridge"].rows.values()):
            self.report(None)
            return True
        message = (f"bridge {self.bridge!r} does not exist in OVSDB {self.remote} "
                   "(create it with `sdn-netpol node setup`, or fix --bridge)")
        LOG.error("%s", message)
        self.report(message)
        return False

    def _datapath(self, idl: Any) -> Datapath:
        """OVSDB's datapath_type: "" (the default) and "system" are the kernel's; others userspace."""
        for bridge in idl.tables["Bridge"].rows.values():
            if bridge.name == self.bridge:
                return "system" if bridge.datapath_type in ("", "system") else "netdev"
        return "netdev"

    def _interfaces(self, idl: Any) -> dict[str, Interface]:
        found: dict[str, Interface] = {}
        for bridge in idl.tables["Bridge"].rows.values():
            if bridge.name != self.bridge:
                continue
            for port in bridge.ports:
                for iface in port.interfaces:
                    found[iface.name] = Interface(iface.name, iface.type, dict(iface.external_ids))
        return found


# ---- the join ---------------------------------------------------------------------------


def pod_of(iface: Interface) -> PodKey | None:
    ids = iface.external_ids
    namespace, _, name = ids.get("iface-id", "").partition("/")
    if not (namespace and name):
        namespace, name = ids.get("pod-namespace", ""), ids.get("pod-name", "")
    return PodKey(namespace, name) if namespace and name else None


@lru_cache(maxsize=1 << 16)  # parsed once per address, not once per port per change
def _ips(text: str) -> tuple[IPAddress, ...]:
    found = []
    for part in filter(None, (p.strip() for p in text.split(","))):
        try:
            found.append(IPAddress(part))
        except (AddrFormatError, ValueError):
            LOG.warning("ignoring bad pod-ip %r", part)
    return tuple(found)


def _binding(ofport: int, iface: Interface, state: ClusterState, node: str) -> PortBinding | None:
    """A local pod's port: the pod must exist, be in policy scope and not live elsewhere
    (a stale port of a pod now scheduled on another node is not bound)."""
    key = pod_of(iface)
    pod = state.pods_by_key.get(key) if key is not None else None
    if key is None or pod is None or not pod.in_policy_scope or pod.node_name not in (None, node):
        return None
    ip_text = iface.external_ids.get("pod-ip", "")
    mac_text = iface.external_ids.get("pod-mac", "")
    if _ips(ip_text):
        return _recorded_binding(key, ofport, ip_text, mac_text)
    return _make_binding(key, ofport, pod.ips, mac_text)


@lru_cache(maxsize=1 << 16)
def _recorded_binding(key: PodKey, ofport: int, ip_text: str, mac_text: str) -> PortBinding | None:
    """The same port gives the very same PortBinding object every time: the compiler then
    tells unchanged ports apart by identity (cheap) rather than by comparing addresses."""
    return _make_binding(key, ofport, _ips(ip_text), mac_text)


def _make_binding(key: PodKey, ofport: int, ips: tuple[IPAddress, ...], mac_text: str) -> PortBinding | None:
    if not ips:
        return None
    mac = _mac(mac_text)
    if mac is None:
        v4 = next((ip for ip in ips if ip.version == 4), None)
        if v4 is None:
            return None
        mac = mac_for_ip(v4)
    return PortBinding(key, ofport, mac, ips)


@lru_cache(maxsize=1 << 16)
def _mac(text: str) -> EUI | None:
    try:
        return EUI(text, dialect=mac_unix_expanded) if text else None
    except (AddrFormatError, ValueError):
        return None


def _chosen(bindings: list[tuple[int, PortBinding]]) -> tuple[PortBinding, ...]:
    """One binding per pod from (ofport, binding) pairs in ofport order."""
    chosen: dict[PodKey, PortBinding] = {}
    for ofport, binding in bindings:
        if binding.pod in chosen:  # two ports claim one pod: the newest (highest) ofport wins
            LOG.warning("pod %s has ports %d and %d; using %d", binding.pod, chosen[binding.pod].ofport,
                        ofport, ofport)
        chosen[binding.pod] = binding
    return tuple(sorted(chosen.values(), key=_POD))  # one binding per pod: the pod orders them


def _edges(view: PortView) -> tuple[int | None, int | None, EUI | None]:
    """The tunnel port, the gateway port and its peer's MAC (the lowest-numbered of each)."""
    tunnel = gateway = None
    peer_mac = None
    for name, ofport in view.switch_ports.items():
        iface = view.interfaces.get(name)
        if iface is None:
            continue
        if iface.type in TUNNEL_TYPES and (tunnel is None or ofport < tunnel):
            tunnel = ofport
        if iface.external_ids.get(ROLE_KEY) == GATEWAY_ROLE and (gateway is None or ofport < gateway):
            gateway = ofport
            try:
                peer_mac = EUI(iface.external_ids[PEER_MAC_KEY], dialect=mac_unix_expanded)
            except (KeyError, AddrFormatError, ValueError):
                peer_mac = None
    return tunnel, gateway, peer_mac


def node_context(node: str, view: PortView, state: ClusterState, nodes: tuple[NodeInfo, ...],
                 bindings: tuple[PortBinding, ...] | None = None,
                 edges: tuple[int | None, int | None, EUI | None] | None = None) -> NodeContext:
    """The compiler's view of this node, from the joined ports and the Node objects
    (`bindings` and `edges`: already derived from them, by NodeBindings)."""
    tunnel, gateway, peer_mac = _edges(view) if edges is None else edges
    if bindings is None:
        bindings = NodeBindings(node).bindings(view, state)
    return NodeContext(node, bindings, tunnel_port=tunnel,
                       gateway_port=gateway, gateway_peer_mac=peer_mac, node_addresses=node_addresses(nodes),
                       node_cidrs=tuple(sorted((n.name, net) for n in nodes for net in n.pod_cidrs)),
                       datapath=view.datapath)


@dataclass(frozen=True)
class _Bound:
    """What one port's binding was derived from, and the binding (None: the port binds no pod)."""

    ofport: int
    iface: Interface
    key: PodKey | None  # the pod the Interface names
    pod: Pod | None
    binding: PortBinding | None


class NodeBindings:
    """A node's port bindings across realizations. Deriving them afresh cost ~100 ms per
    realization at 5,000 local ports (a pod relabel's realization at 50k pods × 5,000
    policies, benchmarks/realize.py); a port whose ofport, Interface and pod object are
    the ones of last time keeps its binding, and when every port does, the bindings are
    the previous tuple itself (the compiler then compares the contexts by identity). A
    binding depends on nothing else: _binding reads only these and the node's name.

    When the port view is the very one of last time and the state was patched from last
    time's (ClusterState.patched_from: the pod keys that can differ), only the ports naming
    those pods are looked at: walking 5,000 ports to find them unchanged still cost ~33 ms
    per realization at that size."""

    def __init__(self, node: str) -> None:
        self.node = node
        self._bound: dict[str, _Bound] = {}
        self._bindings: tuple[PortBinding, ...] = ()
        self._ports_of: dict[PodKey, tuple[str, ...]] = {}  # the port names naming each pod
        self._view: PortView | None = None
        self._state: weakref.ref[ClusterState] | None = None
        self._edges_view: PortView | None = None  # the view `_edges` was found in
        self._edges = _edges(PortView())

    def context(self, view: PortView, state: ClusterState, nodes: tuple[NodeInfo, ...]) -> NodeContext:
        if view is not self._edges_view:
            self._edges, self._edges_view = _edges(view), view
        return node_context(self.node, view, state, nodes, self.bindings(view, state), self._edges)

    def bindings(self, view: PortView, state: ClusterState) -> tuple[PortBinding, ...]:
        touched = self._touched_pods(view, state)
        if touched is None:
            bound: dict[str, _Bound] = {}
            names: Iterable[str] = view.switch_ports
        else:
            bound = dict(self._bound)
            names = [name for key in touched for name in self._ports_of.get(key, ())]
            if not names:
                self._view, self._state = view, weakref.ref(state)
                return self._bindings
        changed = self._derive(view, state, names, bound)
        if changed or bound.keys() != self._bound.keys():
            self._bindings = _chosen(sorted(((b.ofport, b.binding) for b in bound.values() if b.binding is not None),
                                            key=itemgetter(0)))
        if touched is None:
            ports_of: dict[PodKey, list[str]] = {}
            for name, held in bound.items():
                if held.key is not None:
                    ports_of.setdefault(held.key, []).append(name)
            self._ports_of = {key: tuple(found) for key, found in ports_of.items()}
        # only now: a derivation that raised must not count as seen (a retry sees it again)
        self._bound, self._view, self._state = bound, view, weakref.ref(state)
        return self._bindings

    def _touched_pods(self, view: PortView, state: ClusterState) -> frozenset[PodKey] | None:
        """The pods that can have changed since last time, if nothing else can (None: look
        at every port)."""
        previous = self._state() if self._state is not None else None
        if view is not self._view or previous is None:
            return None
        return frozenset() if state is previous else state.patched_from(previous)

    def _derive(self, view: PortView, state: ClusterState, names: Iterable[str], bound: dict[str, _Bound]) -> bool:
        """Fill `bound` for `names` (reusing last time's where nothing it depends on changed);
        True if any binding is new."""
        pods, previous = state.pods_by_key, self._bound
        changed = False
        for name in names:
            ofport = view.switch_ports.get(name)
            iface = view.interfaces.get(name)
            if ofport is None or iface is None:
                continue
            was = previous.get(name)
            key = was.key if was is not None and was.iface is iface else pod_of(iface)
            pod = pods.get(key) if key is not None else None
            if was is not None and was.ofport == ofport and was.pod is pod and (was.iface is iface
                                                                                or was.iface == iface):
                bound[name] = was
                continue
            binding = _binding(ofport, iface, state, self.node)
            bound[name] = _Bound(ofport, iface, key, pod, binding)
            # a relabelled pod's port gives the very same binding (_recorded_binding): the
            # tuple is then kept, and the compiler sees the bindings unchanged by identity
            changed = changed or was is None or was.binding is not binding
        return changed


def realized_ports(context: NodeContext) -> dict[str, int]:
    """For /status: {"ns/pod": ofport} of the pods this node enforces."""
    return {str(b.pod): b.ofport for b in context.bindings}
