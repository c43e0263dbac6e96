"""`trace` says what the policy engine says, on a real OVS, and names a rule `explain` lists.

The compiled flows of every node are loaded into one private OVS (tests/differential.py: a
bridge per node, a tunnel between them); the trace engine (sdn_netpol/debug/trace.py)
walks each pod-to-pod packet through the source node and, when it enters the tunnel, the
destination node. For every pair and probed port: the trace's verdict equals `decide()`'s;
an allowed trace's `decided_by` is one of the rules `decide()` lists as allowing (or None
only where no policy isolates either side); a denial by isolation names exactly the
policies that isolate that side.
"""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings

from sdn_netpol.debug.trace import NodePlace, Packet, PodPlace, Topology, TraceReport, trace_packet
from sdn_netpol.inputs.manifests import load_paths
from sdn_netpol.model.objects import PodKey, Protocol
from sdn_netpol.ovs import OvsInstance, Tracer
from sdn_netpol.policy.state import ClusterState
from sdn_netpol.policy.verdict import Endpoint, Verdict, connection_addresses, decide
from tests.admin_strategies import admin_cluster_states
from tests.differential import NODE_ADDRESSES, TUNNEL_PORT, bridge_name, create_bridges, load
from tests.ovs_fixtures import private_ovs
from tests.strategies import cluster_states, probes

REPO = Path(__file__).resolve().parent.parent
GENERATED = 60


@pytest.fixture(scope="module")
def ovs(tmp_path_factory: pytest.TempPathFactory) -> Iterator[OvsInstance]:
    with private_ovs(tmp_path_factory.mktemp("trace-ovs"), "trace-ovs") as inst:
        create_bridges(inst, "tr" + uuid.uuid4().hex[:3])
        yield inst


@pytest.fixture(scope="module")
def tracer(ovs: OvsInstance) -> Iterator[Tracer]:
    with Tracer(ovs) as t:
        yield t


def topology(ovs: OvsInstance, tracer: Tracer, state: ClusterState) -> Topology:
    contexts = load(ovs, state)
    ovs.appctl("dpctl/flush-conntrack")
    by_key = {p.key: p for p in state.pods}
    pods = {}
    for node, ctx in contexts.items():
        for binding in ctx.bindings:
            pod = by_key[binding.pod]
            for ip in pod.ips:
                place = PodPlace(str(binding.pod), node, binding.ofport, str(ip), str(binding.mac))
                pods[f"{binding.pod}@{ip}"] = place
    nodes = {n: NodePlace(n, str(a), (), TUNNEL_PORT, bridge_name(n)) for n, a in NODE_ADDRESSES.items()}
    return Topology(pods, nodes, "unused", lambda _node: tracer)


def check_cluster(ovs: OvsInstance, tracer: Tracer, state: ClusterState,
                  ports: tuple[tuple[Protocol, int], ...]) -> list[str]:
    topo = topology(ovs, tracer, state)
    placed = {p.key: p for p in state.pods}
    problems = []
    sources = {place.key: place for place in topo.pods.values()}
    for src_key, src in sorted(sources.items()):
        for dst_key in sorted(sources):
            src_pod, dst_pod = placed[_key(src_key)], placed[_key(dst_key)]
            src_ip, dst_ip = connection_addresses(Endpoint(pod=src_pod), Endpoint(pod=dst_pod))
            if src_ip is None or dst_ip is None:
                continue
            place = topo.pods[f"{src_key}@{src_ip}"]
            for protocol, port in ports:
                packet = Packet(place, str(src_ip), place.mac, str(dst_ip), protocol, port, "new")
                report = trace_packet(topo, state, packet, topo.nodes[src.node])
                verdict = decide(state, Endpoint(pod=src_pod), Endpoint(pod=dst_pod), protocol, port)
                problems += _disagreements(f"{src_key}->{dst_key} {protocol}/{port}", report, verdict)
    return problems


def _key(text: str) -> PodKey:
    namespace, name = text.split("/")
    return PodKey(namespace, name)


