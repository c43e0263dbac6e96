"""The audit log's writer side without a switch: packet decoding, line contents, rotation."""

from __future__ import annotations

import json
from pathlib import Path

from netaddr import IPAddress
from os_ken.lib.packet import ethernet, icmp, ipv4, packet, udp

from sdn_netpol.compiler.pipeline import audit_tag
from sdn_netpol.controller.audit import AuditLog, Connection, RotatingFile, decode_packet, record
from tests.builders import build, namespace, pod
from tests.controller_fixtures import wait_for

POLICY = {"apiVersion": "networking.k8s.io/v1", "kind": "NetworkPolicy",
          "metadata": {"name": "web", "namespace": "x"},
          "spec": {"podSelector": {}, "policyTypes": ["Ingress"],
                   "ingress": [{"ports": [{"protocol": "UDP", "port": 53}]}, {}]}}


def frame(proto: object, src: str = "10.0.0.2", dst: str = "10.0.0.3") -> bytes:
    pkt = packet.Packet()
    pkt.add_protocol(ethernet.ethernet(ethertype=0x0800))
    pkt.add_protocol(ipv4.ipv4(src=src, dst=dst, proto=17 if isinstance(proto, udp.udp) else 1))
    pkt.add_protocol(proto)
    pkt.serialize()
    return bytes(pkt.data)


def test_a_udp_packet_decodes_to_addresses_protocol_and_destination_port() -> None:
    assert decode_packet(frame(udp.udp(src_port=4000, dst_port=53))) == Connection(
        IPAddress("10.0.0.2"), IPAddress("10.0.0.3"), "UDP", 53)


def test_an_icmp_packet_has_no_port() -> None:
    assert decode_packet(frame(icmp.icmp())) == Connection(IPAddress("10.0.0.2"), IPAddress("10.0.0.3"), "ICMP", None)


def test_an_allowed_line_names_the_first_allowing_rule_and_the_isolating_policy() -> None:
    state = build(namespace("x"), pod("x/a", "10.0.0.2"), pod("x/b", "10.0.0.3"), POLICY)
    conn = Connection(IPAddress("10.0.0.2"), IPAddress("10.0.0.3"), "UDP", 53)
    line = record(state, "n1", "allowed", "ingress", conn, 0.0)
    assert line == {"time": "1970-01-01T00:00:00.000Z", "node": "n1", "verdict": "allowed", "direction": "ingress",
                    "source": {"pod": "x/a", "ip": "10.0.0.2"}, "destination": {"pod": "x/b", "ip": "10.0.0.3"},
                    "protocol": "UDP", "port": 53, "policy": "x/web", "rule": 0, "isolated_by": ["x/web"]}


def test_icmp_is_allowed_only_by_a_rule_without_ports() -> None:
    state = build(namespace("x"), pod("x/a", "10.0.0.2"), pod("x/b", "10.0.0.3"), POLICY)
    conn = Connection(IPAddress("10.0.0.2"), IPAddress("10.0.0.3"), "ICMP", None)
    assert record(state, "n1", "allowed", "ingress", conn, 0.0)["rule"] == 1


def test_an_address_of_no_pod_is_logged_with_a_null_pod() -> None:
    state = build(namespace("x"), pod("x/b", "10.0.0.3"), POLICY)
    conn = Connection(IPAddress("192.0.2.1"), IPAddress("10.0.0.3"), "TCP", 80)
    line = record(state, "n1", "denied", "ingress", conn, 0.0)
    assert line["source"] == {"pod": None, "ip": "192.0.2.1"}
    assert (line["policy"], line["rule"], line["isolated_by"]) == (None, None, ["x/web"])


def test_the_file_rotates_past_its_size_keeping_one_backup(tmp_path: Path) -> None:
    out = RotatingFile(tmp_path / "audit.jsonl", max_bytes=100)
    for i in range(30):
        out.write(f"{i:09d}\n")
    out.flush()
    assert (tmp_path / "audit.jsonl").stat().st_size <= 100
    assert (tmp_path / "audit.jsonl.1").stat().st_size <= 100
    assert (tmp_path / "audit.jsonl").read_text().splitlines()[-1] == f"{29:09d}"


def test_packet_ins_become_lines_on_the_writer_thread(tmp_path: Path) -> None:
    state = build(namespace("x"), pod("x/a", "10.0.0.2"), pod("x/b", "10.0.0.3"), POLICY)
    log = AuditLog("n1", tmp_path / "audit.jsonl", lambda: state)
    log.start()
    log.packet_in(audit_tag("denied", "ingress"), frame(udp.udp(src_port=1, dst_port=99)))
    log.packet_in(b"\x00\x00", frame(udp.udp(src_port=1, dst_port=99)))  # not an audit tag: ignored
    log.packet_in(audit_tag("denied", "ingress"), frame(udp.udp(src_port=1, dst_port=98)))
    wait_for(lambda: log.written >= 2, what="the writer thread to write both lines")  # in order
    lines = [json.loads(line) for line in (tmp_path / "audit.jsonl").read_text().splitlines()]
    assert [(e["verdict"], e["direction"], e["port"]) for e in lines] == [
        ("denied", "ingress", 99), ("denied", "ingress", 98)]
