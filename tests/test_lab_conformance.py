"""Real packets on a 3-node lab equal the policy engine, case by case (the upstream e2e model).

One lab for the whole module (3 nodes, VXLAN, namespaces x/y/z, pods a/b/c each serving 80
and 81 on TCP, UDP and SCTP, spread round-robin so every namespace spans every node); each
test applies its objects, probes with real packets from every pod to every pod, demands
measured == expected, and takes its objects away again. Then the behaviours a matrix cannot
show: spoofing, a pod before its flows, a controller restart under a stream, a withdrawn
allow cutting a live connection, a model pod's own status.podIPs, and `lab down` leaving
nothing.

The cases are written once, for every address family: this module's lab is IPv4;
tests/test_lab_conformance_v6.py and _dual.py collect the same cases with a lab of theirs
(`lab up --ip-family 6|dual`). Through `FamilyCluster` every matrix is measured in each
family of the lab, and a NetworkPolicy's IPv4 ipBlocks are written in IPv6 terms on an IPv6
lab (docs/lab.md, "Address families"); the cases that look at headers, neighbours or
sockets do so in each family of the lab.
"""
from __future__ import annotations

import errno
import json
import socket
import struct
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
import yaml
from click.testing import CliRunner, Result
from netaddr import IPAddress, IPNetwork
from scapy.layers.inet import IP, UDP
from scapy.layers.inet6 import IPv6
from scapy.layers.l2 import Ether

from sdn_netpol.cli import main
from sdn_netpol.compiler.pipeline import GATEWAY_MAC, is_learned
from sdn_netpol.lab import cleanup, netns, probe
from sdn_netpol.lab.families import pod_cidr
from sdn_netpol.lab.lab import Lab
from sdn_netpol.lab.store import LabError
from sdn_netpol.lab.topology import ovs
from sdn_netpol.lab.traffic import Stream
from sdn_netpol.ovs.instance import daemon_pids
from tests.family_fixtures import AF, FamilyCluster, connect, sniffer
from tests.lab_fixtures import (
    MODEL,
    allowed_pairs,
    deny_ingress,
    namespace,
    netpol,
    pod_manifest,
    received,
    send_frame,
)

IP_MTU_DISCOVER, IP_PMTUDISC_DO = 10, 2
IPV6_MTU_DISCOVER, IPV6_PMTUDISC_DO = 23, 2
HEADER = {4: 20, 6: 40}


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
def cluster(lab: Lab, tmp_path: Path) -> Iterator[FamilyCluster]:
    view = FamilyCluster(lab, tmp_path)
    yield view
    view.reset()


# ------------------------------------------------------------------ the lab itself


def test_pods_spread_over_every_node_with_cni_addresses(lab: Lab) -> None:
    """One address per family of the lab, in the lab's order, each in its node's pod CIDR of
    that family; the manifests carry them as status.podIPs and the Nodes their pod CIDRs."""
    state = lab.state()
    assert {p.node for p in state.pods.values()} == {"node1", "node2", "node3"}
    for key, pod in state.pods.items():
        node = state.node(pod.node)
        assert [IPAddress(a).version for a in pod.ips] == list(state.families), (key, pod.ips)
        assert all(IPAddress(a) in IPNetwork(c) for a, c in zip(pod.ips, node.pod_cidrs, strict=True))
        assert pod.ip == pod.ips[0]
        assert sorted(pod.ports) == sorted((proto, port) for proto in ("TCP", "UDP", "SCTP") for port in (80, 81))
    manifest = lab.cluster().pod("x", "b")
    assert manifest is not None and manifest.node_name == "node2"
    assert [str(ip) for ip in manifest.ips] == state.pods["x/b"].ips
    node2 = yaml.safe_load((state.manifests / "node-node2.yaml").read_text())
    assert node2["spec"]["podCIDRs"] == state.node("node2").pod_cidrs
    assert node2["spec"]["podCIDRs"] == [pod_cidr(2, family) for family in state.families]


def test_no_policy_everything_connects_on_every_protocol(cluster: FamilyCluster) -> None:
    for protocol in ("TCP", "UDP", "SCTP"):
        report = cluster.check(protocol, 81)
        assert all(report.measured.allowed[s][d] for s in report.measured.pods for d in report.measured.pods)


