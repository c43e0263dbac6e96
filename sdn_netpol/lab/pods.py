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
from sdn_netpol.lab.state import LabState, NodeState, PodState
from sdn_netpol.lab.store import LabError
from sdn_netpol.model.objects import Pod

CNI_PATH = "/usr/lib/cni"
NETWORK = "sdn-netpol"
POD_MTU = 1450  # tunnels on a 1500 underlay
SERVER_READY_TIMEOUT = 15.0
CNI_TIMEOUT = 60.0


@dataclass(frozen=True)
class Placement:
    pod: Pod
    node: str
    ip: str | None  # a static address asked for through status.podIP


def place(pods: Sequence[Pod], nodes: Sequence[NodeState], occupied: dict[str, int] | None = None) -> list[Placement]:
    """Where each pod goes: the node whose CIDR holds its status.podIP; else its
    spec.nodeName if that is a lab node; else the least loaded node, pods in sorted name
    order (so a fresh lab spreads round-robin)."""
    load = {n.name: 0 for n in nodes} | dict(occupied or {})
    names = {n.name for n in nodes}
    placed: list[Placement] = []
    rest: list[Pod] = []
    for pod in sorted(pods, key=lambda p: (p.namespace, p.name)):
        v4 = pod.ip_of_family(4)
        if v4 is not None:
            node = _node_for_ip(v4, nodes, pod)
            placed.append(Placement(pod, node, str(v4)))
        elif pod.node_name in names:
            placed.append(Placement(pod, str(pod.node_name), None))
        else:
            rest.append(pod)
            continue
        load[placed[-1].node] += 1
    for pod in rest:
        node = min(nodes, key=lambda n: (load[n.name], n.index)).name
        load[node] += 1
        placed.append(Placement(pod, node, None))
    return placed


def _node_for_ip(ip: IPAddress, nodes: Sequence[NodeState], pod: Pod) -> str:
    for node in nodes:
        if ip in IPNetwork(node.pod_cidr) and ip != IPAddress(node.gateway):
            return node.name
    cidrs = ", ".join(n.pod_cidr for n in nodes)
    raise LabError(f"pod {pod.namespace}/{pod.name}: status.podIP {ip} is in no node's pod CIDR ({cidrs})")


def served_ports(pod: Pod) -> list[tuple[str, int]]:
    return sorted({(p.protocol, p.port) for p in pod.ports})


# ------------------------------------------------------------------ CNI


def cni_config(node: NodeState, ip: str | None) -> dict[str, Any]:
    """The conflist entry a runtime would hand the plugin on this node."""
    network = IPNetwork(node.pod_cidr)
    conf: dict[str, Any] = {
        "cniVersion": "1.0.0", "name": NETWORK, "type": "sdn-netpol-cni", "bridge": "br-int",
        "ovsdb": f"unix:{node.rundir}/db.sock", "mtu": POD_MTU,
        "ipam": {
            "type": "host-local",
            "ranges": [[{"subnet": str(network), "rangeEnd": str(network[-3]), "gateway": node.gateway}]],
            "dataDir": str(Path(node.rundir) / "ipam"),
        },
    }
    if ip:
        conf["runtimeConfig"] = {"ips": [f"{ip}/{network.prefixlen}"]}
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
    result = run_cni("ADD", node, pod, cni_config(node, placement.ip))
    assert result is not None
    pod.ip = str(result["ips"][0]["address"]).split("/")[0]
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
