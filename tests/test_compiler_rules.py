"""The flow compiler's rules (issue "Flow compiler: conjunction + conntrack pipeline"), one
named test each, on the compiled FlowSet alone: no switch, no subprocess except where the
rule is about other processes.

Clusters are written as manifests (tests/builders.py) so every test also goes through the
parser; the golden inputs in flows/ serve as a realistic multi-policy cluster.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections.abc import Iterable
from dataclasses import replace
from pathlib import Path

import pytest
from netaddr import IPAddress, IPNetwork, IPSet

from sdn_netpol.cli.flowtext import compile_inputs, render_json
from sdn_netpol.compiler.compile import compile_node
from sdn_netpol.compiler.diff import diff
from sdn_netpol.compiler.flow import Conjunction, Flow, GotoTable, Match, Output
from sdn_netpol.compiler.flowfields import OFPP_MAX
from sdn_netpol.compiler.flowset import DuplicateFlowError, FlowSet
from sdn_netpol.compiler.ofctl import render_flows
from sdn_netpol.compiler.pipeline import (
    MASK_ALL,
    CookieCategory,
    Priority,
    Table,
    cookie,
    decode_cookie,
    pod_object_id,
    policy_cookie_and_mask,
    rule_cookie,
)
from sdn_netpol.compiler.policy_flows import policy_flows
from sdn_netpol.compiler.rule_flows import SHARED_COOKIE
from sdn_netpol.compiler.topology import NodeContext, PortBinding, assign_ports
from sdn_netpol.inputs.node_inputs import load_inputs
from sdn_netpol.policy.resolve import resolve_all
from sdn_netpol.policy.state import ClusterState
from tests.builders import Part, build, namespace, pod
from tests.flow_walk import GATEWAY_MAC, arp_request, ip_packet, tunnel_packet, walk
from tests.synthetic_cluster import node_name, policy_doc, synthetic_state, with_policy

ROOT = Path(__file__).resolve().parent.parent
GOLDEN = ROOT / "flows"
N1, N2 = "node1", "node2"


# ---- helpers ---------------------------------------------------------------------------

def compiled(*parts: Part, node: str = N1) -> tuple[NodeContext, FlowSet]:
    state = build(*parts)
    context = assign_ports(state, node)
    return context, compile_node(state, context)


def ofport(context: NodeContext, ref: str) -> int:
    return next(b.ofport for b in context.bindings if str(b.pod) == ref)


def in_table(flows: Iterable[Flow], table: Table, priority: int | None = None) -> list[Flow]:
    return [f for f in flows if f.table == table and (priority is None or f.priority == priority)]


def conjunctions(flow: Flow) -> list[Conjunction]:
    return [a for a in flow.actions if isinstance(a, Conjunction)]


def matching(flows: Iterable[Flow], **fields: object) -> list[Flow]:
    """Flows whose match has exactly these field values (dl_type/nw_proto not checked)."""
    return [f for f in flows if all(f.match.value(k) == v for k, v in fields.items())]


def networks(flows: Iterable[Flow], field: str) -> list[IPNetwork]:
    """The address blocks flows match on `field`, as CIDRs."""
    version, bits = (4, 32) if field.startswith("nw_") else (6, 128)
    found = [m for m in (f.match.get(field) for f in flows) if m is not None]
    return sorted(IPNetwork(f"{IPAddress(m.value, version)}/{bin(m.mask).count('1') if m.mask else bits}")
                  for m in found)


def binding_of(context: NodeContext, ref: str) -> PortBinding:
    return next(b for b in context.bindings if str(b.pod) == ref)


def rule_flows(flows: FlowSet, policy: str, direction: str, index: int = 0) -> FlowSet:
    """The rule's own flows (its cookie: conj_id flows, one per target pod, and direct
    allows) and the clause flows of the conjunctions those conj_id flows name (SHARED cookie:
    a conjunction can serve grants of several rules)."""
    own = flows.by_cookie(rule_cookie(policy, direction, index), MASK_ALL)
    ids = {f.match.value("conj_id") for f in own} - {None}
    return FlowSet([*own, *(f for f in flows if {c.id for c in conjunctions(f)} & ids)])


def policy_yaml(name: str, body: str, namespace_name: str = "x") -> str:
    head = (f"apiVersion: networking.k8s.io/v1\nkind: NetworkPolicy\n"
            f"metadata: {{name: {name}, namespace: {namespace_name}}}\n")
    return head + "spec:\n" + "".join(f"  {line}\n" for line in body.strip("\n").splitlines())


def golden_state(*examples: str) -> ClusterState:
    """flows/cluster.yaml with these example policies (default: all of them, a realistic mix)."""
    policies = [GOLDEN / e / "policy.yaml" for e in examples] or sorted(GOLDEN.glob("*/policy.yaml"))
    inputs = load_inputs([GOLDEN / "cluster.yaml", *policies])
    assert not inputs.errors
    return ClusterState.from_parse(inputs.result)


def golden_compiles() -> list[FlowSet]:
    state = golden_state()
    return [compile_node(state, assign_ports(state, node)) for node in (N1, N2)]


# ---- additive cost ---------------------------------------------------------------------

def _sized_cluster(n: int) -> list[Part]:
    parts: list[Part] = [pod(f"x/t{i}", f"10.1.0.{i + 1}", {"app": "t"}, node=N1) for i in range(n)]
    parts += [pod(f"x/p{i}", f"10.2.0.{i + 1}", {"app": "p"}, node=N2) for i in range(n)]
    ports = "".join(f"\n    - port: {1000 + 7 * i}" for i in range(n))
    parts.append(policy_yaml("pol", f"""