def test_forwarding_decrements_ttl_and_keeps_mtu_1450_across_the_tunnel(cluster: FamilyCluster) -> None:
    """In every family: x/a (node1) → y/b (node2) is one routed hop (TTL / hop limit 64
    arrives as 63); a 1450-byte packet that must not be fragmented crosses the IPv4 VXLAN
    underlay whole and 1451 bytes do not fit the pod MTU; the pod resolved its virtual
    gateway (ARP, or neighbour discovery) to the flows' gateway MAC."""
    src, dst = cluster.pod("x/a"), cluster.pod("y/b")
    state = cluster.lab.state()
    for family in state.families:
        dst_ip, head = dst.ip_of(family), HEADER[family]
        assert dst_ip is not None
        sock = netns.socket_in(src.netns, AF[family], socket.SOCK_DGRAM)
        with sock, sniffer(dst, family) as sniff:
            if family == 4:
                sock.setsockopt(socket.IPPROTO_IP, socket.IP_TTL, 64)
                sock.setsockopt(socket.IPPROTO_IP, IP_MTU_DISCOVER, IP_PMTUDISC_DO)
            else:
                sock.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_UNICAST_HOPS, 64)
                sock.setsockopt(socket.IPPROTO_IPV6, IPV6_MTU_DISCOVER, IPV6_PMTUDISC_DO)
            sock.connect((dst_ip, 80))
            marker = f"mtu-probe-{family}".encode()
            sock.send(marker.ljust(1450 - head - 8, b"."))
            (frame,) = received(sniff, marker, 1.0)
            header = frame[14:14 + head]
            if family == 4:
                assert (header[8], struct.unpack("!H", header[2:4])[0]) == (63, 1450)
                assert header[6] & 0x40, "DF kept: not fragmented on the way"
            else:
                assert (header[7], struct.unpack("!H", header[4:6])[0] + head) == (63, 1450)
                assert header[6] == socket.IPPROTO_UDP, "no fragment header: not fragmented on the way"
            with pytest.raises(OSError) as too_big:
                sock.send(b"x" * (1451 - head - 8))
            assert too_big.value.errno == errno.EMSGSIZE
        node = state.node(src.node)
        gateway = node.gateways[node.pod_cidrs.index(str(node.cidr_of(family)))]
        with netns.ipr_in(src.netns) as ipr:
            learnt = {n.get_attr("NDA_DST"): n.get_attr("NDA_LLADDR") for n in ipr.get_neighbours(family=AF[family])}
        assert learnt.get(gateway) == GATEWAY_MAC, (family, learnt)


# ------------------------------------------------------------------ policy semantics


def test_default_deny_ingress(cluster: FamilyCluster) -> None:
    cluster.apply(deny_ingress("x"))
    report = cluster.check("TCP", 80)
    assert not report.expected.allowed["y/a"]["x/b"] and report.expected.allowed["x/a"]["y/b"]


def test_default_deny_egress(cluster: FamilyCluster) -> None:
    cluster.apply(netpol("deny-egress", "y", {"podSelector": {}, "policyTypes": ["Egress"]}))
    report = cluster.check("TCP", 80)
    assert not report.expected.allowed["y/a"]["x/b"] and report.expected.allowed["x/a"]["y/b"]
    assert report.expected.allowed["y/a"]["y/a"], "a pod can always reach itself"


def test_allow_all_overrides_default_deny(cluster: FamilyCluster) -> None:
    cluster.apply(deny_ingress("x"), netpol("deny-egress", "x", {"podSelector": {}, "policyTypes": ["Egress"]}),
                  netpol("allow-all", "x", {"podSelector": {}, "ingress": [{}], "egress": [{}],
                                            "policyTypes": ["Ingress", "Egress"]}))
    report = cluster.check("TCP", 80)
    assert len(allowed_pairs(report)) == 81


def test_pod_selector_alone(cluster: FamilyCluster) -> None:
    cluster.apply(netpol("a-from-b", "x", {"podSelector": {"matchLabels": {"pod": "a"}},
                                           "ingress": [{"from": [{"podSelector": {"matchLabels": {"pod": "b"}}}]}]}))
    report = cluster.check("TCP", 80)
    assert {s for s, d in allowed_pairs(report) if d == "x/a"} == {"x/a", "x/b"}


