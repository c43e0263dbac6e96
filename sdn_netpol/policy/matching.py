"""What one peer or port entry matches, shared by the NetworkPolicy and the admin tiers'
reference semantics (verdict.py, tiers.py)."""

from __future__ import annotations

from sdn_netpol.model.cluster_objects import PodSet
from sdn_netpol.model.objects import Pod, PolicyPort, Protocol
from sdn_netpol.policy.state import ClusterState


def port_matches(entry: PolicyPort, protocol: Protocol, port: int, dst_pod: Pod | None) -> bool:
    """Does a ports entry cover `protocol`/`port` on the destination? A named port means
    something only on a destination pod under NetworkPolicy, through its containerPorts."""
    if entry.protocol != protocol:
        return False
    if entry.port is None:
        return True
    if isinstance(entry.port, int):
        return entry.port <= port <= (entry.end_port or entry.port)
    if dst_pod is None or not dst_pod.in_policy_scope:
        return False
    return port in dst_pod.resolve_named_port(entry.port, protocol)


def in_pod_set(state: ClusterState, pod_set: PodSet, pod: Pod | None) -> bool:
    """Is `pod` a subject or peer pod of a cluster policy's `namespaces`/`pods` selector?
    Host-network pods (and pods outside NetworkPolicy) never are."""
    if pod is None or not pod.in_policy_scope:
        return False
    if not pod_set.namespaces.matches(state.namespace(pod.namespace).labels):
        return False
    return pod_set.pods is None or pod_set.pods.matches(pod.labels)
