"""The ADD result, in the version the config asked for, and the external_ids contract.

Both are read by others: the runtime parses the result (kubelet takes the pod IP from
`ips`), the controller reads external_ids to map an OpenFlow port to a pod and to build
its spoof guard. Keep the two shapes stable.
"""
from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from sdn_netpol.cni.config import CniEnv
from sdn_netpol.cni.ipam import IpamResult, Route

POD_IFACE_INDEX = 1  # interfaces[0] is the host veth, interfaces[1] the pod interface


@dataclass(frozen=True)
class Attachment:
    """Everything ADD created, as the result describes it."""

    host_ifname: str
    host_mac: str
    ifname: str
    mac: str
    sandbox: str
    ipam: IpamResult
    routes: tuple[Route, ...]


def external_ids(env: CniEnv, ipam: IpamResult, mac: str) -> dict[str, str]:
    """`pod-namespace`, `pod-name`, `iface-id` (NS/NAME) only when the runtime named the pod
    in CNI_ARGS (kubelet always does); `pod-ip` lists every address, comma-separated."""
    ids = {
        "container-id": env.container_id,
        "pod-ip": ",".join(str(ip.address.ip) for ip in ipam.ips),
        "pod-mac": mac,
    }
    if env.pod_namespace and env.pod_name:
        ids["pod-namespace"] = env.pod_namespace
        ids["pod-name"] = env.pod_name
        ids["iface-id"] = f"{env.pod_namespace}/{env.pod_name}"
    return ids


def _ips(att: Attachment, version: str) -> list[dict[str, Any]]:
    out = []
    for item in att.ipam.ips:
        entry: dict[str, Any] = {"address": str(item.address), "interface": POD_IFACE_INDEX}
        if item.gateway is not None:
            entry["gateway"] = str(item.gateway)
        if version != "1.0.0":  # 0.3.x/0.4.0 results carry the IP version
            entry["version"] = str(item.address.version)
        out.append(entry)
    return out


def _routes(routes: Sequence[Route]) -> list[dict[str, str]]:
    return [{"dst": str(r.dst), **({"gw": str(r.gw)} if r.gw else {})} for r in routes]


def build_result(att: Attachment, version: str, dns: Mapping[str, Any]) -> dict[str, Any]:
    """Spec result: interfaces, ips (pointing at the pod interface), routes, dns.
    `dns` from the network config wins over what IPAM returned (host-local: resolvConf)."""
    return {
        "cniVersion": version,
        "interfaces": [
            {"name": att.host_ifname, "mac": att.host_mac},
            {"name": att.ifname, "mac": att.mac, "sandbox": att.sandbox},
        ],
        "ips": _ips(att, version),
        "routes": _routes(att.routes),
        "dns": dict(dns or att.ipam.dns),
    }