def test_namespace_selector_alone(cluster: FamilyCluster) -> None:
    cluster.apply(netpol("a-from-y", "x", {
        "podSelector": {"matchLabels": {"pod": "a"}},
        "ingress": [{"from": [{"namespaceSelector": {"matchLabels": {"ns": "y"}}}]}]}))
    report = cluster.check("TCP", 80)
    assert {s for s, d in allowed_pairs(report) if d == "x/a"} == {"x/a", "y/a", "y/b", "y/c"}


def test_namespace_and_pod_selector_in_one_peer_is_and(cluster: FamilyCluster) -> None:
    cluster.apply(netpol("a-from-y-b", "x", {
        "podSelector": {"matchLabels": {"pod": "a"}},
        "ingress": [{"from": [{"namespaceSelector": {"matchLabels": {"ns": "y"}},
                               "podSelector": {"matchLabels": {"pod": "b"}}}]}]}))
    report = cluster.check("TCP", 80)
    assert {s for s, d in allowed_pairs(report) if d == "x/a"} == {"x/a", "y/b"}


def test_two_peers_are_or(cluster: FamilyCluster) -> None:
    cluster.apply(netpol("a-from-y-or-b", "x", {
        "podSelector": {"matchLabels": {"pod": "a"}},
        "ingress": [{"from": [{"namespaceSelector": {"matchLabels": {"ns": "y"}}},
                              {"podSelector": {"matchLabels": {"pod": "b"}}}]}]}))
    report = cluster.check("TCP", 80)
    assert {s for s, d in allowed_pairs(report) if d == "x/a"} == {"x/a", "x/b", "y/a", "y/b", "y/c"}


def test_namespace_selector_by_its_default_name_label(cluster: FamilyCluster) -> None:
    """kubernetes.io/metadata.name, which the API server sets on every namespace."""
    cluster.apply(netpol("a-from-z-by-name", "x", {
        "podSelector": {"matchLabels": {"pod": "a"}},
        "ingress": [{"from": [{"namespaceSelector": {"matchLabels": {"kubernetes.io/metadata.name": "z"}}}]}]}))
    report = cluster.check("TCP", 80)
    assert {s for s, d in allowed_pairs(report) if d == "x/a"} == {"x/a", "z/a", "z/b", "z/c"}


def test_stacked_policies_with_overlapping_pod_selectors_add_up(cluster: FamilyCluster) -> None:
    """x/a is selected by both: it admits what either admits, each on its own port."""
    cluster.apply(
        netpol("a-from-b-on-80", "x", {"podSelector": {"matchLabels": {"pod": "a"}}, "ingress": [{
            "from": [{"podSelector": {"matchLabels": {"pod": "b"}}}], "ports": [{"protocol": "TCP", "port": 80}]}]}),
        netpol("all-from-y-on-81", "x", {"podSelector": {}, "ingress": [{
            "from": [{"namespaceSelector": {"matchLabels": {"ns": "y"}}}],
            "ports": [{"protocol": "TCP", "port": 81}]}]}))
    on_80, on_81 = allowed_pairs(cluster.check("TCP", 80)), allowed_pairs(cluster.check("TCP", 81))
    assert {s for s, d in on_80 if d == "x/a"} == {"x/a", "x/b"}
    assert {s for s, d in on_80 if d == "x/b"} == {"x/b"}
    assert {s for s, d in on_81 if d == "x/a"} == {"x/a", "y/a", "y/b", "y/c"}


def test_ingress_and_egress_of_one_policy_are_independent(cluster: FamilyCluster) -> None:
    """Ingress only from y, egress to anywhere: x's pods still reach every pod that admits them."""
    cluster.apply(netpol("in-from-y-out-all", "x", {
        "podSelector": {}, "policyTypes": ["Ingress", "Egress"],
        "ingress": [{"from": [{"namespaceSelector": {"matchLabels": {"ns": "y"}}}]}], "egress": [{}]}))
    report = cluster.check("TCP", 80)
    pods = set(report.measured.pods)
    assert {s for s, d in allowed_pairs(report) if d == "x/a"} == {"x/a", "y/a", "y/b", "y/c"}
    assert {d for s, d in allowed_pairs(report) if s == "x/a"} == {p for p in pods if not p.startswith("x/")} | {"x/a"}


