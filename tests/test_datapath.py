"""Tests of sdn_netpol.ovs.datapath: reading megaflows, re-translating them, purging them.

Why: "realized" must mean enforced, and on OVS releases whose userspace revalidator
modifies the wrong one of two overlapping megaflows (lib/dpif-netdev.c flow_put_on_pmd()
looked the flow up by its unmasked key instead of its UFID; upstream "dpif-netdev: Fix
dpif_netdev_flow_put.", in 2.17.8, 3.0.5, 3.1.3 and 3.2.0) a megaflow can keep actions
that the OpenFlow tables no longer say.  The pure tests pin how dumps, traces and
versions are read, on text shaped like OVS 3.1 output.  The last test reproduces the OVS
bug itself with OVS's own dummy datapath, after upstream's "PMD - revalidator modify
overlapping flows" (tests/pmd.at), and checks that :func:`datapath.verify` sees the stale
megaflow and :func:`datapath.purge` clears it; on a fixed OVS it checks that nothing is
reported stale.

The dummy datapath needs no kernel device (``--enable-dummy=override`` replaces every
datapath and netdev type by a dummy one), so that instance runs without a network
namespace.  Tests run as root.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from sdn_netpol.ovs import datapath
from sdn_netpol.ovs.instance import OvsInstance
from sdn_netpol.ovs.trace import Tracer
from tests.controller_fixtures import wait_for

# ---------------------------------------------------------------- OVS 3.1 output samples

DUMP = """\
flow-dump from the main thread:
ct_state(+new-est-rel-rpl-inv+trk),recirc_id(0x4),in_port(6),packet_type(ns=0,id=0),\
eth_type(0x0800),ipv4(dst=10.244.1.1,proto=6,tos=0/0x3,frag=no),tcp(dst=80), packets:43, \
bytes:3182, used:4.599s, flags:S, actions:drop
recirc_id(0),in_port(3),packet_type(ns=0,id=0),eth(src=02:10:0a:0a:00:01,dst=02:10:0a:0a:00:03),\
eth_type(0x0800),ipv4(dst=10.10.0.3,proto=17,frag=no),udp(dst=4789), packets:326, bytes:38704, \
used:4.012s, actions:tnl_pop(2)
flow-dump from pmd on cpu core: 0
tunnel(tun_id=0x1,src=10.10.0.2,dst=10.10.0.3,flags(-df-csum+key)),recirc_id(0),in_port(2),\
packet_type(ns=0,id=0),eth_type(0x0800),ipv4(frag=no), packets:294, bytes:20164, used:4.029s, \
flags:SF., actions:ct(zone=1),recirc(0x3)
"""

CT_KEY = (
    "ct_state(+new-est-rel-rpl-inv+trk),recirc_id(0x4),in_port(6),packet_type(ns=0,id=0),"
    "eth_type(0x0800),ipv4(dst=10.244.1.1,proto=6,tos=0/0x3,frag=no),tcp(dst=80)"
)
UNDERLAY_KEY = (
    "recirc_id(0),in_port(3),packet_type(ns=0,id=0),eth(src=02:10:0a:0a:00:01,"
    "dst=02:10:0a:0a:00:03),eth_type(0x0800),ipv4(dst=10.10.0.3,proto=17,frag=no),udp(dst=4789)"
)
TUNNEL_KEY = (
    "tunnel(tun_id=0x1,src=10.10.0.2,dst=10.10.0.3,flags(-df-csum+key)),recirc_id(0),in_port(2),"
    "packet_type(ns=0,id=0),eth_type(0x0800),ipv4(frag=no)"
)

DPCTL_SHOW = """\
netdev@ovs-netdev:
  lookups: hit:1042 missed:58 lost:0
  flows: 6
  port 0: ovs-netdev (tap)
  port 1: br-int (tap)
  port 2: vxlan_sys_4789 (vxlan: packet_type=ptap)
  port 3: eth1
  port 4: genev_sys_6081 (geneve: packet_type=ptap)
  port 5: br-ex (tap)
  port 6: veth1a2b3c4d
"""

# ofproto/trace of a ct() pipeline: a first pass that recirculates, then the pass after it.
TRACE_RECIRC = """\
Flow: tcp,in_port=2,vlan_tci=0x0000,dl_src=00:00:00:00:00:00,dl_dst=00:00:00:00:00:00,\
nw_src=0.0.0.0,nw_dst=10.244.1.1,nw_tos=0,nw_ecn=0,nw_ttl=0,nw_frag=no,tp_src=0,tp_dst=80,tcp_flags=0

