"""The flow value layer against a real Open vSwitch 3.1 (userspace datapath, private netns).

Text: render -> `ovs-ofctl --bundle replace-flows` -> `dump-flows` -> parse must give back
the same FlowSet, and the dump must be the very text we rendered.
os-ken: our OFPFlowMods are serialised and sent to the bridge over its management socket
(`BR.mgmt`, plain OpenFlow 1.3); OVS then decodes them and `ovs-ofctl` prints what it
installed, so the os-ken mapping is checked by two independent parsers (OVS's and ours),
not against itself. The flow-stats reply OVS sends back is read with `from_flow_stats`.
"""

from __future__ import annotations

import os
import socket
import struct
from collections.abc import Iterator
from dataclasses import replace
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from os_ken.ofproto import ofproto_parser
from os_ken.ofproto import ofproto_v1_3 as ofp
from os_ken.ofproto import ofproto_v1_3_parser as parser

from sdn_netpol.compiler.diff import diff
from sdn_netpol.compiler.flow import (
    OFPP_LOCAL,
    Conjunction,
    Controller,
    Ct,
    DecTtl,
    Flow,
    GotoTable,
    LearnReply,
    Match,
    Move,
    Output,
    OutputInPort,
    Resubmit,
    SetField,
    ct_state,
)
from sdn_netpol.compiler.flowset import FlowSet
from sdn_netpol.compiler.ofctl import flow_from_parts, render_diff, render_flow, render_flows
from sdn_netpol.compiler.osken import from_flow_stats, to_flow_mod, to_flow_mods
from sdn_netpol.ovs import OvsInstance
from tests.ovs_fixtures import private_ovs
from tests.test_flow_values import flow_sets

BR = "br-int"
OVS_SETTINGS = settings(max_examples=int(os.environ.get("FLOWVAL_EXAMPLES", "25")), deadline=None,
                        suppress_health_check=[HealthCheck.function_scoped_fixture])

# ---- fixtures ----------------------------------------------------------------------------


@pytest.fixture(scope="module")
def ovs(tmp_path_factory: pytest.TempPathFactory) -> Iterator[OvsInstance]:
    """One private OVS in its own netns (one userspace OVS per namespace), bridge br-int."""
    with private_ovs(tmp_path_factory.mktemp("ovs"), "flowval-test", BR) as inst:
        inst.vsctl("--", "add-port", BR, "tun0", "--", "set", "Interface", "tun0",
                   "type=vxlan", "options:remote_ip=flow", "options:key=flow",
                   "ofport_request=9")
        yield inst


def installed(ovs: OvsInstance) -> FlowSet:
    """The bridge's table, read with `ovs-ofctl dump-flows` and our text parser."""
    return FlowSet(flow_from_parts(d.table, d.priority, d.cookie, d.match, d.actions)
                   for d in ovs.dump_flows(BR))


def dumped_lines(ovs: OvsInstance, version: str) -> list[str]:
    text = ovs.ofctl("-O", version, "--no-stats", "--no-names", "dump-flows", BR)
    return sorted(line.strip() for line in text.splitlines() if "actions=" in line)


class OpenFlow13:
    """A bare OpenFlow 1.3 session on the bridge's management socket (test-only I/O)."""

    def __init__(self, path: Path) -> None:
        self.datapath = _Datapath()
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        self.sock.settimeout(10)
        self.sock.connect(str(path))
        self.send(parser.OFPHello(self.datapath))
        assert self.receive().msg_type == ofp.OFPT_HELLO

    def send(self, msg: Any) -> int:
        self.datapath.set_xid(msg)
        msg.serialize()
        self.sock.sendall(msg.buf)
        return int(msg.xid)

    def receive(self) -> Any:
        header = self._read(8)
        version, msg_type, length, xid = struct.unpack("!BBHI", header)
        body = self._read(length - 8)
        return ofproto_parser.msg(self.datapath, version, msg_type, length, xid, header + body)

    def _read(self, n: int) -> bytes:
        data = b""
        while len(data) < n:
            chunk = self.sock.recv(n - len(data))
            if not chunk:
                raise EOFError("switch closed the OpenFlow session")
            data += chunk
        return data

    def send_all(self, messages: list[Any]) -> None:
        """Send, then a barrier; any error the switch answered fails the test."""
        for msg in messages:
            self.send(msg)
        barrier = self.send(parser.OFPBarrierRequest(self.datapath))
        errors = []
        while (reply := self.receive()).xid != barrier:
            errors.append(reply)
        assert errors == []

    def flow_stats(self) -> list[Any]:
        xid = self.send(parser.OFPFlowStatsRequest(
            self.datapath, 0, ofp.OFPTT_ALL, ofp.OFPP_ANY, ofp.OFPG_ANY, 0, 0,
            parser.OFPMatch()))
        body: list[Any] = []
        while True:
            reply = self.receive()
            assert reply.xid == xid and reply.msg_type == ofp.OFPT_MULTIPART_REPLY, reply
            body.extend(reply.body)
            if not reply.flags & ofp.OFPMPF_REPLY_MORE:
                return body

    def close(self) -> None:
        self.sock.close()


