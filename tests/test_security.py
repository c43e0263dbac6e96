"""Security review (docs/reliability.md, "Security review"): each point with real packets.

A 2-node lab (real OVS userspace datapath, the real controllers and CNI plugin, pods as
network namespaces) for the listeners and for everything a pod can forge: frames are made
with scapy and put on the pod's eth0 through a raw socket, as a rogue process in a pod
could. A private OVS node (tests/cni_fixtures.py) for the CNI plugin's untrusted inputs.

Some tests add a **host gateway** to each lab node: a veth pair inside the node namespace,
one end on br-int as the gateway port (`external_ids:sdn-netpol-role=gateway`), the other
end in the node's own network stack with routes to its pods, IP forwarding on. That is
what a real cluster's gateway to the host looks like (node-local traffic, kubelet probes);
the lab without it has no path from a pod to any node address at all.

Negative checks never just wait: after the forged frames, a legitimate frame on the same
path is sent and awaited, so a forged frame had every chance to arrive before the verdict.
"""

from __future__ import annotations

import contextlib
import json
import os
import socket
import stat
import subprocess
import threading
import time
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import replace
from pathlib import Path
from typing import Any

import pytest
import yaml
from netaddr import EUI, IPNetwork
from scapy.contrib.geneve import GENEVE
from scapy.layers.inet import IP, TCP, UDP
from scapy.layers.inet6 import (
    ICMPv6ND_NA,
    ICMPv6ND_NS,
    ICMPv6ND_RA,
    ICMPv6ND_RS,
    ICMPv6NDOptDstLLAddr,
    ICMPv6NDOptSrcLLAddr,
    IPv6,
)
from scapy.layers.l2 import ARP, Ether
from scapy.layers.vxlan import VXLAN
from scapy.packet import Packet

from sdn_netpol.compiler.compile import compile_node
from sdn_netpol.compiler.ofctl import render_flows
from sdn_netpol.compiler.pipeline import GATEWAY_MAC
from sdn_netpol.compiler.topology import GATEWAY_OFPORT, NodeContext, assign_ports
from sdn_netpol.controller import status
from sdn_netpol.controller.metrics import Metrics
from sdn_netpol.lab import netns
from sdn_netpol.lab.controllers import status_socket
from sdn_netpol.lab.lab import Lab
from sdn_netpol.lab.state import OFP_PORT, NodeState, PodState
from sdn_netpol.lab.topology import bridge_mac, ovs
from sdn_netpol.node.bridge import BridgeSpec, bridge_args
from sdn_netpol.ovs import OvsInstance
from sdn_netpol.ovs.dumpflows import DumpedFlow
from tests.builders import build
from tests.builders import pod as pod_manifest
from tests.cni_fixtures import Node, allocations, host_end, node_with_ovs, plugin_config, run_ip
from tests.frames import DEADLINE, collect, drain, send_frames, sniff
from tests.lab_fixtures import Cluster, lab_up, netpol
from tests.ovs_fixtures import add_internal_ports, private_ovs

ROOT = Path(__file__).resolve().parents[1]
STATUS_PORT = 9180  # deploy/'s --status-listen 0.0.0.0:9180
TARGET, FRIEND = "y/a", "x/c"  # y/a admits UDP and TCP 80 from x/c only

ONLY_FRIEND = netpol("only-x-c", "y", {
    "podSelector": {"matchLabels": {"pod": "a"}}, "policyTypes": ["Ingress"],
    "ingress": [{"from": [{"namespaceSelector": {"matchLabels": {"ns": "x"}},
                           "podSelector": {"matchLabels": {"pod": "c"}}}],
                 "ports": [{"protocol": "UDP", "port": 80}, {"protocol": "TCP", "port": 80}]}]})


# ---------------------------------------------------------------------------- the lab


@pytest.fixture(scope="module")
def lab(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Lab]:
    with lab_up(tmp_path_factory.mktemp("lab"), 2) as made:
        yield made


@pytest.fixture(scope="module")
def cluster(lab: Lab, tmp_path_factory: pytest.TempPathFactory) -> Cluster:
    view = Cluster(lab, tmp_path_factory.mktemp("objects"))
    view.apply(ONLY_FRIEND)
    return view


def node_of(cluster: Cluster, pod: str) -> NodeState:
    state = cluster.lab.state()
    return state.node(state.pods[pod].node)


def attackers(cluster: Cluster) -> dict[str, PodState]:
    """A pod policy denies towards TARGET on TARGET's node and one on the other node."""
    state = cluster.lab.state()
    target = state.pods[TARGET]
    denied = [p for k, p in sorted(state.pods.items()) if k not in (TARGET, FRIEND)]
    return {"same node": next(p for p in denied if p.node == target.node),
            "other node": next(p for p in denied if p.node != target.node)}


# ---------------------------------------------------------------------------- frames


def udp_frame(pod: PodState, dst: str, dport: int, marker: bytes, src_ip: str | None = None,
              src_mac: str | None = None) -> Packet:
    return (Ether(src=src_mac or pod.mac, dst=GATEWAY_MAC) / IP(src=src_ip or pod.ip, dst=dst)
            / UDP(sport=40000, dport=dport) / marker)


def legit(cluster: Cluster, marker: bytes) -> tuple[PodState, Packet]:
    """FRIEND's allowed UDP datagram to TARGET: the frame every negative check awaits."""
    friend, target = cluster.pod(FRIEND), cluster.pod(TARGET)
    return friend, udp_frame(friend, target.ip, 80, marker)


# ---------------------------------------------------------------------------- listeners


