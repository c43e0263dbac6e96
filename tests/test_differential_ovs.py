"""The compiled pipeline does on a real OVS exactly what the reference semantics say.

Every seed example and hypothesis-generated clusters (IPv4/IPv6, named ports, endPort,
except, SCTP/UDP) are compiled, loaded with `--bundle replace-flows` and traced with
`ofproto/trace` for new, established, reply and invalid packets. Established packets also
carry the ct_label a connection would have: stamped under the current flows (the fast path)
and under an earlier state's, before a revocation (stale: the rules are walked again).
Zero mismatches. The
cluster-wide admin policies too: examples/multi-tenant and clusters mixing NetworkPolicies
with all three admin-policy kinds. Set DIFFERENTIAL_EXAMPLES (e.g. 5000) and
ADMIN_DIFFERENTIAL_EXAMPLES for a longer soak.
"""

from __future__ import annotations

import os
import uuid
from collections.abc import Iterator
from dataclasses import replace
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from netaddr import IPAddress

from sdn_netpol.inputs.manifests import load_paths
from sdn_netpol.model.objects import Protocol
from sdn_netpol.ovs import OvsInstance, Tracer
from sdn_netpol.policy.state import ClusterState
from tests.admin_strategies import admin_cluster_states
from tests.band_fixtures import every_match_in_all_bands
from tests.differential import Differential, create_bridges, load, stamp_of
from tests.ovs_fixtures import private_ovs
from tests.strategies import EXTERNAL_IPS, cluster_states, probes

EXAMPLES = int(os.environ.get("DIFFERENTIAL_EXAMPLES", "200"))
ADMIN_EXAMPLES = int(os.environ.get("ADMIN_DIFFERENTIAL_EXAMPLES", "120"))
REPO = Path(__file__).resolve().parent.parent


@pytest.fixture(scope="module")
def ovs(tmp_path_factory: pytest.TempPathFactory) -> Iterator[OvsInstance]:
    with private_ovs(tmp_path_factory.mktemp("diff-ovs"), "diff-ovs") as inst:
        create_bridges(inst, "df" + uuid.uuid4().hex[:3])
        yield inst


@pytest.fixture(scope="module")
def tracer(ovs: OvsInstance) -> Iterator[Tracer]:
    with Tracer(ovs) as t:
        yield t


def _differential(ovs: OvsInstance, tracer: Tracer, state: ClusterState, *earlier: ClusterState) -> Differential:
    """Checks `state`, established packets stamped under it (fast path) and under `earlier`
    states (stale fingerprints after a revocation: slow path)."""
    ovs.appctl("dpctl/flush-conntrack")
    stamps = [stamp_of(s) for s in (state, *earlier)]
    return Differential(tracer, state, load(ovs, state), stamps)


def _without(state: ClusterState, policies: int | None = None, cluster: bool = False) -> ClusterState:
    """`state` before its NetworkPolicies (all, or the first `policies` of them) and, with
    `cluster`, its cluster policies existed: what connections committed earlier carry."""
    kept = () if policies is None else state.policies[policies:]
    return ClusterState.build(state.namespaces, state.pods, list(kept), 0,
                              () if cluster else state.cluster_policies)


SEED_EXTERNALS = (IPAddress("172.17.0.9"), IPAddress("172.17.1.9"), IPAddress("172.17.2.9"),
                  IPAddress("10.0.0.7"), IPAddress("10.0.1.7"))


@pytest.mark.parametrize("example", sorted(p.name for p in (REPO / "flows").iterdir() if p.is_dir())
                         if (REPO / "flows").is_dir() else [])
