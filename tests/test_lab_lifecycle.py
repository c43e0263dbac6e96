"""`sdn-netpol lab` as a user drives it: separate CLI processes sharing state on disk.

A small 2-node lab over Geneve: placement (status.podIP, spec.nodeName, spread), the JSON
contract of `lab probe`, `status`, namespace deletion taking its pods, `up` over a crashed
lab (the CLI killed mid-way) cleaning up first, and `down` leaving nothing.
"""
from __future__ import annotations

import json
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml

from sdn_netpol.controller.sources.directory import folder_version
from sdn_netpol.lab import cleanup, hostlimits
from sdn_netpol.lab.lab import Lab
from sdn_netpol.lab.state import LabState
from tests.lab_fixtures import namespace, netpol, pod_manifest

PORTS = [("TCP", 80), ("UDP", 80)]


def model() -> list[dict[str, Any]]:
    fixed = pod_manifest("web", "fixed", {"app": "fixed"}, PORTS)
    fixed["spec"]["nodeName"] = "node1"  # status.podIP wins: it lies in node2's CIDR
    fixed["status"] = {"podIP": "10.244.2.50", "phase": "Running"}
    pinned = pod_manifest("web", "pinned", {"app": "pinned"}, PORTS)
    pinned["spec"]["nodeName"] = "node1"
    return [namespace("web", {"team": "web"}), namespace("db", {"team": "db"}), fixed, pinned,
            pod_manifest("web", "spread", {"app": "spread"}, PORTS),
            pod_manifest("db", "main", {"app": "db"}, PORTS), pod_manifest("db", "replica", {"app": "db"}, PORTS)]


def write(path: Path, docs: list[dict[str, Any]]) -> Path:
    path.write_text(yaml.safe_dump_all(docs))
    return path


