"""Helpers for labs of another address family (`lab up --ip-family 6|dual`, issue 15).

- `OneFamily`: the same lab (same workdir) whose `probe` measures one family;
- `FamilyCluster`: tests/lab_fixtures.Cluster on such a lab: NetworkPolicies written for the
  IPv4 plan get their ipBlocks in IPv6 terms on an IPv6 lab (`families.policy_in_ipv6`, the
  rule of docs/lab.md), and every check probes each family the lab has;
- sockets and frames of either family from inside a pod (the IPv4-only ones of
  tests/lab_fixtures.py and sdn_netpol/lab/traffic.py, by destination address).
"""
from __future__ import annotations

import contextlib
import socket
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from sdn_netpol.lab import netns, probe
from sdn_netpol.lab.families import family_of, policy_in_ipv6
from sdn_netpol.lab.lab import Lab, ProbeReport
from sdn_netpol.lab.state import PodState
from tests.lab_fixtures import MODEL, Cluster

ETH_P = {4: 0x0800, 6: 0x86DD}
AF = {4: socket.AF_INET, 6: socket.AF_INET6}


class OneFamily(Lab):
    """The lab in `workdir`, probed in `family` unless a probe asks for another."""

    def __init__(self, workdir: Path, family: int) -> None:
        super().__init__(workdir)
        self.family = family

    def probe(self, protocol: str, port: int, timeout: float = probe.TIMEOUT,
              family: int | None = None) -> ProbeReport:
        return super().probe(protocol, port, timeout, family or self.family)


@contextlib.contextmanager
def family_lab(workdir: Path, ip_family: str, nodes: int = 3, model: Path = MODEL) -> Iterator[Lab]:
    made = Lab(workdir)
    try:
        made.up([model], nodes=nodes, ip_family=ip_family)
        yield made
    finally:
        made.down()


@dataclass
class FamilyCluster(Cluster):
    """A test's view of an IPv6 or dual-stack lab; `check` returns the first family's report
    (the cases pin values in it) after demanding measured == expected in every family."""

    def apply(self, *docs: dict[str, Any]) -> None:
        if self.lab.state().families == (6,):
            docs = tuple(policy_in_ipv6(doc) for doc in docs)
        super().apply(*docs)

    def check(self, protocol: str, port: int) -> ProbeReport:
        lab = self.lab
        reports = []
        try:
            for family in lab.state().families:
                self.lab = OneFamily(lab.workdir, family)
                report = super().check(protocol, port)
                assert report.measured.family == family, (report.measured.family, family)
                reports.append(report)
        finally:
            self.lab = lab
        return reports[0]


def connect(src: PodState, dst_ip: str, port: int, timeout: float = 3.0) -> socket.socket:
    sock = netns.socket_in(src.netns, AF[family_of(dst_ip)], socket.SOCK_STREAM)
    sock.settimeout(timeout)
    sock.connect((dst_ip, port))
    return sock


@contextlib.contextmanager
def sniffer(pod: PodState, family: int) -> Iterator[socket.socket]:
    """Every frame of `family` the pod's eth0 receives (and sends: see lab_fixtures.received)."""
    sock = netns.socket_in(pod.netns, socket.AF_PACKET, socket.SOCK_RAW, socket.htons(ETH_P[family]))
    try:
        sock.bind(("eth0", 0))
        sock.settimeout(0.2)
        yield sock
    finally:
        sock.close()
