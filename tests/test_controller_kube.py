"""The controller with `--source kube` against the wire-level fake API server (the
unchanged `kubernetes` client talks HTTP to it) and a real OVS: changes are realized
exactly, and every API fault (dropped, stalled, compacted, failing) converges again."""

from __future__ import annotations

import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from sdn_netpol.controller.sources.kube import RESOURCES
from tests.controller_fixtures import (
    BRIDGE,
    NODE,
    Controller,
    KubeCluster,
    StaticCluster,
    Switch,
    assert_flows_converge,
    controller,
    namespace_manifest,
    node_manifest,
    pod_manifest,
    policy_manifest,
    seed,
    wait_for,
)
from tests.fakekube import FakeKube

READ_TIMEOUT = "1.0"  # seconds of silence before a watch counts as stalled (fast tests)


@pytest.fixture
def fake() -> Iterator[FakeKube]:
    """The fake serves Namespaces, Pods, NetworkPolicies and Nodes, as the controller watches."""
    with FakeKube() as fk:
        yield fk


@pytest.fixture
def cluster(fake: FakeKube) -> KubeCluster:
    return KubeCluster(fake)


@pytest.fixture
def ctl(sw: Switch, fake: FakeKube, tmp_path: Path) -> Iterator[Controller]:
    kubeconfig = fake.write_kubeconfig(tmp_path / "kubeconfig")
    c = controller(sw, tmp_path, "kube", "--kubeconfig", str(kubeconfig), "--watch-read-timeout", READ_TIMEOUT)
    yield c
    c.stop()


def converged(sw: Switch, cluster: KubeCluster) -> None:
    assert_flows_converge(sw, lambda: cluster.expected(sw))


def restarts(ctl: Controller, reason: str) -> float:
    return sum(v for k, v in ctl.metrics().items()
               if k.startswith("sdn_netpol_watch_restarts_total") and f'reason="{reason}"' in k)


def lists(fake: FakeKube) -> int:
    return sum(1 for r in fake.request_log() if r.verb == "list")


def test_changes_are_realized_exactly(sw: Switch, cluster: KubeCluster, fake: FakeKube, ctl: Controller) -> None:
    seed(sw, cluster)
    ctl.start()
    converged(sw, cluster)
    sw.add_pod("x", "d", "10.244.1.4")
    cluster.apply(pod_manifest("x", "d", "10.244.1.4", app="web"))
    converged(sw, cluster)
    cluster.apply(pod_manifest("x", "d", "10.244.1.4", app="db"))
    converged(sw, cluster)
    cluster.apply({**policy_manifest("x", "from-b", "db", None),
                   "spec": {"podSelector": {"matchLabels": {"app": "db"}}, "policyTypes": ["Ingress"],
                            "ingress": [{"from": [{"namespaceSelector": {"matchLabels": {"team": "b"}}}]}]}})
    converged(sw, cluster)
    cluster.apply(namespace_manifest("y", team="c"))
    converged(sw, cluster)
    cluster.apply(policy_manifest("x", "db", "db", {"app": "web"}, port=8080))
    converged(sw, cluster)
    cluster.delete("NetworkPolicy", "x", "db")
    converged(sw, cluster)
    cluster.delete("Pod", "x", "d")
    sw.remove_pod("x", "d")
    converged(sw, cluster)
    assert set(ctl.status()["ports"]) == {"x/a", "x/b"}
    fake.send_bookmarks()  # every stream learns the newest resourceVersion: the state is complete up to it
    wait_for(lambda: ctl.status()["source_version"] == fake.resource_version, what="bookmarks to advance the version")


def test_restarted_controller_sends_no_flow_mod(sw: Switch, cluster: KubeCluster, ctl: Controller) -> None:
    seed(sw, cluster)
    ctl.start()
    converged(sw, cluster)
    installed = sw.flows()
    ctl.stop()
    ctl.start()
    wait_for(lambda: ctl.status()["realized_generation"], what="the restarted controller to realize")
    assert ctl.flow_mods_sent() == 0
    assert sw.flows() == installed


def test_restarted_ovs_gets_everything_back(sw: Switch, cluster: KubeCluster, ctl: Controller) -> None:
    seed(sw, cluster)
    ctl.start()
    converged(sw, cluster)
    sw.ovs.restart_vswitchd()
    converged(sw, cluster)


def test_dropped_watches_converge(sw: Switch, cluster: KubeCluster, fake: FakeKube, ctl: Controller) -> None:
    seed(sw, cluster)
    ctl.start()
    converged(sw, cluster)
    listed = lists(fake)
    # converged flows need every list, not every watch: a watch opened after the cut
    # would never see it
    assert fake.wait_for_watches(len(RESOURCES), timeout=60.0)
    fake.drop_watches()  # abrupt: truncated chunked bodies
    cluster.apply(pod_manifest("x", "b", "10.244.1.3", app="web"))
    converged(sw, cluster)
    fake.drop_watches(clean=True)  # the apiserver's own request timeout
    cluster.apply(policy_manifest("x", "db", "db", {"app": "db"}))
    converged(sw, cluster)
    # every watch the fake really cut counts one; a watch re-opening (after a stall of a
    # busy machine) when the cut came was not cut, and sees only the clean end
    cut = fake.abrupt_cuts
    assert cut >= 1
    wait_for(lambda: restarts(ctl, "dropped") >= cut, what="every cut watch to notice the cut")
    assert lists(fake) == listed  # resumed from the last resourceVersion, no relist


