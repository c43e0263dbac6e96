"""The differential tests on OVS's kernel datapath (issue 16, point 2), in a qemu VM.

The same check as tests/test_differential_ovs.py (tests/differential.py: compile every
node's flows, load them with `--bundle replace-flows`, `ofproto/trace` new, established,
reply and invalid packets, compare with `decide()`), but the two node bridges are
`datapath_type=system` bridges of the VM's system OVS, on the guest kernel's openvswitch
module: translation runs against what the kernel datapath supports (its conntrack, its
tunnel ports), not the userspace one's. The engine runs on the host; only the switch is in
the VM (sdn_netpol/lab/vmovs.py). The seed examples and >= 50 generated clusters
(KERNEL_DIFFERENTIAL_EXAMPLES for more); zero mismatches.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from dataclasses import replace
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings

from sdn_netpol.compiler.compile import compile_node
from sdn_netpol.compiler.ofctl import render_flows
from sdn_netpol.inputs.manifests import load_paths
from sdn_netpol.lab.vm import Vm, VmGroup
from sdn_netpol.lab.vmovs import VmSwitch, VmTracer
from sdn_netpol.policy.state import ClusterState
from tests.differential import NODES, Differential, bridge_name, create_bridges, node_contexts
from tests.strategies import EXTERNAL_IPS, cluster_states, probes
from tests.test_differential_ovs import SEED_EXTERNALS

EXAMPLES = int(os.environ.get("KERNEL_DIFFERENTIAL_EXAMPLES", "50"))
REPO = Path(__file__).resolve().parent.parent
SEED_PROTOCOLS = (("TCP", 6379), ("TCP", 5978), ("TCP", 80), ("UDP", 6379), ("SCTP", 6379))


@pytest.fixture(scope="module")
def vm(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Vm]:
    with VmGroup(tmp_path_factory.mktemp("kdiff"), ["kdiff"], underlay=False).start() as group:
        yield group.vms["kdiff"]


@pytest.fixture(scope="module")
def switch(vm: Vm) -> VmSwitch:
    sw = VmSwitch(vm)
    create_bridges(sw, "kd")  # type: ignore[arg-type]  (VmSwitch has the OvsInstance calls used)
    return sw


@pytest.fixture(scope="module")
def tracer(vm: Vm) -> Iterator[VmTracer]:
    """One connection for the module: qemu serves one client per port at a time."""
    with VmTracer(vm) as t:
        yield t


def _differential(switch: VmSwitch, tracer: VmTracer, state: ClusterState) -> Differential:
    """Each node's flows compiled for the kernel datapath (what the controller does when its
    bridge's datapath_type is "" or "system") and loaded as one bundle."""
    switch.appctl("dpctl/flush-conntrack")
    contexts = {node: replace(ctx, datapath="system") for node, ctx in node_contexts(state).items()}
    for node, ctx in contexts.items():
        switch.replace_flows(bridge_name(node), render_flows(compile_node(state, ctx)))
    return Differential(tracer, state, contexts)  # type: ignore[arg-type]


def test_bridges_are_on_the_kernel_datapath(switch: VmSwitch) -> None:
    """Not a userspace bridge in disguise: the kernel's ovs-system datapath holds the ports."""
    shown = switch.appctl("dpif/show")
    assert "system@ovs-system" in shown
    assert "netdev@" not in shown
    for node in NODES:
        assert switch.vsctl("get", "Bridge", bridge_name(node), "datapath_type").strip() == "system"
    assert "openvswitch" in switch.vm.check(["cat", "/proc/modules"])


@pytest.mark.parametrize("example", sorted(p.name for p in (REPO / "flows").iterdir() if p.is_dir()))
def test_seed_example_is_enforced_exactly(switch: VmSwitch, tracer: VmTracer, example: str) -> None:
    state = ClusterState.from_parse(load_paths([REPO / "flows" / "cluster.yaml", REPO / "flows" / example]))
    diff = _differential(switch, tracer, state)
    mismatches = diff.check(SEED_PROTOCOLS, SEED_EXTERNALS) + diff.check_replies("TCP", 6379)
    assert mismatches == [], "\n".join(str(m) for m in mismatches[:10])


@settings(max_examples=EXAMPLES, deadline=None, suppress_health_check=list(HealthCheck))
@given(state=cluster_states(max_pods=6, max_policies=3))
def test_generated_clusters_are_enforced_exactly(switch: VmSwitch, tracer: VmTracer, state: ClusterState) -> None:
    diff = _differential(switch, tracer, state)
    mismatches = diff.check(probes(state), EXTERNAL_IPS[::3]) + diff.check_replies("UDP", 53)
    assert mismatches == [], "\n".join(str(m) for m in mismatches[:10])
