"""Pods from podman (CNI network backend) on a lab node (docs/runtimes.md).

A private podman 4.3 (runc, file locks, config, storage and runc state under
/tmp/sdn-netpol-runtimes/podman) runs a container on a CNI network whose conflist names
`sdn-netpol-cni`; the container joins node2's br-int with an address from node2's range.
podman names the container in CNI_ARGS (K8S_POD_NAME) but sends no namespace: the lab's
wrapper adds K8S_POD_NAMESPACE=y, so the container is pod y/pm. Its manifest is published
with node and IP, and the lab's controllers enforce NetworkPolicy on it with real packets.
"""

from __future__ import annotations

import socket
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from sdn_netpol.lab import netns, procs
from sdn_netpol.lab.lab import Lab
from sdn_netpol.lab.state import NodeState
from tests import runtimes
from tests.lab_fixtures import Cluster, lab_up, netpol
from tests.runtimes import Podman, RuntimePod

NODE = "node2"
NAMESPACE = "y"
TIMINGS: dict[str, float] = {}


@pytest.fixture(scope="module")
def lab(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Lab]:
    with lab_up(tmp_path_factory.mktemp("lab"), 2) as made:
        yield made


@pytest.fixture(scope="module")
def node(lab: Lab) -> NodeState:
    return lab.state().node(NODE)


@pytest.fixture(scope="module")
def engine(lab: Lab, node: NodeState) -> Iterator[Podman]:
    with runtimes.podman(node, NAMESPACE) as made:
        yield made
        TIMINGS.update(runtimes.plugin_timings(made.cni))
    print("\npodman figures: " + ", ".join(f"{k} {v:.2f} s" for k, v in TIMINGS.items()))


@pytest.fixture(scope="module")
def cluster(lab: Lab, tmp_path_factory: pytest.TempPathFactory) -> Cluster:
    return Cluster(lab, tmp_path_factory.mktemp("objects"))


@pytest.fixture(scope="module")
def container(engine: Podman, lab: Lab, cluster: Cluster) -> Iterator[RuntimePod]:
    """`podman run --network sdn-netpol` of container pm, published as pod y/pm (label pod=pm)."""
    begin = time.monotonic()
    engine.run_container("pm")
    TIMINGS["podman run"] = time.monotonic() - begin
    doc = engine.inspect("pm")
    settings = doc["NetworkSettings"]
    pod = RuntimePod(NAMESPACE, "pm", NODE, settings["SandboxKey"], settings["Networks"][runtimes.NETWORK]["IPAddress"],
                     doc["Id"], {"pod": "pm"})
    begin = time.monotonic()
    runtimes.adopt(lab, pod, cluster.tmp)
    TIMINGS["published and realized"] = time.monotonic() - begin
    yield pod
    if pod.key in lab.state().pods:
        runtimes.forget(lab, pod)


def test_container_is_attached_by_the_plugin(engine: Podman, node: NodeState, container: RuntimePod) -> None:
    doc = engine.inspect("pm")
    assert doc["State"]["Status"] == "running"
    network = doc["NetworkSettings"]["Networks"][runtimes.NETWORK]
    assert network["IPAddress"].startswith("10.244.2.") and network["Gateway"] == node.gateway
    add = runtimes.assert_attached(node, container, engine.cni)
    assert network["MacAddress"] == runtimes.pod_link(container.netns_name)["mac"]  # podman read our result
    args = add.args_map
    assert args["K8S_POD_NAME"] == "pm"  # from podman
    assert args["K8S_POD_NAMESPACE"] == NAMESPACE  # from the wrapper: podman sends none
    assert add.netns.startswith("/run/netns/netns-")
    # the engine ran from its private root and cgroup parent
    conmon = [p for p in procs.find_marked([str(engine.root) + "/"]) if procs.cmdline(p)[0].endswith("conmon")]
    assert len(conmon) == 1
    assert (runtimes.CGROUP_FS / "pids" / engine.cgroup_parent.strip("/") / f"libpod-{container.container_id}").is_dir()