def test_stalled_watches_converge(sw: Switch, cluster: KubeCluster, fake: FakeKube, ctl: Controller) -> None:
    seed(sw, cluster)
    ctl.start()
    converged(sw, cluster)
    listed = lists(fake)
    stalled = restarts(ctl, "stalled")
    fake.stall_watches(2.5)
    cluster.apply(pod_manifest("x", "b", "10.244.1.3", app="web"), policy_manifest("x", "db", "db", {"app": "db"}))
    converged(sw, cluster)
    assert restarts(ctl, "stalled") > stalled
    assert lists(fake) == listed


def test_compacted_history_relists_and_converges(sw: Switch, cluster: KubeCluster, fake: FakeKube,
                                                 ctl: Controller) -> None:
    """Changes made while the watches were stalled, then lost with them (dropped after a
    compaction), come back through the 410 → relist path, deletions included."""
    seed(sw, cluster)
    ctl.start()
    converged(sw, cluster)
    listed = lists(fake)
    fake.stall_watches(30)
    cluster.delete("NetworkPolicy", "x", "db")
    cluster.delete("Namespace", "", "y")
    cluster.delete("Pod", "y", "r")
    cluster.apply(policy_manifest("x", "deny", "web", None))
    fake.compact()
    fake.drop_watches()
    wait_for(lambda: restarts(ctl, "expired") >= 4, what="410 on every resource")
    fake.stall_watches(0)
    converged(sw, cluster)
    assert lists(fake) >= listed + 4


def test_api_errors_back_off_and_converge(sw: Switch, cluster: KubeCluster, fake: FakeKube,
                                          ctl: Controller) -> None:
    seed(sw, cluster)
    fake.fail_next_lists(6)  # the first lists answer 500
    ctl.start()
    converged(sw, cluster)
    assert restarts(ctl, "http_500") == 6
    assert ctl.status()["errors"]["source"] is None
    fake.fail_next_lists(3, 503, include_watches=True)
    fake.drop_watches()
    cluster.apply(pod_manifest("x", "b", "10.244.1.3", app="web"))
    converged(sw, cluster)
    wait_for(lambda: restarts(ctl, "http_503") == 3, what="the three failed requests to be retried")
    wait_for(lambda: ctl.status()["errors"]["source"] is None, what="the source error to clear")
    assert ctl.status()["last_error"] is None


def test_invalid_policy_is_reported_and_last_valid_version_enforced(sw: Switch, cluster: KubeCluster,
                                                                    ctl: Controller) -> None:
    seed(sw, cluster)
    ctl.start()
    converged(sw, cluster)
    broken = policy_manifest("x", "db", "db", {"app": "web"})
    broken["spec"]["ingress"][0]["ports"] = [{"protocol": "TCP", "port": "http", "endPort": 90}]
    cluster.apply(broken)
    entry: dict[str, Any] = wait_for(lambda: next(iter(ctl.status()["invalid_objects"]), {}),
                                     what="the invalid policy in /status")
    assert (entry["kind"], entry["namespace"], entry["name"], entry["last_valid_enforced"]) == (
        "NetworkPolicy", "x", "db", True)
    assert entry["errors"][0]["path"].startswith("spec.ingress[0].ports[0]")
    cluster.apply(policy_manifest("x", "other", "web", {"app": "db"}))  # everything else is still enforced
    last_valid = [d for d in cluster.docs() if (d["kind"], d["metadata"]["name"]) != ("NetworkPolicy", "db")]
    last_valid.append(policy_manifest("x", "db", "db", {"app": "web"}))
    assert_flows_converge(sw, lambda: StaticCluster(last_valid).expected(sw))
    assert ctl.metrics()["sdn_netpol_invalid_objects"] == 1


def test_an_invalid_policy_gets_an_invalid_policy_event_with_the_field_path(
        sw: Switch, cluster: KubeCluster, fake: FakeKube, ctl: Controller) -> None:
    seed(sw, cluster)
    ctl.start()
    converged(sw, cluster)
    broken = policy_manifest("x", "db", "db", {"app": "web"})
    broken["spec"]["ingress"][0]["ports"] = [{"protocol": "TCP", "port": "http", "endPort": 90}]
    cluster.apply(broken)
    event: dict[str, Any] = wait_for(lambda: next(iter(fake.events), {}), what="an Event")
    assert (event["reason"], event["type"]) == ("InvalidPolicy", "Warning")
    involved = event["involvedObject"]
    assert (involved["kind"], involved["namespace"], involved["name"]) == ("NetworkPolicy", "x", "db")
    assert event["metadata"]["namespace"] == "x"
    assert "spec.ingress[0].ports[0]" in event["message"] and "endPort" in event["message"]
    cluster.apply(policy_manifest("x", "other", "web", {"app": "db"}))
    converged_once_more = ctl.status()
    assert converged_once_more["policies"]["x/db"]["invalid"] is True
    assert len(fake.events) == 1, "one Event per invalid version, not one per relist or change"
    ctl.stop()
    ctl.start()  # a restarted controller sees the same invalid version: the server has its Event already
    wait_for(lambda: ctl.status()["invalid_objects"], what="the invalid policy found again")
    assert ctl.status()["policies"]["x/db"]["invalid"] is True
    time.sleep(1)  # the Event is posted from a queue: give a duplicate the time to arrive
    assert len(fake.events) == 1, "one Event per invalid version, not one per controller restart"


