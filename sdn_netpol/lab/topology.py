"""Underlay, nodes and the external host: namespaces, links and one OVS per node.

Layout (every namespace carries the lab prefix, nothing is created in the root netns):

    PREFIXunderlay   Linux bridge br0 = the underlay "switch"; veth nN per node
    PREFIXnodeN      eth1 (underlay) in OVS br-phy (netdev, standalone); the node address
                     10.10.0.N lives on the br-phy tap, so vswitchd routes tunnel packets
                     through it; br-int (netdev, secure) holds pods and tun0 (vxlan/geneve,
                     remote_ip=flow, key=flow) and, with an external host, gw0
    PREFIXexternal   optional host outside the cluster (e.g. 172.17.0.10): one veth per
                     node into br-int as a gateway port (external_ids sdn-netpol-role=gateway,
                     peer-mac), routes to each node's pod CIDR through that node

Why so: LAB-NOTES (one userspace OVS per netns, node IP on the br-phy tap, tnl/arp seeding,
set-controller before any flow, tx checksum offload off on whatever sends into OVS).
"""

from __future__ import annotations

from pathlib import Path

from sdn_netpol.lab import netns
from sdn_netpol.lab.state import OFP_PORT, LabState, NodeState
from sdn_netpol.node.bridge import BridgeSpec, bridge_args, controller_args
from sdn_netpol.ovs.instance import OvsInstance

UNDERLAY_BRIDGE = "br0"
TUNNEL_PORT = "tun0"
GATEWAY_PORT = "gw0"
UNDERLAY_PLEN = 24


def bridge_mac(node: NodeState) -> str:
    """Deterministic br-phy MAC (02:10 + node address) so tunnel ARP can be seeded."""
    octets = [int(x) for x in node.address.split(".")]
    return "02:10:" + ":".join(f"{b:02x}" for b in octets)


def external_mac(node: NodeState) -> str:
    return f"02:11:00:00:00:{node.index:02x}"


def ovs(node: NodeState) -> OvsInstance:
    return OvsInstance(Path(node.rundir), node.netns)


def underlay_up(state: LabState) -> None:
    netns.create(state.underlay_netns)
    netns.add_bridge(state.underlay_netns, UNDERLAY_BRIDGE)


def node_up(state: LabState, node: NodeState, with_controller: bool) -> None:
    """Namespace, underlay link, OVS with br-phy and br-int, node address; the controller
    target is set here, before any flow exists, because setting it wipes the flow table."""
    netns.create(node.netns)
    netns.veth(state.underlay_netns, f"n{node.index}", node.netns, "eth1")
    netns.set_up(state.underlay_netns, f"n{node.index}", master=UNDERLAY_BRIDGE)
    netns.set_up(node.netns, "eth1")
    inst = OvsInstance.start(Path(node.rundir), netns=node.netns)
    node.bridge_mac = bridge_mac(node)
    args = [
        "--", "add-br", "br-phy", "--", "set", "Bridge", "br-phy", "datapath_type=netdev",
        "fail_mode=standalone", f"other_config:hwaddr={node.bridge_mac}",
        "--", "add-port", "br-phy", "eth1",
    ]
    args += bridge_args(BridgeSpec("br-int", state.tunnel, TUNNEL_PORT, "netdev", node.index))
    if with_controller:
        args += controller_args("br-int", f"tcp:127.0.0.1:{OFP_PORT}", ())
    inst.vsctl(*args)
    netns.add_address(node.netns, "br-phy", f"{node.address}/{UNDERLAY_PLEN}")
    netns.set_up(node.netns, "br-phy")


def seed_tunnel_arp(state: LabState) -> None:
    """Without this the first packet to each peer is lost while OVS resolves its MAC."""
    for node in state.nodes:
        inst = ovs(node)
        for peer in state.nodes:
            if peer.name != node.name:
                inst.appctl("tnl/arp/set", "br-phy", peer.address, peer.bridge_mac)


def external_up(state: LabState) -> None:
    """The external host: its addresses on lo, one link per node, each link a gateway port
    of that node's br-int; replies to pods go back through the pod's own node."""
    ext = state.external_netns
    netns.create(ext)
    for address in state.external:
        netns.add_address(ext, "lo", f"{address}/32")
    for node in state.nodes:
        link = f"n{node.index}"
        netns.veth(node.netns, GATEWAY_PORT, ext, link, mtu=1450, mac_b=external_mac(node))
        netns.set_up(node.netns, GATEWAY_PORT)
        netns.set_up(ext, link, tx_off=True)
        netns.add_route(ext, node.pod_cidr, node.gateway, link)
        ovs(node).vsctl(
            "--", "add-port", "br-int", GATEWAY_PORT, "--", "set", "Interface", GATEWAY_PORT,
            "external_ids:sdn-netpol-role=gateway", f"external_ids:peer-mac={external_mac(node)}",
        )
