"""tests/kernel_fixtures.py without VMs: the calls the conformance cases make of a lab reach a
VmLab as it takes them (documents, refs, one guest command per node), and what comes back is
read as the cases read it (a stale megaflow fails the check). No root, no qemu."""
from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from sdn_netpol.lab import probe
from sdn_netpol.lab.store import ObjectRef
from sdn_netpol.lab.vm import Vm
from sdn_netpol.lab.vmlab import VmLab, VmPod
from tests.kernel_fixtures import KernelCluster, KernelLab
from tests.lab_fixtures import netpol


class GuestsOnRecord(VmLab):
    """A VmLab whose nodes answer from a script and whose changes are recorded."""

    def __init__(self, workdir: Path, stale: list[dict[str, Any]]) -> None:
        super().__init__(workdir)
        self.pods = {"x/a": VmPod("x/a", "node1", "10.244.1.2", "aa:01", "pod-xa"),
                     "y/a": VmPod("y/a", "node2", "10.244.2.2", "aa:02", "pod-ya")}
        self.stale = stale
        self.calls: list[tuple[str, Any]] = []

    @property
    def vms(self) -> dict[str, Vm]:
        return {"node1": None, "node2": None}  # type: ignore[dict-item]  (only the names are used)

    def guest(self, node: str, command: str, request: dict[str, Any], timeout: float = 300.0) -> Any:
        self.calls.append((node, (command, request)))
        if command == "status":
            return {"pods": {k: {"server_running": k == "x/a", "server_pid": 4000 + len(k),
                                 "ports": ["TCP:80", "SCTP:81"]} for k, p in self.pods.items() if p.node == node}}
        assert command == "probe"
        return {s: {d: "connected" if s == "x/a" else "timeout"} for s, d in request["pairs"]}

    def apply(self, objects: Any) -> None:
        self.calls.append(("apply", list(objects)))

    def delete(self, refs: Any) -> None:
        self.calls.append(("delete", list(refs)))

    def verify(self) -> dict[str, dict[str, Any]]:
        return {"node1": {"checked": 12, "unverifiable": 0, "stale": self.stale},
                "node2": {"checked": 9, "unverifiable": 0, "stale": []}}


def test_the_cases_calls_reach_the_vm_lab(tmp_path: Path) -> None:
    vm = GuestsOnRecord(tmp_path, [])
    cluster = KernelCluster(KernelLab(vm), tmp_path)  # type: ignore[arg-type]
    policy = netpol("p", "x", {"podSelector": {}})
    cluster.apply(policy)
    cluster.delete(policy)
    assert vm.calls == [("apply", [policy]), ("delete", [ObjectRef("NetworkPolicy", "x", "p")])]
    assert cluster.applied == []

    xa, ya = cluster.pod("x/a"), cluster.pod("y/a")
    assert (ya.node, ya.ip, ya.mac, ya.netns, ya.ports) == ("node2", "10.244.2.2", "aa:02", "pod-ya",
                                                            [("TCP", 80), ("SCTP", 81)])
    assert (xa.server_pid, ya.server_pid) == (4003, None)  # a stopped server has no pid
    assert KernelLab(vm).state().families == (4,)

    vm.calls.clear()
    there = probe.Probe("x/a", "y/a", xa.netns, ya.ip)
    back = probe.Probe("y/a", "x/a", ya.netns, xa.ip)
    assert cluster.run_probes([there, back], "SCTP", 80) == {there: "connected", back: "timeout"}
    assert vm.calls == [  # each from its source pod's node, to the address the case gave
        ("node1", ("probe", {"protocol": "SCTP", "port": 80, "targets": {"y/a": "10.244.2.2"},
                             "pairs": [["x/a", "y/a"]]})),
        ("node2", ("probe", {"protocol": "SCTP", "port": 80, "targets": {"x/a": "10.244.1.2"},
                             "pairs": [["y/a", "x/a"]]}))]


def test_a_stale_kernel_megaflow_fails_the_check(tmp_path: Path) -> None:
    stale = [{"key": "in_port(3),ipv4(src=10.244.2.2)", "installed": "4", "expected": "drop", "packets": 7}]
    KernelCluster(KernelLab(GuestsOnRecord(tmp_path, [])), tmp_path).verify()  # type: ignore[arg-type]  (passes)
    cluster = KernelCluster(KernelLab(GuestsOnRecord(tmp_path, stale)), tmp_path)  # type: ignore[arg-type]
    said = r"(?s)1 stale megaflow.*node1: in_port\(3\).*installed 4, tables say drop"
    with pytest.raises(AssertionError, match=said):
        cluster.verify()
