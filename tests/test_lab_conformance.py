"""Real packets on a 3-node lab equal the policy engine, case by case (the upstream e2e model).

One lab for the whole module (3 nodes, VXLAN, namespaces x/y/z, pods a/b/c each serving 80
and 81 on TCP, UDP and SCTP, spread round-robin so every namespace spans every node); each
test applies its objects, probes with real packets from every pod to every pod, demands
measured == expected, and takes its objects away again. Then the behaviours a matrix cannot
show: spoofing, a pod before its flows, a controller restart under a stream, a withdrawn
allow cutting a live connection, and `lab down` leaving nothing.
"""
from __future__ import annotations

import errno
import socket
import struct
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
import yaml
from scapy.layers.inet import IP, UDP
from scapy.layers.l2 import Ether

from sdn_netpol.compiler.pipeline import GATEWAY_MAC, is_learned
from sdn_netpol.lab import cleanup, netns, probe
from sdn_netpol.lab.lab import Lab
from sdn_netpol.lab.topology import ovs
from sdn_netpol.lab.traffic import Stream
from sdn_netpol.ovs.instance import daemon_pids
from tests.lab_fixtures import (
    MODEL,
    Cluster,
    allowed_pairs,
    connect,
    deny_ingress,
    namespace,
    netpol,
    pod_manifest,
    received,
    send_frame,
    sniffer,
)

IP_MTU_DISCOVER, IP_PMTUDISC_DO = 10, 2


def _root_links() -> set[str]:
    out = subprocess.run(["ip", "-o", "link", "show"], capture_output=True, text=True, check=True).stdout
    return {line.split(":")[1].strip().split("@")[0] for line in out.splitlines()}


@pytest.fixture(scope="module")
def links_before() -> set[str]:
    return _root_links()


@pytest.fixture(scope="module")
def lab(tmp_path_factory: pytest.TempPathFactory, links_before: set[str]) -> Iterator[Lab]:
    workdir = tmp_path_factory.mktemp("lab")
    made = Lab(workdir)
    try:
        made.up([MODEL], nodes=3)
        yield made
    finally:
        made.down()


@pytest.fixture
def cluster(lab: Lab, tmp_path: Path) -> Iterator[Cluster]:
    view = Cluster(lab, tmp_path)
    yield view
    view.reset()


# ------------------------------------------------------------------ the lab itself


def test_pods_spread_over_every_node_with_cni_addresses(lab: Lab) -> None:
    state = lab.state()
    assert {p.node for p in state.pods.values()} == {"node1", "node2", "node3"}
    for key, pod in state.pods.items():
        node = state.node(pod.node)
        assert pod.ip.startswith(node.pod_cidr.rsplit(".", 2)[0] + "."), (key, pod.ip, node.pod_cidr)
        octets = [int(x) for x in pod.ip.split(".")]
        assert pod.mac == "02:00:" + ":".join(f"{b:02x}" for b in octets)
        assert sorted(pod.ports) == sorted((proto, port) for proto in ("TCP", "UDP", "SCTP") for port in (80, 81))
    manifest = lab.cluster().pod("x", "b")
    assert manifest is not None and str(manifest.ips[0]) == state.pods["x/b"].ip and manifest.node_name == "node2"


def test_no_policy_everything_connects_on_every_protocol(cluster: Cluster) -> None:
    for protocol in ("TCP", "UDP", "SCTP"):
        report = cluster.check(protocol, 81)
        assert all(report.measured.allowed[s][d] for s in report.measured.pods for d in report.measured.pods)


