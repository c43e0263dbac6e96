"""IPv6 and dual-stack pods on real packets (issue 15): two nodes, each a netns with its own
OVS (userspace datapath), an IPv4 VXLAN underlay between them, pods attached by the real
sdn-netpol-cni with host-local's dual-stack ranges, and each node's compiled tables
(tests/ipv6_fixtures.py). Frames are forged with scapy from pod namespaces where a test needs a
frame a kernel would not send; everything else is the pods' own kernels (TCP, UDP, ND).

One test per documented behaviour (docs/pipeline.md, "IPv6"). Negative checks never just
wait: after the frames that must not arrive, a legitimate frame on the same path is awaited.
"""
from __future__ import annotations

import socket
import threading
from collections.abc import Iterator

import pytest
from scapy.layers.inet import UDP
from scapy.layers.inet6 import (
    ICMPv6ND_NA,
    ICMPv6ND_NS,
    ICMPv6ND_RA,
    ICMPv6ND_Redirect,
    ICMPv6NDOptDstLLAddr,
    ICMPv6NDOptPrefixInfo,
    ICMPv6NDOptSrcLLAddr,
    IPv6,
)
from scapy.layers.l2 import Ether
from scapy.layers.sctp import SCTP, SCTPChunkInit, SCTPChunkInitAck
from scapy.packet import Packet
from scapy.pton_ntop import inet_pton
from scapy.utils6 import in6_getnsma, in6_getnsmac

from sdn_netpol.compiler.pipeline import GATEWAY_MAC
from sdn_netpol.lab.netns import socket_in
from tests.frames import DEADLINE, collect, drain, send_frames, sniff
from tests.ipv6_fixtures import PodInfo, TwoNodes, two_nodes

GATEWAY_V6 = "fd00:10:244:1:ffff:ffff:ffff:fffe"  # node1's: the second-to-last address of its /64
CLIENT, INTRUDER, LOCAL, SERVER = "a1", "a2", "a3", "b"


def policies(cluster: TwoNodes) -> list[str]:
    """Everything in x is isolated for ingress; the server (node2) admits node1's IPv6 pod CIDR
    less the intruder's address; the local server (node1) admits the client by label."""
    hole = cluster.pods[INTRUDER].v6
    return [f"""
apiVersion: networking.k8s.io/v1
kind: NetworkPolicy
metadata: {{name: deny-all, namespace: x}}
spec: {{podSelector: {{}}, policyTypes: [Ingress]}}
---
apiVersion: networking.k8s.io/v1
kind: NetworkPolicy
metadata: {{name: server, namespace: x}}
spec:
  podSelector: {{matchLabels: {{role: server}}}}
  ingress:
  - from: [ipBlock: {{cidr: "fd00:10:244:1::/64", except: ["{hole}/128"]}}]
    ports: [{{protocol: TCP, port: 80}}, {{protocol: UDP, port: 53}}, {{protocol: UDP, port: 9}},
            {{protocol: SCTP, port: 3868}}]
---
apiVersion: networking.k8s.io/v1
kind: NetworkPolicy
metadata: {{name: local, namespace: x}}
spec:
  podSelector: {{matchLabels: {{role: local}}}}
  ingress:
  - from: [podSelector: {{matchLabels: {{role: client}}}}, podSelector: {{matchLabels: {{role: fresh}}}}]
    ports: [{{protocol: TCP, port: 80}}, {{protocol: UDP, port: 53}}]
"""]


@pytest.fixture(scope="module")
def nodes(tmp_path_factory: pytest.TempPathFactory) -> Iterator[TwoNodes]:
    with two_nodes(tmp_path_factory.mktemp("v6")) as made:
        made.add_pod(CLIENT, "node1", role="client")
        made.add_pod(INTRUDER, "node1", role="intruder")
        made.add_pod(LOCAL, "node1", role="local")
        made.add_pod(SERVER, "node2", role="server")
        yield made


@pytest.fixture
def cluster(nodes: TwoNodes) -> TwoNodes:
    """The standard pods and policies, loaded afresh, with empty conntrack tables."""
    nodes.apply(*policies(nodes))
    for node in nodes.nodes:
        node.ovs.appctl("dpctl/flush-conntrack")
    return nodes


# ---------------------------------------------------------------------------- helpers


