"""Kernel side of a pod attachment: the veth pair, the pod's addresses and routes.

All through netlink (pyroute2) plus one ethtool ioctl, no `ip`/`ethtool` processes: a
plugin run is on the pod start-up path, and forks cost more than the work itself.
The pod namespace is entered only by the calling thread, for the few microseconds it
takes to open sockets there (`_sockets_in`); sockets keep their namespace afterwards.
"""
from __future__ import annotations

import ctypes
import errno
import fcntl
import hashlib
import ipaddress
import os
import socket
import struct
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

from pyroute2 import IPRoute
from pyroute2.netlink.exceptions import NetlinkError

from sdn_netpol.cni.errors import INTERFACE_FAILURE, CniError
from sdn_netpol.cni.families import IPV6_SYSCTL, ipv6_disabled_here
from sdn_netpol.cni.ipam import IpamResult, IpConfig, Route

CLONE_NEWNET = 0x40000000
NS_GET_NSTYPE = 0xB703  # _IO(0xb7, 0x3)
SIOCETHTOOL = 0x8946
ETHTOOL_STXCSUM = 0x17
IFA_F_NODAD = 0x02
_LIBC = ctypes.CDLL(None, use_errno=True)


def host_ifname(container_id: str, ifname: str) -> str:
    """Deterministic so that DEL and CHECK find the host end from the env alone."""
    digest = hashlib.sha256((container_id + ifname).encode()).hexdigest()
    return "veth" + digest[:11]


def pod_mac(ips: tuple[IpConfig, ...], container_id: str) -> str:
    """`02:00:` + the IPv4 bytes: readable in dumps; a hash when the pod has no IPv4."""
    for item in ips:
        if item.address.version == 4:
            raw = b"\x02\x00" + item.address.ip.packed
            break
    else:
        raw = b"\x02" + hashlib.sha256(container_id.encode()).digest()[:5]
    return ":".join(f"{b:02x}" for b in raw)


def _setns(fd: int) -> None:
    if _LIBC.setns(fd, CLONE_NEWNET) != 0:
        err = ctypes.get_errno()
        raise OSError(err, os.strerror(err))


@contextmanager
def _entered(netns: str) -> Iterator[None]:
    """The calling thread inside `netns` for the block (sockets it opens, and /proc/sys/net
    files, stay bound to that namespace afterwards), then back home."""
    try:
        target = os.open(netns, os.O_RDONLY | os.O_CLOEXEC)
    except OSError as exc:
        raise CniError(INTERFACE_FAILURE, f"cannot open netns {netns}", str(exc)) from None
    home = os.open("/proc/self/ns/net", os.O_RDONLY | os.O_CLOEXEC)
    try:
        _setns(target)
        try:
            yield
        finally:
            _setns(home)
    finally:
        os.close(target)
        os.close(home)


@contextmanager
def _sockets_in(netns: str) -> Iterator[tuple[Any, socket.socket]]:
    """An rtnetlink handle and an AF_INET socket bound to the pod namespace."""
    with _entered(netns):
        ipr = IPRoute()
        sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    try:
        yield ipr, sock
    finally:
        sock.close()
        ipr.close()


def ipv6_disabled_in(netns: str) -> str | None:
    """Why the pod's namespace cannot have IPv6, or None (see families.ipv6_disabled_here)."""
    with _entered(netns):
        return ipv6_disabled_here()


def link_local(mac: str) -> ipaddress.IPv6Interface:
    """fe80::/64 + the modified EUI-64 of the MAC (RFC 4291 appendix A): the address the
    kernel would make itself (addr_gen_mode=eui64) and the pipeline's spoofguard expects
    (compiler/topology.link_local)."""
    octets = bytes.fromhex(mac.replace(":", ""))
    eui64 = bytes([octets[0] ^ 0x02]) + octets[1:3] + b"\xff\xfe" + octets[3:]
    return ipaddress.IPv6Interface((b"\xfe\x80" + bytes(6) + eui64, 64))


