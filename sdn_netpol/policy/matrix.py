"""The reachability matrix of every pod pair for one protocol and port (DESIGN.md contract)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from sdn_netpol.model.objects import Protocol
from sdn_netpol.policy.state import ClusterState
from sdn_netpol.policy.verdict import Endpoint, address_of_family, decide


@dataclass(frozen=True)
class Matrix:
    protocol: Protocol
    port: int
    pods: tuple[str, ...]
    allowed: dict[str, dict[str, bool]]
    family: int | None = None  # the family every pair was evaluated in; None: mixed, or no address
    family_shown: bool = False  # `family` goes into the JSON (docs/cli.md: when IPv6 is involved)

    def to_json(self) -> dict[str, Any]:
        """Exactly the shape other tools rely on: protocol, port, pods, allowed[from][to];
        `family` after them where IPv6 is involved (docs/cli.md)."""
        doc: dict[str, Any] = {
            "protocol": self.protocol,
            "port": self.port,
            "pods": list(self.pods),
            "allowed": {src: dict(row) for src, row in self.allowed.items()},
        }
        if self.family_shown:
            doc["family"] = self.family
        return doc

    def differences(self, other: Matrix) -> list[tuple[str, str]]:
        return [
            (src, dst)
            for src in self.pods
            for dst in self.pods
            if self.allowed[src][dst] != other.allowed.get(src, {}).get(dst)
        ]


def build_matrix(state: ClusterState, protocol: Protocol, port: int, family: int | None = None) -> Matrix:
    """Every pair in `family` (4 or 6; FamilyError naming the first pod, in sorted order, that
    has addresses but none of that family), or else each pair in the first family both ends
    have (docs/semantics.md)."""
    pods = sorted(state.pods, key=lambda p: f"{p.namespace}/{p.name}")  # the strings are sorted (DESIGN.md)
    names = tuple(f"{p.namespace}/{p.name}" for p in pods)
    if family is not None:
        for pod in pods:
            address_of_family(Endpoint(pod=pod), family)
    allowed: dict[str, dict[str, bool]] = {}
    used: set[int] = set()
    for src, src_name in zip(pods, names, strict=True):
        row = {}
        for dst, dst_name in zip(pods, names, strict=True):
            verdict = decide(state, Endpoint(pod=src), Endpoint(pod=dst), protocol, port, family)
            row[dst_name] = verdict.allowed
            if verdict.family is not None:
                used.add(verdict.family)
        allowed[src_name] = row
    evaluated = family if family is not None else (next(iter(used)) if len(used) == 1 else None)
    shown = family is not None or any(ip.version == 6 for p in pods for ip in p.ips)
    return Matrix(protocol, port, names, allowed, evaluated, shown)

