"""Routes to other nodes: one flow per node pod CIDR, exact per-pod routes only outside them."""

from __future__ import annotations

from dataclasses import replace

from netaddr import IPAddress, IPNetwork

from sdn_netpol.compiler.compile import compile_node
from sdn_netpol.compiler.pipeline import Table
from sdn_netpol.compiler.topology import NodeContext, assign_ports
from sdn_netpol.model.labels import Labels
from sdn_netpol.model.objects import Pod
from sdn_netpol.policy.state import ClusterState
from tests.flow_walk import ip_packet, walk

ADDRESSES = {"node-1": IPAddress("192.168.0.1"), "node-2": IPAddress("192.168.0.2")}
CIDRS = (("node-1", IPNetwork("10.244.1.0/24")), ("node-2", IPNetwork("10.244.2.0/24")))


def _pod(name: str, ip: str, node: str) -> Pod:
    return Pod("x", name, Labels({"app": name}), (IPAddress(ip),), node)


def _cluster(*extra: Pod) -> tuple[ClusterState, NodeContext]:
    state = ClusterState.build([], [_pod("a", "10.244.1.5", "node-1"), _pod("b", "10.244.2.7", "node-2"), *extra], [])
    context = replace(assign_ports(state, "node-1", node_addresses=ADDRESSES), node_cidrs=CIDRS)
    return state, context


def _routes(state: ClusterState, context: NodeContext) -> list[str]:
    return sorted(str(f.match) for f in compile_node(state, context) if f.table == Table.L3_FORWARDING
                  and f.match.get("reg0") is not None)


def test_a_remote_node_cidr_is_one_route_not_one_per_pod() -> None:
    state, context = _cluster(_pod("c", "10.244.2.8", "node-2"), _pod("d", "10.244.2.9", "node-2"))
    flows = compile_node(state, context)
    routes = [f for f in flows if f.table == Table.L3_FORWARDING and f.match.get("reg0") is not None]
    assert len(routes) == 1 and routes[0].match.get("nw_dst") is not None
    a = next(b for b in context.bindings if b.pod.name == "a")
    out = walk(flows, ip_packet(a, "10.244.2.9"))
    assert out.outputs == [context.tunnel_port]


def test_pods_coming_and_going_on_another_node_change_no_flow_here() -> None:
    before = compile_node(*_cluster())
    after = compile_node(*_cluster(_pod("c", "10.244.2.8", "node-2")))
    assert before == after


def test_a_remote_pod_outside_its_node_cidr_keeps_an_exact_route() -> None:
    state, context = _cluster(_pod("static", "10.99.0.4", "node-2"))
    flows = compile_node(state, context)
    a = next(b for b in context.bindings if b.pod.name == "a")
    assert walk(flows, ip_packet(a, "10.99.0.4")).outputs == [context.tunnel_port]
    assert len(_routes(state, context)) == 2


def test_exact_local_routes_win_over_a_cidr_that_covers_them() -> None:
    state, context = _cluster(_pod("odd", "10.244.2.200", "node-1"))
    flows = compile_node(state, context)
    a = next(b for b in context.bindings if b.pod.name == "a")
    odd = next(b for b in context.bindings if b.pod.name == "odd")
    assert walk(flows, ip_packet(a, "10.244.2.200")).outputs == [odd.ofport]