def _ipv6_settings(ifname: str) -> None:
    """Before the link is up, in the pod namespace: no address of the kernel's own making
    (addr_gen_mode=none: the plugin adds the link-local itself, without DAD), no Duplicate
    Address Detection (the switch answers every solicitation, so DAD would only delay), no
    Router Advertisements (routes are the plugin's; the switch drops RAs anyway)."""
    for name, value in (("addr_gen_mode", "1"), ("accept_dad", "0"), ("accept_ra", "0")):
        path = f"{IPV6_SYSCTL}/{ifname}/{name}"
        try:
            with open(path, "w") as f:
                f.write(value)
        except OSError as exc:
            raise CniError(INTERFACE_FAILURE, f"cannot set {path} in the pod namespace", str(exc)) from None


def _index(ipr: Any, ifname: str) -> int | None:
    found = ipr.link_lookup(ifname=ifname)
    return int(found[0]) if found else None


def delete_link(ifname: str) -> bool:
    """Delete a link of the current namespace (its veth peer goes with it); absent is fine.
    Returns whether something was deleted."""
    with IPRoute() as ipr:
        idx = _index(ipr, ifname)
        if idx is None:
            return False
        try:
            ipr.link("del", index=idx)
        except NetlinkError as exc:
            if exc.code == errno.ENODEV:
                return False
            raise CniError(INTERFACE_FAILURE, f"cannot delete {ifname}", str(exc)) from None
    return True


def create_veth(host: str, netns: str, ifname: str, mac: str, mtu: int) -> None:
    """One netlink request: host end here, peer created directly inside the pod netns
    with its final name, MAC and MTU (no temporary name that could clash on the node).
    A leftover host end of an earlier, interrupted ADD is removed first."""
    delete_link(host)
    try:
        fd = os.open(netns, os.O_RDONLY | os.O_CLOEXEC)
    except OSError as exc:
        raise CniError(INTERFACE_FAILURE, f"cannot open netns {netns}", str(exc)) from None
    try:
        with IPRoute() as ipr:
            ipr.link("add", ifname=host, kind="veth", mtu=mtu,
                     peer={"ifname": ifname, "net_ns_fd": fd, "address": mac, "mtu": mtu})
    except NetlinkError as exc:
        why = f"{exc} (is {ifname} already present in {netns}?)" \
            if exc.code == errno.EEXIST else str(exc)
        raise CniError(INTERFACE_FAILURE, f"cannot create veth {host}/{ifname}", why) from None
    finally:
        os.close(fd)


def host_up(host: str) -> str:
    """Bring the host end up; return its MAC (for the result's interfaces list)."""
    with IPRoute() as ipr:
        idx = _index(ipr, host)
        if idx is None:
            raise CniError(INTERFACE_FAILURE, f"host interface {host} vanished")
        ipr.link("set", index=idx, state="up")
        return str(ipr.get_links(idx)[0].get_attr("IFLA_ADDRESS"))


def _default_routes(ipam: IpamResult) -> list[Route]:
    """IPAM routes (gateway filled in per family) plus a default route per family that has
    a gateway and no default yet: the gateway is virtual (an OpenFlow ARP responder)."""
    gateways = {ip.address.version: ip.gateway for ip in ipam.ips if ip.gateway}
    routes = [Route(r.dst, r.gw or gateways.get(r.dst.version)) for r in ipam.routes]
    for version, gw in sorted(gateways.items()):
        if not any(r.dst.prefixlen == 0 and r.dst.version == version for r in routes):
            dst = ipaddress.ip_network("0.0.0.0/0" if version == 4 else "::/0")
            routes.insert(0, Route(dst, gw))
    return routes


