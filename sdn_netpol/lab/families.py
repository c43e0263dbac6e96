"""The lab's address families: which ones a lab has, its addressing plan in each, and the
rule that writes an IPv4 ipBlock of the plan in IPv6 terms.

`lab up --ip-family 4|6|dual` (default 4). A node N has the pod CIDR of each family the lab
has, and a virtual gateway in it (the second-to-last address, `sdn-netpol node
install-cni`'s convention, answered by the flows' ARP and NDP responders):

    IPv4  10.244.N.0/24         gateway 10.244.N.254
    IPv6  fd00:10:244:N::/64    gateway fd00:10:244:N:ffff:ffff:ffff:fffe

N is written with the same digits in both (node 12: `10.244.12.0/24`, `fd00:10:244:12::/64`).
A pod gets one address of each family, IPv4 first in a dual lab (`status.podIPs`); the
tunnels between nodes stay on the IPv4 underlay whatever the pods' families.

`to_ipv6` (docs/lab.md, "Address families"): the IPv4 ipBlocks a case writes for this plan
mean, on an IPv6 lab, the IPv6 ranges that hold the same pods:

    0.0.0.0/0              ::/0                        everything
    10.0.0.0/8             fd00:10::/32                the /8 that holds the pod network
    10.244.0.0/16          fd00:10:244::/48            every node's pod CIDR
    10.244.N.0/24          fd00:10:244:N::/64          node N's pod CIDR
    10.244.N.H/P, P > 24   fd00:10:244:N::H/(96 + P)   part of node N's range: host H keeps
                                                       its number, so a /32 is one address
                                                       (host-local hands both families out
                                                       in the same order: .5 and ::5)

Any other IPv4 CIDR has no counterpart in the plan and is refused (ValueError).
"""

from __future__ import annotations

import copy
from collections.abc import Sequence
from typing import Any

from netaddr import IPAddress, IPNetwork

IP_FAMILIES = {"4": (4,), "6": (6,), "dual": (4, 6)}
POD_CIDR = {4: "10.244.{n}.0/24", 6: "fd00:10:244:{n}::/64"}


def families(ip_family: str) -> tuple[int, ...]:
    """`--ip-family` → the lab's families, first family first."""
    if ip_family not in IP_FAMILIES:
        raise ValueError(f"ip family {ip_family!r}: must be one of {', '.join(IP_FAMILIES)}")
    return IP_FAMILIES[ip_family]


def pod_cidr(n: int, family: int) -> str:
    return POD_CIDR[family].format(n=n)


def gateway(cidr: str) -> str:
    """The node's virtual gateway: the second-to-last address of its pod CIDR."""
    return str(IPNetwork(cidr)[-2])


def family_of(address: str) -> int:
    return int(IPAddress(address.split("/")[0]).version)


def to_ipv6(cidr: str) -> str:
    """An IPv4 CIDR of the lab's plan, as the IPv6 CIDR that holds the same pods (module doc)."""
    net = IPNetwork(cidr)
    if net.version != 4:
        raise ValueError(f"{cidr}: not an IPv4 CIDR")
    a, b, n, h = net.network.words
    plen = net.prefixlen
    if plen == 0:
        return "::/0"
    if (a, plen) == (10, 8):
        return "fd00:10::/32"
    if (a, b) == (10, 244) and plen == 16:
        return "fd00:10:244::/48"
    if (a, b) == (10, 244) and plen == 24:
        return f"fd00:10:244:{n}::/64"
    if (a, b) == (10, 244) and plen > 24:
        return f"{IPAddress(f'fd00:10:244:{n}::') + h}/{96 + plen}"
    raise ValueError(f"{cidr}: no IPv6 counterpart in the lab's addressing plan "
                     "(0.0.0.0/0, 10.0.0.0/8, 10.244.0.0/16, 10.244.N.0/24 and parts of it have one)")


def policy_in_ipv6(doc: dict[str, Any]) -> dict[str, Any]:
    """A copy of a NetworkPolicy manifest with every ipBlock's `cidr` and `except` in IPv6
    terms (`to_ipv6`); other objects are returned as they are."""
    if doc.get("kind") != "NetworkPolicy":
        return doc
    out = copy.deepcopy(doc)
    spec = out.get("spec") or {}
    for direction, side in (("ingress", "from"), ("egress", "to")):
        for rule in spec.get(direction) or []:
            for peer in rule.get(side) or []:
                block = peer.get("ipBlock")
                if block:
                    block["cidr"] = to_ipv6(block["cidr"])
                    if block.get("except"):
                        block["except"] = [to_ipv6(c) for c in block["except"]]
    return out


def by_family(addresses: Sequence[str], family: int) -> str | None:
    return next((a for a in addresses if family_of(a) == family), None)