bridge("br0")
-------------
 0. ip,in_port=2, priority 10
    ct(table=10,zone=1)
    drop
     -> A clone of the packet is forked to recirculate. The forked pipeline will be resumed at table 10.
     -> Sets the packet to an untracked state, and clears all the conntrack fields.

Final flow: unchanged
Megaflow: recirc_id=0,eth,ip,in_port=2,nw_frag=no
Datapath actions: ct(zone=1),recirc(0x1)

===============================================================================
recirc(0x1) - resume conntrack with default ct_state=trk|new (use --ct-next to customize)
===============================================================================

Flow: recirc_id=0x1,ct_state=new|trk,ct_zone=1,eth,tcp,in_port=2,vlan_tci=0x0000,\
dl_src=00:00:00:00:00:00,dl_dst=00:00:00:00:00:00,nw_src=0.0.0.0,nw_dst=10.244.1.1,nw_tos=0,\
nw_ecn=0,nw_ttl=0,nw_frag=no,tp_src=0,tp_dst=80,tcp_flags=0

bridge("br0")
-------------
    thaw
        Resuming from table 10
10. priority 0
    drop

Final flow: unchanged
Megaflow: recirc_id=0x1,eth,ip,in_port=2,nw_frag=no
Datapath actions: drop
"""

# ofproto/trace of an ARP responder: set(arp(...)) is not a userspace-datapath action.
TRACE_SLOW_PATH = """\
Flow: arp,in_port=2,vlan_tci=0x0000,dl_src=02:00:00:00:00:05,dl_dst=ff:ff:ff:ff:ff:ff,\
arp_spa=10.0.0.5,arp_tpa=10.0.0.9,arp_op=1,arp_sha=00:00:00:00:00:00,arp_tha=00:00:00:00:00:00

bridge("br0")
-------------
 0. arp,in_port=2,arp_op=1, priority 20
    move:NXM_OF_ETH_SRC[]->NXM_OF_ETH_DST[]
     -> NXM_OF_ETH_DST[] is now 02:00:00:00:00:05
    set_field:02:00:00:00:00:01->eth_src
    set_field:2->arp_op
    move:NXM_NX_ARP_SHA[]->NXM_NX_ARP_THA[]
     -> NXM_NX_ARP_THA[] is now 00:00:00:00:00:00
    set_field:02:00:00:00:00:01->arp_sha
    move:NXM_OF_ARP_SPA[]->NXM_OF_ARP_TPA[]
     -> NXM_OF_ARP_TPA[] is now 10.0.0.5
    set_field:10.0.0.9->arp_spa
    IN_PORT

Final flow: arp,in_port=2,vlan_tci=0x0000,dl_src=02:00:00:00:00:01,dl_dst=02:00:00:00:00:05,\
arp_spa=10.0.0.9,arp_tpa=10.0.0.5,arp_op=2,arp_sha=02:00:00:00:00:01,arp_tha=00:00:00:00:00:00
Megaflow: recirc_id=0,eth,arp,in_port=2,dl_src=02:00:00:00:00:05,dl_dst=ff:ff:ff:ff:ff:ff,\
arp_spa=10.0.0.5,arp_tpa=10.0.0.9,arp_op=1,arp_sha=00:00:00:00:00:00,arp_tha=00:00:00:00:00:00
Datapath actions: set(eth(src=02:00:00:00:00:01,dst=02:00:00:00:00:05)),\
set(arp(sip=10.0.0.9,tip=10.0.0.5,op=2,sha=02:00:00:00:00:01)),1
This flow is handled by the userspace slow path because it:
  - Uses action(s) not supported by datapath.