def test_match_expressions(cluster: FamilyCluster) -> None:
    cluster.apply(netpol("exprs", "x", {
        "podSelector": {"matchExpressions": [{"key": "pod", "operator": "In", "values": ["a", "b"]}]},
        "ingress": [{"from": [{
            "namespaceSelector": {"matchExpressions": [{"key": "ns", "operator": "NotIn", "values": ["x"]}]},
            "podSelector": {"matchExpressions": [{"key": "pod", "operator": "Exists"},
                                                 {"key": "pod", "operator": "NotIn", "values": ["c"]}]}}]}]}))
    report = cluster.check("TCP", 80)
    assert {s for s, d in allowed_pairs(report) if d == "x/b"} == {"x/b", "y/a", "y/b", "z/a", "z/b"}
    assert len({s for s, d in allowed_pairs(report) if d == "x/c"}) == 9


def test_ip_block_with_except(cluster: FamilyCluster) -> None:
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


def test_an_address_in_an_except_is_still_admitted_by_another_peer(cluster: FamilyCluster) -> None:
    """Peers are ORed: node2's pods are carved out of the block, but y/b among them is
    admitted by the selector peer."""
    cluster.apply(netpol("cidr-or-y-b", "x", {"podSelector": {"matchLabels": {"pod": "a"}}, "ingress": [{"from": [
        {"ipBlock": {"cidr": "10.244.0.0/16", "except": ["10.244.2.0/24"]}},
        {"namespaceSelector": {"matchLabels": {"ns": "y"}}, "podSelector": {"matchLabels": {"pod": "b"}}}]}]}))
    report = cluster.check("TCP", 80)
    on_node2 = {k for k, p in cluster.lab.state().pods.items() if p.node == "node2"}
    expected = set(report.measured.pods) - on_node2 | {"y/b", "x/a"}
    assert {s for s, d in allowed_pairs(report) if d == "x/a"} == expected
    assert on_node2 - expected, "the model has a non-b pod on node2 for the except to refuse"


def test_named_port(cluster: FamilyCluster) -> None:
    cluster.apply(deny_ingress("x"), netpol("named", "x", {
        "podSelector": {}, "ingress": [{"ports": [{"port": "serve-81-tcp"}, {"port": "serve-80-udp",
                                                                            "protocol": "UDP"}]}]}))
    assert len(allowed_pairs(cluster.check("TCP", 81))) == 81
    assert ("y/a", "x/a") not in allowed_pairs(cluster.check("TCP", 80))
    assert ("y/a", "x/a") in allowed_pairs(cluster.check("UDP", 80))


def test_end_port_range(cluster: FamilyCluster) -> None:
    cluster.apply(deny_ingress("x"), netpol("range", "x", {
        "podSelector": {}, "ingress": [{"ports": [{"protocol": "TCP", "port": 81, "endPort": 90}]}]}))
    assert ("y/a", "x/a") in allowed_pairs(cluster.check("TCP", 81))
    assert ("y/a", "x/a") not in allowed_pairs(cluster.check("TCP", 80))


def test_udp_rule(cluster: FamilyCluster) -> None:
    cluster.apply(deny_ingress("x"), netpol("udp80", "x", {
        "podSelector": {}, "ingress": [{"from": [{"podSelector": {"matchLabels": {"pod": "b"}},
                                                  "namespaceSelector": {}}],
                                        "ports": [{"protocol": "UDP", "port": 80}]}]}))
    udp = cluster.check("UDP", 80)
    assert ("y/b", "x/a") in allowed_pairs(udp) and ("y/a", "x/a") not in allowed_pairs(udp)
    assert ("y/b", "x/a") not in allowed_pairs(cluster.check("UDP", 81))
    assert ("y/b", "x/a") not in allowed_pairs(cluster.check("TCP", 80))


def test_a_protocol_without_a_port_admits_every_port_of_it(cluster: FamilyCluster) -> None:
    cluster.apply(deny_ingress("x"), netpol("any-udp", "x", {
        "podSelector": {}, "ingress": [{"ports": [{"protocol": "UDP"}]}]}))
    assert ("y/a", "x/a") in allowed_pairs(cluster.check("UDP", 80))
    assert ("y/a", "x/a") in allowed_pairs(cluster.check("UDP", 81))
    assert ("y/a", "x/a") not in allowed_pairs(cluster.check("TCP", 80))


def test_egress_to_a_namespace_and_pod_selector_peer_is_and(cluster: FamilyCluster) -> None:
    cluster.apply(netpol("a-to-y-b", "x", {
        "podSelector": {"matchLabels": {"pod": "a"}}, "policyTypes": ["Egress"],
        "egress": [{"to": [{"namespaceSelector": {"matchLabels": {"ns": "y"}},
                            "podSelector": {"matchLabels": {"pod": "b"}}}]}]}))
    report = cluster.check("TCP", 80)
    assert {d for s, d in allowed_pairs(report) if s == "x/a"} == {"x/a", "y/b"}


