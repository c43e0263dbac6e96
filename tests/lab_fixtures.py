"""Helpers for the lab tests: manifests as dicts, apply/delete through the lab, probe checks.

Everything goes through the product path: the CNI plugin attached the pods, the
controllers (one per node, in its namespace) installed the flows, and the probes are real
packets between pod namespaces.
"""
from __future__ import annotations

import contextlib
import socket
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar

import yaml

from sdn_netpol.lab import netns, probe
from sdn_netpol.lab.lab import Lab, ProbeReport
from sdn_netpol.lab.state import PodState

ROOT = Path(__file__).resolve().parents[1]
MODEL = ROOT / "examples" / "conformance" / "model.yaml"
PODS = [f"{ns}/{p}" for ns in "xyz" for p in "abc"]
PACKET_OUTGOING = 4  # sll_pkttype of a frame the socket's own host sent


@contextlib.contextmanager
def lab_up(workdir: Path, nodes: int) -> Iterator[Lab]:
    """A lab of `nodes` nodes over the conformance model, taken down whatever happens."""
    made = Lab(workdir)
    try:
        made.up([MODEL], nodes=nodes)
        yield made
    finally:
        made.down()


def netpol(name: str, namespace: str, spec: dict[str, Any]) -> dict[str, Any]:
    return {"apiVersion": "networking.k8s.io/v1", "kind": "NetworkPolicy",
            "metadata": {"name": name, "namespace": namespace}, "spec": spec}


def deny_ingress(namespace: str) -> dict[str, Any]:
    return netpol("deny-ingress", namespace, {"podSelector": {}, "policyTypes": ["Ingress"]})


def pod_manifest(namespace: str, name: str, labels: dict[str, str], ports: list[tuple[str, int]]) -> dict[str, Any]:
    container_ports = [{"name": f"serve-{port}-{proto.lower()}", "containerPort": port, "protocol": proto}
                       for proto, port in ports]
    return {"apiVersion": "v1", "kind": "Pod", "metadata": {"name": name, "namespace": namespace, "labels": labels},
            "spec": {"containers": [{"name": "serve", "image": "lab/serve", "ports": container_ports}]}}


def namespace(name: str, labels: dict[str, str]) -> dict[str, Any]:
    return {"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": name, "labels": labels}}


@dataclass
class Cluster:
    """One test's view of the module's lab: what it applied is undone afterwards."""

    lab: Lab
    tmp: Path
    applied: list[dict[str, Any]] = field(default_factory=list)
    relabelled: bool = False
    counter: int = 0
    probe_seconds: ClassVar[float] = 5.0  # what a whole matrix may take on this lab

    def _file(self, docs: tuple[dict[str, Any], ...]) -> Path:
        self.counter += 1
        path = self.tmp / f"objects-{self.counter}.yaml"
        path.write_text(yaml.safe_dump_all(list(docs)))
        return path

    def apply(self, *docs: dict[str, Any]) -> None:
        self.lab.apply([self._file(docs)])
        for doc in docs:
            if doc["kind"] == "NetworkPolicy":
                self.applied.append(doc)
            else:
                self.relabelled = True

    def delete(self, *docs: dict[str, Any]) -> None:
        self.lab.delete([self._file(docs)])
        names = {(d["metadata"]["namespace"], d["metadata"]["name"]) for d in docs if d["kind"] == "NetworkPolicy"}
        self.applied = [d for d in self.applied
                        if (d["metadata"]["namespace"], d["metadata"]["name"]) not in names]

    def reset(self) -> None:
        if self.applied:
            self.delete(*self.applied)
        if self.relabelled:
            self.lab.apply([MODEL])  # labels back as the model says, pods in place
        self.verify()

    def check(self, protocol: str, port: int) -> ProbeReport:
        """Measured == expected, or a message naming every differing pair and what happened."""
        report = self.lab.probe(protocol, port)
        detail = [f"{s}->{d}: measured {report.outcomes.get((s, d))}, expected "
                  f"{'allowed' if report.expected.allowed[s][d] else 'denied'}" for s, d in report.mismatches]
        assert not report.mismatches, f"{protocol}/{port}: {len(detail)} mismatch(es):\n" + "\n".join(detail)
        assert report.seconds < self.probe_seconds, \
            f"a {len(report.measured.pods)}² probe took {report.seconds:.1f} s"
        self.verify()
        return report

    def run_probes(self, probes: list[probe.Probe], protocol: str, port: int) -> dict[probe.Probe, str]:
        """Chosen pairs only, from the pods' namespaces: `probe.run_probes`' outcomes."""
        return probe.run_probes(probes, protocol, port)

    def verify(self) -> None:
        """`lab verify`: no megaflow on any node contradicts the tables (docs/reliability.md)."""
        stale = [f"{node}: {s.describe()}" for node, r in self.lab.verify().items() for s in r.stale]
        assert not stale, f"{len(stale)} stale megaflow(s):\n" + "\n".join(stale)

    def pod(self, key: str) -> PodState:
        return self.lab.state().pods[key]


def allowed_pairs(report: ProbeReport) -> set[tuple[str, str]]:
    return {(s, d) for s in report.measured.pods for d in report.measured.pods if report.expected.allowed[s][d]}


def received(sock: socket.socket, marker: bytes, seconds: float = 1.0) -> list[bytes]:
    """Frames carrying `marker` that the pod receives within `seconds` (its own replies,
    which an AF_PACKET socket also sees, are left out)."""
    deadline = time.monotonic() + seconds
    found = []
    while time.monotonic() < deadline:
        try:
            frame, address = sock.recvfrom(65536)
        except TimeoutError:
            continue
        if marker in frame and address[2] != PACKET_OUTGOING:
            found.append(frame)
    return found



def send_frame(pod: PodState, frame: bytes) -> None:
    """Put a hand-made Ethernet frame on the wire from inside the pod (as a rogue
    process in the pod could)."""
    sock = netns.socket_in(pod.netns, socket.AF_PACKET, socket.SOCK_RAW, 0)
    with sock:
        sock.bind(("eth0", 0))
        sock.send(frame)
