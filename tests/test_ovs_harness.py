"""Behavioural tests of sdn_netpol.ovs against real Open vSwitch 3.1 (userspace datapath).

Every instance with bridges runs inside a private network namespace ``ovsh-test-<pid>``:
only one userspace OVS may live in a namespace (tap devices such as ``ovs-netdev``), and
other suites may run OVS in the root namespace at the same time.  Tests run as root.
"""

from __future__ import annotations

import os
import re
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest

from sdn_netpol.ovs import DumpedFlow, OvsError, OvsInstance, Tracer, parse_dump_flows
from sdn_netpol.ovs.instance import daemon_pids
from sdn_netpol.ovs.trace import datapath_outputs, parse_trace
from tests.ovs_fixtures import own_netns

BR = "br-test"
FLOW = "in_port=2,tcp,nw_src=10.244.1.5,nw_dst=10.244.2.9,tp_dst={port},nw_ttl=64"


# ---------------------------------------------------------------- fixtures


@pytest.fixture(scope="module")
def netns() -> Iterator[str]:
    with own_netns("ovsh-test") as name:
        yield name


@pytest.fixture
def ovs(tmp_path: Path, netns: str) -> Iterator[OvsInstance]:
    inst = OvsInstance.start(tmp_path / "ovs", netns=netns)
    try:
        yield inst
    finally:
        inst.stop()


@pytest.fixture
def bridge(ovs: OvsInstance) -> str:
    """br-test with internal ports p1 (ofport 1), p2 (2) and a flow-based VXLAN tun0 (10)."""
    ovs.add_bridge(BR, datapath_id=0x2A)
    ovs.vsctl(
        "--", "add-port", BR, "p1", "--", "set", "Interface", "p1", "type=internal",
        "ofport_request=1",
        "--", "add-port", BR, "p2", "--", "set", "Interface", "p2", "type=internal",
        "ofport_request=2",
        "--", "add-port", BR, "tun0", "--", "set", "Interface", "tun0", "type=vxlan",
        "options:remote_ip=flow", "options:key=flow", "ofport_request=10",
    )
    return BR


@pytest.fixture
def tracer(ovs: OvsInstance) -> Iterator[Tracer]:
    with Tracer(ovs) as t:
        yield t


def _alive(pid: int) -> bool:
    try:
        status = Path(f"/proc/{pid}/status").read_text()
    except OSError:
        return False
    return not re.search(r"^State:\s+Z", status, re.M)


def _live_processes_mentioning(text: str) -> list[int]:
    pids = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                cmdline = (entry / "cmdline").read_bytes()
            except OSError:
                continue
            if text.encode() in cmdline and _alive(int(entry.name)):
                pids.append(int(entry.name))
    return pids


def _all_pids(inst: OvsInstance) -> list[int]:
    return daemon_pids(inst.rundir, "ovs-vswitchd") + daemon_pids(inst.rundir, "ovsdb-server")


def _odp_port(inst: OvsInstance, name: str) -> int:
    """Datapath port number of ``name`` from ``dpif/show`` (``name ofport/odpport: ...``)."""
    found = re.search(rf"^\s+{re.escape(name)} \d+/(\d+):", inst.appctl("dpif/show"), re.M)
    assert found, inst.appctl("dpif/show")
    return int(found.group(1))


# ---------------------------------------------------------------- lifecycle


def test_start_in_root_netns_answers_on_all_sockets(tmp_path: Path) -> None:
    # No bridge here: a bridge would create tap devices in the shared root namespace.
    with OvsInstance.start(tmp_path / "root") as inst:
        assert inst.netns is None
        assert inst.db_sock.is_socket()
        assert inst.vswitchd_ctl.is_socket()
        pid = int((inst.rundir / "ovs-vswitchd.pid").read_text())
        assert inst.vswitchd_ctl.name == f"ovs-vswitchd.{pid}.ctl"
        assert "Open vSwitch" in inst.appctl("version")
        assert inst.vsctl("list-br") == ""
        assert inst.env["OVS_RUNDIR"] == str(inst.rundir)
    assert _all_pids(inst) == []


def test_start_in_netns_runs_daemons_and_taps_there(ovs: OvsInstance, netns: str) -> None:
    ns_inode = os.stat(f"/run/netns/{netns}").st_ino
    for pid in _all_pids(ovs):
        assert os.readlink(f"/proc/{pid}/ns/net") == f"net:[{ns_inode}]"
    ovs.add_bridge("br-ovsh")
    inside = subprocess.run(["ip", "-n", netns, "-o", "link"], capture_output=True, text=True)
    assert "br-ovsh" in inside.stdout and "ovs-netdev" in inside.stdout
    outside = subprocess.run(["ip", "-o", "link"], capture_output=True, text=True)
    assert "br-ovsh" not in outside.stdout