def udp6(src: PodInfo, dst: str, dport: int, marker: bytes, src_ip: str | None = None,
         src_mac: str | None = None) -> Packet:
    return (Ether(src=src_mac or src.mac, dst=GATEWAY_MAC) / IPv6(src=src_ip or src.v6, dst=dst)
            / UDP(sport=40000, dport=dport) / marker)


def solicit(src: PodInfo, target: str, src_ip: str | None = None) -> Packet:
    group = in6_getnsma(inet_pton(socket.AF_INET6, target))
    return (Ether(src=src.mac, dst=in6_getnsmac(group)) / IPv6(src=src_ip or src.v6, dst=socket.inet_ntop(
        socket.AF_INET6, group), hlim=255) / ICMPv6ND_NS(tgt=target) / ICMPv6NDOptSrcLLAddr(lladdr=src.mac))


def advertisements(frames: list[bytes]) -> list[Packet]:
    return [p for p in map(Ether, frames) if ICMPv6ND_NA in p]


def udp_exchange(client: PodInfo, server: PodInfo, port: int) -> bytes:
    """A datagram from the client's kernel to the server's, echoed back upper-cased."""
    srv = socket_in(server.netns, socket.AF_INET6, socket.SOCK_DGRAM)
    cli = socket_in(client.netns, socket.AF_INET6, socket.SOCK_DGRAM)
    with srv, cli:
        srv.bind(("::", port))
        srv.settimeout(DEADLINE)
        cli.settimeout(DEADLINE)
        cli.sendto(b"hello", (server.v6, port))
        data, peer = srv.recvfrom(100)
        assert peer[0] == client.v6
        srv.sendto(data.upper(), peer)
        return cli.recv(100)


def tcp_exchange(client: PodInfo, server: PodInfo, port: int, timeout: float = DEADLINE) -> bytes | str:
    """A TCP connection from the client's kernel: the server's echo, or why there was none."""
    srv = socket_in(server.netns, socket.AF_INET6, socket.SOCK_STREAM)
    srv.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    srv.bind(("::", port))
    srv.listen()
    srv.settimeout(timeout + 5)

    def serve() -> None:
        try:
            conn, _ = srv.accept()
        except (TimeoutError, OSError):
            return
        with conn:
            conn.sendall(conn.recv(100).upper())

    thread = threading.Thread(target=serve, daemon=True)
    thread.start()
    cli = socket_in(client.netns, socket.AF_INET6, socket.SOCK_STREAM)
    try:
        cli.settimeout(timeout)
        try:
            cli.connect((server.v6, port))
        except TimeoutError:
            return "timeout"
        cli.sendall(b"hello")
        return cli.recv(100)
    finally:
        cli.close()
        srv.close()
        thread.join(timeout + 10)


# ---------------------------------------------------------------------------- neighbour discovery


def test_a_neighbor_solicitation_for_the_gateway_is_answered_with_the_gateway_mac(cluster: TwoNodes) -> None:
    """From the pod's global address and from its link-local one: a Neighbor Advertisement from
    the gateway's address, to the soliciting address, hop limit 255, Router+Solicited+Override,
    target link-layer address = the gateway MAC, ICMPv6 checksum right; no other pod hears it."""
    client, other = cluster.pods[CLIENT], cluster.pods[LOCAL]
    with sniff(client.netns) as mine, sniff(other.netns) as theirs:
        send_frames(client.netns, solicit(client, GATEWAY_V6), solicit(client, GATEWAY_V6, src_ip=client.link_local))
        send_frames(client.netns, udp6(client, other.v6, 53, b"AFTER-THE-SOLICITATIONS"))  # allowed: client -> local
        collect(theirs, [], awaited=b"AFTER-THE-SOLICITATIONS")
        got = advertisements(drain(mine))
        leaked = advertisements(drain(theirs))
    by_dst = {p[IPv6].dst: p for p in got}
    assert len(got) == 2 and set(by_dst) == {client.v6, client.link_local}, [p.summary() for p in got]
    for dst, na in by_dst.items():
        assert (na.src, na.dst, na[IPv6].src, na[IPv6].hlim) == (GATEWAY_MAC, client.mac, GATEWAY_V6, 255)
        assert (na[ICMPv6ND_NA].tgt, na[ICMPv6ND_NA].R, na[ICMPv6ND_NA].S, na[ICMPv6ND_NA].O) == (GATEWAY_V6, 1, 1, 1)
        assert na[ICMPv6NDOptDstLLAddr].lladdr == GATEWAY_MAC
        checksum = na[ICMPv6ND_NA].cksum
        del na[ICMPv6ND_NA].cksum
        assert Ether(bytes(na))[ICMPv6ND_NA].cksum == checksum, f"bad ICMPv6 checksum to {dst}"
    assert leaked == []


