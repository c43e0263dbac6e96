"""CHECK: is the attachment ADD reported still what exists?

Compares the runtime's `prevResult` with the kernel (pod interface: MAC, addresses,
MTU, up; host veth up) and with OVSDB (port on the configured bridge, external_ids naming
this container/IP/MAC, ofport assigned). IPAM is asked to check its own allocation first,
as the spec requires of a plugin that delegates IPAM.
"""
from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from sdn_netpol.cni import netlink
from sdn_netpol.cni.config import CniEnv, NetConf
from sdn_netpol.cni.errors import CHECK_FAILED, INCOMPATIBLE_VERSION, INVALID_CONFIG, CniError
from sdn_netpol.cni.ipam import ipam_check
from sdn_netpol.cni.ovsdb import PortInfo, connect


def _fail(msg: str, details: str = "") -> CniError:
    return CniError(CHECK_FAILED, msg, details)


def _expected(prev: Mapping[str, Any], ifname: str) -> tuple[str, set[str]]:
    """The pod interface's MAC and addresses as prevResult recorded them."""
    ifaces = prev.get("interfaces") or []
    index = next((i for i, it in enumerate(ifaces)
                  if isinstance(it, dict) and it.get("name") == ifname and it.get("sandbox")),
                 None)
    if index is None:
        raise CniError(INVALID_CONFIG, f"prevResult has no sandbox interface {ifname}")
    addrs = {str(ip.get("address")) for ip in prev.get("ips") or []
             if isinstance(ip, dict) and ip.get("interface", index) == index}
    return str(ifaces[index].get("mac", "")).lower(), addrs


def _check_pod(env: CniEnv, conf: NetConf, mac: str, addrs: set[str]) -> None:
    if not netlink.netns_exists(env.netns):
        raise _fail(f"netns {env.netns} does not exist")
    state = netlink.pod_link_state(env.netns, env.ifname)
    if state is None:
        raise _fail(f"{env.ifname} not found in {env.netns}")
    if mac and state.mac.lower() != mac:
        raise _fail(f"{env.ifname} has MAC {state.mac}, expected {mac}")
    missing = addrs - state.addresses
    if missing:
        raise _fail(f"{env.ifname} lacks {', '.join(sorted(missing))}",
                    f"has {', '.join(sorted(state.addresses))}")
    if state.mtu != conf.mtu:
        raise _fail(f"{env.ifname} has MTU {state.mtu}, expected {conf.mtu}")
    if not state.up:
        raise _fail(f"{env.ifname} is down")


def _check_port(info: PortInfo | None, env: CniEnv, conf: NetConf, host: str,
                want: Mapping[str, str]) -> None:
    if info is None:
        raise _fail(f"OVS port {host} does not exist")
    if info.bridge != conf.bridge:
        raise _fail(f"OVS port {host} is on bridge {info.bridge!r}, expected {conf.bridge!r}")
    for key, value in want.items():
        got = info.iface_ids.get(key)
        same = (set((got or "").split(",")) == set(value.split(","))) if key == "pod-ip" \
            else got == value
        if not same:
            raise _fail(f"OVS interface {host} external_ids:{key} is {got!r}, expected {value!r}")
    if info.ofport <= 0:
        raise _fail(f"OVS interface {host} has no ofport ({info.ofport})")


def cmd_check(env: CniEnv, conf: NetConf) -> None:
    if conf.cni_version in ("0.3.0", "0.3.1"):
        raise CniError(INCOMPATIBLE_VERSION, "CHECK needs cniVersion 0.4.0 or later",
                       f"config has {conf.cni_version}")
    if conf.prev_result is None:
        raise CniError(INVALID_CONFIG, "CHECK needs prevResult in the config")
    mac, addrs = _expected(conf.prev_result, env.ifname)
    ipam_check(conf, env)
    _check_pod(env, conf, mac, addrs)
    host = netlink.host_ifname(env.container_id, env.ifname)
    host_state = netlink.host_link_state(host)
    if host_state is None or not host_state.up:
        raise _fail(f"host interface {host} is missing or down")
    want = {"container-id": env.container_id, "pod-mac": mac,
            "pod-ip": ",".join(a.split("/")[0] for a in addrs)}
    if env.pod_namespace and env.pod_name:
        want["iface-id"] = f"{env.pod_namespace}/{env.pod_name}"
    with connect(conf.ovsdb, conf.ovs_timeout) as db:
        _check_port(db.port_info(host), env, conf, host, want)