class _Datapath:
    """What os-ken messages need from a datapath to serialise: the protocol modules."""

    ofproto = ofp
    ofproto_parser = parser

    def __init__(self) -> None:
        self.xid = 0

    def set_xid(self, msg: Any) -> int:
        self.xid += 1
        msg.xid = self.xid
        return self.xid


@pytest.fixture
def channel(ovs: OvsInstance) -> Iterator[OpenFlow13]:
    ovs.replace_flows(BR, "")
    chan = OpenFlow13(ovs.rundir / f"{BR}.mgmt")
    try:
        yield chan
    finally:
        chan.close()


# ---- a varied table: what the pipeline needs ---------------------------------------------

def varied_flows() -> FlowSet:
    gw_mac, pod_mac = "aa:bb:cc:00:00:01", "aa:bb:cc:00:00:02"
    return FlowSet([
        Flow(0, 100, Match.build(in_port=1), (Resubmit(1),), cookie=0x1),
        Flow(0, 100, Match.build(in_port=9), (GotoTable(2),)),
        Flow(0, 90, Match.build(in_port=OFPP_LOCAL), (Output(1),)),
        Flow(0, 0),
        Flow(1, 200, Match.build("ip", in_port=1, dl_src=pod_mac, nw_src="10.244.1.5"),
             (GotoTable(2),)),
        Flow(1, 200, Match.build("arp", in_port=1, arp_spa="10.244.1.5", arp_sha=pod_mac),
             (GotoTable(2),)),
        Flow(1, 150, Match.build("ipv6", in_port=1, ipv6_src="fd00:10:244:1::5"),
             (GotoTable(2),)),
        Flow(1, 150, Match.build("icmp6", in_port=1, icmpv6_type=135,
                                 nd_target="fd00:10:244:1::5"), (GotoTable(2),)),
        Flow(2, 10, Match.build("ip"), (Ct(table=3, zone=7),)),
        Flow(2, 10, Match.build("ipv6"), (Ct(table=3, zone=7),)),
        Flow(3, 30, Match.build(ct_state=ct_state(trk=True, inv=True)), ()),
        Flow(3, 20, Match.build("ip", ct_state=ct_state(trk=True, rpl=True)), (Resubmit(6),)),
        Flow(4, 200, Match.build("ip", nw_src="10.244.0.0/16"),
             (Conjunction(10, 1, 3), Conjunction(11, 2, 2)), cookie=0xA000_0000_0000_0001),
        Flow(4, 200, Match.build("tcp", tp_dst=(0x1000, 0xF000)), (Conjunction(10, 3, 3),)),
        Flow(4, 200, Match.build("sctp6", tp_dst=(8000, 0xFFF0)), (Conjunction(12, 2, 2),)),
        Flow(4, 200, Match.build("udp", reg1=(4, 0xFF)), (Conjunction(10, 2, 3),)),
        Flow(4, 190, Match.build("ip", conj_id=10),
             (Ct(commit=True, zone=7, exec_actions=(SetField("ct_mark", 0x10),)),
              GotoTable(5))),
        Flow(4, 0, Match(), (GotoTable(5),)),
        Flow(4, 180, Match.build("sctp", ct_state=ct_state(trk=True, new=True)),
             (Ct(commit=True, zone=7), LearnReply(3, 200, 300, 0x5E05 << 48, 4, "reg3", 2), GotoTable(5))),
        Flow(4, 180, Match.build("sctp6", ct_state=ct_state(trk=True, new=True)),
             (LearnReply(3, 200, 0, 0, 6, "reg5", 31), GotoTable(5))),
        Flow(4, 170, Match.build("ip", ct_state=ct_state(trk=True, new=True)),
             (Ct(commit=True, zone=7), Controller(b"\x5e\x11"), Resubmit(6), GotoTable(5))),
        Flow(4, 170, Match.build(ct_state=ct_state(trk=True, new=True), in_port=3),
             (Controller(bytes(range(1, 14))),)),
        Flow(5, 100, Match.build("arp", arp_op=1, arp_tpa="10.244.1.1"), (
            Move("eth_src", "eth_dst"), SetField.of("eth_src", gw_mac), SetField("arp_op", 2),
            Move("arp_sha", "arp_tha"), SetField.of("arp_sha", gw_mac),
            Move("arp_spa", "arp_tpa"), SetField.of("arp_spa", "10.244.1.1"), OutputInPort())),
        Flow(6, 100, Match.build("ip", nw_dst="10.244.1.5"), (
            SetField.of("eth_src", gw_mac), SetField.of("eth_dst", pod_mac), DecTtl(),
            Output(1))),
        Flow(6, 100, Match.build("ip", nw_dst="10.244.2.0/24"), (
            SetField.of("tun_dst", "192.168.1.2"), SetField("tun_id", 100), Output(9))),
        Flow(6, 90, Match.build("icmp", icmp_type=8, icmp_code=0, tun_id=(5, 0xFF),
                                tun_src="192.168.1.0/24", tun_dst="192.168.1.3"),
             (Move("tun_dst", "reg2"), SetField("reg0", 0))),
        Flow(7, 10, Match.build("tcp", tp_dst=80,
                                ct_mark=(0, 1), reg7=0xFFFFFFFF), (Output(3),)),
        Flow(7, 9, Match.build(dl_type=0x88CC, dl_dst="01:80:c2:00:00:00/ff:ff:ff:00:00:00"),
             ()),
        # the NDP responder: OVS's ND extension fields, which os-ken 4.2 knows only by number
        Flow(8, 100, Match.build("icmp6", icmpv6_type=135, icmpv6_code=0), (
            Move("eth_src", "eth_dst"), Move("ipv6_src", "ipv6_dst"), Move("nd_target", "ipv6_src"),
            SetField("icmpv6_type", 136), SetField("nd_reserved", 0xE0000000), SetField("nd_options_type", 2),
            GotoTable(9))),
        Flow(9, 100, Match.build("icmp6", icmpv6_type=136, icmpv6_code=0),
             (SetField.of("nd_tll", gw_mac), OutputInPort())),
    ])


