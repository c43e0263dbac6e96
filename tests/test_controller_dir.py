"""The controller with `--source dir:PATH` on a real OVS: the switch always ends up holding
exactly compile_node's flows, and /status says which folder version it holds."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from sdn_netpol.controller.sources.directory import folder_version
from sdn_netpol.model.objects import PodKey
from tests.controller_fixtures import (
    Controller,
    CutProxy,
    FolderCluster,
    Switch,
    assert_flows_converge,
    controller,
    namespace_manifest,
    pod_manifest,
    policy_manifest,
    seed,
    wait_for,
)


@pytest.fixture
def cluster(folder_cluster: FolderCluster) -> FolderCluster:
    return folder_cluster


@pytest.fixture
def ctl(sw: Switch, cluster: FolderCluster, tmp_path: Path) -> Iterator[Controller]:
    c = controller(sw, tmp_path, f"dir:{cluster.path}")
    yield c
    c.stop()


def realized_version(ctl: Controller, version: str) -> bool:
    return bool(ctl.status()["source_version"] == version)


def test_changes_are_realized_exactly(sw: Switch, cluster: FolderCluster, ctl: Controller) -> None:
    seed(sw, cluster)
    ctl.start()
    assert_flows_converge(sw, lambda: cluster.expected(sw))
    wait_for(lambda: realized_version(ctl, folder_version(cluster.path)), what="the folder version in /status")
    assert ctl.status()["ports"] == {"x/a": sw.pods[PodKey("x", "a")].ofport, "x/b": sw.pods[PodKey("x", "b")].ofport}

    def step(what: str) -> None:
        assert_flows_converge(sw, lambda: cluster.expected(sw))
        wait_for(lambda: realized_version(ctl, folder_version(cluster.path)), what=f"version after {what}")

    sw.add_pod("x", "d", "10.244.1.4")
    cluster.apply(pod_manifest("x", "d", "10.244.1.4", app="web"))
    step("pod add")
    assert ctl.status()["ports"]["x/d"] == sw.pods[PodKey("x", "d")].ofport
    cluster.apply(pod_manifest("x", "d", "10.244.1.4", app="db"))
    step("pod relabel")
    cluster.apply({**policy_manifest("x", "from-b", "db", None),
                   "spec": {"podSelector": {"matchLabels": {"app": "db"}}, "policyTypes": ["Ingress"],
                            "ingress": [{"from": [{"namespaceSelector": {"matchLabels": {"team": "b"}}}]}]}})
    step("policy add")
    cluster.apply(namespace_manifest("y", team="c"))
    step("namespace relabel")
    cluster.apply(policy_manifest("x", "db", "db", {"app": "web"}, port=8080))
    step("policy update")
    cluster.delete("NetworkPolicy", "x", "db")
    step("policy delete")
    cluster.delete("Pod", "x", "d")
    sw.remove_pod("x", "d")
    step("pod delete")
    assert "x/d" not in ctl.status()["ports"]


def test_restarted_controller_sends_no_flow_mod(sw: Switch, cluster: FolderCluster, ctl: Controller) -> None:
    seed(sw, cluster)
    ctl.start()
    assert_flows_converge(sw, lambda: cluster.expected(sw))
    installed = sw.flows()
    assert ctl.flow_mods_sent() == len(installed)
    assert ctl.stop() == 0
    assert sw.flows() == installed  # fail_mode=secure: a controller outage leaves the flows
    ctl.start()
    wait_for(lambda: ctl.status()["realized_generation"], what="the restarted controller to realize")
    assert ctl.flow_mods_sent() == 0
    assert ctl.status()["flow_mods_sent"] == 0
    assert sw.flows() == installed


def test_restarted_ovs_gets_everything_back(sw: Switch, cluster: FolderCluster, ctl: Controller) -> None:
    seed(sw, cluster)
    ctl.start()
    assert_flows_converge(sw, lambda: cluster.expected(sw))
    before = ctl.flow_mods_sent()
    sw.ovs.restart_vswitchd()
    assert_flows_converge(sw, lambda: cluster.expected(sw))
    assert ctl.flow_mods_sent() == before + len(sw.flows())


def test_invalid_policy_is_reported_and_everything_else_enforced(sw: Switch, cluster: FolderCluster,
                                                                 ctl: Controller) -> None:
    seed(sw, cluster)
    ctl.start()
    assert_flows_converge(sw, lambda: cluster.expected(sw))
    bad = policy_manifest("x", "bad", "web", None)
    bad["spec"]["ingress"] = [{"from": [{"ipBlock": {"cidr": "172.17.0.0/16", "except": ["10.1.0.0/16"]}}]}]
    cluster.apply(bad)
    wait_for(lambda: realized_version(ctl, folder_version(cluster.path)), what="the bad policy's folder version")
    (entry,) = ctl.status()["invalid_objects"]
    assert (entry["kind"], entry["namespace"], entry["name"], entry["last_valid_enforced"]) == (
        "NetworkPolicy", "x", "bad", False)
    assert entry["errors"][0]["path"] == "spec.ingress[0].from[0].ipBlock.except[0]"
    assert "is not within 172.17.0.0/16" in entry["errors"][0]["text"]
    assert_flows_converge(sw, lambda: cluster.expected(sw))  # the model drops the bad one: same as ours

    enforced = cluster.expected(sw)
    broken = policy_manifest("x", "db", "db", {"app": "web"})
    broken["spec"]["ingress"][0]["ports"] = [{"protocol": "TCP", "port": 90, "endPort": 80}]
    cluster.apply(broken)  # an invalid update of a valid policy: its last valid version stays
    wait_for(lambda: realized_version(ctl, folder_version(cluster.path)), what="the broken update's version")
    invalid = {e["name"]: e for e in ctl.status()["invalid_objects"]}
    assert invalid["db"]["last_valid_enforced"] is True
    assert invalid["db"]["errors"][0]["path"].startswith("spec.ingress[0].ports[0]")
    assert sw.flows() == enforced
    assert ctl.metrics()["sdn_netpol_invalid_objects"] == 2

    cluster.apply(policy_manifest("x", "db", "db", {"app": "web"}, port=81))
    assert_flows_converge(sw, lambda: cluster.expected(sw))
    wait_for(lambda: [e["name"] for e in ctl.status()["invalid_objects"]] == ["bad"], what="db valid again")


def test_foreign_flows_are_removed_on_connect(sw: Switch, cluster: FolderCluster, ctl: Controller) -> None:
    """Reconciliation is exact: a stray flow, and one no Flow value expresses (NORMAL:
    the controller never relies on it), both go; nothing is flushed."""
    seed(sw, cluster)
    ctl.start()
    assert_flows_converge(sw, lambda: cluster.expected(sw))
    ctl.stop()
    sw.ovs.add_flows("br-int", "table=5,priority=7,ip actions=drop\ntable=0,priority=1 actions=NORMAL\n")
    ctl.start()
    assert_flows_converge(sw, lambda: cluster.expected(sw))
    assert ctl.metrics()['sdn_netpol_flow_mods_sent_total{command="delete"}'] == 2
    assert ctl.flow_mods_sent() == 2


def test_connection_cut_mid_bundle_ends_exact(sw: Switch, cluster: FolderCluster, tmp_path: Path) -> None:
    """The bridge talks to the controller through a relay that cuts the connection after
    the bundle has started: OVS discards the uncommitted bundle (atomic), and after the
    reconnect the controller reads the table and ends up exact."""
    proxy = CutProxy((sw.root_ip, 6654), (sw.root_ip, 6653))
    sw.set_controller(6654)
    ctl = controller(sw, tmp_path, f"dir:{cluster.path}")
    try:
        seed(sw, cluster)
        ctl.start()
        assert_flows_converge(sw, lambda: cluster.expected(sw))
        before = sw.flows()
        proxy.arm(after_bytes=1500)
        wide = policy_manifest("x", "wide", "web", None)
        wide["spec"]["ingress"] = [{"from": [{"ipBlock": {"cidr": f"10.50.{i}.0/24"}} for i in range(60)]}]
        cluster.apply(wide)
        assert proxy.cut.wait(10), "the relay never cut the connection"
        wait_for(lambda: not ctl.status()["switch_connected"], what="the controller to notice the cut")
        assert sw.flows() == before  # nothing of the half-sent bundle was applied
        proxy.release()
        assert_flows_converge(sw, lambda: cluster.expected(sw))
        wait_for(lambda: realized_version(ctl, folder_version(cluster.path)), what="realized after reconnect")
    finally:
        ctl.stop()
        proxy.close()


def test_unusable_openflow_address_fails_loudly(sw: Switch, cluster: FolderCluster, tmp_path: Path) -> None:
    """os-ken would only log a failed bind in a thread and run on, unreachable: instead the
    controller exits non-zero and says why."""
    ctl = controller(sw, tmp_path, f"dir:{cluster.path}", ofp_port=6653)
    ctl.args[ctl.args.index("--ofp-listen") + 1] = "192.0.2.1:6653"  # not an address of this host
    with pytest.raises(AssertionError, match="controller exited 1"):
        ctl.start()
    assert "cannot start: OSError" in ctl.log.read_text()


def test_a_pod_selected_by_thousands_of_rules_is_realized(sw: Switch, cluster: FolderCluster,
                                                          ctl: Controller) -> None:
    """4,200 policies admit one distinct /32 each to x/b on port 80: the pod's clause flow
    and `tcp,tp_dst=80` would each carry 4,200 conjunction() actions, more than one
    OpenFlow message holds (the realization failed and was retried forever). Spread over
    priority bands, every flow goes in and the switch holds exactly compile_node's flows."""
    seed(sw, cluster)
    ctl.start()
    assert_flows_converge(sw, lambda: cluster.expected(sw))
    policies = []
    for i in range(4_200):
        policy = policy_manifest("x", f"peer{i}", "db", None)
        policy["spec"]["ingress"] = [{"from": [{"ipBlock": {"cidr": f"172.16.{i // 250}.{i % 250 + 1}/32"}}],
                                      "ports": [{"protocol": "TCP", "port": 80}]}]
        policies.append(policy)
    cluster.apply(*policies)
    assert_flows_converge(sw, lambda: cluster.expected(sw), timeout=180)
    version = folder_version(cluster.path)
    wait_for(lambda: realized_version(ctl, version), timeout=60, what="the 4,200 policies realized")
    assert ctl.status()["last_error"] is None
    db = sw.pods[PodKey("x", "b")].ofport
    clauses = [f for f in sw.flows()
               if f.table == 60 and f.match.value("reg2") == db and f.match.value("conj_id") is None]
    assert len({f.priority for f in clauses}) > 1
    assert sum(len(f.actions) for f in clauses) == 4_200 + 1  # + the seed policy's own conjunction
