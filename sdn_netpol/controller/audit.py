"""The audit log: packet-ins of the audit flows → JSON lines naming pods, verdict and rule.

The switch copies the first packet of each logged connection to the controller
(compiler/audit_flows.py); the bridge's `controller` meter, installed here when the switch
connects, caps those copies at `--audit-rate` packets/s for the whole node. The OpenFlow
thread only queues (userdata, packet, time): decoding, naming pods and asking the policy
engine which rule allowed (or which policies isolated) happen on the writer thread, so a
flood of packet-ins never delays a bundle. A full queue drops entries (counted, logged
once a minute) rather than grow without bound.

The verdict and direction are the switch's (the userdata tag); the engine only names the
policy and rule, from the state the switch enforces (the realizer's realized snapshot).
"""

from __future__ import annotations

import json
import logging
import queue
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from netaddr import IPAddress
from os_ken.lib.packet import ethernet, ipv4, ipv6, packet, sctp, tcp, udp
from os_ken.ofproto import ofproto_v1_3 as ofp
from os_ken.ofproto import ofproto_v1_3_parser as parser

from sdn_netpol.compiler.pipeline import decode_audit_tag
from sdn_netpol.model.objects import PROTOCOLS, Pod, Protocol
from sdn_netpol.policy.state import ClusterState
from sdn_netpol.policy.verdict import Endpoint, decide

LOG = logging.getLogger(__name__)
DEFAULT_RATE = 100  # packets/s per node
DEFAULT_MAX_BYTES = 10 * 1024 * 1024
QUEUE_LIMIT = 10_000
NXPIF_NXT_PACKET_IN2 = 2  # packet-in format that carries the controller action's userdata
_L4 = {6: ("TCP", tcp.tcp), 17: ("UDP", udp.udp), 132: ("SCTP", sctp.sctp)}
_NAMES = {1: "ICMP", 58: "ICMPv6"}


def configure_switch(datapath: Any, rate: int) -> None:
    """Before any flow: packet-ins in the NXT_PACKET_IN2 format (the only one that carries
    userdata), and the bridge's controller meter (OFPM_CONTROLLER) with one drop band at
    `rate` pkt/s. Meters are not flows (no bundle holds them); DELETE then ADD replaces
    whatever a previous controller set, and a DELETE of no meter is no error in OVS."""
    datapath.send_msg(parser.NXTSetPacketInFormatMsg(datapath, NXPIF_NXT_PACKET_IN2))
    datapath.send_msg(parser.OFPMeterMod(datapath, command=ofp.OFPMC_DELETE, meter_id=ofp.OFPM_CONTROLLER))
    band = parser.OFPMeterBandDrop(rate=rate, burst_size=0)
    datapath.send_msg(parser.OFPMeterMod(datapath, command=ofp.OFPMC_ADD, flags=ofp.OFPMF_PKTPS,
                                         meter_id=ofp.OFPM_CONTROLLER, bands=[band]))


@dataclass(frozen=True)
class Connection:
    """What one copied packet says: addresses, protocol, destination port (None: no ports)."""

    src: IPAddress
    dst: IPAddress
    protocol: str
    port: int | None


def decode_packet(data: bytes) -> Connection | None:
    pkt = packet.Packet(data)
    if pkt.get_protocol(ethernet.ethernet) is None:
        return None
    ip4, ip6 = pkt.get_protocol(ipv4.ipv4), pkt.get_protocol(ipv6.ipv6)
    if ip4 is not None:
        src, dst, proto = IPAddress(ip4.src), IPAddress(ip4.dst), ip4.proto
    elif ip6 is not None:
        src, dst, proto = IPAddress(ip6.src), IPAddress(ip6.dst), ip6.nxt
    else:
        return None
    if proto in _L4:
        name, cls = _L4[proto]
        l4 = pkt.get_protocol(cls)
        return Connection(src, dst, name, None if l4 is None else int(l4.dst_port))
    return Connection(src, dst, _NAMES.get(proto, str(proto)), None)


def _pods_by_ip(state: ClusterState) -> dict[IPAddress, Pod]:
    return {ip: p for p in state.pods if p.in_policy_scope for ip in p.ips}