def test_an_egress_named_port_is_the_destination_pods_port(cluster: FamilyCluster) -> None:
    """Egress to `serve-81-tcp`: resolved at each destination pod (81/TCP on every pod of
    the model), so 81 is open to all and 80 to none."""
    cluster.apply(netpol("a-out-on-named", "y", {
        "podSelector": {"matchLabels": {"pod": "a"}}, "policyTypes": ["Egress"],
        "egress": [{"ports": [{"port": "serve-81-tcp"}]}]}))
    on_80, on_81 = cluster.check("TCP", 80), cluster.check("TCP", 81)
    assert {d for s, d in allowed_pairs(on_81) if s == "y/a"} == set(on_81.measured.pods)
    assert {d for s, d in allowed_pairs(on_80) if s == "y/a"} == {"y/a"}


def test_ingress_from_a_namespace_on_a_named_port(cluster: FamilyCluster) -> None:
    cluster.apply(deny_ingress("x"), netpol("from-y-on-named", "x", {
        "podSelector": {}, "ingress": [{"from": [{"namespaceSelector": {"matchLabels": {"ns": "y"}}}],
                                        "ports": [{"port": "serve-80-tcp"}]}]}))
    on_80 = allowed_pairs(cluster.check("TCP", 80))
    assert {s for s, d in on_80 if d == "x/b"} == {"x/b", "y/a", "y/b", "y/c"}
    assert {s for s, d in allowed_pairs(cluster.check("TCP", 81)) if d == "x/b"} == {"x/b"}
    assert ("y/a", "x/b") not in allowed_pairs(cluster.check("UDP", 80))


def test_a_client_side_egress_deny_wins_over_a_server_side_allow(cluster: FamilyCluster) -> None:
    """Both ends must admit: x/a admits y/a explicitly, y/a may send nowhere."""
    cluster.apply(
        netpol("a-from-y-a", "x", {"podSelector": {"matchLabels": {"pod": "a"}}, "ingress": [{"from": [
            {"namespaceSelector": {"matchLabels": {"ns": "y"}}, "podSelector": {"matchLabels": {"pod": "a"}}}]}]}),
        netpol("a-sends-nothing", "y", {"podSelector": {"matchLabels": {"pod": "a"}}, "policyTypes": ["Egress"]}))
    report = cluster.check("TCP", 80)
    assert {s for s, d in allowed_pairs(report) if d == "x/a"} == {"x/a"}
    assert {d for s, d in allowed_pairs(report) if s == "y/a"} == {"y/a"}


def test_an_egress_allow_all_policy_takes_precedence_over_a_narrower_one(cluster: FamilyCluster) -> None:
    cluster.apply(
        netpol("out-to-y", "x", {"podSelector": {}, "policyTypes": ["Egress"], "egress": [
            {"to": [{"namespaceSelector": {"matchLabels": {"ns": "y"}}}]}]}),
        netpol("out-to-all", "x", {"podSelector": {"matchLabels": {"pod": "a"}}, "policyTypes": ["Egress"],
                                   "egress": [{}]}))
    report = cluster.check("TCP", 80)
    pods = set(report.measured.pods)
    assert {d for s, d in allowed_pairs(report) if s == "x/a"} == pods
    assert {d for s, d in allowed_pairs(report) if s == "x/b"} == {"x/b", "y/a", "y/b", "y/c"}


def test_a_pod_relabelled_into_a_target_selector_is_isolated(cluster: FamilyCluster) -> None:
    """The upstream "deny ingress access to updated pod": x/c takes pod=a and with it the
    policy's isolation; relabelled back, it is open again."""
    cluster.apply(netpol("a-from-b", "x", {"podSelector": {"matchLabels": {"pod": "a"}},
                                           "ingress": [{"from": [{"podSelector": {"matchLabels": {"pod": "b"}}}]}]}))
    serves = [(p, n) for p in ("TCP", "UDP", "SCTP") for n in (80, 81)]
    assert len({s for s, d in allowed_pairs(cluster.check("TCP", 80)) if d == "x/c"}) == 9
    cluster.apply(pod_manifest("x", "c", {"pod": "a"}, serves))
    assert {s for s, d in allowed_pairs(cluster.check("TCP", 80)) if d == "x/c"} == {"x/b", "x/c"}
    cluster.apply(pod_manifest("x", "c", {"pod": "c"}, serves))
    assert len({s for s, d in allowed_pairs(cluster.check("TCP", 80)) if d == "x/c"}) == 9