def test_bridge_is_userspace_secure_and_speaks_of15(ovs: OvsInstance, bridge: str) -> None:
    def get(column: str) -> str:
        return ovs.vsctl("get", "Bridge", bridge, column).strip()

    assert get("fail_mode") == "secure"
    assert get("datapath_type") == "netdev"
    assert get("protocols") == "[OpenFlow10, OpenFlow13, OpenFlow14, OpenFlow15]"
    assert get("other_config:disable-in-band") == '"true"'
    assert "dpid:000000000000002a" in ovs.ofctl("show", bridge)
    assert ovs.dump_flows(bridge) == []  # secure: no NORMAL flow is added


def test_stop_kills_everything_and_is_idempotent(ovs: OvsInstance, bridge: str) -> None:
    pids = _all_pids(ovs)
    assert len(pids) == 2
    ovs.stop()
    assert not any(_alive(pid) for pid in pids)
    assert _live_processes_mentioning(str(ovs.rundir)) == []
    ovs.stop()  # second stop: nothing to do, no error
    OvsInstance(ovs.rundir).stop()  # a fresh handle on the same rundir too


def test_start_cleans_a_stale_rundir(tmp_path: Path, netns: str) -> None:
    rundir = tmp_path / "stale"
    first = OvsInstance.start(rundir, netns=netns)
    first.add_bridge(BR)
    old = _all_pids(first)
    # "Crash": the daemons keep running, and a stale pidfile points at this test process
    # (a recycled pid), which must survive.
    (rundir / "ovs-vswitchd.pid").write_text(f"{os.getpid()}\n")
    second = OvsInstance.start(rundir, netns=netns)
    try:
        assert not any(_alive(pid) for pid in old)
        assert set(_all_pids(second)).isdisjoint(old)
        assert second.vsctl("list-br") == ""  # a fresh database
        second.add_bridge(BR)  # the old taps are gone, so this works again
    finally:
        second.stop()


def test_restart_vswitchd_keeps_db_loses_flows(ovs: OvsInstance, bridge: str) -> None:
    ovs.replace_flows(bridge, "priority=5,ip actions=drop\n")
    ctl_before = ovs.vswitchd_ctl
    db_pid = daemon_pids(ovs.rundir, "ovsdb-server")
    ovs.restart_vswitchd()
    assert ovs.vswitchd_ctl != ctl_before
    assert daemon_pids(ovs.rundir, "ovsdb-server") == db_pid
    assert ovs.vsctl("list-ports", bridge).split() == ["p1", "p2", "tun0"]
    assert ovs.dump_flows(bridge) == []
    ovs.replace_flows(bridge, "priority=5,ip actions=drop\n")
    assert len(ovs.dump_flows(bridge)) == 1


def test_tool_errors_carry_command_exit_code_and_stderr(ovs: OvsInstance) -> None:
    with pytest.raises(OvsError) as err:
        ovs.vsctl("del-br", "no-such-bridge")
    assert err.value.cmd[0] == "ovs-vsctl" and "no-such-bridge" in err.value.cmd
    assert err.value.returncode != 0
    assert "no bridge named no-such-bridge" in err.value.stderr


# ---------------------------------------------------------------- flows


POLICY_FLOWS = """\
table=0,priority=100,ip actions=ct(table=1,zone=1)
table=0,priority=0 actions=drop
table=1,priority=300,ct_state=+inv+trk,ip actions=drop
table=1,priority=200,ct_state=-new+est+trk,ip actions=resubmit(,3)
table=1,priority=100,ct_state=+trk+new,ip actions=resubmit(,2)
table=2,priority=100,ip,nw_src=10.244.1.0/24 actions=conjunction(10,1/3),conjunction(11,1/2)
table=2,priority=100,ip,nw_dst=10.244.2.9 actions=conjunction(10,2/3),conjunction(11,2/2)
table=2,priority=100,tcp,tp_dst=8080 actions=conjunction(10,3/3)
table=2,priority=100,tcp,tp_dst=0x1000/0xf000 actions=conjunction(10,3/3)
table=2,priority=100,conj_id=10,ip actions=ct(commit,zone=1),resubmit(,3)
table=2,priority=90,reg0=0x1/0x1,ip actions=load:0x1->NXM_NX_REG1[],goto_table:3
table=2,cookie=0xbeef,tcp6,ipv6_src=fd00:0:0:0::/64 actions=drop
table=3,priority=100,ip,nw_dst=10.244.2.9 actions=mod_dl_dst:02:00:00:00:02:09,dec_ttl,output:1
table=3,priority=100,ip,nw_dst=10.244.3.0/24 \
actions=set_field:10.10.0.3->tun_dst,set_field:0x1->tun_id,output:10
table=3,priority=0 actions=drop
"""


