"""Network-namespace plumbing for the lab: create/remove, and work *inside* one from here.

The lab process never forks `ip netns exec` for its own work: a socket or an rtnetlink
handle keeps the namespace it was created in, so the calling thread enters the namespace
(`setns` is per thread) just long enough to open it and comes back. Probes, status queries
and link setup all use that trick; only long-running daemons are started inside a netns.
"""

from __future__ import annotations

import contextlib
import ctypes
import errno
import fcntl
import functools
import os
import socket
import struct
from collections.abc import Iterator
from pathlib import Path
from typing import Any

NETNS_DIR = Path("/var/run/netns")
CLONE_NEWNET = 0x40000000
SIOCETHTOOL = 0x8946
ETHTOOL_STXCSUM = 0x17
_LIBC = ctypes.CDLL(None, use_errno=True)


def netns_path(name: str) -> str:
    return str(NETNS_DIR / name)


def exists(name: str) -> bool:
    return (NETNS_DIR / name).exists()


def list_netns(prefix: str) -> list[str]:
    """Namespaces whose name starts with `prefix` (the lab's names all share one)."""
    if not NETNS_DIR.is_dir():
        return []
    return sorted(p.name for p in NETNS_DIR.iterdir() if p.name.startswith(prefix))


@functools.cache
def _pyroute2_netns() -> Any:
    """pyroute2's netns module, configured once. Imported here only: pyroute2 costs 0.1-0.3 s
    to import. It forks a child to create a namespace and gives up after 2 s without its
    answer; under load (CI, test_admin_lab's fixture) that child took longer and the lab
    failed to come up, so the timeout is raised to 30 s."""
    from pyroute2 import config as pyr_config
    from pyroute2 import netns as pyr_netns

    pyr_config.default_communicate_timeout = max(pyr_config.default_communicate_timeout, 30)
    return pyr_netns


def create(name: str) -> None:
    """A fresh namespace with `lo` up (a leftover of the same name is removed first)."""
    if exists(name):
        remove(name)
    _pyroute2_netns().create(name)
    with ipr_in(name) as ipr:
        ipr.link("set", index=ipr.link_lookup(ifname="lo")[0], state="up")


def remove(name: str) -> None:
    """Unmount and delete; the kernel frees the namespace (and its links) asynchronously
    once no process is left inside, which is why processes are killed before this."""
    from pyroute2 import netns as pyr_netns

    with contextlib.suppress(FileNotFoundError, OSError):
        pyr_netns.remove(name)


def _setns(fd: int) -> None:
    if _LIBC.setns(fd, CLONE_NEWNET) != 0:
        err = ctypes.get_errno()
        raise OSError(err, os.strerror(err))


@contextlib.contextmanager
def entered(name: str | None) -> Iterator[None]:
    """Run the body with this thread inside netns `name` (None: stay where we are)."""
    if name is None:
        yield
        return
    target = os.open(netns_path(name), os.O_RDONLY | os.O_CLOEXEC)
    home = os.open("/proc/thread-self/ns/net", os.O_RDONLY | os.O_CLOEXEC)
    try:
        _setns(target)
        try:
            yield
        finally:
            _setns(home)
    finally:
        os.close(target)
        os.close(home)


def socket_in(name: str | None, family: int, kind: int, proto: int = 0) -> socket.socket:
    """A socket that lives in netns `name` for its whole life."""
    with entered(name):
        return socket.socket(family, kind, proto)


@contextlib.contextmanager
def ipr_in(name: str | None) -> Iterator[Any]:
    """An rtnetlink handle bound to netns `name`."""
    from pyroute2 import IPRoute

    with entered(name):
        ipr = IPRoute()
    try:
        yield ipr
    finally:
        ipr.close()


def link_index(ipr: Any, ifname: str) -> int:
    found = ipr.link_lookup(ifname=ifname)
    if not found:
        raise LookupError(f"no interface {ifname}")
    return int(found[0])


def link_mac(ipr: Any, ifname: str) -> str:
    return str(ipr.get_links(link_index(ipr, ifname))[0].get_attr("IFLA_ADDRESS"))


def veth(ns_a: str, name_a: str, ns_b: str, name_b: str, mtu: int = 1500, mac_b: str | None = None) -> None:
    """A veth pair created in `ns_a` with its peer born directly in `ns_b` (no temporary
    name anywhere else, so nothing can clash with the host's interfaces)."""
    fd = os.open(netns_path(ns_b), os.O_RDONLY | os.O_CLOEXEC)
    peer: dict[str, Any] = {"ifname": name_b, "net_ns_fd": fd, "mtu": mtu}
    if mac_b:
        peer["address"] = mac_b
    try:
        with ipr_in(ns_a) as ipr:
            ipr.link("add", ifname=name_a, kind="veth", mtu=mtu, peer=peer)
    finally:
        os.close(fd)


def set_up(name: str, ifname: str, master: str | None = None, tx_off: bool = False) -> None:
    """Bring a link up (optionally enslaved to a Linux bridge, optionally without TX
    checksum offload, which the userspace datapath needs on anything that sends to it)."""
    with ipr_in(name) as ipr:
        idx = link_index(ipr, ifname)
        if master:
            ipr.link("set", index=idx, master=link_index(ipr, master))
        ipr.link("set", index=idx, state="up")
    if tx_off:
        tx_csum_off(name, ifname)


def add_address(name: str, ifname: str, cidr: str) -> None:
    from pyroute2.netlink.exceptions import NetlinkError

    address, _, plen = cidr.partition("/")
    with ipr_in(name) as ipr:
        try:
            ipr.addr("add", index=link_index(ipr, ifname), address=address, prefixlen=int(plen or 32))
        except NetlinkError as exc:
            if exc.code != errno.EEXIST:
                raise


def add_route(name: str, dst: str, gateway: str, ifname: str) -> None:
    """`ip route add DST via GW dev IF onlink`: the gateway is virtual (proxy ARP)."""
    with ipr_in(name) as ipr:
        ipr.route("add", dst=dst, gateway=gateway, oif=link_index(ipr, ifname), flags=4)  # RTNH_F_ONLINK


def add_bridge(name: str, ifname: str) -> None:
    with ipr_in(name) as ipr:
        ipr.link("add", ifname=ifname, kind="bridge")
        ipr.link("set", index=link_index(ipr, ifname), state="up")


def tx_csum_off(name: str, ifname: str) -> None:
    """`ethtool -K IF tx off` as one ioctl (LAB-NOTES: bad TCP/UDP checksums otherwise)."""
    value = (ctypes.c_uint32 * 2)(ETHTOOL_STXCSUM, 0)
    ifreq = struct.pack("16sP", ifname.encode(), ctypes.addressof(value)).ljust(40, b"\0")
    with contextlib.closing(socket_in(name, socket.AF_INET, socket.SOCK_DGRAM)) as sock:
        fcntl.ioctl(sock.fileno(), SIOCETHTOOL, ifreq)


def netns_inode(name: str) -> int | None:
    try:
        return os.stat(netns_path(name)).st_ino
    except OSError:
        return None
