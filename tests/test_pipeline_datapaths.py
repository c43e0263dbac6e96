"""One pipeline, two datapaths (issue 16, point 4; docs/pipeline.md, "Per datapath").

The kernel datapath (Linux's openvswitch module) cannot rewrite a Neighbor Solicitation into
an Advertisement (no ND extension: OFPBAC_BAD_SET_ARGUMENT, and the whole bundle with it),
so a node whose bridge is on the kernel datapath is compiled without the NDP responder and
with nothing else changed. The controller learns the datapath from the bridge's OVSDB
`datapath_type`. The VM tests (tests/test_kernel_*.py) load and check the result on a real
kernel datapath.
"""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

from netaddr import IPAddress

from sdn_netpol.compiler.compile import compile_node
from sdn_netpol.compiler.ofctl import render_flow
from sdn_netpol.compiler.pipeline import Table
from sdn_netpol.controller.nodes import NodeInfo
from sdn_netpol.controller.portmap import Interface, PortMap, PortView, node_context
from sdn_netpol.inputs.manifests import load_paths
from sdn_netpol.ovs.datapath import trace_key
from sdn_netpol.policy.state import ClusterState
from tests.differential import node_contexts

REPO = Path(__file__).resolve().parent.parent


def _seed_state() -> ClusterState:
    paths = [REPO / "flows" / "cluster.yaml", REPO / "flows" / "test-network-policy"]
    return ClusterState.from_parse(load_paths(paths))


def test_kernel_nodes_lack_only_the_ndp_responder() -> None:
    state = _seed_state()
    for ctx in node_contexts(state).values():
        netdev = set(compile_node(state, ctx))
        system = set(compile_node(state, replace(ctx, datapath="system")))
        assert system < netdev
        missing = netdev - system
        assert {f.table for f in missing} == {Table.NDP_RESPONDER, Table.NDP_ADVERTISEMENT}
        assert len(missing) == 2
        assert any("nd_reserved" in render_flow(f) for f in missing)
        assert not any("nd_reserved" in render_flow(f) or "nd_options_type" in render_flow(f) for f in system)
        # the ND guard still drops every other ND message on both
        guard = Table.SPOOF_GUARD
        assert {f for f in system if f.table == guard} == {f for f in netdev if f.table == guard}


def test_the_controller_compiles_for_its_bridges_datapath() -> None:
    state = _seed_state()
    view = PortView(switch_ports={"tun0": 100}, interfaces={"tun0": Interface("tun0", "vxlan", {})},
                    switch_known=True, interfaces_known=True)
    nodes = (NodeInfo("node-2", IPAddress("192.168.0.2")),)
    assert node_context("node-1", view, state, nodes).datapath == "netdev"
    assert node_context("node-1", replace(view, datapath="system"), state, nodes).datapath == "system"
    ports = PortMap()
    ports.set_interfaces({}, True, "system")
    assert ports.view().datapath == "system"
    ports.set_interfaces({}, True, "netdev")
    assert ports.view().datapath == "netdev"


def test_kernel_megaflow_keys_trace_as_ofproto_trace_wants_them() -> None:
    """`lab verify` on the kernel datapath: its dumps put recirc_id() before tunnel(), and
    Linux 6.1 has an attribute OVS 3.1 only knows by number (key32: IPv6 extension headers),
    which the trace parser refuses; netdev keys are unchanged."""
    kernel = ("recirc_id(0x1),tunnel(tun_id=0x1,src=10.10.0.2,dst=10.10.0.1,flags(-df-csum+key)),in_port(2),"
              "ct_state(-inv+trk),eth_type(0x86dd),ipv6(proto=58,frag=no),key32(00 00/00 00),icmpv6(type=128)")
    assert trace_key(kernel, {2: 4789}) == (
        "recirc_id(0x1),tunnel(ttl=64,tp_dst=4789,tun_id=0x1,src=10.10.0.2,dst=10.10.0.1,flags(-df-csum+key)),"
        "in_port(2),ct_state(-inv+trk),eth(),eth_type(0x86dd),ipv6(proto=58,frag=no),icmpv6(type=128)")
    netdev = "tunnel(tun_id=0x1,src=10.10.0.2,dst=10.10.0.1,flags(+key)),recirc_id(0),in_port(3),eth(),eth_type(0x0800)"
    assert trace_key(netdev, {3: 4789}) == "tunnel(ttl=64,tp_dst=4789," + netdev[len("tunnel("):]
