"""Pods: placement, a namespace each, attachment through the CNI plugin, one server each.

The plugin runs exactly as a container runtime runs it, from inside the node's namespace
(`ip netns exec NODE sdn-netpol-cni`, `CNI_*` in the environment, the network config on
stdin), so the lab exercises the product's CNI path: host-local IPAM (per-node dataDir),
veth, MTU, tx checksum offload off, default route via the virtual gateway, and the
external_ids the controller maps ports to pods with.
"""

from __future__ import annotations

import json
import os
import select
import subprocess
import sys
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from netaddr import IPAddress, IPNetwork

from sdn_netpol.lab import netns, procs
from sdn_netpol.lab.families import family_of, gateway
from sdn_netpol.lab.state import LabState, NodeState, PodState
from sdn_netpol.lab.store import LabError
from sdn_netpol.model.objects import Pod

CNI_PATH = "/usr/lib/cni"
NETWORK = "sdn-netpol"
POD_MTU = 1450  # tunnels on a 1500 underlay
# A server that fails exits, and its closed pipe ends the wait at once; only a slow start
# waits this long. Slow starts happen: Python importing the lab's modules in an emulated VM
# (the kernel-datapath lab) on a host running two test suites took more than 15 s.
SERVER_READY_TIMEOUT = 120.0
CNI_TIMEOUT = 60.0


@dataclass(frozen=True)
class Placement:
    pod: Pod
    node: str
    ips: tuple[str, ...] = ()  # static addresses asked for through status.podIP(s)

    @property
    def ip(self) -> str | None:
        return self.ips[0] if self.ips else None


def place(pods: Sequence[Pod], nodes: Sequence[NodeState], occupied: dict[str, int] | None = None) -> list[Placement]:
    """Where each pod goes: the node whose pod CIDR holds its status.podIP(s) (of either
    family the lab has); else its spec.nodeName if that is a lab node; else the least loaded
    node, pods in sorted name order (so a fresh lab spreads round-robin)."""
    load = {n.name: 0 for n in nodes} | dict(occupied or {})
    names = {n.name for n in nodes}
    placed: list[Placement] = []
    rest: list[Pod] = []
    for pod in sorted(pods, key=lambda p: (p.namespace, p.name)):
        if pod.ips:
            node, ips = _node_for_ips(pod, nodes)
            placed.append(Placement(pod, node, ips))
        elif pod.node_name in names:
            placed.append(Placement(pod, str(pod.node_name)))
        else:
            rest.append(pod)
            continue
        load[placed[-1].node] += 1
    for pod in rest:
        node = min(nodes, key=lambda n: (load[n.name], n.index)).name
        load[node] += 1
        placed.append(Placement(pod, node))
    return placed


def _node_for_ips(pod: Pod, nodes: Sequence[NodeState]) -> tuple[str, tuple[str, ...]]:
    """The one node whose pod CIDRs hold every status address of the pod (at most one per
    family, each of a family the lab has), and those addresses in the lab's family order."""
    key = f"{pod.namespace}/{pod.name}"
    lab_families = [IPNetwork(c).version for c in nodes[0].pod_cidrs] if nodes else []
    found: dict[int, tuple[IPAddress, str]] = {}
    for ip in pod.ips:
        if ip.version not in lab_families:
            have = " and ".join(f"IPv{f}" for f in lab_families)
            raise LabError(f"pod {key}: status.podIP {ip} is IPv{ip.version}, but the lab's pods have {have} "
                           "only (lab up --ip-family)")
        if ip.version in found:
            raise LabError(f"pod {key}: status.podIPs has two IPv{ip.version} addresses ({found[ip.version][0]}, {ip})")
        found[ip.version] = (ip, _node_for_ip(ip, nodes, key))
    where = {node for _, node in found.values()}
    if len(where) > 1:
        listed = ", ".join(f"{ip} on {node}" for ip, node in found.values())
        raise LabError(f"pod {key}: status.podIPs point at different nodes ({listed})")
    return where.pop(), tuple(str(found[f][0]) for f in lab_families if f in found)


def _node_for_ip(ip: IPAddress, nodes: Sequence[NodeState], key: str) -> str:
    for node in nodes:
        cidr = node.cidr_of(ip.version)
        if cidr is not None and ip in IPNetwork(cidr) and ip != IPAddress(gateway(cidr)):
            return node.name
    cidrs = ", ".join(c for n in nodes for c in n.pod_cidrs if IPNetwork(c).version == ip.version)
    raise LabError(f"pod {key}: status.podIP {ip} is in no node's pod CIDR ({cidrs})")


def served_ports(pod: Pod) -> list[tuple[str, int]]:
    return sorted({(p.protocol, p.port) for p in pod.ports})


# ------------------------------------------------------------------ CNI