def test_forwarding_decrements_ttl_and_keeps_mtu_1450_across_the_tunnel(cluster: Cluster) -> None:
    """x/a (node1) → y/b (node2): one routed hop (TTL 64 arrives as 63), and a full
    1450-byte datagram with DF set crosses VXLAN whole; 1451 bytes do not fit the pod MTU;
    the pod resolved its (virtual) gateway to the ARP responder's MAC."""
    src, dst = cluster.pod("x/a"), cluster.pod("y/b")
    sock = netns.socket_in(src.netns, socket.AF_INET, socket.SOCK_DGRAM)
    with sock, sniffer(dst) as sniff:
        sock.setsockopt(socket.IPPROTO_IP, socket.IP_TTL, 64)
        sock.setsockopt(socket.IPPROTO_IP, IP_MTU_DISCOVER, IP_PMTUDISC_DO)
        sock.connect((dst.ip, 80))
        sock.send(b"mtu-probe".ljust(1450 - 28, b"."))
        frames = received(sniff, b"mtu-probe", 1.0)
        assert len(frames) == 1
        header = frames[0][14:34]
        assert (header[8], struct.unpack("!H", header[2:4])[0]) == (63, 1450)
        assert header[6] & 0x40, "DF kept: not fragmented on the way"
        with pytest.raises(OSError) as too_big:
            sock.send(b"x" * (1451 - 28))
        assert too_big.value.errno == errno.EMSGSIZE
    gateway = cluster.lab.state().node(src.node).gateway
    with netns.ipr_in(src.netns) as ipr:
        learnt = {n.get_attr("NDA_DST"): n.get_attr("NDA_LLADDR") for n in ipr.get_neighbours(family=socket.AF_INET)}
    assert learnt.get(gateway) == GATEWAY_MAC, "the virtual gateway is answered by the flows' ARP responder"


# ------------------------------------------------------------------ policy semantics


def test_default_deny_ingress(cluster: Cluster) -> None:
    cluster.apply(deny_ingress("x"))
    report = cluster.check("TCP", 80)
    assert not report.expected.allowed["y/a"]["x/b"] and report.expected.allowed["x/a"]["y/b"]


def test_default_deny_egress(cluster: Cluster) -> None:
    cluster.apply(netpol("deny-egress", "y", {"podSelector": {}, "policyTypes": ["Egress"]}))
    report = cluster.check("TCP", 80)
    assert not report.expected.allowed["y/a"]["x/b"] and report.expected.allowed["x/a"]["y/b"]
    assert report.expected.allowed["y/a"]["y/a"], "a pod can always reach itself"


def test_allow_all_overrides_default_deny(cluster: Cluster) -> None:
    cluster.apply(deny_ingress("x"), netpol("deny-egress", "x", {"podSelector": {}, "policyTypes": ["Egress"]}),
                  netpol("allow-all", "x", {"podSelector": {}, "ingress": [{}], "egress": [{}],
                                            "policyTypes": ["Ingress", "Egress"]}))
    report = cluster.check("TCP", 80)
    assert len(allowed_pairs(report)) == 81


def test_pod_selector_alone(cluster: Cluster) -> None:
    cluster.apply(netpol("a-from-b", "x", {"podSelector": {"matchLabels": {"pod": "a"}},
                                           "ingress": [{"from": [{"podSelector": {"matchLabels": {"pod": "b"}}}]}]}))
    report = cluster.check("TCP", 80)
    assert {s for s, d in allowed_pairs(report) if d == "x/a"} == {"x/a", "x/b"}


def test_namespace_selector_alone(cluster: Cluster) -> None:
    cluster.apply(netpol("a-from-y", "x", {
        "podSelector": {"matchLabels": {"pod": "a"}},
        "ingress": [{"from": [{"namespaceSelector": {"matchLabels": {"ns": "y"}}}]}]}))
    report = cluster.check("TCP", 80)
    assert {s for s, d in allowed_pairs(report) if d == "x/a"} == {"x/a", "y/a", "y/b", "y/c"}