def _tx_csum_off(sock: socket.socket, ifname: str) -> None:
    """`ethtool -K IF tx off` as one ioctl: the userspace datapath forwards through
    AF_PACKET without vnet headers, so CHECKSUM_PARTIAL packets would leave the pod with
    bad TCP/UDP checksums (LAB-NOTES: TcpInCsumErrors)."""
    value = (ctypes.c_uint32 * 2)(ETHTOOL_STXCSUM, 0)
    ifreq = struct.pack("16sP", ifname.encode(), ctypes.addressof(value)).ljust(40, b"\0")
    try:
        fcntl.ioctl(sock.fileno(), SIOCETHTOOL, ifreq)
    except OSError as exc:
        raise CniError(INTERFACE_FAILURE, f"cannot turn tx checksum offload off on {ifname}",
                       str(exc)) from None


def _add_route(ipr: Any, idx: int, route: Route) -> None:
    kwargs: dict[str, Any] = {"dst": str(route.dst), "oif": idx}
    if route.gw is not None:
        kwargs["gateway"] = str(route.gw)
    family = socket.AF_INET if route.dst.version == 4 else socket.AF_INET6
    try:
        ipr.route("add", family=family, **kwargs)
    except NetlinkError as exc:
        if exc.code != errno.EEXIST:
            raise


def configure_pod(netns: str, ifname: str, ipam: IpamResult, mac: str) -> list[Route]:
    """Inside the pod: lo up, addresses (IPv6 ones without DAD, and the link-local from the
    MAC), link up, tx csum off, routes. Returns the routes installed (they go into the result)."""
    routes = _default_routes(ipam)
    addresses = [item.address for item in ipam.ips]
    if any(address.version == 6 for address in addresses):
        with _entered(netns):
            _ipv6_settings(ifname)
        addresses.append(link_local(mac))
    with _sockets_in(netns) as (ipr, sock):
        try:
            lo = _index(ipr, "lo")
            if lo is not None:
                ipr.link("set", index=lo, state="up")
            idx = _index(ipr, ifname)
            if idx is None:
                raise CniError(INTERFACE_FAILURE, f"{ifname} not found in {netns}")
            for address in addresses:
                ipr.addr("add", index=idx, address=str(address.ip), prefixlen=address.network.prefixlen,
                         flags=IFA_F_NODAD if address.version == 6 else 0)
            ipr.link("set", index=idx, state="up")
            _tx_csum_off(sock, ifname)
            for route in routes:
                _add_route(ipr, idx, route)
        except NetlinkError as exc:
            raise CniError(INTERFACE_FAILURE, f"cannot configure {ifname} in {netns}",
                           str(exc)) from None
    return routes


@dataclass(frozen=True)
class LinkState:
    """What CHECK compares against the previous result."""

    mac: str
    mtu: int
    up: bool
    addresses: frozenset[str]


def _state(ipr: Any, ifname: str) -> LinkState | None:
    idx = _index(ipr, ifname)
    if idx is None:
        return None
    link = ipr.get_links(idx)[0]
    addrs = frozenset(
        f"{a.get_attr('IFA_ADDRESS')}/{a['prefixlen']}" for a in ipr.get_addr(index=idx)
    )
    return LinkState(mac=str(link.get_attr("IFLA_ADDRESS")), mtu=int(link.get_attr("IFLA_MTU")),
                     up=bool(link["flags"] & 1), addresses=addrs)


def pod_link_state(netns: str, ifname: str) -> LinkState | None:
    with _sockets_in(netns) as (ipr, _sock):
        return _state(ipr, ifname)


def host_link_state(host: str) -> LinkState | None:
    with IPRoute() as ipr:
        return _state(ipr, host)


def netns_exists(netns: str) -> bool:
    """A path that opens as a network namespace (`/var/run/netns/X`, `/proc/PID/ns/net`);
    a leftover plain file where a namespace was unmounted does not count."""
    try:
        fd = os.open(netns, os.O_RDONLY | os.O_CLOEXEC)
    except OSError:
        return False
    try:
        return fcntl.ioctl(fd, NS_GET_NSTYPE) == CLONE_NEWNET
    except OSError:
        return False
    finally:
        os.close(fd)