def _disagreements(what: str, report: TraceReport, verdict: Verdict) -> list[str]:
    if (report.verdict == "allowed") != verdict.allowed:
        expected = "allowed" if verdict.allowed else "denied"
        return [f"{what}: trace {report.verdict} ({report.reason}), explain {expected}"]
    allowing = {(r.policy, r.direction, r.rule_index) for side in (verdict.egress, verdict.ingress)
                for r in side.allowed_by}
    allowing |= {(m.policy, m.direction, m.rule_index) for side in (verdict.egress, verdict.ingress)
                 for m in (side.admin, side.baseline) if m is not None and m.action == "Allow"}  # admin tiers
    isolated = bool(verdict.egress.isolated_by or verdict.ingress.isolated_by)
    if report.verdict == "allowed":
        decided = report.decided_by
        if decided is None:
            if isolated and not (verdict.loopback or verdict.node_local):
                return [f"{what}: allowed with no rule named, but explain lists {sorted(allowing)}"]
        elif (decided["policy"], decided["direction"], decided["rule"]) not in allowing:
            return [f"{what}: trace names {decided}, explain's allowing rules are {sorted(allowing)}"]
        return []
    if "isolation" in report.reason:
        side = verdict.egress if "egress" in report.reason else verdict.ingress
        if report.isolated_by != side.isolated_by:
            return [f"{what}: trace says isolated by {report.isolated_by}, explain {side.isolated_by}"]
    return []


@pytest.mark.parametrize("example", sorted(p.name for p in (REPO / "flows").iterdir() if p.is_dir()))
def test_trace_agrees_with_explain_on_every_seed_example(ovs: OvsInstance, tracer: Tracer, example: str) -> None:
    state = ClusterState.from_parse(load_paths([REPO / "flows" / "cluster.yaml", REPO / "flows" / example]))
    ports: tuple[tuple[Protocol, int], ...] = (("TCP", 6379), ("TCP", 5978), ("TCP", 80), ("UDP", 6379),
                                               ("SCTP", 6379))
    problems = check_cluster(ovs, tracer, state, ports)
    assert problems == [], "\n".join(problems[:10])


@settings(max_examples=GENERATED, deadline=None, suppress_health_check=list(HealthCheck))
@given(state=cluster_states(max_pods=5, max_policies=3))
def test_trace_agrees_with_explain_on_generated_clusters(ovs: OvsInstance, tracer: Tracer, state: ClusterState) -> None:
    problems = check_cluster(ovs, tracer, state, tuple(sorted(probes(state)))[:4])
    assert problems == [], "\n".join(problems[:10])


@settings(max_examples=GENERATED, deadline=None, suppress_health_check=list(HealthCheck))
@given(state=admin_cluster_states(max_admin=3))
def test_trace_agrees_with_explain_on_generated_clusters_with_admin_policies(ovs: OvsInstance, tracer: Tracer,
                                                                            state: ClusterState) -> None:
    """The tiers too: an admin or baseline Allow is named as the deciding rule, a Pass never."""
    problems = check_cluster(ovs, tracer, state, tuple(sorted(probes(state)))[:4])
    assert problems == [], "\n".join(problems[:10])


def test_an_allow_shared_by_two_rules_names_one_of_them(ovs: OvsInstance, tracer: Tracer, tmp_path: Path) -> None:
    """Two rules that both allow everything for a pod compile to one flow with the SHARED
    cookie; the trace still names a rule `explain` lists."""
    manifest = tmp_path / "shared.yaml"
    manifest.write_text("""
apiVersion: v1
kind: Namespace
metadata: {name: ns-a}
---
apiVersion: v1
kind: Pod
metadata: {name: a, namespace: ns-a, labels: {app: a}}
spec: {nodeName: node-1, containers: [{name: c, image: i}]}
status: {podIP: 10.0.0.1, phase: Running}
---
apiVersion: v1
kind: Pod
metadata: {name: b, namespace: ns-a}
spec: {nodeName: node-2, containers: [{name: c, image: i}]}
status: {podIP: 10.0.0.2, phase: Running}
---
apiVersion: networking.k8s.io/v1
kind: NetworkPolicy
metadata: {name: twice, namespace: ns-a}
spec:
  podSelector: {matchLabels: {app: a}}
  ingress: [{}, {}]
""")
    state = ClusterState.from_parse(load_paths([manifest]))
    problems = check_cluster(ovs, tracer, state, (("TCP", 80),))
    assert problems == [], "\n".join(problems)