def test_namespace_and_pod_selector_in_one_peer_is_and(cluster: Cluster) -> None:
    cluster.apply(netpol("a-from-y-b", "x", {
        "podSelector": {"matchLabels": {"pod": "a"}},
        "ingress": [{"from": [{"namespaceSelector": {"matchLabels": {"ns": "y"}},
                               "podSelector": {"matchLabels": {"pod": "b"}}}]}]}))
    report = cluster.check("TCP", 80)
    assert {s for s, d in allowed_pairs(report) if d == "x/a"} == {"x/a", "y/b"}


def test_two_peers_are_or(cluster: Cluster) -> None:
    cluster.apply(netpol("a-from-y-or-b", "x", {
        "podSelector": {"matchLabels": {"pod": "a"}},
        "ingress": [{"from": [{"namespaceSelector": {"matchLabels": {"ns": "y"}}},
                              {"podSelector": {"matchLabels": {"pod": "b"}}}]}]}))
    report = cluster.check("TCP", 80)
    assert {s for s, d in allowed_pairs(report) if d == "x/a"} == {"x/a", "x/b", "y/a", "y/b", "y/c"}


def test_match_expressions(cluster: Cluster) -> None:
    cluster.apply(netpol("exprs", "x", {
        "podSelector": {"matchExpressions": [{"key": "pod", "operator": "In", "values": ["a", "b"]}]},
        "ingress": [{"from": [{
            "namespaceSelector": {"matchExpressions": [{"key": "ns", "operator": "NotIn", "values": ["x"]}]},
            "podSelector": {"matchExpressions": [{"key": "pod", "operator": "Exists"},
                                                 {"key": "pod", "operator": "NotIn", "values": ["c"]}]}}]}]}))
    report = cluster.check("TCP", 80)
    assert {s for s, d in allowed_pairs(report) if d == "x/b"} == {"x/b", "y/a", "y/b", "z/a", "z/b"}
    assert len({s for s, d in allowed_pairs(report) if d == "x/c"}) == 9


def test_ip_block_with_except(cluster: Cluster) -> None:
    """Ingress from 10.244.0.0/16 except node2's pod CIDR; egress to node3's CIDR only."""
    cluster.apply(
        netpol("from-cidr", "x", {"podSelector": {"matchLabels": {"pod": "a"}}, "ingress": [{"from": [
            {"ipBlock": {"cidr": "10.244.0.0/16", "except": ["10.244.2.0/24"]}}]}]}),
        netpol("to-cidr", "y", {"podSelector": {"matchLabels": {"pod": "c"}}, "policyTypes": ["Egress"],
                                "egress": [{"to": [{"ipBlock": {"cidr": "10.244.3.0/24"}}]}]}))
    report = cluster.check("TCP", 80)
    on_node2 = {k for k, p in cluster.lab.state().pods.items() if p.node == "node2"}
    assert {s for s, d in allowed_pairs(report) if d == "x/a"} == set(report.measured.pods) - on_node2 - {"y/c"}
    on_node3 = {k for k, p in cluster.lab.state().pods.items() if p.node == "node3"}
    assert {d for s, d in allowed_pairs(report) if s == "y/c"} == on_node3 | {"y/c"}


def test_named_port(cluster: Cluster) -> None:
    cluster.apply(deny_ingress("x"), netpol("named", "x", {
        "podSelector": {}, "ingress": [{"ports": [{"port": "serve-81-tcp"}, {"port": "serve-80-udp",
                                                                            "protocol": "UDP"}]}]}))
    assert len(allowed_pairs(cluster.check("TCP", 81))) == 81
    assert ("y/a", "x/a") not in allowed_pairs(cluster.check("TCP", 80))
    assert ("y/a", "x/a") in allowed_pairs(cluster.check("UDP", 80))


def test_end_port_range(cluster: Cluster) -> None:
    cluster.apply(deny_ingress("x"), netpol("range", "x", {
        "podSelector": {}, "ingress": [{"ports": [{"protocol": "TCP", "port": 81, "endPort": 90}]}]}))
    assert ("y/a", "x/a") in allowed_pairs(cluster.check("TCP", 81))
    assert ("y/a", "x/a") not in allowed_pairs(cluster.check("TCP", 80))