def test_sctp_rule(cluster: FamilyCluster) -> None:
    """SCTP is matched per port even though OVS 3.1 tracks SCTP without ports."""
    cluster.apply(deny_ingress("x"), netpol("sctp80", "x", {
        "podSelector": {}, "ingress": [{"from": [{"namespaceSelector": {"matchLabels": {"ns": "y"}}}],
                                        "ports": [{"protocol": "SCTP", "port": 80}]}]}))
    sctp80 = cluster.check("SCTP", 80)
    assert ("y/a", "x/a") in allowed_pairs(sctp80) and ("z/a", "x/a") not in allowed_pairs(sctp80)
    assert ("y/a", "x/a") not in allowed_pairs(cluster.check("SCTP", 81))
    assert ("y/a", "x/a") not in allowed_pairs(cluster.check("UDP", 80))


def test_sctp_reverse_of_an_allowed_association_is_still_checked(cluster: FamilyCluster) -> None:
    """OVS 3.1 tracks SCTP without ports, so x/a→z/a (allowed) leaves an entry whose reply
    direction looks exactly like a new z/a→x/a association; that one must still be denied."""
    cluster.apply(deny_ingress("x"))
    xa, za = cluster.pod("x/a"), cluster.pod("z/a")
    forward = probe.Probe("x/a", "z/a", xa.netns, za.ip)
    reverse = probe.Probe("z/a", "x/a", za.netns, xa.ip)
    assert cluster.run_probes([reverse], "SCTP", 80) == {reverse: "timeout"}
    assert cluster.run_probes([forward], "SCTP", 81) == {forward: "connected"}
    assert cluster.run_probes([reverse], "SCTP", 80) == {reverse: "timeout"}


def test_sctp_works_both_ways_after_an_association_the_other_way(cluster: FamilyCluster) -> None:
    """A conntrack entry made by y/a→x/a makes a later x/a→y/a association look like a reply,
    and y/a's answer like an original packet; x/a isolated for ingress must still get it."""
    xa, ya = cluster.pod("x/a"), cluster.pod("y/a")
    there = probe.Probe("y/a", "x/a", ya.netns, xa.ip)
    back = probe.Probe("x/a", "y/a", xa.netns, ya.ip)
    assert cluster.run_probes([there], "SCTP", 81) == {there: "connected"}  # no policy yet
    cluster.apply(deny_ingress("x"))
    assert cluster.run_probes([back], "SCTP", 80) == {back: "connected"}  # x's egress is open
    assert cluster.run_probes([there], "SCTP", 80) == {there: "timeout"}  # x's ingress is not


def test_policy_update_and_delete(cluster: FamilyCluster) -> None:
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


def test_pod_relabel_in_place(cluster: FamilyCluster) -> None:
    cluster.apply(netpol("a-from-b", "x", {"podSelector": {"matchLabels": {"pod": "a"}},
                                           "ingress": [{"from": [{"podSelector": {"matchLabels": {"pod": "b"}}}]}]}))
    before = cluster.pod("x/c")
    assert ("x/c", "x/a") not in allowed_pairs(cluster.check("TCP", 80))
    cluster.apply(pod_manifest("x", "c", {"pod": "b"}, [(p, n) for p in ("TCP", "UDP", "SCTP") for n in (80, 81)]))
    assert ("x/c", "x/a") in allowed_pairs(cluster.check("TCP", 80))
    after = cluster.pod("x/c")
    assert (after.ip, after.netns, after.node, after.server_pid) == (before.ip, before.netns, before.node,
                                                                      before.server_pid)


def test_namespace_relabel(cluster: FamilyCluster) -> None:
    cluster.apply(netpol("a-from-y", "x", {
        "podSelector": {"matchLabels": {"pod": "a"}},
        "ingress": [{"from": [{"namespaceSelector": {"matchLabels": {"ns": "y"}}}]}]}))
    assert ("z/b", "x/a") not in allowed_pairs(cluster.check("TCP", 80))
    cluster.apply(namespace("z", {"ns": "y"}))
    assert ("z/b", "x/a") in allowed_pairs(cluster.check("TCP", 80))