def test_seed_example_is_enforced_exactly(ovs: OvsInstance, tracer: Tracer, example: str) -> None:
    parsed = ClusterState.from_parse(load_paths([REPO / "flows" / "cluster.yaml", REPO / "flows" / example]))
    # flows/cluster.yaml's node1/node2 are the differential's node-1/node-2 (without this, no pod
    # was local to a traced bridge and only outside-to-outside pairs, which are skipped, were left)
    pods = [replace(p, node_name=(p.node_name or "").replace("node", "node-")) for p in parsed.pods]
    state = ClusterState.build(parsed.namespaces, pods, parsed.policies, 0, parsed.cluster_policies)
    diff = _differential(ovs, tracer, state, _without(state))  # connections from before the policies
    assert len(diff.endpoints(())) == len(state.pods)
    protocols = (("TCP", 6379), ("TCP", 5978), ("TCP", 80), ("UDP", 6379), ("SCTP", 6379))
    assert diff.check(protocols, SEED_EXTERNALS) == []
    assert diff.check_replies("TCP", 6379) == []


def test_seed_examples_exist() -> None:
    """The golden examples drive the test above; an empty flows/ would silently test nothing."""
    examples = [p for p in (REPO / "flows").iterdir() if p.is_dir()]
    assert len(examples) >= 8


@settings(max_examples=EXAMPLES, deadline=None, suppress_health_check=list(HealthCheck))
@given(state=cluster_states(max_pods=6, max_policies=3))
def test_generated_clusters_are_enforced_exactly(ovs: OvsInstance, tracer: Tracer, state: ClusterState) -> None:
    diff = _differential(ovs, tracer, state, _without(state, 1))  # before the first policy came
    sample = probes(state)
    mismatches = diff.check(sample, EXTERNAL_IPS[::3]) + diff.check_replies("UDP", 53)
    assert mismatches == [], "\n".join(str(m) for m in mismatches[:10])


@settings(max_examples=max(EXAMPLES // 2, 1), deadline=None, suppress_health_check=list(HealthCheck))
@given(state=cluster_states(max_pods=6, max_policies=5))
def test_conjunctions_spread_over_priority_bands_are_enforced_exactly(ovs: OvsInstance, tracer: Tracer,
                                                                      state: ClusterState) -> None:
    """The same with every conjunction in a priority band of its own (real clusters need
    ~2,000 conjunctions on one match for that; compiler/bands.py): OVS must still find each
    conjunction in its band, below bands whose conjunctions do not complete."""
    with every_match_in_all_bands():
        diff = _differential(ovs, tracer, state, _without(state, 1))
        mismatches = diff.check(probes(state), EXTERNAL_IPS[::3]) + diff.check_replies("UDP", 53)
    assert mismatches == [], "\n".join(str(m) for m in mismatches[:10])


# ---- cluster-wide admin policies (issue 18): the tier tables around NetworkPolicy's ----------

def _on_nodes(state: ClusterState) -> ClusterState:
    """The example's pods spread over the differential's nodes by their addresses."""
    nodes = ("node-1", "node-2")
    pods = [replace(p, node_name=nodes[int(str(p.ips[0]).split(".")[2]) % 2]) for p in state.pods]
    return ClusterState.build(state.namespaces, pods, state.policies, 0, state.cluster_policies)


def test_the_multi_tenant_example_is_enforced_exactly(ovs: OvsInstance, tracer: Tracer) -> None:
    state = _on_nodes(ClusterState.from_parse(load_paths([REPO / "examples" / "multi-tenant"])))
    diff = _differential(ovs, tracer, state, _without(state, cluster=True))
    protocols: tuple[tuple[Protocol, int], ...] = (("TCP", 8080), ("TCP", 9100), ("UDP", 9100), ("SCTP", 8080))
    assert diff.check(protocols, (IPAddress("169.254.169.254"), IPAddress("10.0.0.7"))) == []
    assert diff.check_replies("TCP", 8080) == []


@settings(max_examples=ADMIN_EXAMPLES, deadline=None, suppress_health_check=list(HealthCheck))
@given(state=admin_cluster_states())
def test_generated_clusters_with_admin_policies_are_enforced_exactly(ovs: OvsInstance, tracer: Tracer,
                                                                     state: ClusterState) -> None:
    diff = _differential(ovs, tracer, state, _without(state, 0, cluster=True))  # before the cluster policies
    mismatches = diff.check(probes(state), EXTERNAL_IPS[::3]) + diff.check_replies("UDP", 53)
    assert mismatches == [], "\n".join(str(m) for m in mismatches[:10])