def test_a_pod_cannot_answer_a_neighbor_solicitation_for_another_pods_address(cluster: TwoNodes) -> None:
    """The intruder advertises the local server's address with its own MAC (unsolicited with
    Override to all nodes, solicited to the client, from its global and its link-local
    address) and its own address: no pod hears any of it. The client's solicitation for the
    local server's address is answered by the switch with the gateway MAC, and the client's
    datagram reaches the local server."""
    intruder, client, victim = (cluster.pods[n] for n in (INTRUDER, CLIENT, LOCAL))
    forged = [
        Ether(src=intruder.mac, dst="33:33:00:00:00:01") / IPv6(src=intruder.v6, dst="ff02::1", hlim=255)
        / ICMPv6ND_NA(tgt=victim.v6, R=0, S=0, O=1) / ICMPv6NDOptDstLLAddr(lladdr=intruder.mac),
        Ether(src=intruder.mac, dst=GATEWAY_MAC) / IPv6(src=intruder.v6, dst=client.v6, hlim=255)
        / ICMPv6ND_NA(tgt=victim.v6, R=0, S=1, O=1) / ICMPv6NDOptDstLLAddr(lladdr=intruder.mac),
        Ether(src=intruder.mac, dst=client.mac) / IPv6(src=intruder.link_local, dst=client.link_local, hlim=255)
        / ICMPv6ND_NA(tgt=victim.v6, R=0, S=1, O=1) / ICMPv6NDOptDstLLAddr(lladdr=intruder.mac),
        Ether(src=intruder.mac, dst="33:33:00:00:00:01") / IPv6(src=intruder.v6, dst="ff02::1", hlim=255)
        / ICMPv6ND_NA(tgt=intruder.v6, R=0, S=0, O=1) / ICMPv6NDOptDstLLAddr(lladdr=intruder.mac),
    ]
    with sniff(client.netns) as near, sniff(victim.netns) as at_victim, sniff(cluster.pods[SERVER].netns) as far:
        send_frames(intruder.netns, *forged)
        send_frames(client.netns, solicit(client, victim.v6))
        send_frames(client.netns, udp6(client, victim.v6, 53, b"TO-THE-VICTIM"))
        collect(at_victim, [], awaited=b"TO-THE-VICTIM")
        frames = {name: drain(sock) for name, sock in (("client", near), ("victim", at_victim), ("server", far))}
    heard = {name: [Ether(f).summary() for f in got if Ether(f).src == intruder.mac] for name, got in frames.items()}
    assert heard == {"client": [], "victim": [], "server": []}
    answers = advertisements(frames["client"])
    assert {(a[ICMPv6ND_NA].tgt, a[ICMPv6NDOptDstLLAddr].lladdr) for a in answers} == {(victim.v6, GATEWAY_MAC)}


def test_router_advertisements_and_redirects_from_a_pod_reach_no_pod(cluster: TwoNodes) -> None:
    """A pod announcing itself as the default router with an on-link prefix (to all nodes, from
    its link-local address, as a router must), or redirecting a neighbour's traffic to itself:
    dropped in SpoofGuard, on this node and beyond the tunnel."""
    intruder, neighbour, server = (cluster.pods[n] for n in (INTRUDER, LOCAL, SERVER))
    forged = [
        Ether(src=intruder.mac, dst="33:33:00:00:00:01") / IPv6(src=intruder.link_local, dst="ff02::1", hlim=255)
        / ICMPv6ND_RA(routerlifetime=1800) / ICMPv6NDOptSrcLLAddr(lladdr=intruder.mac)
        / ICMPv6NDOptPrefixInfo(prefix="fd00:bad::", prefixlen=64),
        Ether(src=intruder.mac, dst=GATEWAY_MAC) / IPv6(src=intruder.link_local, dst=neighbour.link_local, hlim=255)
        / ICMPv6ND_Redirect(tgt=intruder.link_local, dst=server.v6),
        Ether(src=intruder.mac, dst=GATEWAY_MAC) / IPv6(src=intruder.v6, dst=neighbour.v6, hlim=255)
        / ICMPv6ND_Redirect(tgt=intruder.link_local, dst=server.v6),
    ]
    with sniff(neighbour.netns) as near, sniff(server.netns) as far:
        send_frames(intruder.netns, *forged)
        send_frames(cluster.pods[CLIENT].netns, udp6(cluster.pods[CLIENT], neighbour.v6, 53, b"LEGIT"))
        collect(near, [], awaited=b"LEGIT")
        heard = [Ether(f).summary() for sock in (near, far) for f in drain(sock) if Ether(f).src == intruder.mac]
    assert heard == []


