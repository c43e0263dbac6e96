"""Pods from containerd's CRI, the kubelet's own path, on a lab node (docs/runtimes.md).

A private containerd 1.6 (everything under /tmp/sdn-netpol-runtimes/containerd) runs pod
sandboxes from an offline pause image; its CRI plugin calls `sdn-netpol-cni` for each
one, and the pod joins node1's br-int with an address from node1's range. The test plays
the kubelet: RunPodSandbox over gRPC with the pod's metadata, its status report
(the manifest with node and IP), StopPodSandbox twice and RemovePodSandbox. The lab's
controllers enforce NetworkPolicy on that pod with real packets, as on the lab's own pods.
"""

from __future__ import annotations

import socket
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from sdn_netpol.lab import netns
from sdn_netpol.lab.lab import Lab
from sdn_netpol.lab.state import NodeState
from tests import runtimes
from tests.cri import SANDBOX_READY
from tests.lab_fixtures import Cluster, lab_up, netpol
from tests.runtimes import Containerd, RuntimePod

NODE = "node1"
TIMINGS: dict[str, float] = {}


@pytest.fixture(scope="module")
def lab(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Lab]:
    with lab_up(tmp_path_factory.mktemp("lab"), 2) as made:
        yield made


@pytest.fixture(scope="module")
def node(lab: Lab) -> NodeState:
    return lab.state().node(NODE)


@pytest.fixture(scope="module")
def cri(lab: Lab, node: NodeState) -> Iterator[Containerd]:
    with runtimes.containerd(node) as made:
        TIMINGS["containerd start"] = made.started_in
        yield made
        TIMINGS.update(runtimes.plugin_timings(made.cni))
    print("\ncontainerd figures: " + ", ".join(f"{k} {v:.2f} s" for k, v in TIMINGS.items()))


@pytest.fixture(scope="module")
def cluster(lab: Lab, tmp_path_factory: pytest.TempPathFactory) -> Cluster:
    return Cluster(lab, tmp_path_factory.mktemp("objects"))


@pytest.fixture(scope="module")
def sandbox(cri: Containerd, lab: Lab, cluster: Cluster) -> Iterator[RuntimePod]:
    """Pod x/cri (label pod=cri) started by RunPodSandbox and published as the kubelet
    would once the sandbox has its IP."""
    begin = time.monotonic()
    sandbox_id = cri.run_sandbox("x", "cri", {"pod": "cri"})
    TIMINGS["RunPodSandbox"] = time.monotonic() - begin
    status = cri.client.pod_sandbox_status(sandbox_id)
    pod = RuntimePod("x", "cri", NODE, status.netns_path, status.ip, sandbox_id, {"pod": "cri"})
    begin = time.monotonic()
    runtimes.adopt(lab, pod, cluster.tmp)
    TIMINGS["published and realized"] = time.monotonic() - begin
    yield pod
    if pod.key in lab.state().pods:
        runtimes.forget(lab, pod)


def test_sandbox_is_attached_by_the_plugin(cri: Containerd, node: NodeState, sandbox: RuntimePod) -> None:
    version = cri.client.version()
    assert (version["runtime_name"], version["runtime_api_version"]) == ("containerd", "v1")
    status = cri.client.pod_sandbox_status(sandbox.container_id)
    assert (status.state, status.namespace, status.name) == (SANDBOX_READY, "x", "cri")
    assert status.ip.startswith("10.244.1.") and status.ip != node.gateway
    add = runtimes.assert_attached(node, sandbox, cri.cni)
    # what the kubelet's pod identity looks like on the wire, and what the plugin kept of it
    args = add.args_map
    assert (args["K8S_POD_NAMESPACE"], args["K8S_POD_NAME"]) == ("x", "cri")
    assert args["K8S_POD_INFRA_CONTAINER_ID"] == sandbox.container_id
    assert args["K8S_POD_UID"] and args["IgnoreUnknown"] == "1"
    assert add.netns.startswith("/var/run/netns/cni-")
    # the sandbox runs in the private cgroup parent, runc keeps its state in the private root
    assert (runtimes.CGROUP_FS / "pids" / cri.cgroup_parent.strip("/") / sandbox.container_id).is_dir()
    assert (cri.root / "runc" / "k8s.io" / sandbox.container_id / "state.json").is_file()
    # containerd read our result: the CRI status reports the plugin's interface and address
    eth0 = status.info["cniResult"]["Interfaces"]["eth0"]
    assert eth0["IPConfigs"][0]["IP"] == sandbox.ip
    assert eth0["IPConfigs"][0]["Gateway"] == node.gateway
    assert eth0["Sandbox"] == sandbox.netns_path