def _flow(table: int, prio: int, match: str, actions: str, cookie: int = 0) -> DumpedFlow:
    return DumpedFlow(table, prio, cookie, match, actions)


EXPECTED_DUMP = [
    _flow(0, 100, "ip", "ct(table=1,zone=1)"),
    _flow(0, 0, "", "drop"),
    _flow(1, 300, "ct_state=+inv+trk,ip", "drop"),
    _flow(1, 200, "ct_state=-new+est+trk,ip", "resubmit(,3)"),
    _flow(1, 100, "ct_state=+new+trk,ip", "resubmit(,2)"),
    _flow(2, 32768, "tcp6,ipv6_src=fd00::/64", "drop", cookie=0xBEEF),
    _flow(2, 100, "conj_id=10,ip", "ct(commit,zone=1),resubmit(,3)"),
    _flow(2, 100, "ip,nw_dst=10.244.2.9", "conjunction(10,2/3),conjunction(11,2/2)"),
    _flow(2, 100, "ip,nw_src=10.244.1.0/24", "conjunction(10,1/3),conjunction(11,1/2)"),
    _flow(2, 100, "tcp,tp_dst=0x1000/0xf000", "conjunction(10,3/3)"),
    _flow(2, 100, "tcp,tp_dst=8080", "conjunction(10,3/3)"),
    _flow(2, 90, "ip,reg0=0x1/0x1", "set_field:0x1->reg1,goto_table:3"),
    _flow(3, 100, "ip,nw_dst=10.244.2.9", "set_field:02:00:00:00:02:09->eth_dst,dec_ttl,output:1"),
    _flow(3, 100, "ip,nw_dst=10.244.3.0/24",
          "set_field:10.10.0.3->tun_dst,set_field:0x1->tun_id,output:10"),
    _flow(3, 0, "", "drop"),
]


def test_replace_flows_dump_parse_gives_canonical_forms(ovs: OvsInstance, bridge: str) -> None:
    ovs.replace_flows(bridge, POLICY_FLOWS)
    assert ovs.dump_flows(bridge) == EXPECTED_DUMP


def test_canonical_flows_round_trip_unchanged(ovs: OvsInstance, bridge: str) -> None:
    """The dumped form, loaded again, dumps back identically: it is a fixed point."""
    text = "".join(f.to_flow_line() + "\n" for f in EXPECTED_DUMP)
    ovs.replace_flows(bridge, text)
    assert ovs.dump_flows(bridge) == EXPECTED_DUMP


def test_replace_flows_removes_what_is_not_listed(ovs: OvsInstance, bridge: str) -> None:
    ovs.replace_flows(bridge, POLICY_FLOWS)
    ovs.replace_flows(bridge, "table=4,priority=7,udp,tp_dst=53 actions=output:2\n")
    assert ovs.dump_flows(bridge) == [_flow(4, 7, "udp,tp_dst=53", "output:2")]
    ovs.replace_flows(bridge, "")
    assert ovs.dump_flows(bridge) == []


def test_counters_are_parsed_from_real_traffic(ovs: OvsInstance, bridge: str) -> None:
    ovs.replace_flows(bridge, "priority=1 actions=drop\n")
    packet = "ff" * 6 + "02" * 6 + "0800" + "45" + "00" * 19  # 34 bytes
    ovs.ofctl("packet-out", bridge, "in_port=1 packet=" + packet + " actions=table")
    [flow] = ovs.dump_flows(bridge)
    assert (flow.n_packets, flow.n_bytes) == (1, 34)


