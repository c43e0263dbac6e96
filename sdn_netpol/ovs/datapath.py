"""The datapath under the OpenFlow tables: read its megaflows, re-translate them, purge them.

Why this exists (docs/reliability.md has the whole story): ``ovs-vswitchd`` caches the
translation of the OpenFlow tables as datapath flows (megaflows) and relies on its
revalidator threads to correct them after every table change.  In the userspace datapath
of OVS < 3.1.3 (also < 3.0.5, < 2.17.8; fixed in 3.2.0) the revalidator's in-place
modification of a megaflow looks the flow up by its *unmasked key* instead of by its UFID,
so when two megaflows overlap it rewrites the wrong one.  The one it meant to fix keeps
its old actions while its ukey records the new ones, so no later revalidation touches it:
a stale drop (or a stale allow) lives as long as traffic keeps it from idling out.

So "realized" cannot stop at the OpenFlow barrier: :func:`purge` (``revalidator/purge``)
removes every megaflow after a table change on an affected switch, and :func:`verify`
checks every remaining megaflow against a fresh translation (``ofproto/trace`` of its own
datapath key), which is how a stale one is *seen*: ``sdn-netpol lab verify`` and the
controller's sampled ``datapath_stale_flows`` metric.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Protocol

from sdn_netpol.ovs.instance import OvsError

_FLOW_LINE = re.compile(
    r"^(?P<key>\S.*?), packets:(?P<packets>\d+), bytes:(?P<bytes>\d+), used:(?P<used>[^,]+)"
    r"(?:, flags:(?P<flags>[^,]*))?, actions:(?P<actions>.*)$"
)
_DATAPATH_ACTIONS = "Datapath actions: "
_TUNNEL_PORT = re.compile(r"^\s*port (\d+): \S+_sys_(\d+) ", re.M)
_IN_PORT = re.compile(r"(?:^|,)in_port\((\d+)\)")
_TUNNEL = re.compile(r"(?:^|,)tunnel\(")
_UNKNOWN_ATTR = re.compile(r",key\d+\([^)]*\)")
_RECIRC_ID = re.compile(r"recirc\(0x[0-9a-f]+\)")
_DATAPATH_NAME = re.compile(r"^(\w+)@", re.M)
_VERSION = re.compile(r"Open vSwitch\)\s+(\d+)\.(\d+)\.(\d+)")
# Releases whose userspace flow_put fixed the modify-by-key lookup (upstream commit
# "dpif-netdev: Fix dpif_netdev_flow_put.", backported to these branches).
_FIXED_IN = {(2, 17): 8, (3, 0): 5, (3, 1): 3}
_FIRST_FIXED_MAJOR = (3, 2)
_SLOW_PATH_NOTE = "handled by the userspace slow path"
SLOW_PATH = "userspace slow path"
_SLOW_PATH_ACTIONS = re.compile(r"^userspace\(pid=\d+,slow_path\(")
# dpif-netdev, also registered as "dummy" (OVS's test datapath) by dpif_dummy_register__.
USERSPACE_TYPES = frozenset({"netdev", "dummy"})
# Traces that fail because what the megaflow refers to went away between dump and trace:
# its recirculation state, or its input port (a pod deleted meanwhile).
UNVERIFIABLE = ("no recirculation data", "no OpenFlow port for datapath port",
                "no OpenFlow tunnel port for this packet")


class Unixctl(Protocol):
    """What this module needs of a unixctl connection (sdn_netpol.ovs.trace.Tracer)."""

    def call(self, command: str, *args: str) -> str: ...


@dataclass(frozen=True)
class DatapathFlow:
    """One megaflow as ``dpctl/dump-flows`` prints it (key with masks, datapath actions)."""

    key: str
    actions: str
    packets: int
    bytes: int
    used: str


@dataclass(frozen=True)
class StaleFlow:
    """A megaflow whose installed actions differ from what the tables say today."""

    flow: DatapathFlow
    expected: str

    def describe(self) -> str:
        return (f"{self.flow.key} (packets:{self.flow.packets}) installed: {self.flow.actions}"
                f" | tables say: {self.expected}")


@dataclass(frozen=True)
class VerifyReport:
    checked: int
    unverifiable: int
    stale: tuple[StaleFlow, ...]

    @property
    def ok(self) -> bool:
        return not self.stale


def parse_dump(text: str) -> list[DatapathFlow]:
    """Flows of ``dpctl/dump-flows`` output; header lines ("flow-dump from …") are skipped."""
    flows = []
    for line in text.splitlines():
        found = _FLOW_LINE.match(line.strip())
        if found:
            flows.append(DatapathFlow(found["key"], found["actions"].strip(), int(found["packets"]),
                                      int(found["bytes"]), found["used"]))
    return flows


def tunnel_udp_ports(dpctl_show: str) -> dict[int, int]:
    """Datapath port number -> UDP port of each native tunnel port (``vxlan_sys_4789``)."""
    return {int(found[1]): int(found[2]) for found in _TUNNEL_PORT.finditer(dpctl_show)}


def trace_key(key: str, tunnel_ports: dict[int, int]) -> str:
    """The dumped key as ``ofproto/trace`` accepts it.  Masks are fine, but what the
    megaflow wildcards and the lookup still reads must be there: ``eth()`` (without it
    the key parses as an L3 packet, which no Ethernet port or tunnel receives), and for
    a tunnel a TTL (any value translates the same) and the UDP port that picks the
    OpenFlow tunnel port."""
    # an attribute of a newer kernel than this OVS knows (Linux 6.1's IPv6 extension headers,
    # OVS 3.1: `key32(00 00/00 00)`) is dumped by number, which the trace parser refuses
    key = _UNKNOWN_ATTR.sub("", key)
    if "eth(" not in key and ",eth_type(" in key and "packet_type(ns=1," not in key:
        key = key.replace(",eth_type(", ",eth(),eth_type(", 1)
    tunnel = _TUNNEL.search(key)  # first in a userspace dump; after recirc_id() in a kernel one
    if tunnel is None:
        return key
    in_port = _IN_PORT.search(key)
    extra = "ttl=64,"
    if in_port and int(in_port[1]) in tunnel_ports:
        extra += f"tp_dst={tunnel_ports[int(in_port[1])]},"
    return key[:tunnel.end()] + extra + key[tunnel.end():]


def first_datapath_actions(trace_output: str) -> str:
    """The actions of the trace's first pass: the ones a megaflow of that key must hold.

    A pass the datapath cannot run itself (the ARP responder's register moves) is
    installed as ``userspace(…slow_path(…))``; the trace says so after its actions."""
    lines = trace_output.splitlines()
    for n, line in enumerate(lines):
        if line.startswith(_DATAPATH_ACTIONS):
            following = lines[n + 1:n + 3]
            if any(_SLOW_PATH_NOTE in text for text in following):
                return SLOW_PATH
            return line[len(_DATAPATH_ACTIONS):].strip()
    raise ValueError("ofproto/trace printed no 'Datapath actions' line")


def same_actions(installed: str, expected: str) -> bool:
    """Equal datapath actions.  Recirculation ids are left out: they name frozen states
    that a trace of a masked key (different metadata) may allocate anew, while the flows
    of the next pass are checked on their own."""
    if expected == SLOW_PATH:
        return bool(_SLOW_PATH_ACTIONS.match(installed))
    return _RECIRC_ID.sub("recirc(*)", installed) == _RECIRC_ID.sub("recirc(*)", expected)


def datapath_types(dpif_show: str) -> set[str]:
    """Datapath types in ``dpif/show`` output (``netdev@ovs-netdev:`` -> netdev)."""
    return set(_DATAPATH_NAME.findall(dpif_show))


def bridge_datapath_type(dpif_show: str, bridge: str) -> str | None:
    """The type of the datapath that holds `bridge` in ``dpif/show`` output."""
    current = None
    for line in dpif_show.splitlines():
        found = _DATAPATH_NAME.match(line)
        if found:
            current = found[1]
        elif line.startswith("  ") and not line.startswith("   ") and line.strip() == f"{bridge}:":
            return current
    return None


def dpif_name(datapath_type: str) -> str:
    """``dpctl/*``'s name for the datapath of a type (one per type in ovs-vswitchd)."""
    return f"{datapath_type}@ovs-{datapath_type}"


def dump(unixctl: Unixctl, datapath_type: str = "netdev") -> list[DatapathFlow]:
    return parse_dump(unixctl.call("dpctl/dump-flows", dpif_name(datapath_type)))


def expected_actions(unixctl: Unixctl, datapath_type: str, flow: DatapathFlow,
                     tunnel_ports: dict[int, int]) -> str | None:
    """What the tables make of `flow`'s key now; None if the flow vanished meanwhile.
    (``ofproto/trace`` names the datapath by its type, optionally prefixed ``ovs-``.)"""
    try:
        output = unixctl.call("ofproto/trace", f"ovs-{datapath_type}", trace_key(flow.key, tunnel_ports))
    except OvsError as exc:
        if any(reason in exc.stderr for reason in UNVERIFIABLE):
            return None
        raise
    return first_datapath_actions(output)


def verify(unixctl: Unixctl, datapath_type: str = "netdev",
           flows: Sequence[DatapathFlow] | None = None) -> VerifyReport:
    """Re-translate every megaflow (or `flows`) and list those the tables contradict."""
    flows = dump(unixctl, datapath_type) if flows is None else flows
    tunnel_ports = tunnel_udp_ports(unixctl.call("dpctl/show", dpif_name(datapath_type)))
    stale, unverifiable = [], 0
    for flow in flows:
        expected = expected_actions(unixctl, datapath_type, flow, tunnel_ports)
        if expected is None:
            unverifiable += 1
        elif not same_actions(flow.actions, expected):
            stale.append(StaleFlow(flow, expected))
    return VerifyReport(len(flows) - unverifiable, unverifiable, tuple(stale))


def recheck(unixctl: Unixctl, report: VerifyReport, datapath_type: str = "netdev") -> VerifyReport:
    """Check the stale flows of `report` again as they are now (after a revalidator round):
    flows that were merely not revalidated yet drop out."""
    suspects = {s.flow.key for s in report.stale}
    current = [f for f in dump(unixctl, datapath_type) if f.key in suspects]
    again = verify(unixctl, datapath_type, current)
    return VerifyReport(report.checked, report.unverifiable + again.unverifiable, again.stale)


def purge(unixctl: Unixctl) -> None:
    """Remove every megaflow (and its ukey): the next packets are translated afresh."""
    unixctl.call("revalidator/purge")


def version(unixctl: Unixctl) -> tuple[int, int, int]:
    text = unixctl.call("version")
    found = _VERSION.search(text)
    if not found:
        raise ValueError(f"cannot read an Open vSwitch version from {text.strip()!r}")
    return int(found[1]), int(found[2]), int(found[3])


def modifies_wrong_megaflow(ovs_version: tuple[int, int, int], datapath_types: Iterable[str]) -> bool:
    """True where the revalidator can rewrite the wrong overlapping megaflow: a userspace
    (``netdev``, or ``dummy``) datapath in a release without the flow_put fix.  The kernel datapath
    modifies flows by their masked key and is not affected."""
    if not USERSPACE_TYPES & set(datapath_types):
        return False
    major_minor = ovs_version[:2]
    if major_minor >= _FIRST_FIXED_MAJOR:
        return False
    fixed_patch = _FIXED_IN.get(major_minor)
    return fixed_patch is None or ovs_version[2] < fixed_patch
