"""Audit-log flows: copies of the first packet of new connections to the controller.

A namespace annotated `sdn-netpol.io/audit: deny|allow|all` has its pods' verdicts logged,
each on the node that enforces it: egress on the source pod's node, ingress on the
destination pod's node. The copy is a `controller(userdata=5e.XX)` action (XX = verdict and
direction, pipeline.AUDIT_TAGS); the bridge's `controller` meter rate-limits every packet-in
of the node (installed by the controller, not a flow).

- denied: above a pod's isolation drop (41/61, priority 110) a `ct_state=+new+trk` flow whose
  only action is controller(): the packet is still dropped, and only new connections log.
- allowed: Commit's plain `+new` flows get, while any local pod audits allowed, a twin at
  205 (SCTP: 215) that commits, then resubmits to AuditEgress (71: `in_port=P`) and
  AuditIngress (72: `reg2=P`), where audited pods have a controller() flow; then goto Output.
  A controller action is an output of a copy, so forwarding never waits for the controller,
  and replies and established packets never reach these flows (they are not `+new`).

Flows of one pod are a fragment of their own (counted like the others in compile.py): the
shared Commit twins and misses stay while any audited pod gives them.
"""

from __future__ import annotations

from functools import lru_cache

from sdn_netpol.compiler.flow import Controller, Ct, Flow, GotoTable, LearnReply, Match, Resubmit, ct_state
from sdn_netpol.compiler.pipeline import (
    CT_ZONE,
    FLAG_BYPASS,
    FLAG_SCTP_REPLY_BIT,
    REG_FLAGS,
    REG_OUT_PORT,
    SCTP_REPLY_IDLE_TIMEOUT,
    CookieCategory,
    Priority,
    Table,
    audit_tag,
    cookie,
    pod_object_id,
)
from sdn_netpol.compiler.topology import PortBinding
from sdn_netpol.model.objects import Direction, Namespace

_NEW = ct_state(new=True, trk=True)
_SHARED = cookie(CookieCategory.AUDIT)
_DEFAULT_TABLE = {"Egress": Table.EGRESS_DEFAULT, "Ingress": Table.INGRESS_DEFAULT}
_POD_FIELD = {"Egress": "in_port", "Ingress": REG_OUT_PORT}


@lru_cache(maxsize=1 << 14)
def audit_deny_flow(direction: Direction, ofport: int, pod_ref: str) -> Flow:
    """The controller copy above an isolated pod's drop; nothing else, so the packet dies."""
    tag = audit_tag("denied", direction.lower())
    match = Match.build(None, ct_state=_NEW, **{_POD_FIELD[direction]: ofport})
    return Flow(_DEFAULT_TABLE[direction], Priority.AUDIT_DENY, match, (Controller(tag),),
                cookie(CookieCategory.AUDIT, pod_object_id(pod_ref)))


def audit_allow_flows(binding: PortBinding, namespace: Namespace | None) -> list[Flow]:
    """A local pod's allowed-side audit flows (none unless its namespace audits allowed)."""
    if namespace is None or not namespace.audits_allowed:
        return []
    pod_cookie = cookie(CookieCategory.AUDIT, pod_object_id(str(binding.pod)))
    return [
        Flow(Table.AUDIT_EGRESS, Priority.NORMAL, Match.build(None, in_port=binding.ofport),
             (Controller(audit_tag("allowed", "egress")),), pod_cookie),
        Flow(Table.AUDIT_INGRESS, Priority.NORMAL, Match.build(None, **{REG_OUT_PORT: binding.ofport}),
             (Controller(audit_tag("allowed", "ingress")),), pod_cookie),
        *_commit_twins(),
    ]


@lru_cache(maxsize=1)
def _commit_twins() -> tuple[Flow, ...]:
    audit = (Resubmit(Table.AUDIT_EGRESS), Resubmit(Table.AUDIT_INGRESS), GotoTable(Table.OUTPUT))
    commit = Ct(commit=True, zone=CT_ZONE)
    flows = [Flow(Table.AUDIT_EGRESS, Priority.MISS, Match(), (), _SHARED),
             Flow(Table.AUDIT_INGRESS, Priority.MISS, Match(), (), _SHARED)]
    for proto in ("ip", "ipv6"):
        flows.append(Flow(Table.COMMIT, Priority.AUDIT_COMMIT, Match.build(proto, ct_state=_NEW),
                          (commit, *audit), _SHARED))
    for version, proto in ((4, "sctp"), (6, "sctp6")):
        learn = LearnReply(Table.SCTP_REPLY, Priority.NORMAL, SCTP_REPLY_IDLE_TIMEOUT, cookie(CookieCategory.LEARNED),
                           version, REG_FLAGS, FLAG_SCTP_REPLY_BIT)
        checked = Match.build(proto, ct_state=_NEW, **{REG_FLAGS: (0, FLAG_BYPASS)})
        flows.append(Flow(Table.COMMIT, Priority.AUDIT_COMMIT_SCTP, checked, (commit, learn, *audit), _SHARED))
    return tuple(flows)