@pytest.mark.parametrize("bad", [
    "table=0,priority=2,ip actions=group:5",  # rejected by the switch, inside the bundle
    "table=254,priority=2 actions=drop",
])
def test_bad_flow_fails_the_whole_bundle(ovs: OvsInstance, bridge: str, bad: str) -> None:
    ovs.replace_flows(bridge, "table=0,priority=1 actions=drop\n")
    before = ovs.dump_flows(bridge)
    batch = f"table=0,priority=3,ip actions=output:1\n{bad}\ntable=5,priority=4 actions=drop\n"
    for load in (ovs.replace_flows, ovs.add_flows):
        with pytest.raises(OvsError) as err:
            load(bridge, batch)
        assert "--bundle" in err.value.cmd and err.value.returncode != 0
        assert "OFP" in err.value.stderr  # the OpenFlow error name is reported
        assert ovs.dump_flows(bridge) == before


# ---------------------------------------------------------------- parser (real OVS text)


REAL_DUMP = """\
OFPST_FLOW reply (OF1.5) (xid=0x2):
 cookie=0x0, duration=0.005s, table=0, n_packets=0, n_bytes=0, idle_age=0, actions=drop
 cookie=0x1234, duration=0.004s, table=5, n_packets=3, n_bytes=180, idle_age=0, udp,tp_dst=53 \
actions=output:2
 cookie=0x0, duration=0.005s, table=2, n_packets=0, n_bytes=0, send_flow_rem idle_age=0, \
priority=5,ip actions=drop
 cookie=0xab, duration=0.004s, table=4, n_packets=0, n_bytes=0, idle_timeout=60, \
hard_timeout=120, importance=7, idle_age=0, priority=10,tcp6,ipv6_dst=fd00::1,tp_dst=80 \
actions=output:1
NXST_FLOW reply (xid=0x4):
 cookie=0x0, duration=0.006s, table=1, n_packets=0, n_bytes=0, idle_age=0, \
priority=90,ip,reg0=0x1/0x1 actions=load:0x1->NXM_NX_REG1[],resubmit(,3)
 table=2, send_flow_rem priority=6 actions=drop
 table=2, reset_counts priority=1,ip actions=set_field:0x1->reg1,resubmit(,3)
 ip actions=drop
"""


def test_parse_dump_flows_handles_every_line_shape() -> None:
    flows = parse_dump_flows(REAL_DUMP)
    assert flows == [
        DumpedFlow(0, 32768, 0, "", "drop"),
        DumpedFlow(5, 32768, 0x1234, "udp,tp_dst=53", "output:2", 3, 180),
        DumpedFlow(2, 5, 0, "ip", "drop"),
        DumpedFlow(4, 10, 0xAB, "tcp6,ipv6_dst=fd00::1,tp_dst=80", "output:1"),
        DumpedFlow(1, 90, 0, "ip,reg0=0x1/0x1", "load:0x1->NXM_NX_REG1[],resubmit(,3)"),
        DumpedFlow(2, 6, 0, "", "drop"),
        DumpedFlow(2, 1, 0, "ip", "set_field:0x1->reg1,resubmit(,3)"),
        DumpedFlow(0, 32768, 0, "ip", "drop"),
    ]


TUNNEL_TRACE = """\
Flow: recirc_id=0x3,ct_state=est|trk,ct_zone=1,eth,tcp,in_port=2,nw_src=10.244.1.5

bridge("br0")
-------------
    thaw
        Resuming from table 1
 1. ct_state=-new+est+trk,ip, priority 200
    resubmit(,3)
 3. ip,nw_dst=10.244.3.0/24, priority 100
    set_field:10.10.0.3->tun_dst
    set_field:0x1->tun_id
    output:10
     -> output to native tunnel
     -> tunneling to 10.10.0.3 via brphy
     -> tunneling from 12:12:b1:50:c9:49 10.10.0.1 to 02:00:00:00:00:03 10.10.0.3

bridge("brphy")
---------------
 0. priority 0
    NORMAL
     -> no learned MAC for destination, flooding
    output:7

Final flow: unchanged
Megaflow: recirc_id=0x3,ct_state=-new+est-inv+trk,eth,ip,in_port=2,nw_dst=10.244.3.0/24
Datapath actions: tnl_push(tnl_port(2),header(size=50,type=4,eth(dst=02:00:00:00:00:03,\
src=12:12:b1:50:c9:49,dl_type=0x0800),ipv4(src=10.10.0.1,dst=10.10.0.3,proto=17,tos=0,ttl=64,\
frag=0x4000),udp(src=0,dst=4789,csum=0x0),vxlan(flags=0x8000000,vni=0x1)),out_port(5)),6
"""


