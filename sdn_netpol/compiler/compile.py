"""compile_node(state, node) → the exact FlowSet that node's br-int must hold.

Pure: the same state and node context always give the same flows (ids and cookies
included), which is what lets the controller diff against the switch and send nothing
after a restart.
"""

from __future__ import annotations

from sdn_netpol.compiler.base_flows import local_pod_flows, pipeline_flows, remote_pod_flows
from sdn_netpol.compiler.flow import FlowSet
from sdn_netpol.compiler.policy_flows import policy_flows
from sdn_netpol.compiler.topology import NodeContext
from sdn_netpol.policy.resolve import resolve_all
from sdn_netpol.policy.state import ClusterState


def compile_node(state: ClusterState, node: NodeContext) -> FlowSet:
    flows = list(pipeline_flows(node))
    local = node.local_pods
    for binding in node.bindings:
        flows.extend(local_pod_flows(binding))
    for pod in state.pods:
        if pod.key not in local and pod.ips and pod.in_policy_scope and pod.node_name != node.name:
            flows.extend(remote_pod_flows(pod, node))
    flows.extend(policy_flows(resolve_all(state), node))
    return FlowSet(flows)
