"""Two nodes for tests/test_ipv6_ovs.py, built from real parts and nothing of the lab's.

    node1 netns  eth1 ════ veth ════ eth1  node2 netns       (the IPv4 underlay, 10.10.0.0/24)
      br-phy (netdev, standalone): eth1; 10.10.0.N on its tap, so vswitchd routes tunnel packets
      br-int (netdev, fail_mode=secure, bridge_args): tun0 (vxlan, remote_ip=flow, key=flow)
             and the pods, attached by the real sdn-netpol-cni with host-local ranges for the
             node's dual-stack podCIDRs 10.244.N.0/24 and fd00:10:244:N::/64

No controller: each node's tables are `compile_node` output for the cluster as the test
states it (pods as the CNI plugin attached them, policies), loaded with
`ovs-ofctl --bundle replace-flows`. Frames are sent and sniffed on the pods' eth0 through
AF_PACKET sockets opened inside the pod namespaces; kernel TCP/UDP sockets likewise.
"""
from __future__ import annotations

import contextlib
import os
import subprocess
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from netaddr import EUI, IPAddress, IPNetwork, mac_unix_expanded

from sdn_netpol.compiler.compile import compile_node
from sdn_netpol.compiler.ofctl import render_flows
from sdn_netpol.compiler.topology import NodeContext, PortBinding
from sdn_netpol.model.objects import PodKey
from sdn_netpol.node import cni_install
from sdn_netpol.node.bridge import BridgeSpec, bridge_args
from sdn_netpol.ovs import OvsInstance
from tests.builders import Part, build, namespace
from tests.builders import pod as pod_manifest
from tests.cni_fixtures import Node, node_with_ovs, plugin_config, run_ip


@dataclass
class PodInfo:
    key: PodKey
    node: str
    netns: str
    labels: dict[str, str]
    mac: str = ""
    v4: str = ""
    v6: str = ""
    ofport: int = 0

    @property
    def link_local(self) -> str:
        return str(EUI(self.mac).ipv6_link_local())


@dataclass
class TestNode:
    name: str
    index: int
    cni: Node  # the netns, its OVS and the plugin runner
    data_dir: Path
    tunnel_ofport: int = 0

    @property
    def address(self) -> str:
        return f"10.10.0.{self.index}"

    @property
    def cidrs(self) -> tuple[str, str]:
        return f"10.244.{self.index}.0/24", f"fd00:10:244:{self.index}::/64"

    @property
    def ovs(self) -> OvsInstance:
        return self.cni.ovs

    def conf(self) -> dict[str, Any]:
        listed = cni_install.conflist(cni_install.parse_pod_cidrs(self.name, list(self.cidrs)), "br-int", "x", 1450)
        return plugin_config(self.ovs.db_sock, self.data_dir, ipam={**listed["plugins"][0]["ipam"],
                                                                    "dataDir": str(self.data_dir)})


@dataclass
class TwoNodes:
    nodes: list[TestNode]
    pods: dict[str, PodInfo] = field(default_factory=dict)
    flows: dict[str, str] = field(default_factory=dict)

    def node(self, name: str) -> TestNode:
        return next(n for n in self.nodes if n.name == name)

    def add_pod(self, name: str, node: str, **labels: str) -> PodInfo:
        """The real CNI ADD on `node` (no flows for the pod until the next `apply`)."""
        where = self.node(node)
        netns = where.cni.new_pod_netns()
        run = where.cni.cni("ADD", where.conf(), container_id=f"c-{name}", netns=netns,
                            args=f"K8S_POD_NAMESPACE=x;K8S_POD_NAME={name}")
        assert run.rc == 0, run.stdout + run.stderr
        ips = [ip["address"].split("/")[0] for ip in run.doc["ips"]]
        info = PodInfo(PodKey("x", name), node, netns, dict(labels), run.doc["interfaces"][1]["mac"],
                       next(ip for ip in ips if ":" not in ip), next(ip for ip in ips if ":" in ip))
        info.ofport = int(where.ovs.vsctl("get", "Interface", run.doc["interfaces"][0]["name"], "ofport"))
        self.pods[name] = info
        return info

    def apply(self, *policies: Part, leave_out: tuple[str, ...] = ()) -> None:
        """Compile every node's tables for these pods (less `leave_out`) and policies, and load
        them (one atomic bundle per node)."""
        pods = [p for p in self.pods.values() if p.key.name not in leave_out]
        state = build(namespace("x", ns="x"),
                      *(pod_manifest(f"x/{p.key.name}", [p.v4, p.v6], p.labels, node=p.node) for p in pods),
                      *policies)
        for node in self.nodes:
            bindings = tuple(sorted(
                PortBinding(p.key, p.ofport, EUI(p.mac, dialect=mac_unix_expanded),
                            (IPAddress(p.v4), IPAddress(p.v6))) for p in pods if p.node == node.name))
            context = NodeContext(
                node.name, bindings, tunnel_port=node.tunnel_ofport,
                node_addresses=tuple((n.name, IPAddress(n.address)) for n in self.nodes),
                node_cidrs=tuple(sorted((n.name, IPNetwork(c)) for n in self.nodes for c in n.cidrs)))
            text = render_flows(compile_node(state, context))
            node.ovs.replace_flows("br-int", text)
            self.flows[node.name] = text


def _node_up(node: TestNode, peer_index: int) -> None:
    ns = node.cni.name
    run_ip("-n", ns, "link", "set", "eth1", "up")
    mac = f"02:10:0a:0a:00:{node.index:02x}"
    node.ovs.vsctl("--", "add-br", "br-phy", "--", "set", "Bridge", "br-phy", "datapath_type=netdev",
                   "fail_mode=standalone", f"other_config:hwaddr={mac}", "--", "add-port", "br-phy", "eth1",
                   *bridge_args(BridgeSpec("br-int", "vxlan", "tun0", "netdev", node.index)))
    run_ip("-n", ns, "addr", "add", f"{node.address}/24", "dev", "br-phy")
    run_ip("-n", ns, "link", "set", "br-phy", "up")
    node.ovs.appctl("tnl/arp/set", "br-phy", f"10.10.0.{peer_index}", f"02:10:0a:0a:00:{peer_index:02x}")
    node.tunnel_ofport = int(node.ovs.vsctl("get", "Interface", "tun0", "ofport"))


@contextlib.contextmanager
def two_nodes(rundir: Path) -> Iterator[TwoNodes]:
    """node1 and node2, each a netns with its own OVS (tests/cni_fixtures.node_with_ovs)."""
    pid = os.getpid()
    with contextlib.ExitStack() as stack:
        nodes = []
        for index in (1, 2):
            made = stack.enter_context(node_with_ovs(rundir / f"node{index}", f"v6t-{pid}-n{index}"))
            nodes.append(TestNode(f"node{index}", index, made, rundir / f"ipam{index}"))
        run_ip("-n", nodes[0].cni.name, "link", "add", "eth1", "type", "veth", "peer", "name", "eth1",
               "netns", nodes[1].cni.name)
        _node_up(nodes[0], 2)
        _node_up(nodes[1], 1)
        yield TwoNodes(nodes)


def sysctl(netns: str, setting: str) -> None:
    subprocess.run(["ip", "netns", "exec", netns, "sysctl", "-qw", setting], check=True)