def test_parse_trace_tunnel_output_ignores_the_underlay_bridge() -> None:
    result = parse_trace(TUNNEL_TRACE, "br0")
    assert result.of_outputs == (10,)  # "output:7" belongs to brphy, not the traced bridge
    assert result.tunnel_dst == "10.10.0.3"
    assert result.output_ports == (6,) and not result.dropped
    assert result.datapath_actions.startswith("tnl_push(") and result.datapath_actions[-2:] == ",6"


@pytest.mark.parametrize(("actions", "ports"), [
    ("drop", []),
    ("ct(commit,zone=1),set(eth(dst=02:00:00:00:02:09)),set(ipv4(ttl=63)),4", [4]),
    ("4,ct(zone=1),recirc(0x5)", [4]),
    ("clone(tnl_push(tnl_port(2),header(size=50,type=4),out_port(5)),6),3", [6, 3]),
    ("userspace(pid=0,controller(reason=1,dont_send=0,continuation=0,recirc_id=4))", ["userspace"]),
    # a table miss right after vswitchd starts: a packet-in nobody will get, i.e. a drop
    ("userspace(pid=0,controller(reason=7,dont_send=1,continuation=0,recirc_id=1))", []),
])
def test_datapath_outputs(actions: str, ports: list[int | str]) -> None:
    assert datapath_outputs(actions) == ports


# ---------------------------------------------------------------- tracer (live)


def test_tracer_allows_and_drops_through_ct_and_conjunction(
    ovs: OvsInstance, bridge: str, tracer: Tracer,
) -> None:
    ovs.replace_flows(bridge, POLICY_FLOWS)
    p1 = _odp_port(ovs, "p1")

    allowed = tracer.trace(bridge, FLOW.format(port=8080), ["trk,new"])
    assert not allowed.dropped
    assert allowed.of_outputs == (1,) and allowed.output_ports == (p1,)
    assert allowed.datapath_actions.startswith("ct(commit,zone=1)")
    masked = tracer.trace(bridge, FLOW.format(port=0x1234), ["trk,new"])
    assert masked.of_outputs == (1,)

    denied = tracer.trace(bridge, FLOW.format(port=80), ["trk,new"])
    assert denied.dropped and denied.of_outputs == () and denied.datapath_actions == "drop"
    established = tracer.trace(bridge, FLOW.format(port=80), ["trk,est"])
    assert established.of_outputs == (1,) and not established.dropped
    invalid = tracer.trace(bridge, FLOW.format(port=8080), ["trk,inv"])
    assert invalid.dropped and invalid.of_outputs == ()
    default_new = tracer.trace(bridge, FLOW.format(port=80))  # OVS default: trk,new
    assert default_new.dropped


def test_tracer_reports_openflow_outputs_the_datapath_cannot_see(
    ovs: OvsInstance, bridge: str, tracer: Tracer,
) -> None:
    ovs.replace_flows(bridge, POLICY_FLOWS)
    # Tunnel without any underlay route: OpenFlow outputs to tun0, the datapath drops.
    remote = tracer.trace(bridge, FLOW.format(port=80).replace("10.244.2.9", "10.244.3.7"),
                          ["trk,est"])
    assert remote.of_outputs == (10,) and remote.tunnel_dst == "10.10.0.3"
    assert remote.dropped and "native tunnel routing failed" in remote.raw
    # Output back to the input port is skipped by OVS, so it is no output at all.
    hairpin = tracer.trace(bridge, FLOW.format(port=80).replace("in_port=2", "in_port=1"),
                           ["trk,est"])
    assert hairpin.of_outputs == () and hairpin.dropped


def test_tracer_outputs_via_register_in_port_and_local(
    ovs: OvsInstance, bridge: str, tracer: Tracer,
) -> None:
    ovs.replace_flows(bridge, """\
priority=10,ip,nw_dst=1.1.1.1 actions=set_field:0x1->reg2,output:NXM_NX_REG2[0..15]
priority=10,ip,nw_dst=1.1.1.2 actions=IN_PORT
priority=10,ip,nw_dst=1.1.1.3 actions=LOCAL,output:1
""")
    flow = "in_port=2,ip,nw_src=1.0.0.1,nw_dst=1.1.1.{},nw_ttl=64"
    assert tracer.trace(bridge, flow.format(1)).of_outputs == (1,)
    assert tracer.trace(bridge, flow.format(2)).of_outputs == (2,)
    both = tracer.trace(bridge, flow.format(3))
    assert both.of_outputs == (0xFFFE, 1)
    assert both.output_ports == (_odp_port(ovs, BR), _odp_port(ovs, "p1"))