def record(state: ClusterState | None, node: str, verdict: str, direction: str, conn: Connection,
           at: float, pods: dict[IPAddress, Pod] | None = None) -> dict[str, Any]:
    """One log line. The policy engine names the allowing rule of `direction` (the first, as
    `sdn-netpol explain` lists them) or, for a denial, the policies isolating that side."""
    pods = pods if pods is not None else ({} if state is None else _pods_by_ip(state))
    src_pod, dst_pod = pods.get(conn.src), pods.get(conn.dst)
    policy: str | None = None
    rule: int | None = None
    isolated_by: list[str] = []
    if state is not None:
        # Ports decide only for TCP/UDP/SCTP; another protocol is allowed only by a rule
        # without ports, which is exactly what a port-0 TCP question matches.
        protocol: Protocol = conn.protocol if conn.protocol in PROTOCOLS else "TCP"  # type: ignore[assignment]
        side = getattr(decide(state, Endpoint(pod=src_pod) if src_pod else Endpoint(ip=conn.src),
                              Endpoint(pod=dst_pod) if dst_pod else Endpoint(ip=conn.dst),
                              protocol, conn.port or 0), direction)
        isolated_by = list(side.isolated_by)
        if verdict == "allowed" and side.allowed_by:
            policy, rule = side.allowed_by[0].policy, side.allowed_by[0].rule_index
    return {
        "time": datetime.fromtimestamp(at, timezone.utc).isoformat(timespec="milliseconds").replace("+00:00", "Z"),
        "node": node, "verdict": verdict, "direction": direction,
        "source": {"pod": str(src_pod.key) if src_pod else None, "ip": str(conn.src)},
        "destination": {"pod": str(dst_pod.key) if dst_pod else None, "ip": str(conn.dst)},
        "protocol": conn.protocol, "port": conn.port, "policy": policy, "rule": rule,
        "isolated_by": isolated_by,
    }


@dataclass
class RotatingFile:
    """Appends lines; past `max_bytes` the file becomes PATH.1 (one backup) and a new one starts."""

    path: Path
    max_bytes: int = DEFAULT_MAX_BYTES
    _file: Any = None

    def write(self, line: str) -> None:
        if self._file is None:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            self._file = self.path.open("a", encoding="utf-8")
        if self._file.tell() + len(line) > self.max_bytes and self._file.tell() > 0:
            self._file.close()
            self.path.replace(self.path.with_name(self.path.name + ".1"))
            self._file = self.path.open("a", encoding="utf-8")
        self._file.write(line)

    def flush(self) -> None:
        if self._file is not None:
            self._file.flush()


@dataclass
class AuditLog:
    """Packet-ins in (from the OpenFlow thread), JSON lines out (on its own thread)."""

    node: str
    path: Path | None
    state: Callable[[], ClusterState | None]
    rate: int = DEFAULT_RATE
    max_bytes: int = DEFAULT_MAX_BYTES
    dropped: int = 0
    written: int = 0
    _queue: queue.Queue[tuple[bytes, bytes, float]] = field(default_factory=lambda: queue.Queue(QUEUE_LIMIT))
    _pods: tuple[ClusterState | None, dict[IPAddress, Pod]] = (None, {})

    def configure_switch(self, datapath: Any) -> None:
        configure_switch(datapath, self.rate)

    def packet_in(self, userdata: bytes | None, data: bytes | None) -> None:
        """Called on the OpenFlow thread: queue and return."""
        if self.path is None or not userdata or not data:
            return
        try:
            self._queue.put_nowait((bytes(userdata), bytes(data), time.time()))
        except queue.Full:
            self.dropped += 1

    def start(self) -> threading.Thread:
        thread = threading.Thread(target=self._run, name="audit-log", daemon=True)
        thread.start()
        return thread

    def _run(self) -> None:
        assert self.path is not None
        out = RotatingFile(self.path, self.max_bytes)
        reported, last_report = 0, time.monotonic()
        while True:
            item = self._queue.get()
            try:
                line = self._line(*item)
                if line is not None:
                    out.write(line)
                    self.written += 1
                if self._queue.empty():
                    out.flush()
            except Exception:  # a bad packet or a full disk must not end the thread
                LOG.exception("audit log: cannot log a packet-in")
            if self.dropped != reported and time.monotonic() - last_report > 60:
                LOG.warning("audit log: %d packet-ins dropped (queue full)", self.dropped - reported)
                reported, last_report = self.dropped, time.monotonic()

    def _line(self, userdata: bytes, data: bytes, at: float) -> str | None:
        tag = decode_audit_tag(userdata)
        conn = decode_packet(data)
        if tag is None or conn is None:
            return None
        state = self.state()
        if self._pods[0] is not state:
            self._pods = (state, {} if state is None else _pods_by_ip(state))
        entry = record(state, self.node, tag[0], tag[1], conn, at, self._pods[1])
        return json.dumps(entry, separators=(",", ":")) + "\n"
