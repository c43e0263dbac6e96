"""IP families before IPAM runs: what the config's ranges and the pod's requests ask for, and
whether the node and the pod's namespace can have it.

Checked before any side effect, so a config or a request the node cannot serve fails with a
message naming the range or the address and the reason, and leaves nothing behind (no lease
in host-local's dataDir, no link, no OVSDB row). host-local would refuse some of these itself,
but later and in its own words (overlaps), or not at all: an IPv6 range on a node with IPv6
disabled is allocated by host-local and fails only when the address is added (EACCES).
"""
from __future__ import annotations

import ipaddress
import json
import os
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from typing import Any

from sdn_netpol.cni.config import CniEnv, NetConf
from sdn_netpol.cni.errors import INVALID_CONFIG, CniError

IPV6_SYSCTL = "/proc/sys/net/ipv6/conf"
IPNetwork = ipaddress.IPv4Network | ipaddress.IPv6Network


@dataclass(frozen=True)
class Ranges:
    """The IPAM ranges of a config, each with the path that names it in messages."""

    subnets: tuple[tuple[str, IPNetwork], ...]

    @property
    def families(self) -> frozenset[int]:
        return frozenset(net.version for _, net in self.subnets)


def _range_entries(ipam: Mapping[str, Any]) -> Iterator[tuple[str, Any]]:
    """host-local's `ranges` (a list of range sets, each a list of ranges) or legacy `subnet`."""
    ranges = ipam.get("ranges")
    if isinstance(ranges, list):
        for i, range_set in enumerate(ranges):
            for j, entry in enumerate(range_set if isinstance(range_set, list) else []):
                if isinstance(entry, dict) and "subnet" in entry:
                    yield f"ipam.ranges[{i}][{j}].subnet", entry["subnet"]
    elif "subnet" in ipam:
        yield "ipam.subnet", ipam["subnet"]


def parse_ranges(conf: NetConf) -> Ranges:
    """The subnets of the config's IPAM ranges; two that overlap are refused (host-local would
    hand out one address twice over, or refuse in its own words)."""
    try:
        doc = json.loads(conf.raw)
    except ValueError:  # parse_netconf read it already; unreachable in practice
        return Ranges(())
    ipam = doc.get("ipam") if isinstance(doc, dict) else None
    subnets: list[tuple[str, IPNetwork]] = []
    for path, raw in _range_entries(ipam if isinstance(ipam, dict) else {}):
        try:
            net = ipaddress.ip_network(str(raw), strict=False)
        except ValueError:
            raise CniError(INVALID_CONFIG, f"config field {path!r} is not a CIDR", f"got {raw!r}") from None
        for other_path, other in subnets:
            if net.version == other.version and net.overlaps(other):
                raise CniError(INVALID_CONFIG, f"IPAM ranges overlap: {path} {net} and {other_path} {other}",
                               "each range must be a separate subnet (one per IP family on a dual-stack node)")
        subnets.append((path, net))
    return Ranges(tuple(subnets))


def requested_addresses(conf: NetConf, env: CniEnv) -> list[tuple[str, ipaddress.IPv4Address | ipaddress.IPv6Address]]:
    """Addresses the runtime asks for on the pod's behalf: `runtimeConfig.ips` (the `ips`
    capability), `args.cni.ips`, and CNI_ARGS `IP=` (comma-separated), as host-local reads them."""
    try:
        doc = json.loads(conf.raw)
    except ValueError:
        doc = {}
    sources: list[tuple[str, Any]] = []
    if isinstance(doc, dict):
        runtime = doc.get("runtimeConfig")
        if isinstance(runtime, dict):
            sources.append(("runtimeConfig.ips", runtime.get("ips")))
        args = doc.get("args")
        cni_args = args.get("cni") if isinstance(args, dict) else None
        if isinstance(cni_args, dict):
            sources.append(("args.cni.ips", cni_args.get("ips")))
    if env.args.get("IP"):
        sources.append(("CNI_ARGS IP", env.args["IP"].split(",")))
    found = []
    for where, values in sources:
        for value in values if isinstance(values, list) else []:
            try:
                found.append((where, ipaddress.ip_interface(str(value).strip()).ip))
            except ValueError:
                continue  # host-local reports a malformed address itself
    return found


def _read(path: str) -> str | None:
    try:
        with open(path) as f:
            return f.read().strip()
    except OSError:
        return None


def ipv6_disabled_here() -> str | None:
    """Why this network namespace cannot have IPv6 (the kernel has none, or it is disabled), or
    None. Read through /proc/sys/net, which shows the namespace of the reading thread."""
    if not os.path.isdir(IPV6_SYSCTL):
        return "the kernel has no IPv6 (/proc/sys/net/ipv6 is absent: ipv6.disable=1?)"
    for scope in ("all", "default"):
        if _read(f"{IPV6_SYSCTL}/{scope}/disable_ipv6") == "1":
            return f"net.ipv6.conf.{scope}.disable_ipv6=1"
    return None


def check_families(conf: NetConf, env: CniEnv, node_ipv6: str | None) -> Ranges:
    """Refuse, before IPAM, what this node cannot serve: overlapping ranges, an IPv6 range on
    a node without IPv6 (`node_ipv6`: why not, from ipv6_disabled_here() in the node's
    namespace), a requested address of a family the config has no range for."""
    ranges = parse_ranges(conf)
    if node_ipv6 is not None:
        v6 = [f"{path} {net}" for path, net in ranges.subnets if net.version == 6]
        if v6:
            raise CniError(INVALID_CONFIG, f"IPv6 range {v6[0]} on a node without IPv6",
                           f"{node_ipv6}; enable IPv6 on the node or remove the IPv6 range")
    for where, ip in requested_addresses(conf, env):
        if ranges.subnets and ip.version not in ranges.families:
            have = ", ".join(str(net) for _, net in ranges.subnets)
            raise CniError(INVALID_CONFIG, f"the pod asks for IPv{ip.version} address {ip} ({where}), "
                           f"but this node has no IPv{ip.version} range",
                           f"the node's ranges: {have}")
    return ranges