# ------------------------------------------------------------------ behaviours


def _udp_frame(family: int, ip: str, mac: str, dst: str, marker: bytes) -> bytes:
    layer = IP(src=ip, dst=dst, ttl=64) if family == 4 else IPv6(src=ip, dst=dst, hlim=64)
    return bytes(Ether(src=mac, dst=GATEWAY_MAC) / layer / UDP(sport=5555, dport=80) / marker)


def _udp_in(family: int, sock: socket.socket, marker: bytes) -> list[bytes]:
    """Frames with the marker that are UDP (not the ICMP error x/a sends back about the
    echo, which quotes the marker)."""
    proto_at = 9 if family == 4 else 6
    return [f for f in received(sock, marker, 1.0) if f[14 + proto_at] == socket.IPPROTO_UDP]


def test_spoofed_source_is_dropped(cluster: FamilyCluster) -> None:
    """In every family: x/a sends UDP from y/b's address (with its own MAC, and with y/b's
    MAC too): z/c (other node) and y/a (same node) never see it; the same frame from x/a's
    own address arrives, so the sniffer would have seen it."""
    src, victim = cluster.pod("x/a"), cluster.pod("y/b")
    for family in cluster.lab.state().families:
        offset, size = (12, 4) if family == 4 else (8, 16)
        own, stolen = str(src.ip_of(family)), str(victim.ip_of(family))
        for target in (cluster.pod("z/c"), cluster.pod("y/a")):
            dst = str(target.ip_of(family))
            tag = f"{family}-{dst}".encode()
            with sniffer(target, family) as sock:
                send_frame(src, _udp_frame(family, stolen, src.mac, dst, b"spoof-ip-" + tag))
                send_frame(src, _udp_frame(family, stolen, victim.mac, dst, b"spoof-mac-" + tag))
                assert _udp_in(family, sock, b"spoof-") == []
                send_frame(src, _udp_frame(family, own, src.mac, dst, b"genuine-" + tag))
                (genuine,) = _udp_in(family, sock, b"genuine-")
                assert genuine[14 + offset:14 + offset + size] == socket.inet_pton(AF[family], own)


def test_new_pod_has_no_connectivity_before_its_flows(cluster: FamilyCluster) -> None:
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


def test_controller_restart_does_not_break_a_long_tcp_stream(cluster: FamilyCluster) -> None:
    """A long TCP stream in each family of the lab, both controllers restarted under them."""
    cluster.apply(deny_ingress("y"), netpol("b-from-x", "y", {
        "podSelector": {"matchLabels": {"pod": "b"}},
        "ingress": [{"from": [{"namespaceSelector": {"matchLabels": {"ns": "x"}}}],
                     "ports": [{"port": 80}]}]}))
    streams = [Stream(cluster.pod("x/a"), cluster.pod("y/b"), 80, period=0.02, family=family).start()
               for family in cluster.lab.state().families]
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
        for stream in streams:
            stream.stop()
    for stream in streams:
        assert stream.cut_at is None, (stream.family, stream.error)
        assert stream.flowing(since=restarted), f"IPv{stream.family}: echoes came back after both restarts"
        assert stream.longest_wait < 1.0, f"IPv{stream.family}: a round trip stalled for {stream.longest_wait:.2f} s"
    assert after == before, "a restarted controller reconciles to the very same flows"


def test_removing_the_allow_cuts_an_established_connection(cluster: FamilyCluster) -> None:
    allow = netpol("b-from-x", "y", {"podSelector": {"matchLabels": {"pod": "b"}},
                                     "ingress": [{"from": [{"namespaceSelector": {"matchLabels": {"ns": "x"}}}]}]})
    cluster.apply(deny_ingress("y"), allow)
    socks = [connect(cluster.pod("x/a"), str(cluster.pod("y/b").ip_of(f)), 80, timeout=1.5)
             for f in cluster.lab.state().families]
    try:
        for sock in socks:
            sock.sendall(b"hello")
            assert sock.recv(5) == b"hello"
        cluster.delete(allow)
        for sock in socks:
            sock.sendall(b"again")
            with pytest.raises((TimeoutError, socket.timeout)):
                sock.recv(5)
    finally:
        for sock in socks:
            sock.close()


# ------------------------------------------------------------------ families


