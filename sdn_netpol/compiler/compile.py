"""compile_node(state, node) → the exact FlowSet that node's br-int must hold.

Pure: the same state and node context always give the same flows (ids and cookies
included), which is what lets the controller diff against the switch and send nothing
after a restart.

`compile_node_incremental` gives the same flows from the previous compilation in time
proportional to the change, not to the cluster: a controller sees one pod or policy change
at a time, and recompiling 10k pods × 1,000 policies for each took ~0.6 s. The flows are
kept as fragments — the skeleton, one per local port, one per remote pod, the merged policy
tables (see policy_flows.PolicyTables) — with a count per flow, so a change re-renders only
the fragments it touches and the difference from the previous flows comes out directly.
Anything the fragments cannot follow (a namespace relabelled, the node's own addresses or
ports changed, a conjunction id collision) compiles in full. tests/test_compile_incremental.py
proves the result equal to a full compile.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass, field, replace
from typing import Any

from sdn_netpol.compiler.admin_flows import AdminParts, admin_flows
from sdn_netpol.compiler.audit_flows import audit_allow_flows
from sdn_netpol.compiler.base_flows import local_pod_flows, node_route_flows, pipeline_flows, remote_pod_flows
from sdn_netpol.compiler.diff import FlowDiff, diff, diff_ids
from sdn_netpol.compiler.fastpath import FastFlows, FingerprintIndex, fastpath_flows, refresh_fastpath
from sdn_netpol.compiler.flow import Flow, FlowId
from sdn_netpol.compiler.flowset import DuplicateFlowError, FlowSet
from sdn_netpol.compiler.policy_flows import Placement, PolicyTables, place
from sdn_netpol.compiler.topology import NodeContext, PortBinding
from sdn_netpol.model.cluster_objects import ClusterPolicy
from sdn_netpol.model.objects import Pod, PodKey
from sdn_netpol.policy.admin_resolve import PolicyGrants, policy_grants, resolve_cluster_policies, sees
from sdn_netpol.policy.incremental import Resolution, resolve
from sdn_netpol.policy.state import ClusterState


@dataclass(frozen=True, eq=False)
class NodeCompilation:
    """One node's flows and what produced them, to compile the next change from.

    `change` is the difference from the previous compilation's flows (None for a first one).
    `extra` holds, for a flow more than one fragment gives (two pods with one route), how
    many give it beyond the first: it stays while any does. Almost every flow has one
    fragment, so only the exceptions are held (copying a count for each of 283k flows cost
    a 100k-pod relabel ~8 ms). The tier tables' flows (admin_flows.py) are
    kept per rule (`admin_parts`), and each cluster policy's grants (`admin_grants`): a pod
    change re-resolves only the cluster policies that see the pod, and only rules whose
    grants changed are rendered again.
    """

    node: NodeContext
    resolution: Resolution
    tables: PolicyTables
    extra: Mapping[Flow, int]
    flows: FlowSet
    change: FlowDiff | None = None
    admin_parts: AdminParts | None = None
    admin_grants: Mapping[str, tuple[ClusterPolicy, PolicyGrants]] | None = None
    fastpath: FastFlows = field(default_factory=dict)
    fingerprints: FingerprintIndex | None = None


def compile_node(state: ClusterState, node: NodeContext) -> FlowSet:
    return _build(node, resolve(state)).flows


def compile_node_incremental(
    state: ClusterState, node: NodeContext, previous: NodeCompilation | None = None
) -> NodeCompilation:
    """compile_node, plus what the next call needs and the change from `previous`."""
    resolution = resolve(state, None if previous is None else previous.resolution)
    if previous is None:
        return _build(node, resolution)
    updated = _update(previous, node, resolution)
    if updated is not None:
        return updated
    full = _build(node, resolution, previous)
    return replace(full, change=diff(previous.flows, full.flows))


def _build(node: NodeContext, resolution: Resolution, previous: NodeCompilation | None = None) -> NodeCompilation:
    flows: list[Flow] = [*pipeline_flows(node), *node_route_flows(node)]
    audited = resolution.state.audited_namespaces
    for binding in node.bindings:
        flows.extend(local_pod_flows(binding))
        flows.extend(audit_allow_flows(binding, audited.get(binding.pod.namespace)))
    local = node.local_pods
    for pod in resolution.state.pods:
        flows.extend(_remote_flows(pod, node, local))
    ports = node.ofports
    memo: dict[Any, Any] = {}
    denied = _audit_denied(resolution.state)
    tables = PolicyTables.build({p.ref: place(p, ports, memo, denied) for p in resolution.policies})
    flows.extend(tables.flows())
    admin = _admin_flows(resolution, node, previous, None)  # previous: only its rendered rules are reused
    flows.extend(admin.flows)
    index = FingerprintIndex.build(flows, (b.ofport for b in node.bindings))
    fast = fastpath_flows(node, index.prints)
    flows.extend(f for _, pod_flows in fast.values() for f in pod_flows)
    extra: dict[Flow, int] = {}
    by_id: dict[FlowId, Flow] = {}
    _patch(extra, by_id, set(), (), flows)
    return NodeCompilation(node, resolution, tables, extra, FlowSet.trusted(by_id), admin_parts=admin.parts,
                           admin_grants=admin.grants, fastpath=fast, fingerprints=index)


@dataclass(frozen=True)
class _Admin:
    flows: tuple[Flow, ...] = ()
    parts: AdminParts | None = None
    grants: Mapping[str, tuple[ClusterPolicy, PolicyGrants]] | None = None


def _unchanged_for(policy: ClusterPolicy, was: ClusterPolicy, old: ClusterState, new: ClusterState,
                   touched: set[PodKey]) -> bool:
    """The same policy, and no touched pod that it sees, before or after."""
    if was is not policy and was != policy:
        return False
    return not any(sees(old, policy, old.pods_by_key.get(k)) or sees(new, policy, new.pods_by_key.get(k))
                   for k in touched)


def _admin_flows(resolution: Resolution, node: NodeContext, previous: NodeCompilation | None,
                 touched: set[PodKey] | None) -> _Admin:
    """The tier tables. With `previous` and the pods `touched` since (None: unknown), a
    cluster policy that did not change and sees none of them keeps its grants."""
    state = resolution.state
    if not state.cluster_policies:
        return _Admin()
    kept = previous.admin_grants if previous is not None and touched is not None else None
    grants: dict[str, tuple[ClusterPolicy, PolicyGrants]] = {}
    for policy in state.cluster_policies:
        was = kept.get(policy.ref) if kept is not None else None
        if was is not None and previous is not None and touched is not None \
                and _unchanged_for(policy, was[0], previous.resolution.state, state, touched):
            grants[policy.ref] = was
        else:
            grants[policy.ref] = (policy, policy_grants(state, policy))
    rules = resolve_cluster_policies(state, {ref: found for ref, (_, found) in grants.items()})
    flows, parts = admin_flows(rules, node.ofports, previous.admin_parts if previous is not None else None)
    return _Admin(tuple(flows), parts, grants)


def _update(previous: NodeCompilation, node: NodeContext, resolution: Resolution) -> NodeCompilation | None:
    if resolution.changed is None or replace(node, bindings=()) != replace(previous.node, bindings=()):
        return None
    node.inherit_port_maps(previous.node)
    gone, new = _binding_changes(previous.node.bindings, node.bindings)
    old_audit, new_audit = previous.resolution.state.audited_namespaces, resolution.state.audited_namespaces
    removed = [f for b in gone for f in (*local_pod_flows(b), *audit_allow_flows(b, old_audit.get(b.pod.namespace)))]
    added = [f for b in new for f in (*local_pod_flows(b), *audit_allow_flows(b, new_audit.get(b.pod.namespace)))]
    moved = {b.pod for b in (*gone, *new)}
    old_state, old_local, new_local = previous.resolution.state, previous.node.local_pods, node.local_pods
    for key in moved | {pod.key for pair in resolution.changed for pod in pair if pod is not None}:
        removed.extend(_remote_flows(old_state.pods_by_key.get(key), previous.node, old_local))
        added.extend(_remote_flows(resolution.state.pods_by_key.get(key), node, new_local))
    update = previous.tables.update(_placement_changes(previous.resolution, resolution, node.ofports, moved))
    if update is None:
        return None
    touched = moved | {pod.key for pair in resolution.changed for pod in pair if pod is not None}
    admin = _admin_flows(resolution, node, previous, touched)
    old_parts, new_parts = previous.admin_parts or {}, admin.parts or {}
    removed.extend(f for key, part in old_parts.items() if new_parts.get(key) is not part for f in part.flows)
    added.extend(f for key, part in new_parts.items() if old_parts.get(key) is not part for f in part.flows)
    extra, by_id, changed = _apply(previous, [*removed, *update.removed], [*added, *update.added])
    index = _fingerprints(previous, by_id, changed, node)
    fast, fast_removed, fast_added = refresh_fastpath(previous.fastpath, gone, new, index)
    _patch(extra, by_id, changed, fast_removed, fast_added)
    flows = FlowSet.trusted(by_id)
    return NodeCompilation(node, resolution, update.tables, extra, flows, diff_ids(previous.flows, flows, changed),
                           admin.parts, admin.grants, fast, index)


def _fingerprints(previous: NodeCompilation, by_id: Mapping[FlowId, Flow], changed: set[FlowId],
                  node: NodeContext) -> FingerprintIndex:
    """The fingerprints after a change: the previous index updated with the flows whose
    identity changed (a changed flow is its old version removed and its new one added)."""
    ports = [b.ofport for b in node.bindings]
    if previous.fingerprints is None:
        return FingerprintIndex.build(by_id.values(), ports)
    gone = [f for f in map(previous.flows.get, changed) if f is not None]
    new = [f for f in map(by_id.get, changed) if f is not None]
    return previous.fingerprints.update(gone, new, ports)


def _binding_changes(old: tuple[PortBinding, ...],
                     new: tuple[PortBinding, ...]) -> tuple[list[PortBinding], list[PortBinding]]:
    """Bindings gone and bindings new. Both tuples are sorted and mostly share objects, so
    a positional pass settles them by identity; anything else is compared as sets."""
    if len(old) == len(new):
        pairs = [(a, b) for a, b in zip(old, new, strict=True) if a is not b]
        if all(a.pod == b.pod for a, b in pairs):
            changed = [(a, b) for a, b in pairs if a != b]
            return [a for a, _ in changed], [b for _, b in changed]
    # A pod added or removed shifts the positions: settle the shared objects by identity (hashing
    # 5,000 bindings' addresses cost 60 ms at 50k pods), only the rest by value.
    old_ids, new_ids = {id(b) for b in old}, {id(b) for b in new}
    before = {b for b in old if id(b) not in new_ids}
    after = {b for b in new if id(b) not in old_ids}
    return sorted(before - after), sorted(after - before)


def _placement_changes(old: Resolution, new: Resolution, ports: Mapping[PodKey, int],
                       moved: set[PodKey]) -> dict[str, Placement | None]:
    """Policies to place again: re-resolved ones, and those applied to a pod whose port changed.
    A pod change keeps the policy list and re-resolves a few: pairing the two lists by
    position settles the rest by identity (a dict of 10,000 refs per change cost ~10 ms)."""
    changes: dict[str, Placement | None] = {}
    memo: dict[Any, Any] = {}
    denied = _audit_denied(new.state)
    if len(old.policies) == len(new.policies):
        pairs = list(zip(old.policies, new.policies, strict=True))
        if all(a.ref == b.ref for a, b in pairs if a is not b):
            for was, policy in pairs:
                if was is not policy or (moved and not moved.isdisjoint(policy.applied_to)):
                    changes[policy.ref] = place(policy, ports, memo, denied)
            return changes
    before = {p.ref: p for p in old.policies}
    for policy in new.policies:
        if before.pop(policy.ref, None) is not policy or not moved.isdisjoint(policy.applied_to):
            changes[policy.ref] = place(policy, ports, memo, denied)
    changes.update(dict.fromkeys(before))  # policies that are gone
    return changes


def _apply(previous: NodeCompilation, removed: Iterable[Flow],
           added: Iterable[Flow]) -> tuple[dict[Flow, int], dict[FlowId, Flow], set[FlowId]]:
    """Extra counts and flows after taking fragments' flows away and adding others (removals
    first, so a flow replaced under one identity is never two flows at once)."""
    extra = dict(previous.extra)
    by_id = previous.flows.by_id()
    changed: set[FlowId] = set()
    _patch(extra, by_id, changed, removed, added)
    return extra, by_id, changed


def _patch(extra: dict[Flow, int], by_id: dict[FlowId, Flow], changed: set[FlowId], removed: Iterable[Flow],
           added: Iterable[Flow]) -> None:
    """Take one fragment's `removed` flows away, give `added`; a flow held is given by 1 + extra
    fragments. Note in `changed` the identities whose flow came or went."""
    for flow in removed:
        held = by_id.get(flow.id)
        if held is not flow and held != flow:
            raise KeyError(f"no fragment gives the flow taken away: {flow}")
        more = extra.get(flow, 0)
        if more > 1:
            extra[flow] = more - 1
        elif more:
            del extra[flow]
        else:
            del by_id[flow.id]
            changed.add(flow.id)
    for flow in added:
        held = by_id.get(flow.id)
        if held is None:
            by_id[flow.id] = flow
            changed.add(flow.id)
        elif held is flow or held == flow:
            extra[flow] = extra.get(flow, 0) + 1
        else:
            raise DuplicateFlowError(f"two flows with one identity:\n  {held}\n  {flow}")


def _audit_denied(state: ClusterState) -> frozenset[str]:
    return frozenset(name for name, ns in state.audited_namespaces.items() if ns.audits_denied)


def _remote_flows(pod: Pod | None, node: NodeContext, local: Iterable[PodKey]) -> Iterator[Flow]:
    """Routes to a pod on another node (none for local, unaddressed or out-of-scope pods)."""
    if pod is not None and pod.key not in local and pod.ips and pod.in_policy_scope and pod.node_name != node.name:
        yield from remote_pod_flows(pod, node)
