"""The installed flows of one policy, one rule or one pod, selected by cookie, with counters.

Cookies identify owners (compiler/pipeline.py): ``ovs-ofctl dump-flows BR cookie=C/M``
selects them on the switch itself, so a node with 100k flows returns only the ones asked
for. A rule's *shared* clause flows (one match several rules need: SHARED cookie) are
found through the conjunction ids of the rule's own ``conj_id=`` flows.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

from sdn_netpol.compiler.pipeline import (
    MASK_ALL,
    MASK_OBJECT,
    RULE_EGRESS_BIT,
    CookieCategory,
    cookie,
    pod_object_id,
    policy_object_id,
    rule_bits,
)
from sdn_netpol.debug.names import Names, table_name
from sdn_netpol.debug.trace import DebugError
from sdn_netpol.ovs.dumpflows import DumpedFlow, parse_dump_flows
from sdn_netpol.ovs.instance import OvsError, OvsInstance
from sdn_netpol.policy.state import ClusterState

_CONJ_ID = re.compile(r"(?:^|,)conj_id=(\d+)")
_CONJUNCTION = re.compile(r"conjunction\((\d+),")
DIRECTIONS = {"ingress": "Ingress", "egress": "Egress"}


@dataclass(frozen=True)
class Selection:
    """What to show: a policy (maybe one rule or direction of it), or a pod, or everything."""

    policy: str | None = None
    rule: int | None = None
    direction: str | None = None  # "Ingress" | "Egress"
    pod: str | None = None

    def check(self, cluster: ClusterState) -> None:
        known = {p.ref for p in cluster.policies} | {p.ref for p in cluster.cluster_policies}  # NS/NAME, Kind/NAME
        if self.policy is not None and self.policy not in known:
            raise DebugError(f"--policy {self.policy}: no such NetworkPolicy (NS/NAME) or cluster policy "
                             "(ClusterNetworkPolicy/NAME, AdminNetworkPolicy/NAME, BaselineAdminNetworkPolicy/default)")
        if self.pod is not None and self.pod not in {f"{p.namespace}/{p.name}" for p in cluster.pods}:
            raise DebugError(f"--pod {self.pod}: no such pod")
        if (self.rule is not None or self.direction is not None) and self.policy is None:
            raise DebugError("--rule and --direction select within a --policy")
        if self.rule is not None and self.direction is None:
            raise DebugError("--rule needs --direction ingress|egress (rules are numbered per direction)")

    def cookie_filters(self) -> list[tuple[int, int]]:
        """(cookie, mask) pairs for ``dump-flows cookie=C/M``; empty: every flow."""
        if self.policy is not None:
            base = cookie(CookieCategory.RULE, policy_object_id(self.policy))
            if self.direction is None:
                return [(base, MASK_OBJECT)]
            if self.rule is None:
                return [(base | (RULE_EGRESS_BIT if self.direction == "Egress" else 0), MASK_OBJECT | RULE_EGRESS_BIT)]
            return [(base | rule_bits(self.direction, self.rule), MASK_ALL)]
        if self.pod is not None:
            object_id = pod_object_id(self.pod)
            return [(cookie(c, object_id), MASK_OBJECT)
                    for c in (CookieCategory.POD, CookieCategory.REMOTE, CookieCategory.ISOLATION,
                              CookieCategory.FAST_PATH)]
        return []


@dataclass(frozen=True)
class FlowView:
    node: str
    flow: DumpedFlow
    category: str | None
    policy: str | None
    direction: str | None
    rule: int | None
    pod: str | None

    def to_json(self) -> dict[str, Any]:
        f = self.flow
        return {"node": self.node, "table": f.table, "table_name": table_name(f.table), "priority": f.priority,
                "match": f.match, "actions": f.actions, "cookie": f"{f.cookie:#018x}", "category": self.category,
                "policy": self.policy, "direction": self.direction, "rule": self.rule, "pod": self.pod,
                "n_packets": f.n_packets, "n_bytes": f.n_bytes}


def describe(node: str, flow: DumpedFlow, names: Names) -> FlowView:
    owner = names.owner(flow.cookie)
    return FlowView(node, flow, owner.category, owner.policy, owner.direction, owner.rule, owner.pod)


def dumper(ovs: OvsInstance, bridge: str) -> Callable[[str | None], list[DumpedFlow]]:
    """``dump-flows BRIDGE [cookie=C/M]`` on one switch; a failure is one DebugError line."""
    def dump(cookie_filter: str | None) -> list[DumpedFlow]:
        try:
            text = ovs.ofctl("--no-names", "dump-flows", bridge, *([cookie_filter] if cookie_filter else []))
        except OvsError as exc:
            raise DebugError(f"dump-flows {bridge} on {ovs.rundir.name}: {exc.stderr.strip() or exc}") from exc
        return parse_dump_flows(text)

    return dump


def select(node: str, dump: Callable[[str | None], Sequence[DumpedFlow]], selection: Selection,
           names: Names) -> list[FlowView]:
    """`dump(filter)` runs ``dump-flows`` with an optional ``cookie=C/M`` filter."""
    filters = selection.cookie_filters()
    if not filters:
        flows = list(dump(None))
    else:
        flows = [f for value, mask in filters for f in dump(f"cookie={value:#x}/{mask:#x}")]
        if selection.policy is not None:
            flows += _shared_clauses(flows, dump)
    ordered = sorted(set(flows), key=lambda f: (f.table, -f.priority, f.match, f.actions))
    return [describe(node, f, names) for f in ordered]


def _shared_clauses(own: list[DumpedFlow], dump: Callable[[str | None], Sequence[DumpedFlow]]) -> list[DumpedFlow]:
    conj_ids = {m for f in own for m in _CONJ_ID.findall(f.match)}
    if not conj_ids:
        return []
    shared = dump(f"cookie={cookie(CookieCategory.SHARED):#x}/{MASK_OBJECT:#x}")
    return [f for f in shared if conj_ids & set(_CONJUNCTION.findall(f.actions))]
