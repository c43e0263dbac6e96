"""One lab node inside a kernel-datapath VM (issue 16): the guest side of sdn_netpol/lab/vmlab.py.

Run in the VM by its agent (``call``: this module's COMMANDS, imported once, in the agent's
process), or by hand: ``python -m sdn_netpol.lab.vmguest COMMAND``, a JSON request on stdin,
a JSON answer on stdout. The VM *is* the node, as on a real
cluster: its system OVS (started by the guest init, kernel datapath) holds ``br-int``
(``datapath_type=system``, created as ``sdn-netpol node setup`` creates it) with a kernel
VXLAN port, the controller runs in the VM's root namespace, pods are namespaces attached by
the CNI plugin, each with the lab's server. The lab's own pieces do the work
(:mod:`sdn_netpol.lab.pods`, :mod:`~sdn_netpol.lab.controllers`, :mod:`~sdn_netpol.lab.probe`)
on a one-node :class:`~sdn_netpol.lab.state.LabState` kept in ``/run/sdn-netpol``; the VM's
root namespace gets the name ``sdnvm-node`` (``ip netns attach``) so they can enter it.
Commands:

* ``node-up`` ``{"name", "index", "address", "pod_cidr", "nodes": [{name, address, pod_cidr}]}``
* ``pods-add`` ``{"pods": [manifest, ...]}`` → ``[{"key", "ip", "mac", "netns"}]``: namespace, CNI
  ADD, server; the manifest is not published (``objects`` does that, with node and IP)
* ``objects`` ``{"write": [docs], "remove": [[kind, namespace, name]]}`` → the folder's version
* ``realized`` ``{"timeout"}`` → this node's ``/status`` once it enforces the folder as it is
* ``probe`` ``{"protocol", "port", "targets": {key: ip}, "timeout", "confirm_timeout"}`` → ``{src: {dst: outcome}}``
  from every pod of this node
"""

from __future__ import annotations

import json
import random
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any

from netaddr import IPNetwork

from sdn_netpol.compiler.pipeline import GATEWAY_MAC
from sdn_netpol.controller.sources.directory import folder_version
from sdn_netpol.lab import controllers, netns, pods, probe, procs
from sdn_netpol.lab.state import OFP_PORT, LabState, NodeState, PodState
from sdn_netpol.lab.store import ObjectRef, Store, node_manifest, ref_of
from sdn_netpol.lab.topology import TUNNEL_PORT
from sdn_netpol.model.objects import Pod
from sdn_netpol.model.parse import parse_object
from sdn_netpol.node.bridge import BridgeSpec, bridge_args, controller_args
from sdn_netpol.ovs import datapath
from sdn_netpol.ovs.instance import OvsInstance
from sdn_netpol.ovs.trace import Tracer

WORKDIR = Path("/run/sdn-netpol")
NODE_NETNS = "sdnvm-node"
SYSTEM_RUNDIR = Path("/var/run/openvswitch")
ETH_P_ALL = 0x0003
PACKET_OUTGOING = 4
# A denial is confirmed with this much patience: the guest is emulated (TCG), and a new
# flow's first packet waits for this VM's ovs-vswitchd to handle its upcall; on a loaded
# host that took longer than both 1.5 s passes (CI: an allowed SCTP pair measured denied
# with two make test and a soak on 2 cores).
CONFIRM_TIMEOUT = 5.0


def _state() -> LabState:
    state = LabState.load(WORKDIR)
    if state is None:
        raise ValueError("no node here: node-up first")
    return state


def node_up(req: dict[str, Any]) -> dict[str, Any]:
    subprocess.run(["ip", "netns", "attach", NODE_NETNS, "1"], check=True, capture_output=True)
    cidr = req["pod_cidr"]
    node = NodeState(name=req["name"], index=req["index"], netns=NODE_NETNS, rundir=str(SYSTEM_RUNDIR),
                     address=req["address"], pod_cidr=cidr, gateway=str(IPNetwork(cidr)[-2]))
    state = LabState(workdir=str(WORKDIR), prefix="sdnvm-", tunnel="vxlan", nodes=[node])
    store = Store(state.manifests)
    state.manifests.mkdir(parents=True, exist_ok=True)
    for peer in req["nodes"]:
        store.write(node_manifest(peer["name"], peer["address"], peer["pod_cidr"]))
    # br-int as `sdn-netpol node setup` makes it: the kernel datapath (datapath_type ""),
    # secure, the controller target set before any flow exists (setting it wipes flows).
    args = bridge_args(BridgeSpec("br-int", "vxlan", TUNNEL_PORT, "", node.index))
    args += controller_args("br-int", f"tcp:127.0.0.1:{OFP_PORT}", ())
    OvsInstance(SYSTEM_RUNDIR).vsctl(*args)
    controllers.start(state, node)
    state.save()
    return {"controller_pid": node.controller_pid}