def lab_cli(workdir: Path, *args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
    """The `lab` click group in a process of its own, as `sdn-netpol lab …` runs it."""
    code = "import sys; from sdn_netpol.cli.lab import lab; sys.exit(lab())"
    proc = subprocess.run([sys.executable, "-c", code, "--workdir", str(workdir), *args],
                          capture_output=True, text=True, timeout=180, check=False)
    assert not check or proc.returncode == 0, proc.stdout + proc.stderr
    return proc


@pytest.fixture(scope="module")
def workdir(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Path]:
    root = tmp_path_factory.mktemp("lablife")
    yield root
    Lab(root).down()


@pytest.fixture(scope="module")
def model_file(workdir: Path) -> Path:
    return write(workdir.parent / "lablife-model.yaml", model())


def test_up_places_pods_and_serves_them(workdir: Path, model_file: Path) -> None:
    out = lab_cli(workdir, "up", "-f", str(model_file), "--nodes", "2", "--tunnel", "geneve")
    assert "ready in" in out.stdout
    state = LabState.load(workdir)
    assert state is not None and state.tunnel == "geneve"
    placed = {k: (p.node, p.ip) for k, p in state.pods.items()}
    assert placed["web/fixed"] == ("node2", "10.244.2.50")
    assert placed["web/pinned"][0] == "node1"
    assert {placed["db/main"][0], placed["db/replica"][0]} == {"node1", "node2"}
    assert all(ip.startswith(f"10.244.{node[-1]}.") for node, ip in placed.values())
    rmem = hostlimits.read([hostlimits.RMEM_DEFAULT])[hostlimits.RMEM_DEFAULT]
    assert rmem >= hostlimits.RECEIVE_BUFFER, "the nodes' OVS sockets absorb bursts"


def test_probe_json_contract_across_geneve(workdir: Path) -> None:
    out = lab_cli(workdir, "probe", "--protocol", "udp", "--port", "80", "-o", "json")
    doc = json.loads(out.stdout)
    pods = ["db/main", "db/replica", "web/fixed", "web/pinned", "web/spread"]
    assert list(doc) == ["protocol", "port", "pods", "allowed", "expected", "mismatches"]
    assert (doc["protocol"], doc["port"], doc["pods"]) == ("UDP", 80, pods)
    assert doc["allowed"] == doc["expected"] == {s: dict.fromkeys(pods, True) for s in pods}
    assert doc["mismatches"] == []


def test_apply_returns_once_realized_and_mismatch_exit_code(workdir: Path) -> None:
    policy = write(workdir.parent / "deny-db.yaml", [netpol("deny", "db", {"podSelector": {},
                                                                          "policyTypes": ["Ingress"]})])
    out = lab_cli(workdir, "apply", "-f", str(policy))
    assert "NetworkPolicy db/deny created" in out.stdout
    doc = json.loads(lab_cli(workdir, "probe", "--port", "80", "-o", "json").stdout)
    assert doc["allowed"]["web/spread"]["db/main"] is False, "enforced as soon as apply returned"
    assert doc["allowed"]["db/main"]["db/main"] is True
    assert doc["mismatches"] == []
    # A measured difference (here: a pod cut off by its own link going down) shows in
    # mismatches and in the exit status.
    state = LabState.load(workdir)
    assert state is not None
    subprocess.run(["ip", "-n", state.pods["web/pinned"].netns, "link", "set", "eth0", "down"], check=True)
    bad = lab_cli(workdir, "probe", "--port", "80", "-o", "json", check=False)
    assert bad.returncode == 1
    assert ["web/spread", "web/pinned"] in json.loads(bad.stdout)["mismatches"]


def test_status_reports_every_node_realized(workdir: Path) -> None:
    doc = json.loads(lab_cli(workdir, "status", "-o", "json").stdout)
    assert [n["name"] for n in doc["nodes"]] == ["node1", "node2"]
    for node in doc["nodes"]:
        assert node["controller_running"] and node["controller"]["switch_connected"]
        assert node["controller"]["realized_generation"] == node["controller"]["desired_generation"]
        assert node["controller"]["last_error"] is None
    ports = {**doc["nodes"][0]["controller"]["ports"], **doc["nodes"][1]["controller"]["ports"]}
    assert sorted(ports) == sorted(doc["pods"])


def bulk_policies(count: int) -> list[dict[str, Any]]:
    """`count` policies on db's pods, each with a port of its own; the middle one lets web/spread in on 80."""
    docs = []
    for i in range(count):
        peer: dict[str, Any] = {"ipBlock": {"cidr": f"192.168.{i // 250}.{i % 250}/32"}}
        port = 2000 + i
        if i == count // 2:
            peer = {"namespaceSelector": {"matchLabels": {"team": "web"}},
                    "podSelector": {"matchLabels": {"app": "spread"}}}
            port = 80
        docs.append(netpol(f"bulk-{i:04d}", "db", {"podSelector": {"matchLabels": {"app": "db"}},
                                                   "ingress": [{"from": [peer], "ports": [{"port": port}]}]}))
    return docs


def test_a_bulk_apply_is_realized_exactly_on_every_node(workdir: Path) -> None:
    """300 policies in one `apply` (issue 17.4): every node enforces every one of them when it
    returns, an unchanged re-apply changes nothing, and the bulk delete takes them all away."""
    policies = write(workdir.parent / "bulk.yaml", bulk_policies(300))
    out = lab_cli(workdir, "apply", "-f", str(policies))
    assert out.stdout.count(" created\n") == 300
    state = LabState.load(workdir)
    assert state is not None
    version = folder_version(state.manifests)
    doc = json.loads(lab_cli(workdir, "status", "-o", "json").stdout)
    for node in doc["nodes"]:
        ctl = node["controller"]
        assert ctl["source_version"] == version and ctl["realized_generation"] == ctl["desired_generation"]
        bulk = {k: v for k, v in ctl["policies"].items() if k.startswith("db/bulk-")}
        assert len(bulk) == 300 and all(v["realized"] for v in bulk.values())
    probe = json.loads(lab_cli(workdir, "probe", "--port", "80", "-o", "json", check=False).stdout)
    assert probe["allowed"]["web/spread"]["db/main"] is True and probe["allowed"]["web/fixed"]["db/main"] is False
    assert all("web/pinned" in pair for pair in probe["mismatches"]), "only the pod whose link is down differs"
    again = lab_cli(workdir, "apply", "-f", str(policies))
    assert again.stdout.count(" configured\n") == 300
    assert folder_version(state.manifests) == version, "an unchanged object is not written again"
    lab_cli(workdir, "delete", "-f", str(policies))
    probe = json.loads(lab_cli(workdir, "probe", "--port", "80", "-o", "json", check=False).stdout)
    assert probe["allowed"]["web/spread"]["db/main"] is False
    assert all("web/pinned" in pair for pair in probe["mismatches"])


def test_deleting_a_namespace_deletes_its_pods(workdir: Path) -> None:
    out = lab_cli(workdir, "delete", "-f", str(write(workdir.parent / "ns-db.yaml", [namespace("db", {})])))
    assert "Pod db/main deleted" in out.stdout and "Namespace db deleted" in out.stdout
    state = LabState.load(workdir)
    assert state is not None and sorted(state.pods) == ["web/fixed", "web/pinned", "web/spread"]
    assert not any(n.endswith(("db.main", "db.replica")) for n in cleanup.leftovers(workdir)["netns"])


def test_up_after_a_crash_cleans_up_first(workdir: Path, model_file: Path) -> None:
    """Kill `lab up` half-way (SIGKILL: no cleanup of its own), then `up` again."""
    code = "import sys; from sdn_netpol.cli.lab import lab; sys.exit(lab())"
    crashed = subprocess.Popen([sys.executable, "-c", code, "--workdir", str(workdir), "up", "-f", str(model_file),
                                "--nodes", "2"], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline and not any(".main" in n for n in cleanup.leftovers(workdir)["netns"]):
        time.sleep(0.05)
    crashed.kill()
    crashed.wait()
    assert cleanup.leftovers(workdir)["processes"], "the crash left processes behind"
    lab_cli(workdir, "up", "-f", str(model_file), "--nodes", "2")
    state = LabState.load(workdir)
    assert state is not None
    expected = {str(p) for n in state.nodes for p in (n.controller_pid,)}
    expected |= {str(p.server_pid) for p in state.pods.values()}
    found = {line.split()[0] for line in cleanup.leftovers(workdir)["processes"]}
    ovs_daemons = {pid for pid in found if pid not in expected}
    assert len(ovs_daemons) == 4, f"exactly one ovsdb-server and one vswitchd per node: {found - expected}"
    assert expected <= found
    doc = json.loads(lab_cli(workdir, "probe", "--port", "80", "-o", "json").stdout)
    assert len(doc["pods"]) == 5 and doc["mismatches"] == []


def test_down_leaves_nothing(workdir: Path) -> None:
    state = LabState.load(workdir)
    assert state is not None
    original = hostlimits.originals()
    out = lab_cli(workdir, "down")
    if hostlimits.originals():  # another lab (a second test run on this machine) relies on them
        assert hostlimits.originals() == original
    else:
        assert hostlimits.read(original) == original, "the host settings as they were before any lab"
    assert "lab down" in out.stdout
    assert cleanup.leftovers(workdir) == {"netns": [], "processes": []}
    assert lab_cli(workdir, "probe", "--port", "80", check=False).returncode == 1