podSelector: {{matchLabels: {{app: t}}}}
ingress:
- from: [podSelector: {{matchLabels: {{app: p}}}}]
  ports:{ports}
"""))
    return parts


def test_rule_cost_is_sum_of_dimensions_never_their_product() -> None:
    for n in (1, 2, 4, 8, 16):
        _, flows = compiled(*_sized_cluster(n))
        rule = rule_flows(flows, "x/pol", "Ingress")
        # n applied-to + n peers + n ports × (tcp, tcp6) clause flows (SHARED cookie: a conjunction
        # can serve several rules) + one conj_id flow per applied-to pod; n³ would be 4096 at n=16
        assert len(rule) == n + n + 2 * n + n, n
        assert len(flows.by_cookie(SHARED_COOKIE, MASK_ALL)) == n + n + 2 * n


# ---- conjunction merging and unambiguous verdicts ---------------------------------------

TWO_POLICIES_ONE_PORT: list[Part] = [
    pod("x/db", "10.1.0.1", {"app": "db"}, node=N1),
    pod("x/p", "10.2.0.1", {"app": "p"}, node=N2),
    pod("x/q", "10.2.0.2", {"app": "q"}, node=N2),
    *(policy_yaml(f"allow-{peer}", f"""
podSelector: {{matchLabels: {{app: db}}}}
ingress:
- from: [podSelector: {{matchLabels: {{app: {peer}}}}}]
  ports: [port: 6379]
