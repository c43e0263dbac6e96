"""Cluster-wide admin policies at scale (issue 18): 10k pods × 1,000 NetworkPolicies + 100
cluster policies (Admin and Baseline, all three kinds) compiled for one node; the tier tables'
flows against the additive bound; one pod relabelled and one admin rule changed, compiled
incrementally (what the controller does per event; the change is the bundle it sends).

    .venv/bin/python benchmarks/admin.py [--pods 10000] [--policies 1000] [--cluster-policies 100]
    .venv/bin/python benchmarks/admin.py --realize [--samples 10]   # + end to end on a real OVS (root)

Clusters come from tests/synthetic_cluster.py (100 namespaces, 10 nodes); cluster policy i
is of one of five shapes: a tenant-to-tenant Deny on a named port, a Pass of a team's
namespaces to their owners, an egress Deny of a network range, an Accept of a monitoring app
on a port range, a Baseline default deny of one environment; the BANP denies the rest.
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from netaddr import IPAddress

from sdn_netpol.compiler.admin_flows import TABLES
from sdn_netpol.compiler.compile import compile_node, compile_node_incremental
from sdn_netpol.compiler.portmask import port_range_masks
from sdn_netpol.compiler.topology import assign_ports
from sdn_netpol.model.cluster_objects import CLUSTER_KINDS
from sdn_netpol.model.parse import Document, parse_documents
from sdn_netpol.policy.admin_resolve import resolve_cluster_policies
from sdn_netpol.policy.state import ClusterState
from tests.synthetic_cluster import relabel, synthetic_state

NODE = "node0"


def _ns(team: int) -> dict[str, Any]:
    return {"namespaces": {"matchLabels": {"team": f"t{team}"}}}


def cluster_policy_doc(i: int, action: str = "Deny") -> dict[str, Any]:
    shape = i % 5
    meta = {"name": f"cp-{i:03d}"}
    if shape == 0:
        spec = {"tier": "Admin", "priority": i % 1000, "subject": _ns(i % 10),
                "ingress": [{"name": "no-cross-team", "action": action, "from": [_ns((i + 1) % 10)],
                             "protocols": [{"destinationNamedPort": "http"}]}]}
    elif shape == 1:
        spec = {"tier": "Admin", "priority": i % 1000, "subject": _ns(i % 10),
                "ingress": [{"name": "to-owners", "action": "Pass", "from": [_ns(i % 10)]}]}
    elif shape == 2:
        spec = {"tier": "Admin", "priority": i % 1000, "subject": {"namespaces": {}},
                "egress": [{"name": "no-range", "action": action,
                            "to": [{"networks": [f"172.{16 + i % 16}.0.0/16", f"192.168.{i % 256}.0/24"]}]}]}
    elif shape == 3:
        spec = {"tier": "Admin", "priority": i % 1000, "subject": {"namespaces": {"matchLabels": {"env": "prod"}}},
                "ingress": [{"name": "scrape", "action": "Accept",
                             "from": [{"pods": {"namespaceSelector": {}, "podSelector": {
                                 "matchLabels": {"app": f"a{i % 20}"}}}}],
                             "protocols": [{"tcp": {"destinationPort": {"range": {"start": 9000, "end": 9100}}}}]}]}
    else:
        spec = {"tier": "Baseline", "priority": i % 1000,
                "subject": {"namespaces": {"matchLabels": {"env": ("prod", "staging", "dev")[i % 3]}}},
                "ingress": [{"name": "env-deny", "action": action, "from": [{"namespaces": {}}]}]}
    return {"apiVersion": "policy.networking.k8s.io/v1alpha2", "kind": "ClusterNetworkPolicy",
            "metadata": meta, "spec": spec}


BANP = {"apiVersion": "policy.networking.k8s.io/v1alpha1", "kind": "BaselineAdminNetworkPolicy",
        "metadata": {"name": "default"},
        "spec": {"subject": {"namespaces": {}}, "ingress": [{"action": "Deny", "from": [{"namespaces": {}}]}]}}


def with_cluster_policies(state: ClusterState, docs: list[dict[str, Any]]) -> ClusterState:
    result = parse_documents([Document(f"cp{i}", d) for i, d in enumerate(docs)])
    assert not result.errors, result.errors[:3]
    return ClusterState.build(state.namespaces, state.pods, state.policies, 0, result.cluster_policies)


def additive_bound(state: ClusterState, ports: dict[Any, int]) -> int:
    """Per grant: |local subject pods| + |peer matches| + |port matches| + 1 conj_id flow."""
    total = 0
    for rule in resolve_cluster_policies(state):
        for grant in rule.grants:
            local = sum(1 for k in grant.targets if k in ports)
            if not local:
                continue
            peers = len(grant.peers.cidrs)
            port_matches = sum(2 * (1 if (r.lo, r.hi) == (0, 65535) else len(port_range_masks(r.lo, r.hi)))
                               for r in grant.ports)  # tcp and tcp6, one per value/mask
            total += local + peers + port_matches + 1
    return total


def realize(state: ClusterState, docs: list[dict[str, Any]], samples: int) -> None:
    """The controller's parts against a real userspace OVS (benchmarks/realize.py's harness):
    the cluster installed, then one admin rule flipped Deny <-> Accept `samples` times, each
    timed from the store hand-over to the barrier that acknowledges its bundle."""
    import tempfile

    from benchmarks.realize import NODE as BENCH_NODE
    from benchmarks.realize import Run, objects_of, start_controller
    from sdn_netpol.controller.nodes import NodeInfo
    from sdn_netpol.model.parse import object_key
    from tests.controller_fixtures import switch

    assert BENCH_NODE == NODE
    nodes = [NodeInfo(f"node{k}", IPAddress(f"192.168.0.{k + 1}")) for k in range(10)]
    local = [p for p in state.pods if p.node_name == NODE]
    with tempfile.TemporaryDirectory(prefix="admin-bench-") as tmp, switch(Path(tmp)) as sw:
        parts, probe = start_controller(sw, local)
        objects = {**objects_of(state, nodes), **{object_key(p): p for p in state.cluster_policies}}
        start = time.monotonic()
        parts.store.replace(("Namespace", "Pod", "NetworkPolicy", "Node", *CLUSTER_KINDS), objects, {}, "0",
                            synced=True)
        at, flows = probe.wait_generation(parts.store.generation)
        print(f"  first install (controller, real OVS): {at - start:.2f} s, {flows} flow mods")
        flips = [with_cluster_policies(state, [cluster_policy_doc(0, "Accept" if i % 2 == 0 else "Deny"),
                                               *docs[1:]]).cluster_policies for i in range(samples)]
        changes = ((object_key(p), p) for found in flips for p in found if p.name == "cp-000")
        result = Run(sw, parts, probe, state).scenario("admin rule flip", changes)
        print(f"  one admin rule flipped, realized end to end: p50 {result['p50_ms']} ms, p99 {result['p99_ms']} ms, "
              f"compile p50 {result['compile_p50_ms']} ms, send+barrier p50 {result['send_p50_ms']} ms, "
              f"{result['flow_mods_mean']} flow mods")


def timed(fn: Any) -> tuple[float, Any]:
    start = time.perf_counter()
    result = fn()
    return time.perf_counter() - start, result


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--pods", type=int, default=10_000)
    parser.add_argument("--policies", type=int, default=1_000)
    parser.add_argument("--cluster-policies", type=int, default=100)
    parser.add_argument("--realize", action="store_true", help="also realize admin rule changes on a real OVS")
    parser.add_argument("--samples", type=int, default=10)
    args = parser.parse_args()
    base = synthetic_state(args.pods, args.policies)
    docs = [cluster_policy_doc(i) for i in range(args.cluster_policies - 1)] + [BANP]
    state = with_cluster_policies(base, docs)
    node = assign_ports(state, NODE)
    plain_time, plain = timed(lambda: compile_node(base, assign_ports(base, NODE)))
    full_time, compiled = timed(lambda: compile_node_incremental(state, node))
    tier = [f for f in compiled.flows if f.table in set(TABLES.values())]
    ports = {b.pod: b.ofport for b in node.bindings}
    bound = additive_bound(state, ports)
    moved = relabel(state, 5, "a7").pods[5]  # as the controller's store does: the state patched
    relabelled = state.with_changes({moved.key: moved}, {}, {ns.name for ns in state.namespaces})
    pod_time, after_pod = timed(lambda: compile_node_incremental(relabelled, assign_ports(relabelled, NODE),
                                                                 compiled))
    changed = with_cluster_policies(base, [cluster_policy_doc(0, "Accept"), *docs[1:]])
    rule_time, after_rule = timed(lambda: compile_node_incremental(changed, assign_ports(changed, NODE), compiled))
    print(f"{args.pods} pods x {args.policies} NetworkPolicies + {len(state.cluster_policies)} cluster policies, "
          f"node {NODE} ({len(node.bindings)} local pods)")
    print(f"  full compile without cluster policies: {plain_time:.2f} s, {len(plain)} flows")
    print(f"  full compile with them:                {full_time:.2f} s, {len(compiled.flows)} flows")
    print(f"  tier-table flows: {len(tier)} (misses and bypasses included); additive bound {bound} "
          f"({len(tier) / max(bound, 1):.2f}x)")
    print(f"  one pod relabelled, incremental:       {pod_time * 1000:.0f} ms, "
          f"{len(after_pod.change or ())} flow changes")
    print(f"  one admin rule Deny -> Accept:         {rule_time * 1000:.0f} ms, "
          f"{len(after_rule.change or ())} flow changes")
    if args.realize:
        realize(state, docs, args.samples)
        sys.stdout.flush()
        os._exit(0)  # os-ken's threads are not daemons and cannot be stopped (as benchmarks/realize.py)


if __name__ == "__main__":
    main()