def pods_add(req: dict[str, Any]) -> list[dict[str, Any]]:
    """Namespace, CNI ADD (host-local picks the address), server: as the lab adds a pod."""
    state = _state()
    node = state.nodes[0]
    added = []
    for manifest in req["pods"]:
        spec = _pod(manifest)
        key = f"{spec.namespace}/{spec.name}"
        pod = PodState(key=key, node=node.name, netns=state.pod_netns(key), container_id=pods.container_id(key),
                       ip="", mac="", ports=pods.served_ports(spec), published=False)
        netns.create(pod.netns)
        result = pods.run_cni("ADD", node, pod, pods.cni_config(node, None))
        assert result is not None
        pod.ip = str(result["ips"][0]["address"]).split("/")[0]
        pod.mac = next((i["mac"] for i in result.get("interfaces", []) if i.get("sandbox")), "")
        state.pods[key] = pod
        added.append(pod)
    state.save()
    pods.start_servers(state, added)
    state.save()
    return [{"key": p.key, "ip": p.ip, "mac": p.mac, "netns": p.netns} for p in added]


def _pod(manifest: dict[str, Any]) -> Pod:
    obj, _ = parse_object(manifest)
    if not isinstance(obj, Pod):
        raise ValueError(f"not a valid Pod: {manifest.get('metadata')}")
    return obj


def objects(req: dict[str, Any]) -> dict[str, Any]:
    state = _state()
    store = Store(state.manifests)
    for doc in req.get("write", []):
        store.write(doc)
        ref = ref_of(doc)
        if ref.kind == "Pod" and ref.key in state.pods:
            state.pods[ref.key].published = True
    for kind, namespace, name in req.get("remove", []):
        store.remove(ObjectRef(kind, namespace, name))
    state.save()
    return {"version": folder_version(state.manifests)}


def realized(req: dict[str, Any]) -> dict[str, Any]:
    state = _state()
    docs = controllers.wait_realized(state, folder_version(state.manifests), req.get("timeout", 60.0))
    return docs[state.nodes[0].name]


def run_probe(req: dict[str, Any]) -> dict[str, dict[str, str]]:
    """From every local pod to every target, itself included as in the netdev lab (or only the
    given [source, destination] pairs)."""
    state = _state()
    targets: dict[str, str] = req["targets"]
    pairs = req.get("pairs") or [[key, dst] for key in state.pods for dst in targets]
    todo = [probe.Probe(src, dst, state.pods[src].netns, targets[dst]) for src, dst in pairs if src in state.pods]
    outcomes = probe.run_probes(todo, req["protocol"], int(req["port"]), req.get("timeout", probe.TIMEOUT),
                                confirm_timeout=req.get("confirm_timeout", CONFIRM_TIMEOUT))
    found: dict[str, dict[str, str]] = {}
    for item, outcome in outcomes.items():
        found.setdefault(item.source, {})[item.destination] = outcome
    return found


# ---------------------------------------------------------------- connections kept open

_CONNECTIONS: dict[str, socket.socket] = {}  # the agent's process keeps them between calls


def conn_open(req: dict[str, Any]) -> dict[str, Any]:
    """A TCP connection from a local pod, kept open under `id` for later echoes."""
    sock = netns.socket_in(_state().pods[req["source"]].netns, socket.AF_INET, socket.SOCK_STREAM)
    sock.settimeout(req.get("timeout", 3.0))
    sock.connect((req["ip"], int(req["port"])))
    _CONNECTIONS[req["id"]] = sock
    return {}


def conn_echo(req: dict[str, Any]) -> dict[str, Any]:
    """Send `data` on an open connection: what came back, or the error (timeout: cut)."""
    sock = _CONNECTIONS[req["id"]]
    sock.settimeout(req.get("timeout", 2.0))
    try:
        sock.sendall(req["data"].encode())
        return {"echo": sock.recv(len(req["data"])).decode(errors="replace")}
    except OSError as exc:
        return {"error": type(exc).__name__}


def conn_close(req: dict[str, Any]) -> dict[str, Any]:
    sock = _CONNECTIONS.pop(req["id"], None)
    if sock is not None:
        sock.close()
    return {}


# ---------------------------------------------------------------- frames (spoofing)

_SNIFFERS: dict[str, socket.socket] = {}


def sniff_start(req: dict[str, Any]) -> dict[str, Any]:
    """Capture what eth0 of a local pod receives, until sniff-read."""
    sock = netns.socket_in(_state().pods[req["pod"]].netns, socket.AF_PACKET, socket.SOCK_RAW,
                           socket.htons(ETH_P_ALL))
    sock.bind(("eth0", 0))
    sock.settimeout(0.1)
    _SNIFFERS[req["pod"]] = sock
    return {}


