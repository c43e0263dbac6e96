"""The controller keeps the datapath under the tables (controller/datapath.py), on a real OVS:
a change is realized only once the megaflows are purged, a purge that cannot be done is
reported and retried without touching the installed flows, and the megaflows are verified
on a bounded interval."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from sdn_netpol.controller.sources.directory import folder_version
from tests.controller_fixtures import (
    Controller,
    FolderCluster,
    Switch,
    assert_flows_converge,
    controller,
    policy_manifest,
    seed,
    wait_for,
)


@pytest.fixture
def cluster(folder_cluster: FolderCluster) -> FolderCluster:
    return folder_cluster


def _start(sw: Switch, cluster: FolderCluster, tmp_path: Path, *extra: str) -> Controller:
    seed(sw, cluster)
    return controller(sw, tmp_path, f"dir:{cluster.path}", *extra).start()


def _failed_purges(ctl: Controller) -> float:
    return ctl.metrics().get('sdn_netpol_datapath_purges_total{result="failed"}', 0.0)


def test_each_change_is_realized_only_after_a_purge_on_an_affected_switch(
        sw: Switch, cluster: FolderCluster, tmp_path: Path) -> None:
    ctl = _start(sw, cluster, tmp_path)
    try:
        wait_for(lambda: ctl.status()["source_version"] == folder_version(cluster.path), what="first realization")
        before = ctl.status()["datapath"]
        assert before["mode"] == "auto" and before["ovs_version"], before
        assert before["purge_after_change"] is True, "OVS 3.1.0 userspace: purge after each change"
        cluster.apply(policy_manifest("x", "db", "db", {"app": "web"}, port=8080))
        wait_for(lambda: ctl.status()["source_version"] == folder_version(cluster.path), what="the policy realized")
        after = ctl.status()["datapath"]
        assert after["purges"] > before["purges"] and after["error"] is None
        assert ctl.metrics()['sdn_netpol_datapath_purges_total{result="ok"}'] == after["purges"]
    finally:
        ctl.stop()


def test_a_purge_that_fails_is_reported_and_retried_and_removes_no_flow(
        sw: Switch, cluster: FolderCluster, tmp_path: Path) -> None:
    """No vswitchd control socket where the controller looks: the flows still go in (the
    bundle is not undone), /status names the datapath error and holds the generation back;
    once the socket is there, the retry purges and the change is realized."""
    nowhere = tmp_path / "not-yet-vswitchd"
    nowhere.mkdir()
    ctl = _start(sw, cluster, tmp_path, "--ovs-rundir", str(nowhere), "--datapath-purge", "purge")
    try:
        assert_flows_converge(sw, lambda: cluster.expected(sw))
        wait_for(lambda: _failed_purges(ctl) >= 2, what="a failed purge, retried")
        status = ctl.status()
        assert status["errors"]["datapath"] and "purge failed" in status["errors"]["datapath"], status["errors"]
        assert status["realized_generation"] is None, "not realized while the datapath may disagree"
        assert sw.flows() == cluster.expected(sw), "flows already installed stay"

        pid = (sw.ovs.rundir / "ovs-vswitchd.pid").read_text().strip()
        for name in ("ovs-vswitchd.pid", f"ovs-vswitchd.{pid}.ctl"):
            os.symlink(sw.ovs.rundir / name, nowhere / name)
        wait_for(lambda: ctl.status()["source_version"] == folder_version(cluster.path), timeout=45,
                 what="realized after the retry")
        status = ctl.status()
        assert status["errors"]["datapath"] is None and status["datapath"]["purges"] >= 1
        assert sw.flows() == cluster.expected(sw)
    finally:
        ctl.stop()


def test_megaflows_are_verified_on_an_interval_and_counted(
        sw: Switch, cluster: FolderCluster, tmp_path: Path) -> None:
    ctl = _start(sw, cluster, tmp_path, "--datapath-verify-interval", "0.3")
    try:
        wait_for(lambda: ctl.status()["datapath"]["last_verify"] is not None, what="a verification")
        verified = ctl.status()["datapath"]["last_verify"]
        assert verified["stale"] == 0 and verified["checked"] >= 0
        samples = ctl.metrics()
        assert samples["sdn_netpol_datapath_stale_flows"] == 0
        assert "sdn_netpol_datapath_verified_flows" in samples
    finally:
        ctl.stop()
