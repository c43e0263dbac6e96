"""The lab-test cases (tests/test_lab_conformance.py) on a kernel-datapath lab (issue 16).

`KernelLab` shows a `VmLab` (sdn_netpol/lab/vmlab.py: nodes as qemu VMs) through the calls
that tests/lab_fixtures.Cluster and the cases make of the netdev `Lab`: `apply`/`delete` of
manifest files, `probe`, `verify`, `state` (pods with node, IP, MAC, netns, server pid) and
chosen pairs probed from the pods' namespaces. `KernelCluster` is the case's view of it.
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any, ClassVar

import yaml

from sdn_netpol.lab import probe
from sdn_netpol.lab.lab import ProbeReport
from sdn_netpol.lab.state import PodState
from sdn_netpol.lab.store import ref_of
from sdn_netpol.lab.vmlab import VmLab
from tests.lab_fixtures import Cluster


def _docs(paths: list[Path]) -> list[dict[str, Any]]:
    return [doc for path in paths for doc in yaml.safe_load_all(path.read_text()) if doc]


@dataclass
class Stale:
    """A kernel megaflow whose actions differ from a fresh translation of its key."""

    key: str
    installed: str
    expected: str
    packets: int

    def describe(self) -> str:
        return f"{self.key}: installed {self.installed}, tables say {self.expected} ({self.packets} packets)"


@dataclass
class Verified:
    checked: int
    stale: list[Stale]


@dataclass
class KernelState:
    """What the cases read of `Lab.state()`: the lab's families and its pods."""

    pods: dict[str, PodState]
    families: tuple[int, ...] = (4,)  # a kernel lab is IPv4 (docs/lab.md, "Kernel datapath")


@dataclass
class KernelLab:
    vm: VmLab

    @property
    def workdir(self) -> Path:
        return self.vm.workdir

    def apply(self, paths: list[Path]) -> None:
        self.vm.apply(_docs(paths))

    def delete(self, paths: list[Path]) -> None:
        self.vm.delete([ref_of(doc) for doc in _docs(paths)])

    def probe(self, protocol: str, port: int) -> ProbeReport:
        return self.vm.probe(protocol, port)

    def verify(self) -> dict[str, Verified]:
        return {node: Verified(found["checked"], [Stale(**s) for s in found["stale"]])
                for node, found in self.vm.verify().items()}

    def state(self) -> KernelState:
        """The pods as their nodes know them (the guests' own records: netns, ports, server)."""
        pods = {}
        for node in self.vm.vms:
            for key, doc in self.vm.guest(node, "status", {})["pods"].items():
                pod = self.vm.pods[key]
                ports = [(proto, int(port)) for proto, port in (p.split(":") for p in doc["ports"])]
                pods[key] = PodState(key, node, pod.netns, "", pod.ip, pod.mac, ports,
                                     doc["server_pid"] if doc["server_running"] else None)
        return KernelState(pods)

    def run_probes(self, probes: list[probe.Probe], protocol: str, port: int) -> dict[probe.Probe, str]:
        """Each probe from its source pod's VM (the guest's `probe`, confirmation included)."""
        found: dict[probe.Probe, str] = {}
        for node in self.vm.vms:
            mine = [p for p in probes if self.vm.pods[p.source].node == node]
            if not mine:
                continue
            got = self.vm.guest(node, "probe", {"protocol": protocol, "port": port,
                                                "targets": {p.destination: p.dst_ip for p in mine},
                                                "pairs": [[p.source, p.destination] for p in mine]})
            found.update({p: got.get(p.source, {}).get(p.destination, "missing") for p in mine})
        return found


@dataclass
class KernelCluster(Cluster):
    """tests/lab_fixtures.Cluster on a kernel lab (IPv4: one family, no rewriting)."""

    # `lab` is a KernelLab: the calls Cluster makes of a Lab, answered by a VmLab.
    # A matrix with a denied pair waits the guests' 5 s confirmation (vmguest.CONFIRM_TIMEOUT)
    # on top of the first 1.5 s try, each VM probing from its pods on an emulated CPU.
    probe_seconds: ClassVar[float] = 20.0

    def run_probes(self, probes: list[probe.Probe], protocol: str, port: int) -> dict[probe.Probe, str]:
        return self.lab.run_probes(probes, protocol, port)