def sniff_read(req: dict[str, Any]) -> dict[str, Any]:
    """Payload markers seen (received, not sent) by the pod's sniffer: until `awaited` came
    (then half a second more) or `deadline`."""
    sock = _SNIFFERS.pop(req["pod"])
    markers = [m.encode() for m in req["markers"]]
    seen: list[str] = []
    end = time.monotonic() + req.get("deadline", 10.0)
    awaited = req.get("awaited", "").encode()
    with sock:
        while time.monotonic() < end:
            try:
                frame, address = sock.recvfrom(65536)
            except TimeoutError:
                continue
            if address[2] == PACKET_OUTGOING:
                continue
            seen += [m.decode() for m in markers if m in frame]
            if awaited and awaited in frame:
                end = min(end, time.monotonic() + 0.5)
    return {"seen": seen}


def send_udp(req: dict[str, Any]) -> dict[str, Any]:
    """UDP frames put on a local pod's eth0 as a process there could: any source IP and MAC."""
    from scapy.layers.inet import IP, UDP  # scapy is slow to import: only here
    from scapy.layers.l2 import Ether

    pod = _state().pods[req["pod"]]
    sock = netns.socket_in(pod.netns, socket.AF_PACKET, socket.SOCK_RAW, 0)
    with sock:
        sock.bind(("eth0", 0))
        for frame in req["frames"]:
            packet = (Ether(src=frame.get("mac", pod.mac), dst=GATEWAY_MAC) / IP(src=frame["src"], dst=frame["dst"])
                      / UDP(sport=40000, dport=int(frame.get("port", 9))) / frame["payload"].encode())
            sock.send(bytes(packet))
    return {}


# ---------------------------------------------------------------- clients that keep retrying

_CLIENTS: dict[str, Any] = {}


def clients_start(req: dict[str, Any]) -> dict[str, Any]:
    """For each [source, destination key, ip]: a new TCP connection every 0.2-0.5 s, each
    recorded as [start, end, connected] (this VM's monotonic clock), until clients-stop."""
    state = _state()
    stop = threading.Event()
    attempts: dict[str, list[list[Any]]] = {}

    def loop(source: str, name: str, ip: str) -> None:
        record = attempts.setdefault(f"{source}>{name}", [])
        while not stop.is_set():
            start = time.monotonic()
            sock = netns.socket_in(state.pods[source].netns, socket.AF_INET, socket.SOCK_STREAM)
            sock.settimeout(req.get("connect_timeout", 0.3))
            try:
                sock.connect((ip, int(req["port"])))
                ok = True
            except OSError:
                ok = False
            finally:
                sock.close()
            record.append([start, time.monotonic(), ok])
            stop.wait(random.uniform(0.2, 0.5))

    threads = [threading.Thread(target=loop, args=tuple(pair), daemon=True) for pair in req["pairs"]]
    for thread in threads:
        thread.start()
    _CLIENTS.update(stop=stop, threads=threads, attempts=attempts)
    return {}


def clients_stop(req: dict[str, Any]) -> dict[str, Any]:
    _CLIENTS["stop"].set()
    for thread in _CLIENTS["threads"]:
        thread.join()
    return {"attempts": _CLIENTS.pop("attempts")}


def now(req: dict[str, Any]) -> dict[str, Any]:
    return {"now": time.monotonic()}


def status(req: dict[str, Any]) -> dict[str, Any]:
    """The node's controller (/status) and each pod's server, as `lab status` shows them."""
    state = _state()
    node = state.nodes[0]
    entry: dict[str, Any] = {"controller_running": procs.alive(node.controller_pid), "controller": None}
    try:
        entry["controller"] = controllers.status(node)
    except (OSError, ValueError) as exc:
        entry["controller_error"] = str(exc)
    entry["pods"] = {key: {"server_running": procs.alive(pod.server_pid), "server_pid": pod.server_pid,
                           "ports": [f"{proto}:{port}" for proto, port in pod.ports]}
                     for key, pod in sorted(state.pods.items())}
    return entry


def verify(req: dict[str, Any]) -> dict[str, Any]:
    """Every kernel megaflow against a fresh translation of its key (`lab verify`)."""
    with Tracer(OvsInstance(SYSTEM_RUNDIR)) as unixctl:
        report = datapath.verify(unixctl, "system")
        if report.stale:
            unixctl.call("revalidator/wait")
            report = datapath.recheck(unixctl, report, "system")
    return {"checked": report.checked, "unverifiable": report.unverifiable,
            "stale": [{"key": s.flow.key, "installed": s.flow.actions, "expected": s.expected,
                       "packets": s.flow.packets} for s in report.stale]}


COMMANDS = {"node-up": node_up, "pods-add": pods_add, "objects": objects, "realized": realized,
            "probe": run_probe, "conn-open": conn_open, "conn-echo": conn_echo, "conn-close": conn_close,
            "sniff-start": sniff_start, "sniff-read": sniff_read, "send-udp": send_udp, "now": now,
            "clients-start": clients_start, "clients-stop": clients_stop, "status": status, "verify": verify}


def main() -> int:
    command = COMMANDS[sys.argv[1]]
    print(json.dumps(command(json.loads(sys.stdin.read() or "{}"))))
    return 0


if __name__ == "__main__":
    sys.exit(main())