""") for peer in ("p", "q")),
]


def test_identical_matches_merge_into_one_flow_with_several_conjunctions() -> None:
    context, flows = compiled(*TWO_POLICIES_ONE_PORT)
    port_flows = matching(in_table(flows, Table.INGRESS_RULE), tp_dst=6379)
    target_flows = [f for f in matching(in_table(flows, Table.INGRESS_RULE), reg2=ofport(context, "x/db"))
                    if conjunctions(f)]  # the clause flow, not the rules' conj_id flows naming db
    for merged in (port_flows, target_flows):
        assert len({f.match.value("dl_type") for f in merged}) == len(merged)  # one flow per match
        for flow in merged:
            ids = {c.id for c in conjunctions(flow)}
            assert len(ids) == 2 and flow.cookie == SHARED_COOKIE
    state = build(*TWO_POLICIES_ONE_PORT)
    emitted = [f.id for f in policy_flows(resolve_all(state), assign_ports(state, N1))]
    assert len(emitted) == len(set(emitted))  # merged before emission, not collapsed after


def test_conjunctive_flows_at_one_priority_cannot_disagree() -> None:
    for flows in [*golden_compiles(), compiled(*TWO_POLICIES_ONE_PORT)[1]]:
        for table, allow in ((Table.EGRESS_RULE, Table.L3_FORWARDING), (Table.INGRESS_RULE, Table.COMMIT)):
            rows = in_table(flows, table)
            conj_id_flows = [f for f in rows if f.match.value("conj_id") is not None]
            clause_flows = [f for f in rows if conjunctions(f)]
            assert {f.actions for f in conj_id_flows} <= {(GotoTable(allow),)}
            assert {f.priority for f in conj_id_flows + clause_flows} <= {Priority.CONJUNCTION}
            direct = in_table(rows, table, Priority.DIRECT_ALLOW)
            assert {f.actions for f in direct} <= {(GotoTable(allow),)}  # every allow path is the same
            assert not [f for f in rows if not f.actions]  # no drop among the rules
            declared = {f.match.value("conj_id") for f in conj_id_flows}
            used: dict[int, set[tuple[int, int]]] = {}
            for c in (c for f in clause_flows for c in conjunctions(f)):
                used.setdefault(c.id, set()).add((c.clause, c.n_clauses))
            assert declared == set(used)
            assert all({k for k, _ in v} == set(range(1, n + 1)) for v in used.values() for _, n in v)


def test_flowset_refuses_two_flows_with_one_identity() -> None:
    a = Flow(int(Table.INGRESS_RULE), Priority.CONJUNCTION, Match.build("tcp", tp_dst=80), (Conjunction(1, 1, 2),))
    b = Flow(a.table, a.priority, a.match, (Conjunction(2, 1, 2),))
    with pytest.raises(DuplicateFlowError):
        FlowSet([a, b])


# ---- peers and ports -------------------------------------------------------------------

def test_except_is_a_cidr_set_difference_without_drop_flows() -> None:
    rule = rule_flows(golden_compiles()[0], "default/test-network-policy", "Ingress")
    blocks = [n for n in networks(rule, "nw_src") if n in IPNetwork("172.17.0.0/16")]
    assert [str(n) for n in blocks] == [
        "172.17.0.0/24", "172.17.2.0/23", "172.17.4.0/22", "172.17.8.0/21", "172.17.16.0/20",
        "172.17.32.0/19", "172.17.64.0/18", "172.17.128.0/17"]
    assert IPSet(blocks) == IPSet(["172.17.0.0/16"]) - IPSet(["172.17.1.0/24"])
    assert all(f.actions for f in rule)  # allows only: the hole is simply not matched
    state = golden_state("test-network-policy")
    context = assign_ports(state, N1)
    flows, db = compile_node(state, context), binding_of(context, "default/db")
    for source, allowed in (("172.17.0.9", True), ("172.17.1.9", False), ("172.17.200.9", True)):
        packet = tunnel_packet(context, source, str(db.ips[0]), 6379)
        assert walk(flows, packet).outputs == ([db.ofport] if allowed else []), source


def _range_policy(lo: int, hi: int) -> list[Part]:
    return [pod("x/srv", "10.1.0.1", {"app": "srv"}, node=N1), policy_yaml("range", f"""
podSelector: {{matchLabels: {{app: srv}}}}
ingress:
- ports: [{{protocol: UDP, port: {lo}, endPort: {hi}}}]
""")]


def test_end_port_range_becomes_a_minimal_value_mask_set() -> None:
    # 32000-32767 is 256 + 512 aligned ports (2 masks); 32768 differs from all of them in
    # bit 15, so no masked entry can share it: 3 entries are the minimum for 32000-32768.
    for (lo, hi), expected in {(32000, 32768): [(0x7D00, 0xFF00), (0x7E00, 0xFE00), (0x8000, None)],
                               (32000, 32767): [(0x7D00, 0xFF00), (0x7E00, 0xFE00)],
                               (32768, 33023): [(0x8000, 0xFF00)]}.items():
        _, flows = compiled(*_range_policy(lo, hi))
        entries = [f.match.get("tp_dst") for f in rule_flows(flows, "x/range", "Ingress")
                   if f.match.value("dl_type") == 0x0800 and f.match.get("tp_dst") is not None]
        assert sorted((m.value, m.mask) for m in entries if m is not None) == expected
        covered = {p for v, m in expected for p in range(65536) if p & (m or 0xFFFF) == v}
        assert covered == set(range(lo, hi + 1))


NAMED_PORTS: list[Part] = [
    pod("x/a", "10.1.0.1", {"app": "srv"}, ports=[("http", 8080)], node=N1),
    pod("x/b", "10.1.0.2", {"app": "srv"}, ports=[("http", 9090)], node=N1),
    pod("x/c", "10.1.0.3", {"app": "srv"}, ports=[("http", 8080)], node=N1),
    pod("x/d", "10.1.0.4", {"app": "srv"}, ports=[("metrics", 8080)], node=N1),
    pod("x/cli", "10.2.0.1", {"app": "cli"}, node=N2),
    policy_yaml("named", """
