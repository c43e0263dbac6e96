"""Per-rule and per-isolation counters, read from the switch's own flow statistics.

Which flows count (docs/pipeline.md, "Cookies"): a rule's ``conj_id=`` flows and its
priority-300 direct allows are hit once per packet the rule admitted; its clause flows
(``conjunction(…)`` actions) are never counted by OVS. An isolated pod's drop flow in
EgressDefault/IngressDefault counts the packets no rule admitted. Everything is selected on
the switch by cookie category, so a node's other flows are never transferred.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from typing import Any

from sdn_netpol.compiler.pipeline import MASK_CATEGORY, CookieCategory, Table, cookie, decode_cookie
from sdn_netpol.debug.names import Names
from sdn_netpol.model.cluster_objects import CLUSTER_KINDS
from sdn_netpol.ovs.dumpflows import DumpedFlow

FILTERS = tuple(f"cookie={cookie(c):#x}/{MASK_CATEGORY:#x}"
                for c in (CookieCategory.RULE, CookieCategory.ISOLATION, CookieCategory.AUDIT))
_DEFAULT_TABLES = (Table.EGRESS_DEFAULT, Table.INGRESS_DEFAULT)


@dataclass(frozen=True)
class RuleStat:
    node: str
    namespace: str
    policy: str
    direction: str
    rule: int
    packets: int
    bytes: int

    def to_json(self) -> dict[str, Any]:
        return {"node": self.node, "namespace": self.namespace, "policy": self.policy, "direction": self.direction,
                "rule": self.rule, "packets": self.packets, "bytes": self.bytes}


@dataclass(frozen=True)
class IsolationDrop:
    node: str
    namespace: str
    pod: str
    direction: str
    packets: int
    bytes: int

    def to_json(self) -> dict[str, Any]:
        return {"node": self.node, "namespace": self.namespace, "pod": self.pod, "direction": self.direction,
                "packets": self.packets, "bytes": self.bytes}


@dataclass(frozen=True)
class Stats:
    rules: tuple[RuleStat, ...]
    isolation_drops: tuple[IsolationDrop, ...]

    def to_json(self) -> dict[str, Any]:
        return {"rules": [r.to_json() for r in self.rules],
                "isolation_drops": [d.to_json() for d in self.isolation_drops]}


def counted(flow: DumpedFlow) -> bool:
    """A flow whose n_packets means something: not a conjunction clause."""
    return "conjunction(" not in flow.actions


def aggregate(node: str, flows: Iterable[DumpedFlow], names: Names) -> Stats:
    rules: dict[tuple[str, str, int], list[int]] = defaultdict(lambda: [0, 0])
    drops: dict[tuple[str, str], list[int]] = defaultdict(lambda: [0, 0])
    for flow in flows:
        info = decode_cookie(flow.cookie)
        if info.category == CookieCategory.RULE and counted(flow) and info.direction is not None:
            policy = names.policy(info.object_id)
            if policy is not None and info.rule_index is not None:
                total = rules[(policy, info.direction, info.rule_index)]
                total[0] += flow.n_packets
                total[1] += flow.n_bytes
        elif info.category == CookieCategory.ISOLATION or (
                info.category == CookieCategory.AUDIT and flow.table in _DEFAULT_TABLES):
            # an audited pod's new connections are dropped by its audit copy flow (above the drop)
            pod = names.pod(info.object_id)
            direction = "Egress" if flow.table == Table.EGRESS_DEFAULT else "Ingress"
            if pod is not None:
                total = drops[(pod, direction)]
                total[0] += flow.n_packets
                total[1] += flow.n_bytes
    return Stats(
        tuple(RuleStat(node, *_split(p), d, r, n, b) for (p, d, r), (n, b) in sorted(rules.items())),
        tuple(IsolationDrop(node, *_split(p), d, n, b) for (p, d), (n, b) in sorted(drops.items())))


def _split(ref: str) -> tuple[str, str]:
    """NS/NAME → (NS, NAME); a cluster-scoped admin policy's Kind/NAME → ("", Kind/NAME)."""
    namespace, _, name = ref.partition("/")
    return ("", ref) if namespace in CLUSTER_KINDS else (namespace, name)


def read(node: str, dump: Callable[[str], Sequence[DumpedFlow]], names: Names) -> Stats:
    """`dump(cookie_filter)` runs ``dump-flows BR cookie=C/M`` on the node's switch."""
    return aggregate(node, [f for spec in FILTERS for f in dump(spec)], names)


def merge(parts: Iterable[Stats]) -> Stats:
    parts = list(parts)
    return Stats(tuple(r for s in parts for r in s.rules), tuple(d for s in parts for d in s.isolation_drops))