def test_tracer_consumes_ct_next_in_order(ovs: OvsInstance, bridge: str, tracer: Tracer) -> None:
    ovs.replace_flows(bridge, """\
table=0,priority=10,ip actions=ct(table=1,zone=1)
table=1,priority=10,ct_state=+new+trk,ip actions=ct(table=2,zone=2)
table=2,priority=10,ct_state=+est+trk,ip actions=output:1
table=2,priority=0 actions=drop
""")
    flow = FLOW.format(port=80)
    assert tracer.trace(bridge, flow, ["trk,new", "trk,est"]).of_outputs == (1,)
    assert tracer.trace(bridge, flow, ["trk,new", "trk,new"]).dropped
    assert tracer.trace(bridge, flow, ["trk,est", "trk,est"]).dropped
    assert tracer.trace(bridge, flow, ["trk,new"]).dropped  # second ct: default trk,new


def test_tracer_agrees_with_ovs_appctl(ovs: OvsInstance, bridge: str, tracer: Tracer) -> None:
    ovs.replace_flows(bridge, POLICY_FLOWS)
    for port, state in ((8080, "trk,new"), (80, "trk,new"), (80, "trk,est")):
        flow = FLOW.format(port=port)
        by_socket = tracer.trace(bridge, flow, [state])
        by_appctl = parse_trace(ovs.appctl("ofproto/trace", bridge, flow, "--ct-next", state),
                                bridge)
        assert by_socket.of_outputs == by_appctl.of_outputs
        assert by_socket.output_ports == by_appctl.output_ports


def test_tracer_raises_ovs_errors(ovs: OvsInstance, bridge: str, tracer: Tracer) -> None:
    with pytest.raises(OvsError, match="unknown bridge"):
        tracer.trace("no-such-br", FLOW.format(port=80))
    with pytest.raises(OvsError, match="garbage"):
        tracer.trace(bridge, "garbage=1")
    assert tracer.trace(bridge, FLOW.format(port=80)).dropped  # still usable afterwards


def test_tracer_call_runs_any_unixctl_command(ovs: OvsInstance, tracer: Tracer) -> None:
    # A multi-kilobyte reply, compared with what ovs-appctl prints for the same command.
    listing = tracer.call("list-commands")
    assert "ofproto/trace" in listing and len(listing) > 2000
    assert listing == ovs.appctl("list-commands")


def _open_fds() -> int:
    return len(os.listdir("/proc/self/fd"))


def test_tracer_runs_200_traces_on_one_connection(
    ovs: OvsInstance, bridge: str, tracer: Tracer,
) -> None:
    ovs.replace_flows(bridge, POLICY_FLOWS)
    tracer.trace(bridge, FLOW.format(port=80))  # connects
    fds = _open_fds()
    ports = [8080 if i % 10 == 0 else 100 + i for i in range(200)]
    results = [tracer.trace(bridge, FLOW.format(port=p), ["trk,new"]) for p in ports]
    assert _open_fds() == fds  # no connection per trace
    assert [r.of_outputs for r in results] == [(1,) if p == 8080 else () for p in ports]


def test_tracer_reconnects_after_vswitchd_restart(
    ovs: OvsInstance, bridge: str, tracer: Tracer,
) -> None:
    ovs.replace_flows(bridge, POLICY_FLOWS)
    assert tracer.trace(bridge, FLOW.format(port=8080), ["trk,new"]).of_outputs == (1,)
    ovs.restart_vswitchd()
    assert tracer.trace(bridge, FLOW.format(port=8080), ["trk,new"]).dropped  # flows lost
    ovs.replace_flows(bridge, POLICY_FLOWS)
    assert tracer.trace(bridge, FLOW.format(port=8080), ["trk,new"]).of_outputs == (1,)


def test_parse_trace_follows_tables_printed_at_column_zero() -> None:
    """Tables >= 10 print their flow line unindented ("31. ct_state=..."): still the same bridge."""
    raw = """Flow: tcp,in_port=1,nw_src=10.0.0.1,nw_dst=10.0.0.2

bridge("br-int")
----------------
 0. in_port=1, priority 200
    goto_table:31
31. ct_state=+trk, priority 100
    goto_table:80
80. reg2=0x65, priority 200
    output:101

Final flow: unchanged
Datapath actions: 9
"""
    assert parse_trace(raw, "br-int").of_outputs == (101,)