def test_policy_is_enforced_on_the_cri_pod(lab: Lab, cluster: Cluster, sandbox: RuntimePod) -> None:
    """Ingress to x/cri from pods labelled a in x only; egress from x/cri to namespace y
    only. The whole 10-pod TCP/80 matrix, measured with real packets, equals the engine's;
    pinned: the allowed and denied pairs each way, same node and across the tunnel."""
    placed = {k: p.node for k, p in lab.state().pods.items()}
    assert (placed["x/a"], placed["x/c"], placed["x/b"]) == (NODE, NODE, "node2")
    cluster.apply(
        netpol("cri-ingress", "x", {
            "podSelector": {"matchLabels": {"pod": "cri"}}, "policyTypes": ["Ingress"],
            "ingress": [{"from": [{"podSelector": {"matchLabels": {"pod": "a"}}}],
                         "ports": [{"protocol": "TCP", "port": 80}]}]}),
        netpol("cri-egress", "x", {
            "podSelector": {"matchLabels": {"pod": "cri"}}, "policyTypes": ["Egress"],
            "egress": [{"to": [{"namespaceSelector": {"matchLabels": {"ns": "y"}}}],
                        "ports": [{"protocol": "TCP", "port": 80}]}]}))
    try:
        begin = time.monotonic()
        report = lab.probe("TCP", 80)
        TIMINGS["10x10 probe"] = time.monotonic() - begin
        assert "x/cri" in report.measured.pods
        assert not report.mismatches, [(s, d, report.outcomes.get((s, d))) for s, d in report.mismatches]
        outcome = report.outcomes
        assert outcome[("x/a", "x/cri")] == "refused"  # allowed, same node: its kernel answers (no server)
        assert outcome[("x/c", "x/cri")] == "timeout"  # denied, same node
        assert outcome[("x/b", "x/cri")] == "timeout"  # denied, across the tunnel
        assert outcome[("y/a", "x/cri")] == "timeout"  # pod=a, but not in x
        assert outcome[("x/cri", "y/a")] == "connected"  # allowed egress (y/a on node2)
        assert outcome[("x/cri", "y/b")] == "connected"  # allowed egress (y/b on node1)
        assert outcome[("x/cri", "x/a")] == "timeout"  # denied egress
        assert outcome[("x/a", "x/b")] == "connected"  # lab pods untouched
        # a real exchange from inside the sandbox's own network namespace
        target = lab.state().pods["y/a"]
        with netns.socket_in(sandbox.netns_name, socket.AF_INET, socket.SOCK_STREAM) as sock:
            sock.settimeout(5.0)
            sock.connect((target.ip, 80))
            sock.sendall(b"from a containerd sandbox")
            assert sock.recv(100) == b"from a containerd sandbox"
    finally:
        cluster.reset()


def test_stop_and_remove_send_del_each_time(cri: Containerd, lab: Lab, node: NodeState,
                                            sandbox: RuntimePod) -> None:
    """The kubelet stops a sandbox and may stop it again (a retry, the garbage collector)
    before removing it: containerd sends DEL for each call, the later ones without a
    netns. Every one succeeds, and nothing of the pod is left on the node."""
    begin = time.monotonic()
    cri.client.stop_pod_sandbox(sandbox.container_id)
    TIMINGS["StopPodSandbox"] = time.monotonic() - begin
    runtimes.assert_detached(node, sandbox)
    assert not Path(sandbox.netns_path).exists()
    cri.client.stop_pod_sandbox(sandbox.container_id)
    cri.client.remove_pod_sandbox(sandbox.container_id)
    assert sandbox.container_id not in cri.client.list_pod_sandbox_ids()
    dels = [i for i in cri.cni.invocations() if i.command == "DEL" and i.container_id == sandbox.container_id]
    assert len(dels) >= 2, dels
    assert all(d.rc == 0 for d in dels), dels
    assert dels[0].netns == sandbox.netns_path
    assert all(d.netns == "" for d in dels[1:]), dels
    assert all(d.args_map.get("K8S_POD_NAME") == "cri" for d in dels)
    runtimes.assert_detached(node, sandbox)
    runtimes.forget(lab, sandbox)  # the API server deletes the pod: every node realizes it
    report = lab.probe("TCP", 80)
    assert "x/cri" not in report.measured.pods and not report.mismatches