def cni_config(node: NodeState, ip: str | Sequence[str] | None) -> dict[str, Any]:
    """The conflist entry a runtime would hand the plugin on this node: one host-local range
    set per pod CIDR of the node (an address of each family), `ip` the static addresses."""
    conf: dict[str, Any] = {
        "cniVersion": "1.0.0", "name": NETWORK, "type": "sdn-netpol-cni", "bridge": "br-int",
        "ovsdb": f"unix:{node.rundir}/db.sock", "mtu": POD_MTU,
        "ipam": {
            "type": "host-local",
            "ranges": [[{"subnet": str(IPNetwork(cidr)), "rangeEnd": str(IPNetwork(cidr)[-3]),
                         "gateway": gw}] for cidr, gw in zip(node.pod_cidrs, node.gateways, strict=True)],
            "dataDir": str(Path(node.rundir) / "ipam"),
        },
    }
    wanted = [ip] if isinstance(ip, str) else list(ip or ())
    if wanted:
        conf["runtimeConfig"] = {"ips": [f"{a}/{IPNetwork(node.cidr_of(family_of(a)) or a).prefixlen}"
                                         for a in wanted]}
    return conf


def plugin_command() -> list[str]:
    script = Path(sys.executable).parent / "sdn-netpol-cni"
    return [str(script)] if script.exists() else [sys.executable, "-m", "sdn_netpol.cni.plugin"]


def run_cni(command: str, node: NodeState, pod: PodState, conf: dict[str, Any]) -> dict[str, Any] | None:
    namespace, _, name = pod.key.partition("/")
    env = {k: v for k, v in os.environ.items() if not k.startswith("CNI_")}
    env.update({
        "CNI_COMMAND": command, "CNI_CONTAINERID": pod.container_id,
        "CNI_NETNS": netns.netns_path(pod.netns), "CNI_IFNAME": "eth0", "CNI_PATH": CNI_PATH,
        "CNI_ARGS": f"K8S_POD_NAMESPACE={namespace};K8S_POD_NAME={name}",
    })
    proc = subprocess.run(["ip", "netns", "exec", node.netns, *plugin_command()], input=json.dumps(conf).encode(),
                          capture_output=True, env=env, timeout=CNI_TIMEOUT, check=False)
    out = proc.stdout.decode()
    if proc.returncode != 0:
        raise LabError(f"CNI {command} for pod {pod.key} on {node.name} failed: {out.strip() or proc.stderr.decode()}")
    return json.loads(out) if out.strip() else None


def container_id(key: str) -> str:
    return "sdnlab-" + key.replace("/", ".")


def add_pod(state: LabState, placement: Placement) -> PodState:
    """Namespace + CNI ADD; returns the pod with the address IPAM gave it."""
    key = f"{placement.pod.namespace}/{placement.pod.name}"
    node = state.node(placement.node)
    pod = PodState(key=key, node=node.name, netns=state.pod_netns(key), container_id=container_id(key),
                   ip="", mac="", ports=served_ports(placement.pod))
    netns.create(pod.netns)
    result = run_cni("ADD", node, pod, cni_config(node, placement.ips))
    assert result is not None
    given = [str(IPAddress(str(entry["address"]).split("/")[0])) for entry in result["ips"]]
    pod.ips = [a for family in state.families for a in given if family_of(a) == family]
    pod.ip = pod.ips[0]
    pod.mac = next((i["mac"] for i in result.get("interfaces", []) if i.get("sandbox")), "")
    return pod


def delete_pod(state: LabState, pod: PodState) -> None:
    """Server, CNI DEL (frees the port and the address), namespace."""
    stop_server(state, pod)
    node = state.node(pod.node)
    try:
        run_cni("DEL", node, pod, cni_config(node, None))
    finally:
        netns.remove(pod.netns)


# ------------------------------------------------------------------ servers


def server_markers(state: LabState) -> list[str]:
    return [f"--lab={state.workdir}"]


def start_servers(state: LabState, pods: Sequence[PodState]) -> None:
    """One server process per pod, started together, then each waited for (`ready`)."""
    started = []
    for pod in pods:
        argv = [sys.executable, "-m", "sdn_netpol.lab.servers", f"--lab={state.workdir}", "--pod", pod.key]
        argv += [f"--serve={proto}:{port}" for proto, port in pod.ports]
        log = state.root / "pods" / f"{pod.key.replace('/', '.')}.log"
        started.append((pod, procs.spawn(pod.netns, argv, log, stdout_pipe=True)))
    for pod, proc in started:
        _await_ready(pod, proc)
        pod.server_pid = proc.pid


def _await_ready(pod: PodState, proc: subprocess.Popen[bytes]) -> None:
    assert proc.stdout is not None
    ready, _, _ = select.select([proc.stdout], [], [], SERVER_READY_TIMEOUT)
    line = proc.stdout.readline() if ready else b""
    proc.stdout.close()
    if line.strip() != b"ready":
        proc.kill()
        raise LabError(f"server of pod {pod.key} did not start (exit {proc.poll()}); see its log")


def stop_server(state: LabState, pod: PodState) -> None:
    procs.stop([pod.server_pid], server_markers(state))
    pod.server_pid = None