def test_udp_rule(cluster: Cluster) -> None:
    cluster.apply(deny_ingress("x"), netpol("udp80", "x", {
        "podSelector": {}, "ingress": [{"from": [{"podSelector": {"matchLabels": {"pod": "b"}},
                                                  "namespaceSelector": {}}],
                                        "ports": [{"protocol": "UDP", "port": 80}]}]}))
    udp = cluster.check("UDP", 80)
    assert ("y/b", "x/a") in allowed_pairs(udp) and ("y/a", "x/a") not in allowed_pairs(udp)
    assert ("y/b", "x/a") not in allowed_pairs(cluster.check("UDP", 81))
    assert ("y/b", "x/a") not in allowed_pairs(cluster.check("TCP", 80))


def test_sctp_rule(cluster: Cluster) -> None:
    """SCTP is matched per port even though OVS 3.1 tracks SCTP without ports."""
    cluster.apply(deny_ingress("x"), netpol("sctp80", "x", {
        "podSelector": {}, "ingress": [{"from": [{"namespaceSelector": {"matchLabels": {"ns": "y"}}}],
                                        "ports": [{"protocol": "SCTP", "port": 80}]}]}))
    sctp80 = cluster.check("SCTP", 80)
    assert ("y/a", "x/a") in allowed_pairs(sctp80) and ("z/a", "x/a") not in allowed_pairs(sctp80)
    assert ("y/a", "x/a") not in allowed_pairs(cluster.check("SCTP", 81))
    assert ("y/a", "x/a") not in allowed_pairs(cluster.check("UDP", 80))


def test_sctp_reverse_of_an_allowed_association_is_still_checked(cluster: Cluster) -> None:
    """OVS 3.1 tracks SCTP without ports, so x/a→z/a (allowed) leaves an entry whose reply
    direction looks exactly like a new z/a→x/a association; that one must still be denied."""
    cluster.apply(deny_ingress("x"))
    xa, za = cluster.pod("x/a"), cluster.pod("z/a")
    forward = probe.Probe("x/a", "z/a", xa.netns, za.ip)
    reverse = probe.Probe("z/a", "x/a", za.netns, xa.ip)
    assert probe.run_probes([reverse], "SCTP", 80) == {reverse: "timeout"}
    assert probe.run_probes([forward], "SCTP", 81) == {forward: "connected"}
    assert probe.run_probes([reverse], "SCTP", 80) == {reverse: "timeout"}


def test_sctp_works_both_ways_after_an_association_the_other_way(cluster: Cluster) -> None:
    """A conntrack entry made by y/a→x/a makes a later x/a→y/a association look like a reply,
    and y/a's answer like an original packet; x/a isolated for ingress must still get it."""
    xa, ya = cluster.pod("x/a"), cluster.pod("y/a")
    there = probe.Probe("y/a", "x/a", ya.netns, xa.ip)
    back = probe.Probe("x/a", "y/a", xa.netns, ya.ip)
    assert probe.run_probes([there], "SCTP", 81) == {there: "connected"}  # no policy yet
    cluster.apply(deny_ingress("x"))
    assert probe.run_probes([back], "SCTP", 80) == {back: "connected"}  # x's egress is open
    assert probe.run_probes([there], "SCTP", 80) == {there: "timeout"}  # x's ingress is not


def test_policy_update_and_delete(cluster: Cluster) -> None:
    first = netpol("changing", "x", {"podSelector": {"matchLabels": {"pod": "a"}},
                                     "ingress": [{"from": [{"podSelector": {"matchLabels": {"pod": "b"}}}]}]})
    cluster.apply(first)
    assert ("x/b", "x/a") in allowed_pairs(cluster.check("TCP", 80))
    second = netpol("changing", "x", {"podSelector": {"matchLabels": {"pod": "a"}},
                                      "ingress": [{"from": [{"podSelector": {"matchLabels": {"pod": "c"}}}]}]})
    cluster.apply(second)
    report = cluster.check("TCP", 80)
    assert ("x/c", "x/a") in allowed_pairs(report) and ("x/b", "x/a") not in allowed_pairs(report)
    cluster.delete(second)
    assert len(allowed_pairs(cluster.check("TCP", 80))) == 81


