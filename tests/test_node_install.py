"""`sdn-netpol node setup` and `node install-cni`, as the DaemonSet's init containers run
them (deploy/daemonset.yaml): on a real OVS, with the installed plugin run by the host's
own python3, outside the project's venv."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from sdn_netpol.node import cni_install
from tests.cni_fixtures import Node, host_end, node_with_ovs, run_ip

HOST_PYTHON = "/usr/bin/python3"
POD_CIDR = "10.244.7.0/24"


def sdn_netpol(*args: str) -> subprocess.CompletedProcess[str]:
    code = "import sys; from sdn_netpol.cli import main; sys.exit(main())"
    return subprocess.run([sys.executable, "-c", code, *args], capture_output=True, text=True, timeout=120,
                          check=False)


def host_env() -> dict[str, str]:
    """What a kubelet's runtime gives a plugin: no venv, no PYTHONPATH."""
    return {k: v for k, v in os.environ.items() if k not in ("VIRTUAL_ENV", "PYTHONPATH", "PYTHONHOME")} | {
        "PATH": "/usr/sbin:/usr/bin:/sbin:/bin"}


@pytest.fixture(scope="module")
def node(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Node]:
    with node_with_ovs(tmp_path_factory.mktemp("node-ovs")) as made:
        yield made


@pytest.fixture
def ovsdb(node: Node) -> str:
    return f"unix:{node.ovs.db_sock}"


def test_setup_makes_a_secure_bridge_with_a_flow_based_tunnel_and_the_controller(node: Node, ovsdb: str) -> None:
    node.ovs.vsctl("--if-exists", "del-br", "br-setup")
    out = sdn_netpol("node", "setup", "--ovsdb", ovsdb, "--bridge", "br-setup", "--datapath-type", "netdev",
                     "--tunnel", "geneve", "--controller", "tcp:127.0.0.1:6699")
    assert out.returncode == 0, out.stderr
    assert "(set)" in out.stdout
    assert node.ovs.vsctl("get", "Bridge", "br-setup", "fail_mode").strip() == "secure"
    assert node.ovs.vsctl("get", "Interface", "tun0", "type").strip() == "geneve"
    assert node.ovs.vsctl("get", "Interface", "tun0", "options:remote_ip").strip().strip('"') == "flow"
    assert node.ovs.vsctl("get-controller", "br-setup").split() == ["tcp:127.0.0.1:6699"]


def test_setup_again_keeps_every_flow(node: Node, ovsdb: str) -> None:
    """A restarted DaemonSet pod runs setup again: set-controller would wipe the table."""
    args = ("node", "setup", "--ovsdb", ovsdb, "--bridge", "br-again", "--tunnel-port", "tun1",
            "--datapath-type", "netdev", "--controller", "tcp:127.0.0.1:6698")
    assert sdn_netpol(*args).returncode == 0
    node.ovs.add_flows("br-again", "table=0,priority=7,ip,actions=drop\n")
    again = sdn_netpol(*args)
    assert again.returncode == 0 and "unchanged, flows kept" in again.stdout
    assert "priority=7,ip actions=drop" in node.ovs.ofctl("dump-flows", "br-again")


def test_install_cni_writes_plugin_and_conflist_for_the_nodes_cidr(node: Node, ovsdb: str, tmp_path: Path) -> None:
    bin_dir, conf_dir = tmp_path / "bin", tmp_path / "net.d"
    for _ in range(2):  # idempotent: a restarted init container installs over the old files
        out = sdn_netpol("node", "install-cni", "--node", "node-7", "--pod-cidr", POD_CIDR, "--ovsdb", ovsdb,
                         "--cni-bin-dir", str(bin_dir), "--cni-conf-dir", str(conf_dir))
        assert out.returncode == 0, out.stderr
    assert sorted(p.name for p in bin_dir.iterdir()) == ["sdn-netpol-cni"], "no temporary file left"
    assert sorted(p.name for p in conf_dir.iterdir()) == ["10-sdn-netpol.conflist"]
    assert (bin_dir / "sdn-netpol-cni").stat().st_mode & 0o777 == 0o755
    doc = json.loads((conf_dir / "10-sdn-netpol.conflist").read_text())
    [plugin] = doc["plugins"]
    assert (doc["cniVersion"], plugin["type"], plugin["bridge"], plugin["ovsdb"]) == (
        "1.0.0", "sdn-netpol-cni", "br-int", ovsdb)
    assert plugin["ipam"]["ranges"] == [[{"subnet": POD_CIDR, "rangeEnd": "10.244.7.253", "gateway": "10.244.7.254"}]]