# ---------------------------------------------------------------------------- forwarding and policy


def test_tcp_and_udp_over_ipv6_between_pods_on_one_node(cluster: TwoNodes) -> None:
    """The pods' own kernels: neighbour discovery through the responder, then a TCP connection
    and a UDP exchange the local server's policy admits (its replies pass as +est+rpl to the
    client, which is itself isolated for ingress)."""
    client, local = cluster.pods[CLIENT], cluster.pods[LOCAL]
    assert tcp_exchange(client, local, 80) == b"HELLO"
    assert udp_exchange(client, local, 53) == b"HELLO"


def test_tcp_udp_and_sctp_over_ipv6_cross_nodes_through_the_ipv4_vxlan_tunnel(cluster: TwoNodes) -> None:
    """node1 -> node2 over the IPv4 underlay (tun_dst=10.10.0.2 by node2's IPv6 pod CIDR): TCP
    and UDP from the kernels; SCTP (no kernel SCTP here) as an INIT forged in the client and an
    INIT-ACK forged in the server: the allowed port's INIT arrives and its answer comes back
    (a learned reply), an INIT to a port policy does not name does not arrive."""
    client, server = cluster.pods[CLIENT], cluster.pods[SERVER]
    assert tcp_exchange(client, server, 80) == b"HELLO"
    assert udp_exchange(client, server, 53) == b"HELLO"

    def sctp(src: PodInfo, dst: PodInfo, sport: int, dport: int, chunk: Packet) -> Packet:
        return Ether(src=src.mac, dst=GATEWAY_MAC) / IPv6(src=src.v6, dst=dst.v6) / SCTP(
            sport=sport, dport=dport, tag=0 if SCTPChunkInit in chunk else 0x1234) / chunk

    init = SCTPChunkInit(init_tag=0x1234, a_rwnd=65535, n_out_streams=1, n_in_streams=1, init_tsn=1)
    with sniff(server.netns) as far, sniff(client.netns) as near:
        send_frames(client.netns, sctp(client, server, 5000, 9999, init / b"INIT-9999"))
        send_frames(client.netns, sctp(client, server, 5000, 3868, init / b"INIT-3868"))
        seen = collect(far, [b"INIT-9999"], awaited=b"INIT-3868")
        ack = SCTPChunkInitAck(init_tag=0x5678, a_rwnd=65535, n_out_streams=1, n_in_streams=1, init_tsn=1)
        send_frames(server.netns, sctp(server, client, 3868, 5000, ack / b"INIT-ACK"))
        collect(near, [], awaited=b"INIT-ACK")
    assert seen[b"INIT-9999"] == []


def test_an_ipv6_ipblock_with_except_admits_its_cidr_less_the_hole(cluster: TwoNodes) -> None:
    """The server admits fd00:10:244:1::/64 except the intruder's /128 (a set difference in
    the flows): the client's datagram arrives, the intruder's does not, nor its TCP SYN."""
    client, intruder, server = (cluster.pods[n] for n in (CLIENT, INTRUDER, SERVER))
    with sniff(server.netns) as far:
        send_frames(intruder.netns, udp6(intruder, server.v6, 53, b"FROM-THE-HOLE"))
        send_frames(client.netns, udp6(client, server.v6, 53, b"FROM-THE-CIDR"))
        seen = collect(far, [b"FROM-THE-HOLE"], awaited=b"FROM-THE-CIDR")
    assert seen[b"FROM-THE-HOLE"] == []
    assert tcp_exchange(intruder, server, 80, timeout=3.0) == "timeout"