def test_a_node_without_a_pod_cidr_is_reported_and_still_enforced(sw: Switch, cluster: KubeCluster,
                                                                   ctl: Controller) -> None:
    seed(sw, cluster)
    ctl.start()
    converged(sw, cluster)
    bare = node_manifest(NODE, "192.168.50.1", "10.244.1.0/24")
    del bare["spec"]["podCIDR"]
    cluster.apply(bare)
    message = wait_for(lambda: ctl.status()["errors"]["node"], what="the node error in /status")
    assert "spec.podCIDR is empty" in message and NODE in message
    cluster.apply(policy_manifest("x", "other", "web", {"app": "db"}))
    converged(sw, cluster)  # pods name their node: enforcement goes on


def test_a_controller_for_a_node_the_cluster_does_not_know_keeps_its_flows(
        sw: Switch, cluster: KubeCluster, ctl: Controller) -> None:
    """A DaemonSet without NODE_NAME falls back to the hostname: the controller must hold,
    not compute an empty node and delete every pod's flows."""
    seed(sw, cluster)
    ctl.start()
    converged(sw, cluster)
    before = sw.flows()
    cluster.delete("Node", "", NODE)
    message = wait_for(lambda: ctl.status()["errors"]["node"], what="the node error in /status")
    assert f"node {NODE!r} is not a valid Node of the cluster" in message and "NODE_NAME" in message
    assert ctl.status()["last_error"].startswith("node: ")
    assert ctl.metrics()['sdn_netpol_error{place="node"}'] == 1  # alertable
    cluster.apply(policy_manifest("x", "other", "web", {"app": "db"}))
    wait_for(lambda: ctl.status()["desired_generation"] > ctl.status()["realized_generation"],
             what="the change to be held back")
    assert sw.flows() == before
    cluster.apply(node_manifest(NODE, "192.168.50.1", "10.244.1.0/24"))
    converged(sw, cluster)
    wait_for(lambda: ctl.status()["errors"]["node"] is None, what="the node error to clear")
    assert ctl.metrics()['sdn_netpol_error{place="node"}'] == 0
    assert ctl.metrics()["sdn_netpol_desired_generation"] == ctl.status()["realized_generation"]


def test_a_bridge_missing_from_ovsdb_is_reported_and_the_existing_bridge_untouched(
        sw: Switch, cluster: KubeCluster, fake: FakeKube, tmp_path: Path) -> None:
    """A controller configured for a bridge OVSDB lacks (a conflist or flag naming the wrong
    one) says so, and when the real bridge connects to its address it programs nothing: the
    pods' flows stay as the last correct controller left them."""
    seed(sw, cluster)
    kubeconfig = fake.write_kubeconfig(tmp_path / "kubeconfig")
    (tmp_path / "good").mkdir()
    (tmp_path / "wrong").mkdir()
    good = controller(sw, tmp_path / "good", "kube", "--kubeconfig", str(kubeconfig))
    good.start()
    converged(sw, cluster)
    good.stop()
    before = sw.flows()
    wrong = controller(sw, tmp_path / "wrong", "kube", "--kubeconfig", str(kubeconfig), "--bridge", "br-missing")
    wrong.start()
    try:
        message = wait_for(lambda: wrong.status()["errors"]["ovsdb"], what="the missing bridge in /status")
        assert "bridge 'br-missing' does not exist in OVSDB" in message
        generation = wrong.status()["desired_generation"]
        cluster.apply(policy_manifest("x", "other", "web", {"app": "db"}))
        wait_for(lambda: wrong.status()["desired_generation"] > generation, what="the change to be seen")
        refused = wait_for(lambda: wrong.status()["errors"]["switch"], what="the other bridge refused in /status")
        assert f"(bridge {BRIDGE!r}) connected, but this controller serves 'br-missing': left untouched" in refused
        time.sleep(1.0)  # ample for a realization (tens of ms here) that must not happen
        assert wrong.status()["realized_generation"] is None and not wrong.status()["switch_connected"]
        after = sw.flows()
        assert after == before, (sorted(map(str, set(before.unordered()) - set(after.unordered())))[:5],
                                 sorted(map(str, set(after.unordered()) - set(before.unordered())))[:5])
    finally:
        wrong.stop()
