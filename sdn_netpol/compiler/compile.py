"""compile_node(state, node) → the exact FlowSet that node's br-int must hold.

Pure: the same state and node context always give the same flows (ids and cookies
included), which is what lets the controller diff against the switch and send nothing
after a restart. `compile_node_incremental` gives the same flows, reusing the previous
snapshot's rule resolution for every policy the change cannot touch.
"""

from __future__ import annotations

from sdn_netpol.compiler.base_flows import local_pod_flows, node_route_flows, pipeline_flows, remote_pod_flows
from sdn_netpol.compiler.flow import Flow, FlowSet
from sdn_netpol.compiler.policy_flows import policy_flows
from sdn_netpol.compiler.topology import NodeContext
from sdn_netpol.policy.incremental import Resolution, resolve
from sdn_netpol.policy.resolve import ResolvedPolicy, resolve_all
from sdn_netpol.policy.state import ClusterState


def compile_node(state: ClusterState, node: NodeContext) -> FlowSet:
    return _assemble(state, node, resolve_all(state))


def compile_node_incremental(
    state: ClusterState, node: NodeContext, previous: Resolution | None = None
) -> tuple[FlowSet, Resolution]:
    """compile_node, plus the resolution to hand back next time."""
    resolution = resolve(state, previous)
    return _assemble(state, node, resolution.policies), resolution


def _assemble(state: ClusterState, node: NodeContext, resolved: tuple[ResolvedPolicy, ...]) -> FlowSet:
    flows: list[Flow] = list(pipeline_flows(node))
    flows.extend(node_route_flows(node))
    local = node.local_pods
    for binding in node.bindings:
        flows.extend(local_pod_flows(binding))
    for pod in state.pods:
        if pod.key not in local and pod.ips and pod.in_policy_scope and pod.node_name != node.name:
            flows.extend(remote_pod_flows(pod, node))
    flows.extend(policy_flows(resolved, node))
    return FlowSet(flows)