podSelector: {matchLabels: {app: srv}}
ingress:
- from: [podSelector: {matchLabels: {app: cli}}]
  ports: [port: http]
- from: [podSelector: {matchExpressions: [{key: app, operator: In, values: [cli]}]}]
  ports: [{port: http}, {port: 5978}]
"""),
]


def _conj_of(flows: Iterable[Flow], **fields: object) -> set[int]:
    return {c.id for f in matching(flows, **fields) for c in conjunctions(f)}


def _rule_ids(flows: FlowSet, index: int) -> set[int]:
    """The conjunction ids of rule INDEX of x/named (its conj_id flows carry its cookie)."""
    values = (f.match.value("conj_id") for f in rule_flows(flows, "x/named", "Ingress", index))
    return {v for v in values if v is not None}


def test_named_ports_resolve_per_selected_pod() -> None:
    context, flows = compiled(*NAMED_PORTS)
    table, ids = in_table(flows, Table.INGRESS_RULE), _rule_ids(flows, 0)
    by_pod = {ref: _conj_of(table, reg2=ofport(context, ref)) & ids for ref in ("x/a", "x/b", "x/c")}
    assert by_pod["x/a"] == by_pod["x/c"] and len(by_pod["x/a"]) == 1
    assert len(by_pod["x/b"]) == 1 and by_pod["x/b"] != by_pod["x/a"]
    assert by_pod["x/a"] | by_pod["x/b"] == ids
    assert _conj_of(table, tp_dst=8080) & ids == by_pod["x/a"]
    assert _conj_of(table, tp_dst=9090) & ids == by_pod["x/b"]
    for ref, port, allowed in (("x/a", 8080, True), ("x/a", 9090, False), ("x/b", 9090, True), ("x/b", 8080, False)):
        target = binding_of(context, ref)
        result = walk(flows, tunnel_packet(context, "10.2.0.1", str(target.ips[0]), port))
        assert result.outputs == ([target.ofport] if allowed else []), (ref, port)


def test_pod_without_the_port_name_gets_nothing_from_that_entry() -> None:
    context, flows = compiled(*NAMED_PORTS)
    table, d = in_table(flows, Table.INGRESS_RULE), ofport(context, "x/d")
    assert not _conj_of(table, reg2=d) & _rule_ids(flows, 0)
    numeric = _conj_of(table, tp_dst=5978) & _rule_ids(flows, 1)
    assert len(numeric) == 1 and _conj_of(table, reg2=d) == numeric  # d keeps the numeric entry only
    assert matching(in_table(flows, Table.INGRESS_DEFAULT), reg2=d)  # and stays isolated


def test_single_dimension_rules_use_direct_allows_above_conjunctions() -> None:
    flows = golden_compiles()[0]
    for policy, direction, table, field in (("default/allow-all-ingress", "Ingress", Table.INGRESS_RULE, "reg2"),
                                            ("default/allow-all-egress", "Egress", Table.EGRESS_RULE, "in_port")):
        rule = rule_flows(flows, policy, direction)
        assert len(rule) == 2  # one flow per local pod of namespace default (db, backend): no conjunction
        assert all(f.table == table and f.priority == Priority.DIRECT_ALLOW and not conjunctions(f) for f in rule)
        assert all([x.name for x in f.match] == [field] for f in rule)
    assert Priority.CONJUNCTION < Priority.DIRECT_ALLOW < Priority.BYPASS


def test_empty_from_means_every_peer_so_no_peer_clause() -> None:
    _, flows = compiled(*_range_policy(32000, 32767))
    clause_counts = {c.n_clauses for f in rule_flows(flows, "x/range", "Ingress") for c in conjunctions(f)}
    assert clause_counts == {2}  # applied-to × ports only
    assert not [f for f in rule_flows(flows, "x/range", "Ingress") if f.match.get("nw_src")]


# ---- cookies and stability -------------------------------------------------------------

def test_cookies_identify_policy_and_rule() -> None:
    state = golden_state()
    without = ClusterState.build(state.namespaces, state.pods,
                                 [p for p in state.policies if p.ref != "default/test-network-policy"], 0,
                                 state.cluster_policies)
    flows = compile_node(state, assign_ports(state, N1))
    before = compile_node(without, assign_ports(without, N1))
    own = flows.by_cookie(*policy_cookie_and_mask("default/test-network-policy"))
    added = {f for f in flows if before.get(f.id) is None
             and decode_cookie(f.cookie).category not in (CookieCategory.ISOLATION, CookieCategory.FAST_PATH)}
    assert set(own) == {f for f in added if f.cookie != SHARED_COOKIE}
    own_ids = {f.match.value("conj_id") for f in own} - {None}
    assert all({c.id for c in conjunctions(f)} <= own_ids for f in added if f.cookie == SHARED_COOKIE)
    # the policy decides only db's verdicts (port 3): only db's fingerprints, so only its fast-path flows, change
    refreshed = {f.cookie for f in flows
                 if f not in before and decode_cookie(f.cookie).category == CookieCategory.FAST_PATH}
    db = next(b for b in assign_ports(state, N1).bindings if str(b.pod) == "default/db")
    assert refreshed == {cookie(CookieCategory.FAST_PATH, pod_object_id(str(db.pod)))}
    for direction in ("Ingress", "Egress"):
        rule = rule_flows(flows, "default/test-network-policy", direction)
        assert rule and {f for f in rule if f.cookie != SHARED_COOKIE} <= set(own)
        info = decode_cookie(next(f for f in rule if f.cookie != SHARED_COOKIE).cookie)
        assert (info.category, info.direction, info.rule_index) == (CookieCategory.RULE, direction, 0)
        assert len([f for f in rule if f.match.value("conj_id") is not None]) == 1


def test_ids_and_cookies_are_stable_across_recompiles_and_processes() -> None:
    state = golden_state()
    shuffled = ClusterState.build(reversed(state.namespaces), reversed(state.pods), reversed(state.policies), 0,
                                  reversed(state.cluster_policies))
    first = compile_node(state, assign_ports(state, N1))
    assert compile_node(shuffled, assign_ports(shuffled, N1)) == first
    grown = ClusterState.build(state.namespaces, state.pods, (*state.policies, *build(policy_yaml("late", """