def test_a_model_pod_with_status_pod_ips_lands_where_they_are(cluster: FamilyCluster) -> None:
    """A Pod applied with status.podIPs (node3's, one per family of the lab) gets exactly
    those addresses through host-local, lands on node3 whatever spec.nodeName says, and is
    enforced at them: reachable, and then not, once a policy isolates it."""
    families = cluster.lab.state().families
    wanted = ["10.244.3.77" if f == 4 else "fd00:10:244:3::77" for f in families]
    body = {"apiVersion": "v1", "kind": "Pod",
            "metadata": {"name": "fixed", "namespace": "z", "labels": {"pod": "fixed"}},
            "spec": {"nodeName": "node1", "containers": [{"name": "c", "image": "i",
                                                          "ports": [{"containerPort": 80}]}]},
            "status": {"podIP": wanted[0], "podIPs": [{"ip": a} for a in wanted]}}
    manifest = cluster.tmp / "fixed.yaml"
    manifest.write_text(yaml.safe_dump(body))
    cluster.lab.apply([manifest])
    try:
        fixed = cluster.pod("z/fixed")
        assert (fixed.node, fixed.ips) == ("node3", wanted)
        assert len(cluster.check("TCP", 80).measured.pods) == 10
        cluster.apply(netpol("fixed-from-x", "z", {"podSelector": {"matchLabels": {"pod": "fixed"}},
                                                   "ingress": [{"from": [{"namespaceSelector": {
                                                       "matchLabels": {"ns": "x"}}}]}]}))
        report = cluster.check("TCP", 80)
        assert {s for s in report.measured.pods if report.measured.allowed[s]["z/fixed"]} == {
            "x/a", "x/b", "x/c", "z/fixed"}
    finally:
        cluster.lab.delete([manifest])
    assert "z/fixed" not in cluster.lab.state().pods


def test_a_pod_address_of_a_family_the_lab_lacks_is_refused(cluster: FamilyCluster, tmp_path: Path) -> None:
    """status.podIP of the other family, and `probe --family` of it, are errors that say so."""
    state = cluster.lab.state()
    missing = [f for f in (4, 6) if f not in state.families]
    for family in missing:
        address = "10.244.1.50" if family == 4 else "fd00:10:244:1::50"
        manifest = tmp_path / "other.yaml"
        manifest.write_text(yaml.safe_dump({"apiVersion": "v1", "kind": "Pod",
                                            "metadata": {"name": "other", "namespace": "x"},
                                            "status": {"podIP": address}}))
        with pytest.raises(LabError, match=f"pod x/other: status.podIP {address} is IPv{family}"):
            cluster.lab.apply([manifest])
        with pytest.raises(LabError, match=f"--family {family}: this lab's pods have no IPv{family} address"):
            cluster.lab.probe("TCP", 80, family=family)
    assert "x/other" not in cluster.lab.state().pods
    for family in state.families:
        report = cluster.lab.probe("UDP", 81, family=family)
        assert report.to_json()["family"] == family and not report.mismatches


def test_the_cli_probes_each_family_and_says_which(lab: Lab) -> None:
    """`lab probe --family F -o json` for each family of the lab names it; a family the lab
    lacks is exit 1 with the reason; `status -o json` has the lab's family and every pod's
    addresses; `up --ip-family 6 --external IPv4` is refused before anything is made."""
    def cli(*args: str) -> Result:
        return CliRunner().invoke(main, ["lab", "--workdir", str(lab.workdir), *args])

    state = lab.state()
    for family in (4, 6):
        result = cli("probe", "--port", "81", "--protocol", "UDP", "--family", str(family), "-o", "json")
        if family in state.families:
            doc = json.loads(result.stdout)
            assert (result.exit_code, doc["family"], doc["mismatches"]) == (0, family, []), result.output
        else:
            assert result.exit_code == 1 and f"this lab's pods have no IPv{family} address" in result.output
    status = json.loads(cli("status", "-o", "json").stdout)
    assert status["ip_family"] == state.ip_family
    assert {k: p["ips"] for k, p in status["pods"].items()} == {k: p.ips for k, p in state.pods.items()}
    result = cli("up", "-f", str(MODEL), "--ip-family", "6", "--external", "172.17.0.10")
    assert result.exit_code == 1 and "the external host takes IPv4 addresses" in result.output
    assert lab.state() == state, "refused before the lab in this workdir was touched"


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
