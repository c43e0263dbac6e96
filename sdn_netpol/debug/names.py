"""Cookie object ids back to names, and table numbers to their pipeline names.

Cookies carry a 32-bit hash of ``policy:NS/NAME`` or ``pod:NS/NAME`` (compiler/pipeline.py),
so naming a flow's owner needs the cluster: every policy and pod id is computed once and
looked up.
"""

from __future__ import annotations

from dataclasses import dataclass

from sdn_netpol.compiler.pipeline import Table, pod_object_id, policy_object_id
from sdn_netpol.policy.state import ClusterState


def table_name(table: int) -> str:
    """`Table.EGRESS_RULE` -> "EgressRule" (the names docs/pipeline.md uses)."""
    if table not in Table._value2member_map_:
        return f"table{table}"
    words = Table(table).name.split("_")
    return "".join("L3" if w == "L3" else w.capitalize() for w in words)


@dataclass(frozen=True)
class Names:
    policies: dict[int, str]
    pods: dict[int, str]

    @classmethod
    def of(cls, cluster: ClusterState) -> Names:
        return cls({policy_object_id(p.ref): p.ref for p in cluster.policies},
                   {pod_object_id(f"{p.namespace}/{p.name}"): f"{p.namespace}/{p.name}" for p in cluster.pods})

    def policy(self, object_id: int) -> str | None:
        return self.policies.get(object_id)

    def pod(self, object_id: int) -> str | None:
        return self.pods.get(object_id)