def test_policy_is_enforced_on_the_podman_pod(lab: Lab, cluster: Cluster, container: RuntimePod) -> None:
    """Ingress to y/pm from namespace x only; egress from y/pm to pods labelled c only.
    The 10-pod TCP/80 matrix equals the engine's; pinned pairs both ways, both nodes."""
    placed = {k: p.node for k, p in lab.state().pods.items()}
    assert (placed["x/b"], placed["x/a"], placed["y/a"]) == (NODE, "node1", "node2")
    cluster.apply(
        netpol("pm-ingress", NAMESPACE, {
            "podSelector": {"matchLabels": {"pod": "pm"}}, "policyTypes": ["Ingress"],
            "ingress": [{"from": [{"namespaceSelector": {"matchLabels": {"ns": "x"}}}]}]}),
        netpol("pm-egress", NAMESPACE, {
            "podSelector": {"matchLabels": {"pod": "pm"}}, "policyTypes": ["Egress"],
            "egress": [{"to": [{"namespaceSelector": {}, "podSelector": {"matchLabels": {"pod": "c"}}}]}]}))
    try:
        begin = time.monotonic()
        report = lab.probe("TCP", 80)
        TIMINGS["10x10 probe"] = time.monotonic() - begin
        assert "y/pm" in report.measured.pods
        assert not report.mismatches, [(s, d, report.outcomes.get((s, d))) for s, d in report.mismatches]
        outcome = report.outcomes
        assert outcome[("x/b", "y/pm")] == "refused"  # allowed, same node: its kernel answers (no server)
        assert outcome[("x/a", "y/pm")] == "refused"  # allowed, across the tunnel
        assert outcome[("y/a", "y/pm")] == "timeout"  # denied: its own namespace, same node
        assert outcome[("z/a", "y/pm")] == "timeout"  # denied, across the tunnel
        assert outcome[("y/pm", "y/c")] == "connected"  # allowed egress, same node
        assert outcome[("y/pm", "z/c")] == "connected"  # allowed egress, across the tunnel
        assert outcome[("y/pm", "x/b")] == "timeout"  # denied egress, same node
        assert outcome[("y/pm", "x/a")] == "timeout"  # denied egress, across the tunnel
        assert outcome[("y/a", "y/b")] == "connected"  # lab pods untouched
        target = lab.state().pods["z/c"]
        with netns.socket_in(container.netns_name, socket.AF_INET, socket.SOCK_STREAM) as sock:
            sock.settimeout(5.0)
            sock.connect((target.ip, 80))
            sock.sendall(b"from a podman container")
            assert sock.recv(100) == b"from a podman container"
    finally:
        cluster.reset()


def test_stop_and_remove_detach_the_container(engine: Podman, lab: Lab, node: NodeState,
                                              container: RuntimePod) -> None:
    """`podman stop` sends DEL (with the netns), `podman rm` removes the rest; nothing of
    the pod is left on the node, and the lab forgets it."""
    begin = time.monotonic()
    engine.podman("stop", "--time", "10", "pm")
    TIMINGS["podman stop"] = time.monotonic() - begin

    def dels() -> list[runtimes.Invocation]:
        return [i for i in engine.cni.invocations() if i.command == "DEL" and i.container_id == container.container_id]

    assert procs.wait_for(dels, 30.0), "no DEL after podman stop"
    dels = dels()
    assert len(dels) == 1 and dels[0].rc == 0, dels
    assert dels[0].netns == container.netns_path
    assert dels[0].args_map.get("K8S_POD_NAME") == "pm"
    runtimes.assert_detached(node, container)
    engine.podman("rm", "pm")
    assert not Path(container.netns_path).exists()
    assert not list((runtimes.CGROUP_FS / "pids" / engine.cgroup_parent.strip("/")).glob("libpod-*"))
    runtimes.assert_detached(node, container)
    runtimes.forget(lab, container)
    report = lab.probe("TCP", 80)
    assert "y/pm" not in report.measured.pods and not report.mismatches
