"""The compiled pipeline with real OVS 3.1 conntrack: real packets (OpenFlow packet-out
through table 0), real connection tracking, verdicts read from the flow counters.

What ofproto/trace cannot show: which ct_state the userspace conntrack really gives a
packet. Measured on OVS 3.1: UDP/TCP entries carry ports; SCTP entries do not (sport=0,
dport=0, LAB-NOTES.md), so an SCTP packet between two addresses that already have an
association is +est in one direction and +est+rpl in the other, whatever its ports.
"""

from __future__ import annotations

import struct
from collections.abc import Iterator

import pytest

from sdn_netpol.compiler.compile import compile_node
from sdn_netpol.compiler.ofctl import render_flows
from sdn_netpol.compiler.topology import NodeContext, assign_ports
from sdn_netpol.ovs import OvsInstance
from tests.builders import Part, build, pod
from tests.ovs_fixtures import add_internal_ports, private_ovs

BR = "br-int"
GATEWAY_MAC = "0a:00:00:00:00:fe"
CLUSTER: list[Part] = [
    pod("x/a", "10.244.1.1", {"app": "client"}, node="node1"),
    pod("x/b", "10.244.1.2", {"app": "server"}, node="node1"),
    """
apiVersion: networking.k8s.io/v1
kind: NetworkPolicy
metadata: {name: server, namespace: x}
spec:
  podSelector: {matchLabels: {app: server}}
  ingress:
  - from: [podSelector: {matchLabels: {app: client}}]
    ports: [{protocol: SCTP, port: 3868}, {protocol: UDP, port: 53}]
---
apiVersion: networking.k8s.io/v1
kind: NetworkPolicy
metadata: {name: client-isolated, namespace: x}
spec:
  podSelector: {matchLabels: {app: client}}
  policyTypes: [Ingress]
""",
]


# ---- frames ------------------------------------------------------------------------------

def _crc32c(data: bytes) -> int:
    crc = 0xFFFFFFFF
    for byte in data:
        crc ^= byte
        for _ in range(8):
            crc = (crc >> 1) ^ (0x82F63B78 if crc & 1 else 0)
    return crc ^ 0xFFFFFFFF


def _ipv4(src: str, dst: str, proto: int, payload: bytes) -> bytes:
    header = struct.pack("!BBHHHBBH4s4s", 0x45, 0, 20 + len(payload), 1, 0, 64, proto, 0,
                         bytes(map(int, src.split("."))), bytes(map(int, dst.split("."))))
    total = sum(struct.unpack("!10H", header))
    while total >> 16:
        total = (total & 0xFFFF) + (total >> 16)
    return header[:10] + struct.pack("!H", ~total & 0xFFFF) + header[12:] + payload


def sctp_init(sport: int, dport: int) -> tuple[int, bytes]:
    chunk = struct.pack("!BBHIIHHI", 1, 0, 20, 0x11223344, 65535, 1, 1, 0x1000)
    crc = _crc32c(struct.pack("!HHII", sport, dport, 0, 0) + chunk)
    return 132, struct.pack("!HHI", sport, dport, 0) + struct.pack("<I", crc) + chunk


def udp(sport: int, dport: int) -> tuple[int, bytes]:
    return 17, struct.pack("!HHHH", sport, dport, 12, 0) + b"ping"  # checksum 0: none (IPv4)


# ---- the switch --------------------------------------------------------------------------

@pytest.fixture(scope="module")
def switch(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[OvsInstance, NodeContext]]:
    state = build(*CLUSTER)
    context = assign_ports(state, "node1")
    with private_ovs(tmp_path_factory.mktemp("ovs"), "pipeline-test", BR) as inst:
        add_internal_ports(inst, BR, (b.ofport for b in context.bindings))
        inst.replace_flows(BR, render_flows(compile_node(state, context)))
        yield inst, context


def _delivered(ovs: OvsInstance) -> dict[str, int]:
    return {f.actions: f.n_packets for f in ovs.dump_flows(BR) if f.table == 80 and f.actions.startswith("output:")}


def send(switch: tuple[OvsInstance, NodeContext], src: str, dst: str, l4: tuple[int, bytes]) -> str:
    """Send one frame from pod SRC to pod DST through the pipeline; 'output:N' or 'dropped'."""
    ovs, context = switch
    sender = next(b for b in context.bindings if str(b.pod) == src)
    receiver = next(b for b in context.bindings if str(b.pod) == dst)
    frame = (bytes.fromhex(GATEWAY_MAC.replace(":", "")) + bytes.fromhex(str(sender.mac).replace(":", ""))
             + b"\x08\x00" + _ipv4(str(sender.ips[0]), str(receiver.ips[0]), *l4))
    before = _delivered(ovs)
    ovs.ofctl("packet-out", BR, f"in_port={sender.ofport} packet={frame.hex()} actions=table")
    changed = [k for k, v in _delivered(ovs).items() if v != before.get(k)]
    assert len(changed) <= 1
    return changed[0] if changed else "dropped"


@pytest.fixture
def fresh(switch: tuple[OvsInstance, NodeContext]) -> tuple[OvsInstance, NodeContext]:
    switch[0].appctl("dpctl/flush-conntrack")
    return switch


def out(switch: tuple[OvsInstance, NodeContext], ref: str) -> str:
    return f"output:{next(b.ofport for b in switch[1].bindings if str(b.pod) == ref)}"


# ---- tests -------------------------------------------------------------------------------

def test_udp_replies_pass_and_the_server_cannot_open_new_flows_to_an_isolated_client(
        fresh: tuple[OvsInstance, NodeContext]) -> None:
    assert send(fresh, "x/a", "x/b", udp(40000, 53)) == out(fresh, "x/b")  # allowed, committed
    assert send(fresh, "x/b", "x/a", udp(53, 40000)) == out(fresh, "x/a")  # the reply: +est+rpl
    assert send(fresh, "x/b", "x/a", udp(53, 40001)) == "dropped"  # another port: +new, isolated
    assert send(fresh, "x/a", "x/b", udp(40000, 54)) == "dropped"  # not allowed


def test_sctp_original_direction_to_another_port_is_rechecked(fresh: tuple[OvsInstance, NodeContext]) -> None:
    assert send(fresh, "x/a", "x/b", sctp_init(5000, 3868)) == out(fresh, "x/b")
    assert send(fresh, "x/b", "x/a", sctp_init(3868, 5000)) == out(fresh, "x/a")  # the association's reply
    assert send(fresh, "x/a", "x/b", sctp_init(5000, 9999)) == "dropped"  # +est (no ports) but re-checked


def test_sctp_server_cannot_open_an_association_back_to_an_isolated_client(
        fresh: tuple[OvsInstance, NodeContext]) -> None:
    """Fails today: B->A on any SCTP ports matches the reply side of A's association (OVS 3.1
    tracks SCTP without ports), gets +est+rpl, and ConntrackState (table 31) lets every +rpl
    packet bypass policy. A is isolated for ingress and no policy allows B->A:8888."""
    assert send(fresh, "x/a", "x/b", sctp_init(5000, 3868)) == out(fresh, "x/b")
    assert send(fresh, "x/b", "x/a", sctp_init(7777, 8888)) == "dropped"
