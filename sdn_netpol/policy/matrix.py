"""The reachability matrix of every pod pair for one protocol and port (DESIGN.md contract)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from sdn_netpol.model.objects import Protocol
from sdn_netpol.policy.state import ClusterState
from sdn_netpol.policy.verdict import Endpoint, decide


@dataclass(frozen=True)
class Matrix:
    protocol: Protocol
    port: int
    pods: tuple[str, ...]
    allowed: dict[str, dict[str, bool]]

    def to_json(self) -> dict[str, Any]:
        """Exactly the shape other tools rely on: protocol, port, pods, allowed[from][to]."""
        return {
            "protocol": self.protocol,
            "port": self.port,
            "pods": list(self.pods),
            "allowed": {src: dict(row) for src, row in self.allowed.items()},
        }

    def differences(self, other: Matrix) -> list[tuple[str, str]]:
        return [
            (src, dst)
            for src in self.pods
            for dst in self.pods
            if self.allowed[src][dst] != other.allowed.get(src, {}).get(dst)
        ]


def build_matrix(state: ClusterState, protocol: Protocol, port: int) -> Matrix:
    pods = sorted(state.pods, key=lambda p: f"{p.namespace}/{p.name}")  # the strings are sorted (DESIGN.md)
    names = tuple(f"{p.namespace}/{p.name}" for p in pods)
    allowed: dict[str, dict[str, bool]] = {}
    for src, src_name in zip(pods, names, strict=True):
        row = {}
        for dst, dst_name in zip(pods, names, strict=True):
            row[dst_name] = decide(state, Endpoint(pod=src), Endpoint(pod=dst), protocol, port).allowed
        allowed[src_name] = row
    return Matrix(protocol, port, names, allowed)