# ---- text ----------------------------------------------------------------------------------

def test_varied_flows_round_trip_through_ovs_text(ovs: OvsInstance) -> None:
    flows = varied_flows()
    ovs.replace_flows(BR, render_flows(flows))
    assert installed(ovs) == flows


@pytest.mark.parametrize("version", ["OpenFlow13", "OpenFlow15"])
def test_rendered_text_is_what_ovs_dumps(ovs: OvsInstance, version: str) -> None:
    flows = varied_flows()
    ovs.replace_flows(BR, render_flows(flows))
    assert dumped_lines(ovs, version) == sorted(render_flow(f) for f in flows)


@OVS_SETTINGS
@given(flows=flow_sets(max_size=25))
def test_generated_flows_round_trip_through_ovs_text(ovs: OvsInstance, flows: FlowSet) -> None:
    ovs.replace_flows(BR, render_flows(flows))
    assert installed(ovs) == flows
    assert dumped_lines(ovs, "OpenFlow13") == sorted(render_flow(f) for f in flows)


@OVS_SETTINGS
@given(old=flow_sets(max_size=12), new=flow_sets(max_size=12))
def test_a_text_diff_bundle_turns_old_into_new(
        ovs: OvsInstance, old: FlowSet, new: FlowSet) -> None:
    ovs.replace_flows(BR, render_flows(old))
    ovs.add_flows(BR, render_diff(diff(old, new)))
    assert installed(ovs) == new


# ---- os-ken --------------------------------------------------------------------------------

def test_osken_flow_mods_install_exactly_the_flows(
        ovs: OvsInstance, channel: OpenFlow13) -> None:
    flows = varied_flows()
    channel.send_all([to_flow_mod(f, channel.datapath) for f in flows])
    assert installed(ovs) == flows


def test_osken_flow_stats_read_back_as_the_installed_flows(
        ovs: OvsInstance, channel: OpenFlow13) -> None:
    flows = varied_flows()
    ovs.replace_flows(BR, render_flows(flows))
    assert FlowSet(from_flow_stats(s) for s in channel.flow_stats()) == flows


@OVS_SETTINGS
@given(flows=flow_sets(max_size=15))
def test_generated_flows_through_osken_both_ways(ovs: OvsInstance, flows: FlowSet) -> None:
    ovs.replace_flows(BR, "")
    chan = OpenFlow13(ovs.rundir / f"{BR}.mgmt")
    try:
        chan.send_all([to_flow_mod(f, chan.datapath) for f in flows])
        assert installed(ovs) == flows
        assert FlowSet(from_flow_stats(s) for s in chan.flow_stats()) == flows
    finally:
        chan.close()


def test_modify_strict_keeps_the_switchs_cookie(ovs: OvsInstance, channel: OpenFlow13) -> None:
    """Why diff() turns a cookie change into an ADD: OF1.3 modify cannot change it."""
    old = Flow(3, 77, Match.build("ip", nw_dst="10.9.9.9"), (Output(1),), cookie=0x1)
    new = replace(old, actions=(Output(2),), cookie=0x2)
    channel.send_all([to_flow_mod(old, channel.datapath)])
    channel.send_all([to_flow_mod(new, channel.datapath, "modify_strict")])
    assert installed(ovs) == FlowSet([replace(new, cookie=0x1)])
    channel.send_all(to_flow_mods(diff(FlowSet([old]), FlowSet([new])), channel.datapath))
    assert installed(ovs) == FlowSet([new])


@OVS_SETTINGS
@given(old=flow_sets(max_size=12), new=flow_sets(max_size=12))
def test_osken_diff_messages_turn_old_into_new(
        ovs: OvsInstance, old: FlowSet, new: FlowSet) -> None:
    ovs.replace_flows(BR, render_flows(old))
    chan = OpenFlow13(ovs.rundir / f"{BR}.mgmt")
    try:
        chan.send_all(to_flow_mods(diff(old, new), chan.datapath))
    finally:
        chan.close()
    assert installed(ovs) == new