def test_the_installed_plugin_attaches_a_pod_on_the_hosts_python(node: Node, ovsdb: str, tmp_path: Path) -> None:
    bin_dir, conf_dir = tmp_path / "bin", tmp_path / "net.d"
    out = sdn_netpol("node", "install-cni", "--pod-cidr", POD_CIDR, "--ovsdb", ovsdb,
                     "--cni-bin-dir", str(bin_dir), "--cni-conf-dir", str(conf_dir))
    assert out.returncode == 0, out.stderr
    listed = json.loads((conf_dir / "10-sdn-netpol.conflist").read_text())
    conf: dict[str, Any] = {**listed["plugins"][0], "name": listed["name"], "cniVersion": listed["cniVersion"]}
    conf["ipam"]["dataDir"] = str(tmp_path / "ipam")
    conf.pop("capabilities")
    plugin = [HOST_PYTHON, str(bin_dir / "sdn-netpol-cni")]
    version = node.cni("VERSION", b"{}", plugin=plugin, env=host_env())
    assert version.rc == 0 and "1.0.0" in version.doc["supportedVersions"], version.stderr
    netns = node.new_pod_netns()
    cid = f"inst{os.getpid()}"
    kw: dict[str, Any] = {"container_id": cid, "netns": netns, "plugin": plugin, "env": host_env(),
                          "args": "K8S_POD_NAMESPACE=web;K8S_POD_NAME=installed"}
    added = node.cni("ADD", conf, **kw)
    assert added.rc == 0, added.stdout + added.stderr
    assert added.doc["ips"][0]["address"].startswith("10.244.7.")
    assert host_end(cid) in node.ports()
    assert node.external_ids(host_end(cid))["iface-id"] == "web/installed"
    for _ in range(2):  # the runtime may send DEL twice
        deleted = node.cni("DEL", conf, **kw)
        assert deleted.rc == 0, deleted.stdout + deleted.stderr
    assert host_end(cid) not in node.ports()
    run_ip("netns", "del", netns, check=False)


def test_install_cni_refuses_a_missing_bridge_a_missing_node_name_and_a_bad_cidr(ovsdb: str, tmp_path: Path) -> None:
    dirs = ("--cni-bin-dir", str(tmp_path / "bin"), "--cni-conf-dir", str(tmp_path / "net.d"))
    cases = {
        ("--pod-cidr", POD_CIDR, "--bridge", "br-missing", "--ovsdb", ovsdb): "bridge 'br-missing' does not exist",
        ("--ovsdb", ovsdb): "node name missing: pass --node or set NODE_NAME",
        ("--pod-cidr", "10.244.7.0/33", "--ovsdb", ovsdb): "--pod-cidr[0]: '10.244.7.0/33' is not a CIDR",
    }
    for args, message in cases.items():
        out = sdn_netpol("node", "install-cni", *args, *dirs)
        assert out.returncode == 2 and message in out.stderr, out.stderr
        assert "Traceback" not in out.stderr
        assert len(out.stderr.strip().splitlines()) == 1
    assert not (tmp_path / "net.d").exists(), "nothing installed"


def test_a_node_without_a_pod_cidr_names_the_field() -> None:
    with pytest.raises(cni_install.InstallError, match=r"node n1: spec\.podCIDR is empty"):
        cni_install.parse_pod_cidrs("n1", [])