@contextlib.contextmanager
def tcp_listener(netns_name: str, port: int) -> Iterator[list[Any]]:
    """A stand-in for deploy/'s `--status-listen 0.0.0.0:9180`: accepts and records peers."""
    sock = netns.socket_in(netns_name, socket.AF_INET, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind(("0.0.0.0", port))
    sock.listen(16)
    sock.settimeout(0.1)
    peers: list[Any] = []
    stop = threading.Event()

    def run() -> None:
        while not stop.is_set():
            try:
                conn, peer = sock.accept()
            except (TimeoutError, OSError):
                continue
            peers.append(peer)
            conn.close()

    thread = threading.Thread(target=run, daemon=True)
    thread.start()
    try:
        yield peers
    finally:
        stop.set()
        thread.join(5)
        sock.close()


def try_connect(pod: PodState, address: str, port: int, timeout: float = 2.0) -> str:
    sock = netns.socket_in(pod.netns, socket.AF_INET, socket.SOCK_STREAM)
    with sock:
        sock.settimeout(timeout)
        try:
            sock.connect((address, port))
        except TimeoutError:
            return "timeout"
        except ConnectionRefusedError:
            return "refused"
        except OSError as exc:
            return f"error {exc.errno}"
        return "connected"


def listening(node: NodeState) -> set[str]:
    out = subprocess.run(["ip", "netns", "exec", node.netns, "ss", "-Hltnu"], capture_output=True, text=True,
                         check=True).stdout
    return {f"{line.split()[0]} {line.split()[4]}" for line in out.splitlines()}


def test_the_lab_listens_on_loopback_and_a_unix_socket_and_no_pod_reaches_either(cluster: Cluster) -> None:
    """The controller's OpenFlow port is 127.0.0.1:6653 of the node namespace and its status
    a root-only unix socket; the only TCP/UDP listener of a node is that one. From a pod,
    127.0.0.1 is the pod's own loopback, and the node's address and gateway address lead
    nowhere (no gateway port: nothing routes a pod's packet to the node). Even a listener
    on every node address (deploy/'s status port) is unreachable."""
    pod = cluster.pod(TARGET)
    node = node_of(cluster, TARGET)
    other = next(n for n in cluster.lab.state().nodes if n.name != node.name)
    for each in cluster.lab.state().nodes:
        assert listening(each) == {f"tcp 127.0.0.1:{OFP_PORT}"}
        mode = os.stat(status_socket(each))
        assert stat.S_ISSOCK(mode.st_mode) and mode.st_uid == 0 and not mode.st_mode & 0o022
    with tcp_listener(node.netns, STATUS_PORT) as peers:
        targets = [("127.0.0.1", OFP_PORT), ("127.0.0.1", STATUS_PORT)] + [
            (address, port) for address in (node.address, node.gateway, other.address)
            for port in (OFP_PORT, STATUS_PORT)]
        with ThreadPoolExecutor(len(targets)) as pool:
            outcomes = dict(zip(targets, pool.map(lambda t: try_connect(pod, *t), targets), strict=True))
    assert outcomes[("127.0.0.1", OFP_PORT)] == outcomes[("127.0.0.1", STATUS_PORT)] == "refused"
    assert all(o != "connected" for o in outcomes.values()), outcomes
    assert peers == []


def test_deploy_binds_openflow_to_loopback_and_status_to_every_address() -> None:
    """The facts the review's deploy/ paragraph rests on, read from the manifests."""
    daemonset = yaml.safe_load((ROOT / "deploy" / "daemonset.yaml").read_text())
    spec = daemonset["spec"]["template"]["spec"]
    assert spec["hostNetwork"] is True
    containers = {c["name"]: c for c in spec["initContainers"] + spec["containers"]}
    controller = containers["controller"]["args"]
    assert f"--ofp-listen=127.0.0.1:{OFP_PORT}" in controller
    assert f"--status-listen=0.0.0.0:{STATUS_PORT}" in controller
    assert f"--controller=tcp:127.0.0.1:{OFP_PORT}" in containers["setup-bridge"]["args"]
    assert containers["controller"]["ports"] == [{"name": "metrics", "containerPort": STATUS_PORT,
                                                  "protocol": "TCP"}]
    # no gateway port: neither the manifests nor `node setup` create one
    assert "sdn-netpol-role" not in json.dumps(daemonset) + " ".join(bridge_args(BridgeSpec()))


def test_the_status_server_closes_a_connection_that_sends_nothing(monkeypatch: pytest.MonkeyPatch) -> None:
    """Whoever reaches the status port cannot hold handler threads: a client that sends an
    incomplete request, or nothing, is cut after REQUEST_TIMEOUT (10 s; 1 s here)."""
    assert status._Handler.timeout == status.REQUEST_TIMEOUT == 10.0
    monkeypatch.setattr(status._Handler, "timeout", 1.0)
    probe = socket.socket()
    probe.bind(("127.0.0.1", 0))
    port = probe.getsockname()[1]
    probe.close()
    status.serve(f"127.0.0.1:{port}", status.StatusBoard("n1", "dir:/x"), Metrics(), lambda: True)
    clients = [socket.create_connection(("127.0.0.1", port), timeout=DEADLINE) for _ in range(20)]
    begin = time.monotonic()
    for i, client in enumerate(clients):
        client.settimeout(DEADLINE)
        if i % 2:
            client.sendall(b"GET /status HT")  # slowloris: half a request line
    assert [c.recv(100) for c in clients] == [b""] * len(clients)  # closed by the server
    assert time.monotonic() - begin < DEADLINE
    for client in clients:
        client.close()
    for request, answer in ((b"GET /healthz", b" 200 "), (b"POST /status", b" 501 "), (b"PUT /metrics", b" 501 ")):
        with socket.create_connection(("127.0.0.1", port), timeout=DEADLINE) as fresh:
            fresh.sendall(request + b" HTTP/1.0\r\n\r\n")
            assert answer in fresh.recv(100).split(b"\r\n")[0] + b" "  # read-only: nothing but GET


def test_the_status_server_logs_its_own_errors_but_not_a_client_hanging_up(caplog: pytest.LogCaptureFixture) -> None:
    """A scraper that gives up before its answer (busy node) is no error of the controller's
    and prints no traceback; a failure of the handler itself is logged with its traceback."""
    server = status._TcpServer(("127.0.0.1", 0), status._Handler)
    try:
        for hang_up in (ConnectionResetError(104, "reset"), BrokenPipeError(32, "pipe"), TimeoutError()):
            try:
                raise hang_up
            except OSError:
                server.handle_error(None, ("127.0.0.1", 1))
        assert caplog.records == []
        try:
            raise ValueError("a bug")
        except ValueError:
            server.handle_error(None, ("127.0.0.1", 1))
        assert [(r.levelname, r.exc_info is not None) for r in caplog.records] == [("ERROR", True)]
    finally:
        server.server_close()


# ---------------------------------------------------------------------------- spoofing


def test_a_pod_cannot_send_with_another_mac(cluster: Cluster) -> None:
    """FRIEND may reach TARGET; with any MAC but its own its frames die in SpoofGuard."""
    friend, target = cluster.pod(FRIEND), cluster.pod(TARGET)
    other = next(p for k, p in sorted(cluster.lab.state().pods.items()) if k not in (FRIEND, TARGET))
    with sniff(target.netns) as sock:
        send_frames(friend.netns, udp_frame(friend, target.ip, 80, b"MAC-OF-ANOTHER-POD", src_mac=other.mac),
             udp_frame(friend, target.ip, 80, b"MAC-MADE-UP", src_mac="02:de:ad:be:ef:01"),
             udp_frame(friend, target.ip, 80, b"MAC-OF-THE-GATEWAY", src_mac=GATEWAY_MAC),
             udp_frame(friend, target.ip, 80, b"MAC-OWN"))
        seen = collect(sock, [b"MAC-OF-ANOTHER-POD", b"MAC-MADE-UP", b"MAC-OF-THE-GATEWAY"], awaited=b"MAC-OWN")
    assert {m: len(f) for m, f in seen.items() if m != b"MAC-OWN" and f} == {}


@pytest.mark.parametrize("where", ["same node", "other node"])
def test_a_pod_cannot_send_with_another_pods_ip_or_a_node_address(cluster: Cluster, where: str) -> None:
    """An attacker that policy denies borrows the address of the one pod TARGET admits, or of
    TARGET's node (which ingress policy never checks: node-local traffic), or of the other
    node, or of an address outside the cluster: SpoofGuard drops each, on either node."""
    attacker, target = attackers(cluster)[where], cluster.pod(TARGET)
    nodes = cluster.lab.state().nodes
    borrowed = {b"AS-FRIEND": cluster.pod(FRIEND).ip, b"AS-NODE-1": nodes[0].address,
                b"AS-NODE-2": nodes[1].address, b"AS-OUTSIDE": "192.0.2.1",
                b"AS-GATEWAY": node_of(cluster, TARGET).gateway}
    friend, frame = legit(cluster, b"FRIEND-ITSELF")
    with sniff(target.netns) as sock:
        send_frames(attacker.netns, *(udp_frame(attacker, target.ip, 80, m, src_ip=ip) for m, ip in borrowed.items()))
        send_frames(attacker.netns, udp_frame(attacker, target.ip, 80, b"AS-ITSELF"))  # denied by policy anyway
        send_frames(friend.netns, frame)
        seen = collect(sock, [*borrowed, b"AS-ITSELF"], awaited=b"FRIEND-ITSELF")
    assert {m: len(f) for m, f in seen.items() if m != b"FRIEND-ITSELF" and f} == {}


def arp(pod: PodState, op: int, spa: str, sha: str, tpa: str, dst: str = "ff:ff:ff:ff:ff:ff",
        src: str | None = None) -> Packet:
    return Ether(src=src or pod.mac, dst=dst) / ARP(op=op, hwsrc=sha, psrc=spa, hwdst="00:00:00:00:00:00", pdst=tpa)


def test_arp_from_a_pod_is_answered_by_the_switch_only_for_its_own_addresses_and_reaches_no_pod(
        cluster: Cluster) -> None:
    """The ARP responder answers a request whose sender is the pod itself, back to the pod.
    A request or reply claiming another pod's IP or MAC gets nothing, no ARP ever reaches
    another pod (there is no broadcast domain), and neither do IP broadcasts."""
    attacker = attackers(cluster)["same node"]
    victim = cluster.pod(TARGET)
    neighbour = next(p for k, p in sorted(cluster.lab.state().pods.items())
                     if p.node == attacker.node and k not in (TARGET, attacker.key))
    gateway = node_of(cluster, TARGET).gateway
    forged = [
        arp(attacker, 1, victim.ip, attacker.mac, gateway),  # claims the victim's IP
        arp(attacker, 1, attacker.ip, victim.mac, gateway),  # claims the victim's MAC (sha)
        arp(attacker, 1, attacker.ip, victim.mac, gateway, src=victim.mac),  # and as Ethernet source
        arp(attacker, 2, victim.ip, attacker.mac, neighbour.ip, dst=neighbour.mac),  # unsolicited reply
        arp(attacker, 2, attacker.ip, attacker.mac, attacker.ip),  # gratuitous, with its own addresses
        arp(attacker, 1, gateway, attacker.mac, neighbour.ip),  # claims the gateway
    ]
    subnet = str(IPNetwork(node_of(cluster, attacker.key).pod_cidr).broadcast)
    broadcasts = [udp_frame(attacker, "255.255.255.255", 80, b"BCAST-ALL"),
                  udp_frame(attacker, subnet, 80, b"BCAST-NET")]
    with (sniff(attacker.netns) as mine, sniff(victim.netns) as theirs,
          sniff(neighbour.netns) as near):
        send_frames(attacker.netns, *forged, *broadcasts)
        send_frames(attacker.netns, arp(attacker, 1, attacker.ip, attacker.mac, gateway))  # the legitimate request
        replies = [Ether(f) for f in collect(mine, [], awaited=b"\x08\x06\x00\x01")[b"\x08\x06\x00\x01"]]
        elsewhere = {"victim": [Ether(f) for f in drain(theirs)], "neighbour": [Ether(f) for f in drain(near)]}
    answers = [r for r in replies if ARP in r and r[ARP].op == 2]

    def from_attacker(frame: Packet) -> bool:
        macs = {attacker.mac, victim.mac}
        return frame.src in macs or (ARP in frame and frame[ARP].hwsrc in macs) or b"BCAST" in bytes(frame)

    assert {name: [f.summary() for f in frames if from_attacker(f)] for name, frames in elsewhere.items()} == {
        "victim": [], "neighbour": []}
    answered = {(a[ARP].psrc, a[ARP].hwsrc, a[ARP].pdst, a[ARP].hwdst, a.dst) for a in answers}
    assert answered == {(gateway, GATEWAY_MAC, attacker.ip, attacker.mac, attacker.mac)}  # the legitimate one


def test_neighbor_discovery_from_a_pod_reaches_no_pod_and_no_node(cluster: Cluster) -> None:
    """IPv6 is not forwarded for IPv4-only pods: Router and Neighbor Solicitations and
    Advertisements and Router Advertisements from a pod's link-local address (and any IPv6
    packet) die in SpoofGuard, which admits IPv6 only from a pod's own addresses, and
    Neighbor Discovery other than a solicitation from them from nobody."""
    attacker = attackers(cluster)["same node"]
    others = [p for k, p in sorted(cluster.lab.state().pods.items()) if k != attacker.key]
    lladdr = "fe80::" + attacker.mac.replace(":", "")[-4:]
    mcast = "33:33:00:00:00:01"
    forged = [
        Ether(src=attacker.mac, dst=mcast) / IPv6(src=lladdr, dst="ff02::1", hlim=255)
        / ICMPv6ND_RA(routerlifetime=1800) / ICMPv6NDOptSrcLLAddr(lladdr=attacker.mac) / b"ND-RA",
        Ether(src=attacker.mac, dst="33:33:00:00:00:02") / IPv6(src=lladdr, dst="ff02::2", hlim=255)
        / ICMPv6ND_RS() / b"ND-RS",
        Ether(src=attacker.mac, dst="33:33:ff:00:00:01") / IPv6(src=lladdr, dst="ff02::1:ff00:1", hlim=255)
        / ICMPv6ND_NS(tgt="fe80::1") / ICMPv6NDOptSrcLLAddr(lladdr=attacker.mac) / b"ND-NS",
        Ether(src=attacker.mac, dst=mcast) / IPv6(src=lladdr, dst="ff02::1", hlim=255)
        / ICMPv6ND_NA(tgt="fe80::1", R=1, S=0, O=1) / ICMPv6NDOptDstLLAddr(lladdr=attacker.mac) / b"ND-NA",
        Ether(src=attacker.mac, dst=GATEWAY_MAC) / IPv6(src="fd00::1", dst="fd00::2") / UDP(dport=80) / b"V6-GLOBAL",
    ]
    markers = [b"ND-RA", b"ND-RS", b"ND-NS", b"ND-NA", b"V6-GLOBAL"]
    friend, frame = legit(cluster, b"FRIEND-ITSELF")
    with contextlib.ExitStack() as stack:
        socks = {p.key: stack.enter_context(sniff(p.netns)) for p in others}
        send_frames(attacker.netns, *forged)
        send_frames(friend.netns, frame)
        collect(socks.pop(TARGET), markers, awaited=b"FRIEND-ITSELF")
        frames = {key: drain(sock) for key, sock in socks.items()}
    leaked = {key: [m for m in markers if any(m in f for f in got)] for key, got in frames.items()}
    assert {k: v for k, v in leaked.items() if v} == {}
    node = node_of(cluster, attacker.key)  # where they die: SpoofGuard's ND guard, or its miss
    trace = ovs(node).appctl("ofproto/trace", "br-int", f"in_port={ofport(node, attacker)},dl_src={attacker.mac},"
                             f"icmp6,ipv6_src={lladdr},ipv6_dst=ff02::1,icmpv6_type=134,nw_ttl=255")
    assert "\n10. icmp6,icmp_type=134,icmp_code=0, priority 420," in trace, trace
    assert trace.rstrip().endswith("Datapath actions: drop"), trace
    trace = ovs(node).appctl("ofproto/trace", "br-int", f"in_port={ofport(node, attacker)},dl_src={attacker.mac},"
                             f"udp6,ipv6_src={lladdr},ipv6_dst=fd00::2,nw_ttl=64")
    assert "\n10. priority 0," in trace and trace.rstrip().endswith("Datapath actions: drop"), trace


@pytest.fixture(scope="module")
def dual_stack_switch(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[OvsInstance, NodeContext]]:
    """node1's compiled tables for two dual-stack pods and a gateway port, in a private OVS
    (the lab's pods are IPv4-only; the CNI plugin does give pods both families)."""
    state = build(pod_manifest("x/a", ["10.244.1.1", "fd00:10:244:1::1"], node="node1"),
                  pod_manifest("x/b", ["10.244.1.2", "fd00:10:244:1::2"], node="node1"))
    context = replace(assign_ports(state, "node1"), gateway_port=GATEWAY_OFPORT,
                      gateway_peer_mac=EUI("02:11:00:00:00:01"))
    with private_ovs(tmp_path_factory.mktemp("ovs"), "sec-dual", "br-int") as inst:
        add_internal_ports(inst, "br-int", [*(b.ofport for b in context.bindings), GATEWAY_OFPORT])
        inst.replace_flows("br-int", render_flows(compile_node(state, context)))
        yield inst, context


def test_neighbor_discovery_from_a_dual_stack_pod_is_answered_by_the_switch_or_dropped(
        dual_stack_switch: tuple[OvsInstance, NodeContext]) -> None:
    """A dual-stack pod's Neighbor Solicitation from its own address (global or link-local),
    whatever its target, is answered by the switch: it leaves back through the pod's own port
    as an Advertisement from the gateway MAC, and reaches no one else. Every other ND message
    is dropped in SpoofGuard, from its own address too: an Advertisement (for another pod's
    address or its own), a Router Advertisement, a Redirect, a solicitation from an address
    not its own; and so is anything to ::1. (tests/test_ipv6_ovs.py: the same with real packets.)"""
    inst, context = dual_stack_switch
    a, b = context.bindings
    (a6,), (b6,) = ([str(ip) for ip in x.ips if ip.version == 6] for x in (a, b))
    a_ll = str(EUI(str(a.mac)).ipv6_link_local())

    def trace(dl_dst: str, src: str, dst: str, icmp: str) -> str:
        flow = (f"in_port={a.ofport},dl_src={a.mac},dl_dst={dl_dst},icmp6,ipv6_src={src},ipv6_dst={dst},"
                f"{icmp},nw_ttl=255")
        return inst.appctl("ofproto/trace", "br-int", flow, "--ct-next", "trk,new")

    def actions(text: str) -> str:
        return next(line for line in text.splitlines() if line.startswith("Datapath actions: "))

    in_port = inst.appctl("dpif/show").split(f"p{a.ofport} {a.ofport}/")[1].split(":")[0]
    for src in (a6, a_ll):
        solicit = trace("33:33:ff:00:00:02", src, "ff02::1:ff00:2", f"icmpv6_type=135,nd_target={b6},nd_sll={a.mac}")
        assert actions(solicit) == (
            f"Datapath actions: set(eth(src={GATEWAY_MAC},dst={a.mac})),set(ipv6(src={b6},dst={src})),"
            "set(nd_ext(nd_reserved=0xe0000000,nd_options_type=2)),"
            f"set(nd(tll={GATEWAY_MAC})),set(icmpv6(type=136,code=0)),{in_port}"), solicit
    for dl_dst, src, dst, icmp in (
            (GATEWAY_MAC, a6, b6, f"icmpv6_type=136,nd_target={b6}"),  # another pod's address
            (GATEWAY_MAC, a6, b6, f"icmpv6_type=136,nd_target={a6}"),  # its own
            ("33:33:00:00:00:01", a_ll, "ff02::1", f"icmpv6_type=136,nd_target={a6}"),
            ("33:33:00:00:00:01", a_ll, "ff02::1", "icmpv6_type=134"),
            ("33:33:00:00:00:01", a6, "ff02::1", "icmpv6_type=134"),
            (GATEWAY_MAC, a_ll, b6, "icmpv6_type=137"),
            ("33:33:ff:00:00:02", "fe80::1", "ff02::1:ff00:2", f"icmpv6_type=135,nd_target={b6}"),
            ("33:33:ff:00:00:02", b6, "ff02::1:ff00:2", f"icmpv6_type=135,nd_target={b6}"),
            ("33:33:ff:00:00:02", "::", "ff02::1:ff00:2", f"icmpv6_type=135,nd_target={b6}"),
            (GATEWAY_MAC, a6, "::1", "icmpv6_type=128")):
        dropped = trace(dl_dst, src, dst, icmp)
        assert "\n10. " in dropped and actions(dropped) == "Datapath actions: drop", dropped


def ofport(node: NodeState, pod: PodState) -> int:
    return int(ovs(node).vsctl("get", "Interface", host_end(pod.container_id), "ofport"))


# ---------------------------------------------------------------------------- a gateway to the host


@pytest.fixture(scope="class")
def host_gateway(cluster: Cluster) -> Iterator[dict[str, str]]:
    """Each node: veth gwh (on br-int, the gateway port) / gws (the node's stack, with the pod
    gateway address and a route to the node's pods), IP forwarding on. Returns {node: MAC of gws}.
    Also points each node's kernel at its peers' tunnel MACs, so that a packet the node
    forwards to a peer's address on 4789 is decapsulated there as a kernel-datapath node's
    VXLAN socket would (the userspace datapath pops only frames addressed to br-phy's MAC)."""
    state = cluster.lab.state()
    macs: dict[str, str] = {}
    for node in state.nodes:
        netns.veth(node.netns, "gwh", node.netns, "gws")
        netns.set_up(node.netns, "gwh", tx_off=True)
        netns.set_up(node.netns, "gws", tx_off=True)
        netns.add_address(node.netns, "gws", f"{node.gateway}/32")
        with netns.ipr_in(node.netns) as ipr:
            ipr.route("add", dst=node.pod_cidr, oif=netns.link_index(ipr, "gws"), scope=253)
            macs[node.name] = netns.link_mac(ipr, "gws")
        sysctl(node, "net.ipv4.ip_forward=1")
        for peer in state.nodes:
            if peer.name != node.name:
                run_ip("-n", node.netns, "neigh", "replace", peer.address, "lladdr", bridge_mac(peer), "dev",
                       "br-phy", "nud", "permanent")
        ovs(node).vsctl("--", "add-port", "br-int", "gwh", "--", "set", "Interface", "gwh",
                        "external_ids:sdn-netpol-role=gateway", f"external_ids:peer-mac={macs[node.name]}")
    try:
        for node in state.nodes:
            await_flows(node, lambda f, n=node: f.table == 50 and f"set_field:{macs[n.name]}->eth_dst" in f.actions)
        yield macs
    finally:
        for node in state.nodes:
            ovs(node).vsctl("--if-exists", "del-port", "br-int", "gwh")
            run_ip("-n", node.netns, "link", "del", "gwh", check=False)
            run_ip("-n", node.netns, "neigh", "flush", "dev", "br-phy", check=False)
            sysctl(node, "net.ipv4.ip_forward=0")
            sysctl(node, "net.ipv4.conf.all.route_localnet=0")
        for node in state.nodes:
            await_flows(node, lambda f: f.table == 50 and f.priority == 50, present=False)


def sysctl(node: NodeState, setting: str) -> None:
    subprocess.run(["ip", "netns", "exec", node.netns, "sysctl", "-qw", setting], check=True)


def await_flows(node: NodeState, test: Callable[[DumpedFlow], bool], present: bool = True) -> None:
    deadline = time.monotonic() + DEADLINE
    while any(test(f) for f in ovs(node).dump_flows("br-int")) != present:
        assert time.monotonic() < deadline, f"{node.name}: the gateway flows did not " + (
            "appear" if present else "go")
        time.sleep(0.1)


@pytest.mark.usefixtures("host_gateway")
class TestWithAGatewayToTheHost:
    def test_node_local_traffic_reaches_every_node_address_listener_whatever_policy_says(
            self, cluster: Cluster) -> None:
        """What deploy/'s 0.0.0.0:9180 means once pods have a path to their node: a pod
        whose namespace denies all egress still connects to its node's address (node-local
        traffic is always allowed, docs/semantics.md). NetworkPolicy cannot protect it."""
        attacker = attackers(cluster)["same node"]
        node = node_of(cluster, attacker.key)
        deny = netpol("deny-egress", attacker.key.split("/")[0], {"podSelector": {}, "policyTypes": ["Egress"]})
        cluster.apply(deny)
        try:
            with tcp_listener(node.netns, STATUS_PORT) as peers:
                assert try_connect(attacker, node.address, STATUS_PORT, timeout=DEADLINE) == "connected"
                assert try_connect(attacker, cluster.pod(TARGET).ip, 80, timeout=1.0) == "timeout"  # deny works
            assert [p[0] for p in peers] == [attacker.ip]
        finally:
            cluster.delete(deny)

    def test_loopback_destinations_never_leave_the_bridge(self, cluster: Cluster) -> None:
        """With route_localnet=1 (kube-proxy sets it) the node's kernel would accept a pod's
        packet to 127.0.0.1 from the gateway (CVE-2020-8558): the pipeline drops every
        packet to 127.0.0.0/8 in SpoofGuard, so the OpenFlow port and every other loopback
        listener stay out of reach. The same datagram to the node's address arrives."""
        attacker = attackers(cluster)["same node"]
        node = node_of(cluster, attacker.key)
        sysctl(node, "net.ipv4.conf.all.route_localnet=1")
        sysctl(node, "net.ipv4.conf.gws.route_localnet=1")
        sink = netns.socket_in(node.netns, socket.AF_INET, socket.SOCK_DGRAM)
        with sink, sniff(node.netns, "gws") as wire:
            sink.bind(("0.0.0.0", 9999))
            sink.settimeout(0.1)
            syn = (Ether(src=attacker.mac, dst=GATEWAY_MAC) / IP(src=attacker.ip, dst="127.0.0.1")
                   / TCP(sport=40001, dport=OFP_PORT, flags="S", seq=1) / b"LO-SYN")
            send_frames(attacker.netns, syn, udp_frame(attacker, "127.0.0.1", 9999, b"LO-UDP"),
                 udp_frame(attacker, "127.0.0.53", 9999, b"LO-UDP-53"),
                 udp_frame(attacker, node.address, 9999, b"TO-NODE"))
            seen = collect(wire, [b"LO-SYN", b"LO-UDP", b"LO-UDP-53"], awaited=b"TO-NODE")
            got = []
            deadline = time.monotonic() + DEADLINE
            while b"TO-NODE" not in got and time.monotonic() < deadline:
                with contextlib.suppress(TimeoutError):
                    got.append(sink.recv(100))
        assert got == [b"TO-NODE"]
        assert {m: len(f) for m, f in seen.items() if m != b"TO-NODE" and f} == {}

    def test_tunnel_packets_from_a_pod_never_reach_a_tunnel_endpoint(self, cluster: Cluster) -> None:
        """A pod that policy denies towards TARGET wraps a datagram 'from FRIEND' in VXLAN or
        Geneve and sends it to a node's tunnel endpoint through the gateway. The endpoint
        would decapsulate it and TARGET's node trust its inner source (shown with an underlay
        host below); the pipeline drops UDP 4789/6081 to every node address in SpoofGuard.
        A plain datagram on the same path reaches the other node."""
        attacker = attackers(cluster)["other node"]
        here, there = node_of(cluster, attacker.key), node_of(cluster, TARGET)
        friend, target = cluster.pod(FRIEND), cluster.pod(TARGET)

        def inner(marker: bytes) -> Packet:
            return Ether(src=friend.mac, dst=GATEWAY_MAC) / IP(src=friend.ip, dst=target.ip) / UDP(
                sport=40000, dport=80) / marker

        outer = Ether(src=attacker.mac, dst=GATEWAY_MAC) / IP(src=attacker.ip, dst=there.address)
        wrapped = {b"VXLAN-THERE": outer / UDP(sport=4789, dport=4789) / VXLAN(vni=1, flags=0x08)
                   / inner(b"VXLAN-THERE"),
                   b"GENEVE-THERE": outer / UDP(sport=6081, dport=6081) / GENEVE(vni=1, proto=0x6558)
                   / inner(b"GENEVE-THERE")}
        mine = Ether(src=attacker.mac, dst=GATEWAY_MAC) / IP(src=attacker.ip, dst=here.address)
        wrapped[b"VXLAN-HERE"] = mine / UDP(sport=4789, dport=4789) / VXLAN(vni=1, flags=0x08) / inner(b"VXLAN-HERE")
        friend_frame = udp_frame(friend, target.ip, 80, b"FRIEND-ITSELF")
        with (sniff(target.netns) as at_target, sniff(here.netns, "gws") as leaving,
              sniff(there.netns, "eth1") as arriving):
            send_frames(attacker.netns, *wrapped.values())
            send_frames(attacker.netns, outer / UDP(sport=4789, dport=9999) / b"PLAIN-THERE")
            got = collect(arriving, list(wrapped), awaited=b"PLAIN-THERE")
            send_frames(friend.netns, friend_frame)
            delivered = collect(at_target, list(wrapped), awaited=b"FRIEND-ITSELF")
            left = {m: f for m, f in collect(leaving, list(wrapped)).items() if f}
        assert {m: len(f) for m, f in got.items() if m != b"PLAIN-THERE" and f} == {}
        assert {m: len(f) for m, f in delivered.items() if m != b"FRIEND-ITSELF" and f} == {}
        assert left == {}

    def test_an_underlay_host_can_inject_tunnel_packets_so_the_underlay_must_be_trusted(
            self, cluster: Cluster) -> None:
        """The residual the pipeline cannot close: a tunnel endpoint accepts any sender
        (remote_ip=flow) and tunnel traffic is not spoof-checked, so a host on the underlay
        network delivers an inner packet 'from FRIEND' that policy would deny it."""
        state = cluster.lab.state()
        friend, target, there = cluster.pod(FRIEND), cluster.pod(TARGET), node_of(cluster, TARGET)
        frame = (Ether(src="02:99:00:00:00:01", dst=bridge_mac(there)) / IP(src="10.10.0.200", dst=there.address)
                 / UDP(sport=4789, dport=4789) / VXLAN(vni=1, flags=0x08)
                 / Ether(src=friend.mac, dst=GATEWAY_MAC) / IP(src=friend.ip, dst=target.ip)
                 / UDP(sport=40000, dport=80) / b"FROM-THE-UNDERLAY")
        with sniff(target.netns) as sock:
            raw = netns.socket_in(state.underlay_netns, socket.AF_PACKET, socket.SOCK_RAW, 0)
            with raw:
                raw.bind(("br0", 0))
                raw.send(bytes(frame))
            assert collect(sock, [], awaited=b"FROM-THE-UNDERLAY")[b"FROM-THE-UNDERLAY"]


# ---------------------------------------------------------------------------- CNI inputs


@pytest.fixture(scope="module")
def cni_node(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Node]:
    with node_with_ovs(tmp_path_factory.mktemp("cni-ovs")) as made:
        yield made


@pytest.fixture
def cni(cni_node: Node, tmp_path: Path) -> Iterator[tuple[Node, dict[str, Any], Path]]:
    conf = plugin_config(cni_node.ovs.db_sock, tmp_path / "ipam")
    assert cni_node.ports() == set() and not any(link.startswith("veth") for link in cni_node.links())
    yield cni_node, conf, tmp_path
    for port in cni_node.ports():
        cni_node.ovs.vsctl("--if-exists", "del-port", port)
    for pod in list(cni_node.pods):
        cni_node.delete_pod_netns(pod)
        cni_node.pods.remove(pod)


def cni_error(run: Any, code: int) -> dict[str, Any]:
    assert run.rc == 1 and "Traceback" not in run.stdout + run.stderr, run.stdout + run.stderr
    doc: dict[str, Any] = json.loads(run.stdout)
    assert doc["code"] == code and doc["msg"], doc
    return doc


def nothing_left(node: Node, data_dir: Path, pod_netns: str) -> None:
    assert not any(link.startswith("veth") for link in node.links())  # the plugin's host ends
    assert node.ports() == set()
    assert allocations(data_dir) == {}
    assert [line.split(":")[1].strip() for line in run_ip("-n", pod_netns, "-o", "link", "show").splitlines()] == [
        "lo"]


def files(root: Path) -> set[str]:
    return {str(p.relative_to(root)) for p in root.rglob("*")} if root.exists() else set()


TRAVERSAL_IDS = ["../../etc", "a/../../../etc", "..", "./x", "/etc/passwd", "x\n/../y", "-x"]
BAD_IFNAMES = ["../../etc", "..", ".", "a/b", "eth:0", "e th0", "x" * 16, "é" * 8, "ethà"]


@pytest.mark.parametrize("command", ["ADD", "CHECK", "DEL"])
def test_cni_path_traversal_in_the_container_id_is_refused_before_anything_happens(
        cni: tuple[Node, dict[str, Any], Path], command: str) -> None:
    node, conf, tmp = cni
    victim = tmp / "victim"
    victim.mkdir()
    data_dir = Path(conf["ipam"]["dataDir"])
    before = files(tmp)
    pod_netns = node.new_pod_netns()
    for cid in [*TRAVERSAL_IDS, os.path.relpath(victim, data_dir / "sdn-netpol")]:
        doc = cni_error(node.cni(command, conf, container_id=cid, netns=pod_netns), 4)
        assert doc["msg"] == "CNI_CONTAINERID is invalid"
    assert files(tmp) == before  # not even host-local's dataDir
    nothing_left(node, data_dir, pod_netns)


@pytest.mark.parametrize("ifname", BAD_IFNAMES)
def test_cni_bad_interface_names_are_refused_before_anything_happens(
        cni: tuple[Node, dict[str, Any], Path], ifname: str) -> None:
    """Linux's rules (dev_valid_name): 1-15 bytes, not '.' or '..', no '/', ':' or
    whitespace. Refused by the plugin itself, before IPAM runs (host-local happens to
    refuse some of them too, but only after it was called)."""
    node, conf, _ = cni
    data_dir = Path(conf["ipam"]["dataDir"])
    pod_netns = node.new_pod_netns()
    for command in ("ADD", "CHECK", "DEL"):
        doc = cni_error(node.cni(command, conf, container_id="ctr1", netns=pod_netns, ifname=ifname), 4)
        assert doc["msg"] == "CNI_IFNAME is invalid", doc
    assert not data_dir.exists()
    nothing_left(node, data_dir, pod_netns)


def test_cni_a_netns_path_that_is_no_network_namespace_is_refused(cni: tuple[Node, dict[str, Any], Path]) -> None:
    node, conf, tmp = cni
    pod_netns = node.new_pod_netns()
    for path in ["/var/run/netns/../../../etc/passwd", f"/var/run/netns/../netns/{pod_netns}/../x", str(tmp)]:
        doc = cni_error(node.cni("ADD", conf, container_id="ctr1", netns=pod_netns, env={"CNI_NETNS": path}), 4)
        assert "CNI_NETNS" in doc["msg"]
    assert not Path(conf["ipam"]["dataDir"]).exists()
    nothing_left(node, Path(conf["ipam"]["dataDir"]), pod_netns)


QUOTED_NAMES = ['we"b', "it's", "a,b", "{x}", "[1]", "back\\slash", "é-ü-名", "a b", "x" * 4000, "a/b"]


def test_cni_untrusted_names_are_stored_exactly_and_removed_with_the_pod(
        cni: tuple[Node, dict[str, Any], Path]) -> None:
    """Quotes, commas, braces, backslashes, spaces, non-ASCII, 4,000 characters in
    K8S_POD_NAME, and a 100,000-character container id: OVSDB external_ids and host-local's
    reservation hold them exactly (the IDL sends JSON, nothing is quoted by hand), and DEL
    removes everything."""
    node, conf, _ = cni
    data_dir = Path(conf["ipam"]["dataDir"])
    for i, name in enumerate(QUOTED_NAMES):
        pod_netns = node.new_pod_netns()
        cid = "c" * 100_000 if i == 0 else f"ctr{i}"
        args = f"K8S_POD_NAMESPACE=team-{i};K8S_POD_NAME={name}"
        run = node.cni("ADD", conf, container_id=cid, netns=pod_netns, args=args)
        assert run.rc == 0, run.stdout + run.stderr
        host = run.doc["interfaces"][0]["name"]
        ids = node.external_ids(host)
        assert (ids["pod-name"], ids["pod-namespace"], ids["iface-id"], ids["container-id"]) == (
            name, f"team-{i}", f"team-{i}/{name}", cid)
        assert list(allocations(data_dir).values()) == [cid]
        run = node.cni("DEL", conf, container_id=cid, netns=pod_netns, args=args)
        assert run.rc == 0, run.stdout + run.stderr
        nothing_left(node, data_dir, pod_netns)


@pytest.mark.parametrize("name", ["a=b", "x==", "=x"])
def test_cni_an_equals_sign_in_a_cni_args_value_is_a_cni_error_and_leaves_nothing(
        cni: tuple[Node, dict[str, Any], Path], name: str) -> None:
    """The plugin keeps everything after the first '=' as the value, but host-local (which
    gets the same CNI_ARGS) refuses such pairs: the ADD fails with its message and is rolled
    back. (';' cannot be in a value at all: it separates the pairs.)"""
    node, conf, _ = cni
    pod_netns = node.new_pod_netns()
    doc = cni_error(node.cni("ADD", conf, container_id="ctr1", netns=pod_netns,
                             args=f"K8S_POD_NAMESPACE=ns;K8S_POD_NAME={name}"), 101)
    assert "invalid pair" in doc["msg"]
    nothing_left(node, Path(conf["ipam"]["dataDir"]), pod_netns)