podSelector: {}
ingress: [{ports: [{port: 1234}]}]
""", "alice")).policies), 0, state.cluster_policies)
    cookie, mask = policy_cookie_and_mask("default/test-network-policy")
    assert compile_node(grown, assign_ports(grown, N1)).by_cookie(cookie, mask) == first.by_cookie(cookie, mask)
    paths = [GOLDEN / "cluster.yaml", *sorted(GOLDEN.glob("*/policy.yaml"))]
    args = [a for p in paths for a in ("-f", str(p))]
    expected = render_json(compile_inputs(load_inputs(paths), N1)[0])
    for seed in ("0", "4242"):
        env = {**os.environ, "PYTHONHASHSEED": seed}
        out = subprocess.run([sys.executable, "-m", "sdn_netpol.cli", "compile", *args, "--node", N1,
                              "-o", "json"], capture_output=True, text=True, check=True, env=env, cwd=ROOT).stdout
        assert out == expected
        assert json.loads(out)[0]["cookie"].startswith("0x5e")


# ---- classifier, spoofguard, conntrack (walked with tests/flow_walk.py) -----------------

EDGE_CLUSTER: list[Part] = [
    namespace("x"),
    pod("x/v4", "10.1.0.1", {"app": "a"}, node=N1),
    pod("x/dual", ["10.1.0.2", "fd00::2"], {"app": "a"}, node=N1),
    pod("x/pending", None, {"app": "a"}, phase="Pending", node=N1),
    pod("x/remote", "10.2.0.1", {"app": "b"}, node=N2),
]
def test_unknown_ports_drop() -> None:
    context, flows = compiled(*EDGE_CLUSTER)
    known = binding_of(context, "x/v4")
    assert not walk(flows, ip_packet(known, "10.1.0.2")).dropped
    stranger = walk(flows, ip_packet(known, "10.1.0.2", in_port=77))
    assert stranger.dropped and stranger.tables == [Table.CLASSIFIER] and not stranger.flows[0].actions
    classified = {f.match.value("in_port") for f in in_table(flows, Table.CLASSIFIER) if f.priority}
    assert classified == {b.ofport for b in context.bindings} | {context.tunnel_port}
    assert {str(b.pod) for b in context.bindings} == {"x/v4", "x/dual"}  # the pending pod has no port


def test_spoofguard_pins_mac_and_ip_for_ip_and_arp() -> None:
    context, flows = compiled(*EDGE_CLUSTER)
    pod_v4, other = binding_of(context, "x/v4"), binding_of(context, "x/dual")
    assert walk(flows, ip_packet(pod_v4, "10.1.0.2")).outputs == [other.ofport]
    assert walk(flows, arp_request(pod_v4, "10.1.0.254")).outputs == ["IN_PORT"]  # proxy ARP answers
    forged = [ip_packet(pod_v4, "10.1.0.2", nw_src=int(IPAddress("10.1.0.2"))),
              ip_packet(pod_v4, "10.1.0.2", dl_src=int(other.mac)),
              arp_request(pod_v4, "10.1.0.254", arp_spa=int(IPAddress("10.1.0.2"))),
              arp_request(pod_v4, "10.1.0.254", arp_sha=int(other.mac)),
              arp_request(pod_v4, "10.1.0.254", dl_src=int(other.mac))]
    for packet in forged:
        result = walk(flows, packet)
        assert result.dropped and result.tables == [Table.CLASSIFIER, Table.SPOOF_GUARD], packet
    v6 = {"in_port": other.ofport, "dl_src": int(other.mac), "dl_dst": GATEWAY_MAC, "dl_type": 0x86DD,
          "nw_proto": 6, "ipv6_dst": int(IPAddress("fd00::9")), "tp_dst": 80}
    assert walk(flows, {**v6, "ipv6_src": int(IPAddress("fd00::2"))}).tables[:3] == [0, 10, 30]
    assert walk(flows, {**v6, "ipv6_src": int(IPAddress("fd00::3"))}).tables == [0, 10]


def test_replies_bypass_policy_original_direction_is_rechecked_and_invalid_drops() -> None:
    state = golden_state("default-deny-all", "test-network-policy")  # isolated db, 6379 allowed
    context = assign_ports(state, N1)
    flows = compile_node(state, context)
    db = binding_of(context, "default/db")
    from_frontend = tunnel_packet(context, "10.244.2.10", str(db.ips[0]), 6379)
    allowed = walk(flows, from_frontend)
    assert allowed.outputs == [db.ofport] and allowed.committed
    assert walk(flows, from_frontend, "+est+trk").outputs == [db.ofport]  # allowed: re-checked, passes
    closed = {**from_frontend, "tp_dst": 5978}
    assert walk(flows, closed).dropped and walk(flows, closed).tables[-1] == Table.INGRESS_DEFAULT
    assert walk(flows, closed, "+est+trk").dropped  # established but no longer allowed: cut
    for reply_state in ("+est+rpl+trk", "+rel+trk"):
        reply = walk(flows, closed, reply_state)
        assert reply.outputs == [db.ofport] and not reply.committed
        assert Table.EGRESS_RULE not in reply.tables and Table.INGRESS_DEFAULT not in reply.tables
    invalid = walk(flows, from_frontend, "+inv+trk")
    assert invalid.dropped and invalid.tables[-1] == Table.CONNTRACK_STATE


def test_traffic_between_a_pod_and_its_own_node_is_always_allowed() -> None:
    """docs/semantics.md: node-local traffic is allowed whatever the policies (kubelet probes).

    The node is its address (here node1's InternalIP) behind the gateway port; everyone
    else behind the gateway still meets the policies.
    """
    state = golden_state("default-deny-all")
    node_ip = IPAddress("192.168.56.11")
    context = replace(assign_ports(state, N1, node_addresses={N1: node_ip}), gateway_port=101)
    flows, db = compile_node(state, context), binding_of(context, "default/db")
    from_outside = {"in_port": 101, "dl_type": 0x0800, "nw_proto": 6, "tp_dst": 8080,
                    "nw_src": int(IPAddress("203.0.113.5")), "nw_dst": int(db.ips[0])}
    assert walk(flows, from_outside).dropped  # policy still applies to everyone else
    assert walk(flows, {**from_outside, "nw_src": int(node_ip)}).outputs == [db.ofport]  # e.g. kubelet probes
    assert walk(flows, ip_packet(db, str(node_ip), 10250)).outputs == [101]


def test_no_normal_action_anywhere() -> None:
    for flows in [*golden_compiles(), compiled(*EDGE_CLUSTER)[1]]:
        assert "NORMAL" not in render_flows(flows)
        assert all(a.port < OFPP_MAX for f in flows for a in f.actions if isinstance(a, Output))


def test_ipv6_policy_flows_use_ipv6_fields_and_v6_protocols() -> None:
    _, flows = compiled(*EDGE_CLUSTER, pod("x/cli6", ["10.2.0.9", "fd00::9"], {"app": "c"}, node=N2),
                        policy_yaml("v6", """
podSelector: {matchLabels: {app: a}}
policyTypes: [Ingress, Egress]
ingress:
- from: [{podSelector: {matchLabels: {app: c}}}, {ipBlock: {cidr: "fd00:1::/64", except: ["fd00:1::/80"]}}]
  ports: [{port: 80}, {protocol: UDP, port: 53}, {protocol: SCTP, port: 3868}]
egress:
- to: [ipBlock: {cidr: "fd00:2::/64"}]
"""))
    ingress, egress = rule_flows(flows, "x/v6", "Ingress"), rule_flows(flows, "x/v6", "Egress")
    assert [str(n) for n in networks(ingress, "ipv6_src")] == ["fd00::9/128", *(
        str(n) for n in (IPSet(["fd00:1::/64"]) - IPSet(["fd00:1::/80"])).iter_cidrs())]
    assert [str(n) for n in networks(egress, "ipv6_dst")] == ["fd00:2::/64"]
    protocols = {(f.match.value("dl_type"), f.match.value("nw_proto")) for f in ingress if f.match.get("tp_dst")}
    assert {(0x86DD, p) for p in (6, 17, 132)} <= protocols
    assert not [f for f in ingress if f.match.get("nw_src") and f.match.value("dl_type") != 0x0800]


# ---- diff ------------------------------------------------------------------------------

def test_adding_one_policy_to_a_thousand_touches_only_its_flows_and_shared_ones() -> None:
    state = synthetic_state(2000, 1000)
    # pol-00003 already isolates ns-003's app=a0 pod (pod-00003, on node3) and allows app=a1 on
    # 8083; the added policy allows the same peers on another port: new and shared flows only.
    new_doc = policy_doc(3)
    new_doc["metadata"]["name"] = "added"
    new_doc["spec"]["ingress"][0]["ports"] = [{"port": 8443}]
    grown = with_policy(state, new_doc)
    node = node_name(3)
    before, after = (compile_node(s, assign_ports(s, node)) for s in (state, grown))
    full_change = diff(before, after)
    # the new allow decides pod-00003's ingress verdicts: its ingress fingerprint changes, so its
    # ingress fast-path flow is replaced (the match holds the fingerprint) and its stamp modified
    fast = [f for f in (*full_change.adds, *full_change.modifies, *full_change.deletes)
            if decode_cookie(f.cookie).category == CookieCategory.FAST_PATH]
    target = next(b.pod for b in assign_ports(grown, node).bindings if b.pod.name == "pod-00003")
    assert {f.cookie for f in fast} == {cookie(CookieCategory.FAST_PATH, pod_object_id(str(target)))}
    assert sorted(f.table for f in fast) == [Table.INGRESS_FAST, Table.INGRESS_FAST, Table.INGRESS_STAMP]
    change = diff(FlowSet(f for f in before if f.table not in (Table.INGRESS_FAST, Table.INGRESS_STAMP)),
                  FlowSet(f for f in after if f.table not in (Table.INGRESS_FAST, Table.INGRESS_STAMP)))
    policy_cookie, mask = policy_cookie_and_mask(f"{new_doc['metadata']['namespace']}/added")
    own = after.by_cookie(policy_cookie, mask)
    assert len(own) > 0 and not change.deletes
    assert all(f.cookie & mask == policy_cookie or f.cookie == SHARED_COOKIE for f in (*change.adds, *change.modifies))
    new_ids = {f.match.value("conj_id") for f in own} - {None}
    shared = [f for f in (*change.adds, *change.modifies) if f.cookie == SHARED_COOKIE]
    for flow in shared:
        old = before.get(flow.id)
        gained = {c.id for c in conjunctions(flow)} - ({c.id for c in conjunctions(old)} if old else set())
        assert gained and gained <= new_ids
    assert len(change) == len(own) + len(shared)
    assert len(own) == 1 and len(shared) == 4  # conj_id for the one target; tcp/tcp6 8443 new, target and peer