def test_pod_relabel_in_place(cluster: Cluster) -> None:
    cluster.apply(netpol("a-from-b", "x", {"podSelector": {"matchLabels": {"pod": "a"}},
                                           "ingress": [{"from": [{"podSelector": {"matchLabels": {"pod": "b"}}}]}]}))
    before = cluster.pod("x/c")
    assert ("x/c", "x/a") not in allowed_pairs(cluster.check("TCP", 80))
    cluster.apply(pod_manifest("x", "c", {"pod": "b"}, [(p, n) for p in ("TCP", "UDP", "SCTP") for n in (80, 81)]))
    assert ("x/c", "x/a") in allowed_pairs(cluster.check("TCP", 80))
    after = cluster.pod("x/c")
    assert (after.ip, after.netns, after.node, after.server_pid) == (before.ip, before.netns, before.node,
                                                                      before.server_pid)


def test_namespace_relabel(cluster: Cluster) -> None:
    cluster.apply(netpol("a-from-y", "x", {
        "podSelector": {"matchLabels": {"pod": "a"}},
        "ingress": [{"from": [{"namespaceSelector": {"matchLabels": {"ns": "y"}}}]}]}))
    assert ("z/b", "x/a") not in allowed_pairs(cluster.check("TCP", 80))
    cluster.apply(namespace("z", {"ns": "y"}))
    assert ("z/b", "x/a") in allowed_pairs(cluster.check("TCP", 80))


# ------------------------------------------------------------------ behaviours


def test_spoofed_source_is_dropped(cluster: Cluster) -> None:
    """x/a sends UDP with y/b's address (with its own MAC, and with y/b's MAC too): z/c
    (other node) and y/a (same node) never see it; the same frame with x/a's own
    address arrives, so the sniffer would have seen it."""
    src, victim = cluster.pod("x/a"), cluster.pod("y/b")
    for target in (cluster.pod("z/c"), cluster.pod("y/a")):
        def frame(ip: str, mac: str, marker: bytes, dst: str = target.ip) -> bytes:
            return bytes(Ether(src=mac, dst=GATEWAY_MAC) / IP(src=ip, dst=dst, ttl=64)
                         / UDP(sport=5555, dport=80) / marker)

        def udp_in(sock: socket.socket, marker: bytes) -> list[bytes]:
            """Not the ICMP error x/a sends back about the echo, which quotes the marker."""
            return [f for f in received(sock, marker, 1.0) if f[14 + 9] == socket.IPPROTO_UDP]

        with sniffer(target) as sock:
            send_frame(src, frame(victim.ip, src.mac, b"spoof-ip-" + target.ip.encode()))
            send_frame(src, frame(victim.ip, victim.mac, b"spoof-mac-" + target.ip.encode()))
            assert udp_in(sock, b"spoof-") == []
            send_frame(src, frame(src.ip, src.mac, b"genuine-" + target.ip.encode()))
            (genuine,) = udp_in(sock, b"genuine-")
            assert genuine[14 + 12:14 + 16] == socket.inet_aton(src.ip)