def test_a_spoofed_ipv6_source_is_dropped(cluster: TwoNodes) -> None:
    """The intruder (in the server's except hole) borrows the client's address, with its own
    MAC or the client's, or sends from a link-local or an unspecified address, or from an
    address in no pod CIDR: SpoofGuard drops each; the client's own datagram arrives."""
    client, intruder, server = (cluster.pods[n] for n in (CLIENT, INTRUDER, SERVER))
    borrowed = {b"AS-CLIENT": (client.v6, None), b"AS-CLIENT-MAC-TOO": (client.v6, client.mac),
                b"AS-LINK-LOCAL": (client.link_local, None), b"AS-OWN-LINK-LOCAL": (intruder.link_local, None),
                b"AS-UNSPECIFIED": ("::", None), b"AS-OUTSIDE": ("fd00:10:244:1::abcd", None)}
    with sniff(server.netns) as far:
        send_frames(intruder.netns, *(udp6(intruder, server.v6, 53, m, src_ip=ip, src_mac=mac)
                                for m, (ip, mac) in borrowed.items()))
        send_frames(client.netns, udp6(client, server.v6, 53, b"CLIENT-ITSELF"))
        seen = collect(far, list(borrowed), awaited=b"CLIENT-ITSELF")
    assert {m: len(f) for m, f in seen.items() if m != b"CLIENT-ITSELF" and f} == {}


def test_an_icmpv6_error_returns_as_related_to_a_client_isolated_for_ingress(cluster: TwoNodes) -> None:
    """UDP to a port policy admits but nothing listens on: the server's kernel answers with
    ICMPv6 port unreachable, which conntrack marks +rel, so it passes the client's ingress
    isolation (as ICMP does for IPv4) and the client's socket sees the refusal."""
    client, server = cluster.pods[CLIENT], cluster.pods[SERVER]
    cli = socket_in(client.netns, socket.AF_INET6, socket.SOCK_DGRAM)
    with cli:
        cli.settimeout(DEADLINE)
        cli.connect((server.v6, 9))
        cli.send(b"anyone?")
        with pytest.raises(ConnectionRefusedError):
            cli.recv(100)


def test_a_new_pod_is_isolated_from_its_first_ipv6_packet(nodes: TwoNodes) -> None:
    """A pod the CNI plugin has attached but whose flows are not installed yet has no IPv6 at
    all: its solicitation for the gateway gets no answer and its datagram to the local server
    (which its label will be allowed to reach) goes nowhere. Once its flows are in, with the
    namespace's deny-all selecting it, its first datagram to the local server arrives and the
    first one sent to it is dropped."""
    nodes.apply(*policies(nodes))
    fresh = nodes.add_pod("fresh", "node1", role="fresh")
    local, client = nodes.pods[LOCAL], nodes.pods[CLIENT]
    try:
        with sniff(local.netns) as at_local, sniff(fresh.netns) as at_fresh:
            send_frames(fresh.netns, solicit(fresh, GATEWAY_V6), udp6(fresh, local.v6, 53, b"BEFORE-ITS-FLOWS"))
            send_frames(client.netns, udp6(client, local.v6, 53, b"CLIENT-MEANWHILE"))
            seen = collect(at_local, [b"BEFORE-ITS-FLOWS"], awaited=b"CLIENT-MEANWHILE")
            unanswered = advertisements(drain(at_fresh))
        assert seen[b"BEFORE-ITS-FLOWS"] == [] and unanswered == []
        nodes.apply(*policies(nodes))
        with sniff(local.netns) as at_local, sniff(fresh.netns) as at_fresh:
            send_frames(client.netns, udp6(client, fresh.v6, 53, b"TO-THE-NEW-POD"))
            send_frames(fresh.netns, udp6(fresh, local.v6, 53, b"FIRST-FROM-THE-NEW-POD"))
            collect(at_local, [], awaited=b"FIRST-FROM-THE-NEW-POD")
            assert collect(at_fresh, [b"TO-THE-NEW-POD"])[b"TO-THE-NEW-POD"] == []
    finally:
        node = nodes.node("node1")
        node.cni.cni("DEL", node.conf(), container_id="c-fresh", netns=fresh.netns)
        del nodes.pods["fresh"]
        nodes.apply(*policies(nodes))
