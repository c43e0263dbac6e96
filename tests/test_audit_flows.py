"""The audit flows (compiler), without a switch: which pods, which side, which tables."""

from __future__ import annotations

from typing import Any

from sdn_netpol.compiler.compile import compile_node, compile_node_incremental
from sdn_netpol.compiler.flow import Controller, Flow, Resubmit
from sdn_netpol.compiler.ofctl import render_flows
from sdn_netpol.compiler.pipeline import CookieCategory, Priority, Table, audit_tag, decode_audit_tag, decode_cookie
from sdn_netpol.compiler.topology import assign_ports
from sdn_netpol.policy.state import ClusterState
from tests.builders import build, namespace, pod

DENY_ALL = {"apiVersion": "networking.k8s.io/v1", "kind": "NetworkPolicy",
            "metadata": {"name": "deny-all", "namespace": "x"},
            "spec": {"podSelector": {}, "policyTypes": ["Ingress", "Egress"]}}


def audited(name: str, mode: Any) -> dict[str, Any]:
    body = namespace(name)
    body["metadata"]["annotations"] = {"sdn-netpol.io/audit": mode}
    return body


def state(mode: str | None, *extra: dict[str, Any]) -> ClusterState:
    y_deny = {**DENY_ALL, "metadata": {"name": "deny-all", "namespace": "y"}}
    return build(audited("x", mode) if mode else namespace("x"), namespace("y"),
                 pod("x/a", "10.0.0.2", node="n0"), pod("y/c", "10.0.0.4", node="n0"),
                 pod("x/far", "10.0.1.2", node="n1"), DENY_ALL, y_deny, *extra)


def audit_flows(flows: Any) -> list[Flow]:
    return [f for f in flows if decode_cookie(f.cookie).category == CookieCategory.AUDIT]


def tags(flows: list[Flow]) -> set[tuple[int, tuple[str, str] | None]]:
    return {(f.table, decode_audit_tag(a.userdata)) for f in flows for a in f.actions if isinstance(a, Controller)}


# ---- the flows ----------------------------------------------------------------------------

def node_flows(s: ClusterState) -> list[Flow]:
    return list(compile_node(s, assign_ports(s, "n0")))


def test_no_audited_namespace_adds_no_flow() -> None:
    assert audit_flows(node_flows(state(None))) == []


def test_all_logs_both_verdicts_of_the_audited_local_pod_only() -> None:
    s = state("all")
    flows = audit_flows(node_flows(s))
    port = assign_ports(s, "n0").bindings[0]
    assert str(port.pod) == "x/a"
    assert tags(flows) == {(41, ("denied", "egress")), (61, ("denied", "ingress")),
                           (71, ("allowed", "egress")), (72, ("allowed", "ingress"))}
    per_pod = [f for f in flows if decode_cookie(f.cookie).object_id]
    assert {(f.table, f.match.value("in_port") or f.match.value("reg2")) for f in per_pod} == {
        (41, port.ofport), (61, port.ofport), (71, port.ofport), (72, port.ofport)}


def test_a_denied_audit_flow_sits_above_the_drop_and_only_copies_new_connections() -> None:
    text = render_flows([f for f in node_flows(state("deny")) if f.table == Table.EGRESS_DEFAULT])
    assert "priority=110,ct_state=+new+trk,in_port=1 actions=controller(userdata=5e.01)" in text
    assert "priority=100,in_port=1 actions=drop" in text


def test_deny_mode_emits_only_the_denied_side() -> None:
    assert tags(audit_flows(node_flows(state("deny")))) == {(41, ("denied", "egress")), (61, ("denied", "ingress"))}
    assert not [f for f in node_flows(state("deny")) if f.table in (71, 72)]


def test_allow_mode_emits_only_the_allowed_side_and_the_commit_twins() -> None:
    flows = node_flows(state("allow"))
    assert tags(audit_flows(flows)) == {(71, ("allowed", "egress")), (72, ("allowed", "ingress"))}
    twins = [f for f in flows if f.table == Table.COMMIT and f.priority in (Priority.AUDIT_COMMIT,
                                                                         Priority.AUDIT_COMMIT_SCTP)]
    assert len(twins) == 4
    for twin in twins:
        assert [a for a in twin.actions if isinstance(a, Resubmit)] == [Resubmit(71), Resubmit(72)]
        assert twin.match.value("ct_state") == 0x21


def test_allowed_copies_keep_forwarding_the_packet() -> None:
    for twin in (f for f in node_flows(state("all")) if f.table == Table.COMMIT and f.priority > 200):
        assert twin.actions[-1].__class__.__name__ == "GotoTable"


def test_incremental_compile_follows_pods_joining_and_leaving_an_audited_namespace() -> None:
    before = state("all")
    after = state("all", pod("x/b", "10.0.0.3", node="n0"))
    first = compile_node_incremental(before, assign_ports(before, "n0"))
    step = compile_node_incremental(after, assign_ports(after, "n0"), first)
    assert step.flows == compile_node(after, assign_ports(after, "n0"))
    back = compile_node_incremental(before, assign_ports(before, "n0"), step)
    assert back.flows == compile_node(before, assign_ports(before, "n0"))


def test_audit_tags_read_back() -> None:
    for verdict in ("allowed", "denied"):
        for direction in ("egress", "ingress"):
            assert decode_audit_tag(audit_tag(verdict, direction)) == (verdict, direction)
    assert decode_audit_tag(b"\x00\x01") is None
