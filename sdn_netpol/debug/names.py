"""Cookie object ids back to names, and table numbers to their pipeline names.

Cookies carry a 32-bit hash of ``policy:NS/NAME`` or ``pod:NS/NAME`` (compiler/pipeline.py),
so naming a flow's owner needs the cluster: every policy and pod id is computed once and
looked up.
"""

from __future__ import annotations

from dataclasses import dataclass

from sdn_netpol.compiler.pipeline import CookieCategory, Table, decode_cookie, pod_object_id, policy_object_id
from sdn_netpol.policy.state import ClusterState


def table_name(table: int) -> str:
    """`Table.EGRESS_RULE` -> "EgressRule" (the names docs/pipeline.md uses)."""
    if table not in Table._value2member_map_:
        return f"table{table}"
    words = Table(table).name.split("_")
    return "".join("L3" if w == "L3" else w.capitalize() for w in words)


_POD_CATEGORIES = (CookieCategory.POD, CookieCategory.ISOLATION, CookieCategory.REMOTE, CookieCategory.FAST_PATH)


@dataclass(frozen=True)
class Owner:
    """What a flow's cookie says about who owns it, with names."""

    category: str | None  # "rule", "pod", "isolation", …; None: not an sdn-netpol cookie
    policy: str | None  # NS/NAME of a rule's flow (Kind/NAME of a cluster policy's)
    direction: str | None
    rule: int | None
    pod: str | None  # NS/NAME of a pod's, route's or isolation flow


@dataclass(frozen=True)
class Names:
    policies: dict[int, str]
    pods: dict[int, str]

    @classmethod
    def of(cls, cluster: ClusterState) -> Names:
        refs = [*(p.ref for p in cluster.policies), *(p.ref for p in cluster.cluster_policies)]  # Kind/name
        return cls({policy_object_id(ref): ref for ref in refs},
                   {pod_object_id(f"{p.namespace}/{p.name}"): f"{p.namespace}/{p.name}" for p in cluster.pods})

    def policy(self, object_id: int) -> str | None:
        return self.policies.get(object_id)

    def pod(self, object_id: int) -> str | None:
        return self.pods.get(object_id)

    def owner(self, value: int | None) -> Owner:
        if value is None:
            return Owner(None, None, None, None, None)
        info = decode_cookie(value)
        category = info.category
        policy = self.policy(info.object_id) if category == CookieCategory.RULE else None
        pod = self.pod(info.object_id) if category in _POD_CATEGORIES else None
        return Owner(category.name.lower() if category else None, policy, info.direction, info.rule_index, pod)