def test_new_pod_has_no_connectivity_before_its_flows(cluster: Cluster) -> None:
    """Attached and serving, but its manifest not yet published: isolated both ways from
    its first packet; once published (same pod, same IP), reachable."""
    manifest = cluster.tmp / "late.yaml"
    manifest.write_text(yaml.safe_dump(pod_manifest("x", "late", {"pod": "late"}, [("TCP", 80)])))
    (late,) = cluster.lab.create_unpublished([manifest])
    try:
        peer = cluster.pod("x/a")
        pairs = [probe.Probe("x/late", "x/a", late.netns, peer.ip), probe.Probe("x/a", "x/late", peer.netns, late.ip)]
        assert set(probe.run_probes(pairs, "TCP", 80).values()) == {"timeout"}
        cluster.lab.apply([manifest])
        assert set(probe.run_probes(pairs, "TCP", 80).values()) == {"connected"}
        assert cluster.pod("x/late").ip == late.ip
    finally:
        cluster.lab.delete([manifest])
    assert "x/late" not in cluster.lab.state().pods


def _flow_table(lab: Lab, node: str) -> set[tuple[object, ...]]:
    """The controller's flows (not the SCTP reply flows the switch learns and expires itself)."""
    flows = ovs(lab.state().node(node)).dump_flows("br-int")
    return {(f.table, f.priority, f.match, f.actions, f.cookie) for f in flows if not is_learned(f.cookie)}


def test_controller_restart_does_not_break_a_long_tcp_stream(cluster: Cluster) -> None:
    cluster.apply(deny_ingress("y"), netpol("b-from-x", "y", {
        "podSelector": {"matchLabels": {"pod": "b"}},
        "ingress": [{"from": [{"namespaceSelector": {"matchLabels": {"ns": "x"}}}],
                     "ports": [{"port": 80}]}]}))
    stream = Stream(cluster.pod("x/a"), cluster.pod("y/b"), 80, period=0.02).start()
    try:
        time.sleep(0.5)
        before = {n: _flow_table(cluster.lab, n) for n in ("node1", "node2")}
        for node in ("node1", "node2"):
            cluster.lab.restart_controller(node)
        cluster.lab.wait_realized()
        restarted = time.monotonic()
        time.sleep(1.0)
        after = {n: _flow_table(cluster.lab, n) for n in ("node1", "node2")}
    finally:
        stream.stop()
    assert stream.cut_at is None, stream.error
    assert stream.flowing(since=restarted), "echoes came back after both restarts"
    assert stream.longest_wait < 1.0, f"a round trip stalled for {stream.longest_wait:.2f} s"
    assert after == before, "a restarted controller reconciles to the very same flows"


def test_removing_the_allow_cuts_an_established_connection(cluster: Cluster) -> None:
    allow = netpol("b-from-x", "y", {"podSelector": {"matchLabels": {"pod": "b"}},
                                     "ingress": [{"from": [{"namespaceSelector": {"matchLabels": {"ns": "x"}}}]}]})
    cluster.apply(deny_ingress("y"), allow)
    sock = connect(cluster.pod("x/a"), cluster.pod("y/b"), 80, timeout=1.5)
    with sock:
        sock.sendall(b"hello")
        assert sock.recv(5) == b"hello"
        cluster.delete(allow)
        sock.sendall(b"again")
        with pytest.raises((TimeoutError, socket.timeout)):
            sock.recv(5)


def test_zz_down_leaves_nothing(lab: Lab, links_before: set[str]) -> None:
    """Last in the module: no namespace, interface, OVS daemon, controller or server."""
    state = lab.state()
    rundirs = [Path(n.rundir) for n in state.nodes]
    seconds = lab.down()
    assert seconds < 10
    assert cleanup.leftovers(lab.workdir) == {"netns": [], "processes": []}
    assert not any(daemon_pids(r, d) for r in rundirs for d in ("ovs-vswitchd", "ovsdb-server"))
    # Names only this lab uses: the switch tests (tests/controller_fixtures.py) and other jobs
    # on the machine create br-int, gw0, tun0 … in the root namespace meanwhile.
    lab_links = {f"n{i}" for i in range(1, 4)}
    new = _root_links() - links_before
    assert not {link for link in new if link.startswith("sdnlab") or link in lab_links}, new
    assert not (lab.workdir / "state.json").exists()