"""


# ---------------------------------------------------------------- parse_dump


def test_parse_dump_skips_the_flow_dump_header_lines() -> None:
    flows = datapath.parse_dump(DUMP)

    assert [f.key for f in flows] == [CT_KEY, UNDERLAY_KEY, TUNNEL_KEY]


def test_parse_dump_reads_key_actions_and_counters_of_each_megaflow() -> None:
    first = datapath.parse_dump(DUMP)[0]

    assert first == datapath.DatapathFlow(
        key=CT_KEY, actions="drop", packets=43, bytes=3182, used="4.599s"
    )


def test_parse_dump_reads_lines_with_and_without_tcp_flags() -> None:
    flows = datapath.parse_dump(DUMP)

    assert [(f.packets, f.actions) for f in flows] == [
        (43, "drop"), (326, "tnl_pop(2)"), (294, "ct(zone=1),recirc(0x3)"),
    ]


def test_parse_dump_reads_a_megaflow_that_never_saw_a_packet() -> None:
    line = ("recirc_id(0),in_port(1),packet_type(ns=0,id=0),eth_type(0x0800),ipv4(frag=no),"
            " packets:0, bytes:0, used:never, actions:ct(zone=1),recirc(0x2)")

    (flow,) = datapath.parse_dump(line)

    assert (flow.packets, flow.used, flow.actions) == (0, "never", "ct(zone=1),recirc(0x2)")


# ---------------------------------------------------------------- trace_key


def test_trace_key_adds_eth_when_the_key_has_none() -> None:
    assert datapath.trace_key(CT_KEY, {}) == CT_KEY.replace(",eth_type(", ",eth(),eth_type(")


def test_trace_key_leaves_a_non_tunnel_key_with_eth_unchanged() -> None:
    assert datapath.trace_key(UNDERLAY_KEY, {2: 4789}) == UNDERLAY_KEY


def test_trace_key_gives_a_tunnel_key_a_ttl_and_the_udp_port_of_its_tunnel_port() -> None:
    assert datapath.trace_key(TUNNEL_KEY, {2: 4789}) == (
        "tunnel(ttl=64,tp_dst=4789,tun_id=0x1,src=10.10.0.2,dst=10.10.0.3,flags(-df-csum+key)),"
        "recirc_id(0),in_port(2),packet_type(ns=0,id=0),eth(),eth_type(0x0800),ipv4(frag=no)"
    )


def test_trace_key_gives_a_tunnel_key_from_an_unknown_port_only_a_ttl() -> None:
    assert datapath.trace_key(TUNNEL_KEY, {4: 6081}).startswith("tunnel(ttl=64,tun_id=0x1,")


# ---------------------------------------------------------------- tunnel_udp_ports


def test_tunnel_udp_ports_maps_each_native_tunnel_port_to_its_udp_port() -> None:
    assert datapath.tunnel_udp_ports(DPCTL_SHOW) == {2: 4789, 4: 6081}


def test_tunnel_udp_ports_is_empty_without_tunnel_ports() -> None:
    show = "dummy@ovs-dummy:\n  lookups: hit:0 missed:0 lost:0\n  flows: 0\n" \
           "  port 0: ovs-dummy (dummy-internal)\n  port 1: p1 (dummy-pmd: configured_rx_queues=1)\n"

    assert datapath.tunnel_udp_ports(show) == {}


# ---------------------------------------------------------------- first_datapath_actions


def test_first_datapath_actions_are_those_of_the_first_pass_only() -> None:
    assert datapath.first_datapath_actions(TRACE_RECIRC) == "ct(zone=1),recirc(0x1)"


def test_first_datapath_actions_of_a_slow_pathed_pass_are_the_slow_path() -> None:
    assert datapath.first_datapath_actions(TRACE_SLOW_PATH) == datapath.SLOW_PATH


def test_first_datapath_actions_refuses_a_trace_without_datapath_actions() -> None:
    with pytest.raises(ValueError, match="Datapath actions"):
        datapath.first_datapath_actions("Flow: ip,in_port=2\n\nbridge(\"br0\")\n-------------\n")


# ---------------------------------------------------------------- same_actions


def test_same_actions_ignores_recirculation_ids() -> None:
    assert datapath.same_actions("ct(zone=1),recirc(0x3)", "ct(zone=1),recirc(0x1)")


def test_same_actions_still_compares_what_surrounds_the_recirculation() -> None:
    assert not datapath.same_actions("ct(zone=1),recirc(0x3)", "ct(zone=2),recirc(0x3)")
    assert not datapath.same_actions("ct(commit)", "2")


def test_same_actions_matches_the_slow_path_with_a_userspace_slow_path_action() -> None:
    assert datapath.same_actions("userspace(pid=0,slow_path(action))", datapath.SLOW_PATH)
    assert not datapath.same_actions("drop", datapath.SLOW_PATH)
    assert not datapath.same_actions("userspace(pid=0,slow_path(action))", "drop")


# ---------------------------------------------------------------- datapath_types and version


def test_datapath_types_are_read_from_dpif_show() -> None:
    show = ("netdev@ovs-netdev: hit:1042 missed:58\n  br-int:\n    br-int 65534/1: (tap)\n"
            "    vxlan0 10/2: (vxlan: packet_type=ptap)\n"
            "system@ovs-system: hit:7 missed:2\n  br-ex:\n    br-ex 65534/1: (internal)\n")

    assert datapath.datapath_types(show) == {"netdev", "system"}


class _Version:
    def call(self, command: str, *args: str) -> str:
        assert (command, args) == ("version", ())
        return "ovs-vswitchd (Open vSwitch) 3.1.0\n"


def test_version_is_read_from_the_version_command() -> None:
    assert datapath.version(_Version()) == (3, 1, 0)


# ---------------------------------------------------------------- modifies_wrong_megaflow


@pytest.mark.parametrize("release", [
    (3, 1, 0), (3, 1, 2), (3, 0, 4), (2, 17, 7), (2, 16, 0), (2, 16, 7),
])
def test_modifies_wrong_megaflow_on_userspace_datapaths_of_releases_without_the_fix(
    release: tuple[int, int, int],
) -> None:
    assert datapath.modifies_wrong_megaflow(release, {"netdev"})
    assert datapath.modifies_wrong_megaflow(release, {"netdev", "system"})


@pytest.mark.parametrize("release", [
    (3, 1, 3), (3, 1, 5), (3, 2, 0), (3, 3, 0), (3, 3, 4), (3, 0, 5), (2, 17, 8), (4, 0, 0),
])
def test_modifies_wrong_megaflow_not_on_releases_with_the_fix(
    release: tuple[int, int, int],
) -> None:
    assert not datapath.modifies_wrong_megaflow(release, {"netdev"})


def test_modifies_wrong_megaflow_not_on_a_kernel_only_datapath() -> None:
    assert not datapath.modifies_wrong_megaflow((3, 1, 0), {"system"})
    assert not datapath.modifies_wrong_megaflow((3, 1, 0), set())


# ---------------------------------------------------------------- the OVS bug, reproduced

DUMMY_VSWITCHD = ("--enable-dummy=override", "--dummy-numa=0,0")
DUMMY_DATAPATH = "dummy"  # the datapath type of br0
STALE_KEY = ("recirc_id(0),in_port(1),packet_type(ns=0,id=0),eth_type(0x0800),"
             "ipv4(dst=10.1.2.2/255.255.255.0,frag=no)")
WAIT = 5.0  # seconds for a packet's megaflow to show up
WIDE = "10.1.0.2/255.255.0.0"  # the /16 megaflow's destination match


@pytest.fixture
def dummy_switch(tmp_path: Path) -> Iterator[tuple[OvsInstance, Tracer]]:
    """br0 on the dummy (userspace dpif-netdev) datapath, ports p1 and p2 polled by a PMD."""
    with OvsInstance.start(tmp_path / "ovs", vswitchd_args=DUMMY_VSWITCHD) as ovs, \
            Tracer(ovs) as unixctl:
        ovs.vsctl(
            "add-br", "br0", "--", "set", "bridge", "br0", "datapath-type=dummy",
            "--", "add-port", "br0", "p1", "--", "set", "interface", "p1", "type=dummy-pmd",
            "--", "add-port", "br0", "p2", "--", "set", "interface", "p2", "type=dummy-pmd",
        )
        yield ovs, unixctl


def _megaflows(unixctl: Tracer) -> dict[str, str]:
    """Destination match of each megaflow -> its actions."""
    return {f.key.split("ipv4(dst=")[1].split(",")[0]: f.actions for f in datapath.dump(unixctl, DUMMY_DATAPATH)}


def _wait_for(unixctl: Tracer, ready: Callable[[dict[str, str]], bool]) -> dict[str, str]:
    deadline = time.monotonic() + WAIT
    while not ready(flows := _megaflows(unixctl)) and time.monotonic() < deadline:
        time.sleep(0.02)
    return flows


def test_revalidator_leaves_a_stale_overlapping_megaflow_that_verify_finds_and_purge_clears(
    dummy_switch: tuple[OvsInstance, Tracer],
) -> None:
    ovs, unixctl = dummy_switch

    def receive(dst: str) -> None:
        unixctl.call("netdev-dummy/receive", "p1",
                     f"ipv4(src=10.0.0.1,dst={dst},proto=6),tcp(src=1,dst=2)")

    def packets() -> dict[str, int]:
        return {f.key.split("ipv4(dst=")[1].split(",")[0]: f.packets
                for f in datapath.dump(unixctl, DUMMY_DATAPATH)}

    def wide_subtable_first() -> bool:
        """Whether the PMD now looks the /16 subtable up before the /24 one (it re-ranks its
        subtables by hits about once a second): a packet both megaflows match is then
        counted on the /16. Each call adds hits to the /16, so the ranking gets there."""
        before = packets()
        for _ in range(50):
            receive("10.1.0.2")
        receive("10.1.2.2")

        def counted() -> dict[str, int] | None:
            now = packets()
            return now if sum(now.values()) == sum(before.values()) + 51 else None

        after = wait_for(counted, what="the 51 packets to be counted")
        return after[WIDE] - before[WIDE] == 51

    # The upstream sequence. A /24 megaflow, then an overlapping /16 one, both ct(commit).
    ovs.vsctl("set", "Open_vSwitch", ".", "other_config:emc-insert-inv-prob=0")  # no exact-match cache
    ovs.ofctl("add-flow", "br0", "table=0,in_port=p1,ip,nw_dst=10.1.2.0/24,actions=p2")
    receive("10.1.2.2")
    assert _wait_for(unixctl, lambda f: "10.1.2.2/255.255.255.0" in f) == {
        "10.1.2.2/255.255.255.0": "2"}
    receive("10.1.2.2")
    ovs.replace_flows("br0", "table=0,in_port=p1,ip,nw_dst=10.1.0.0/16 actions=ct(commit)\n")
    ovs.appctl("revalidator/wait")
    receive("10.1.0.2")
    assert _wait_for(unixctl, lambda f: WIDE in f) == {
        "10.1.2.2/255.255.255.0": "ct(commit)", WIDE: "ct(commit)"}
    # The bug needs the /16 subtable looked up first (then a modify of the /24 megaflow by
    # its key lands on the /16): wait for the PMD's ranking, not for a lucky schedule.
    wait_for(wide_subtable_first, timeout=60.0, what="the PMD to rank the /16 subtable first")

    # The tables now say "output to p2" for both; the revalidator must rewrite both.
    ovs.replace_flows("br0", "table=0,in_port=p1,ip,nw_dst=10.1.0.0/16 actions=p2\n")
    ovs.appctl("revalidator/wait")
    ovs.appctl("revalidator/wait")
    report = datapath.verify(unixctl, DUMMY_DATAPATH)

    types = datapath.datapath_types(unixctl.call("dpif/show"))
    assert types == {"dummy"}  # dpif-netdev under another name: as affected as "netdev"
    affected = datapath.modifies_wrong_megaflow(datapath.version(unixctl), types)
    assert (report.checked, report.unverifiable) == (2, 0)
    if not affected:
        assert report.stale == ()
        return
    assert [(s.flow.key, s.flow.actions, s.expected) for s in report.stale] == [
        (STALE_KEY, "ct(commit)", "2")]

    datapath.purge(unixctl)
    assert datapath.dump(unixctl, DUMMY_DATAPATH) == []
    receive("10.1.2.2")
    assert _wait_for(unixctl, bool) == {"10.1.2.2/255.255.0.0": "2"}

    after = datapath.verify(unixctl, DUMMY_DATAPATH)

    assert (after.checked, after.unverifiable, after.stale) == (1, 0, ())


def test_the_bridge_datapath_type_is_read_from_dpif_show() -> None:
    show = ("netdev@ovs-netdev: hit:3230 missed:100\n  br-int:\n    br-int 65534/1: (tap)\n"
            "    tun0 1/2: (vxlan: key=flow, remote_ip=flow)\n  br-phy:\n    br-phy 65534/4: (tap)\n"
            "system@ovs-system: hit:0 missed:0\n  br-ex:\n    br-ex 65534/1: (internal)\n")
    assert datapath.bridge_datapath_type(show, "br-int") == "netdev"
    assert datapath.bridge_datapath_type(show, "br-ex") == "system"
    assert datapath.bridge_datapath_type(show, "br-none") is None


def test_the_dummy_datapath_is_dpif_netdev_and_as_affected() -> None:
    assert datapath.modifies_wrong_megaflow((3, 1, 0), {"dummy"})
