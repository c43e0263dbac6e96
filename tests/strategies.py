"""Hypothesis strategies for small random clusters, shared by the policy-core property tests and
the flow compiler's differential tests.

Everything is drawn from small alphabets so that selectors, ipBlocks and named ports actually
hit each other: 2-3 namespaces, up to 8 pods with labels over {app, role} × {x, y, z},
IPv4 addresses in 10.0.0.0/28 and IPv6 in fd00::/124 (unique per pod), container ports named
http/dns on a few numbers (mostly TCP), pods outside NetworkPolicy now and then (no status,
host network, pending, no IP), and policies with every kind of peer and port entry.

Use: `@given(cluster_states())`; check connections from `probes(state)` (protocol, port)
between every pod and `EXTERNAL_IPS`.

`any_flows()` draws single Flow values instead (every match field exact and masked, every
action type, nested ct exec actions, learn), for the OpenFlow encoders' byte-equality tests.
"""

from __future__ import annotations

import copy
from collections.abc import Sequence
from dataclasses import replace
from typing import Any, Literal, cast

from hypothesis import strategies as st
from netaddr import IPAddress, IPNetwork

from sdn_netpol.compiler.flow import (
    Action,
    Conjunction,
    Controller,
    Ct,
    DecTtl,
    Flow,
    GotoTable,
    LearnReply,
    Match,
    MatchField,
    Move,
    Output,
    OutputInPort,
    Resubmit,
    SetField,
    writable_fields,
)
from sdn_netpol.compiler.flowfields import (
    ACTION_FIELDS,
    CT_STATE_ALL,
    CT_STATE_FLAGS,
    MATCH_FIELDS,
    OFPP_LOCAL,
    OFPP_MAX,
    SET_ONLY_FIELDS,
)
from sdn_netpol.model.labels import OPERATORS, Labels, LabelSelector, Requirement
from sdn_netpol.model.objects import (
    ContainerPort,
    Direction,
    IPBlock,
    Namespace,
    NetworkPolicy,
    Peer,
    Pod,
    PolicyPort,
    Protocol,
    Rule,
)
from sdn_netpol.policy.state import ClusterState

NAMESPACES = ("ns-a", "ns-b", "ns-c")
LABEL_KEYS = ("app", "role")
LABEL_VALUES = ("x", "y", "z")
NAMESPACE_LABEL_KEY = "team"
PORT_NAMES = ("http", "dns")
PORT_NUMBERS = (53, 80, 443, 8080)
MAX_PODS = 8
V4_BASE = IPAddress("10.0.0.0")
V6_BASE = IPAddress("fd00::")
#: addresses that are no pod's: inside the pod pools (after the pods) and well outside them
EXTERNAL_IPS = (IPAddress("10.0.0.14"), IPAddress("192.0.2.7"), IPAddress("fd00::e"), IPAddress("2001:db8::7"))

Status = Literal["running", "no-status", "host-network", "pending", "no-ip"]

#: mostly TCP, so that port entries and container ports meet often
protocols_st: st.SearchStrategy[Protocol] = st.sampled_from(("TCP", "TCP", "TCP", "UDP", "SCTP"))
labels_st = st.dictionaries(st.sampled_from(LABEL_KEYS), st.sampled_from(LABEL_VALUES), max_size=2).map(Labels)


@st.composite
def requirements(draw: st.DrawFn, keys: Sequence[str] = LABEL_KEYS) -> Requirement:
    key = draw(st.sampled_from(keys))
    operator = draw(st.sampled_from(OPERATORS))
    values: frozenset[str] = frozenset()
    if operator in ("In", "NotIn"):
        values = frozenset(draw(st.sets(st.sampled_from(LABEL_VALUES), min_size=1, max_size=2)))
    return Requirement(key, operator, values)


@st.composite
def selectors(draw: st.DrawFn, keys: Sequence[str] = LABEL_KEYS) -> LabelSelector:
    match = draw(st.dictionaries(st.sampled_from(keys), st.sampled_from(LABEL_VALUES), max_size=1))
    expressions = draw(st.lists(requirements(keys), max_size=1))
    return LabelSelector(Labels(match), tuple(expressions))


namespace_selectors = selectors((NAMESPACE_LABEL_KEY,)) | st.builds(
    lambda name: LabelSelector(Labels({"kubernetes.io/metadata.name": name})), st.sampled_from(NAMESPACES))


@st.composite
def namespaces(draw: st.DrawFn) -> tuple[Namespace, ...]:
    count = draw(st.integers(2, 3))
    return tuple(
        Namespace.implied(name, Labels(draw(st.dictionaries(st.just(NAMESPACE_LABEL_KEY),
                                                            st.sampled_from(LABEL_VALUES), max_size=1))))
        for name in NAMESPACES[:count]
    )


@st.composite
def container_ports(draw: st.DrawFn) -> tuple[ContainerPort, ...]:
    named = draw(st.dictionaries(st.sampled_from(PORT_NAMES),
                                 st.tuples(st.sampled_from(PORT_NUMBERS), protocols_st), min_size=1, max_size=2))
    unnamed = draw(st.lists(st.tuples(st.sampled_from(PORT_NUMBERS), protocols_st), max_size=1))
    return tuple(ContainerPort(name, n, p) for name, (n, p) in sorted(named.items())) + tuple(
        ContainerPort(None, n, p) for n, p in unnamed)


@st.composite
def pods(draw: st.DrawFn, namespace_names: Sequence[str], index: int) -> Pod:
    """Pod number `index` owns 10.0.0.<index+1> and/or fd00::<index+1> (unique addresses)."""
    family = draw(st.sampled_from(("v4", "v4", "v6", "dual")))
    ips = []
    if family in ("v4", "dual"):
        ips.append(V4_BASE + index + 1)
    if family in ("v6", "dual"):
        ips.append(V6_BASE + index + 1)
    status: Status = draw(st.sampled_from(("running",) * 6 + ("no-status", "host-network", "pending", "no-ip")))
    pod = Pod(
        namespace=draw(st.sampled_from(namespace_names)),
        name=f"pod-{index}",
        labels=draw(labels_st),
        ips=tuple(ips),
        node_name=draw(st.sampled_from(("node-1", "node-2"))),
        ports=draw(container_ports()),
    )
    if status == "no-status":
        return replace(pod, ips=(), ips_known=False)
    if status == "host-network":
        return replace(pod, host_network=True)
    if status == "pending":
        return replace(pod, phase="Pending")
    if status == "no-ip":
        return replace(pod, ips=())
    return pod


@st.composite
def ip_blocks(draw: st.DrawFn) -> IPBlock:
    version = draw(st.sampled_from((4, 4, 6)))
    bits = 32 if version == 4 else 128
    base = V4_BASE if version == 4 else V6_BASE
    if draw(st.integers(0, 9)) == 0:
        cidr = IPNetwork(f"{base}/0").cidr  # everything of the family
    else:  # inside the pools, mostly wide enough to hold several pods: /28../32, /124../128
        prefix = draw(st.sampled_from((bits - 4, bits - 4, bits - 3, bits - 2, bits - 1, bits)))
        cidr = IPNetwork(f"{base + draw(st.integers(0, 15))}/{prefix}").cidr
    excepts = []
    for _ in range(draw(st.integers(0, 2))):
        if cidr.prefixlen >= bits:
            break
        sub_prefix = draw(st.integers(max(cidr.prefixlen + 1, bits - 4), bits))
        inside = cidr.first + draw(st.integers(0, min(cidr.size, 16) - 1))
        excepts.append(IPNetwork(f"{IPAddress(inside, version)}/{sub_prefix}").cidr)
    return IPBlock(cidr, tuple(sorted(set(excepts))))


@st.composite
def peers(draw: st.DrawFn) -> Peer:
    kind = draw(st.sampled_from(("pods", "namespaces", "both", "ipblock", "ipblock")))
    if kind == "pods":
        return Peer(pod_selector=draw(selectors()))
    if kind == "namespaces":
        return Peer(namespace_selector=draw(namespace_selectors))
    if kind == "both":
        return Peer(pod_selector=draw(selectors()), namespace_selector=draw(namespace_selectors))
    return Peer(ip_block=draw(ip_blocks()))


@st.composite
def policy_ports(draw: st.DrawFn) -> PolicyPort:
    protocol = draw(protocols_st)
    kind = draw(st.sampled_from(("all", "number", "range", "named", "named")))
    if kind == "all":
        return PolicyPort(protocol)
    if kind == "named":
        return PolicyPort(protocol, draw(st.sampled_from(PORT_NAMES)))
    port = draw(st.sampled_from(PORT_NUMBERS))
    if kind == "number":
        return PolicyPort(protocol, port)
    return PolicyPort(protocol, port, draw(st.sampled_from([n for n in (*PORT_NUMBERS, 81) if n >= port])))


@st.composite
def rules(draw: st.DrawFn) -> Rule:
    return Rule(tuple(draw(st.lists(peers(), max_size=2))), tuple(draw(st.lists(policy_ports(), max_size=2))))


@st.composite
def policies(draw: st.DrawFn, namespace_names: Sequence[str] = NAMESPACES, name: str = "pol") -> NetworkPolicy:
    ingress = tuple(draw(st.lists(rules(), max_size=2)))
    egress = tuple(draw(st.lists(rules(), max_size=2)))
    both: tuple[Direction, ...] = ("Ingress", "Egress")
    explicit = draw(st.sampled_from((None, both[:1], both[1:], both)))
    types = frozenset(explicit if explicit else both if egress else both[:1])
    return NetworkPolicy(draw(st.sampled_from(namespace_names)), name, draw(selectors()), types, ingress, egress)


@st.composite
def cluster_states(draw: st.DrawFn, max_pods: int = MAX_PODS, max_policies: int = 5) -> ClusterState:
    ns = draw(namespaces())
    names = [n.name for n in ns]
    pod_count = draw(st.integers(2, max_pods))
    pod_list = [draw(pods(names, i)) for i in range(pod_count)]
    policy_count = draw(st.integers(0, max_policies))
    policy_list = [draw(policies(names, f"pol-{i}")) for i in range(policy_count)]
    return ClusterState.build(ns, pod_list, policy_list)


def probes(state: ClusterState) -> tuple[tuple[Protocol, int], ...]:
    """(protocol, port) pairs worth checking in `state`: every container port, both ends of
    every policy port entry and the port just past it, one port of each protocol-wide entry."""
    found: set[tuple[Protocol, int]] = {("TCP", 80)}
    for pod in state.pods:
        found.update((cp.protocol, cp.port) for cp in pod.ports)
    for policy in state.policies:
        for rule in (*policy.ingress, *policy.egress):
            for entry in rule.ports:
                if isinstance(entry.port, int):
                    last = entry.end_port or entry.port
                    found.update({(entry.protocol, entry.port), (entry.protocol, last), (entry.protocol, last + 1)})
                elif entry.port is None:
                    found.add((entry.protocol, 9))
    return tuple(sorted(found))


# --- back to manifests (for round trips, and for tools that want YAML: the lab, the CLI) -------


def selector_manifest(selector: LabelSelector) -> dict[str, object]:
    body: dict[str, object] = {}
    if selector.match_labels:
        body["matchLabels"] = dict(selector.match_labels)
    if selector.match_expressions:
        body["matchExpressions"] = [
            {"key": r.key, "operator": r.operator, **({"values": sorted(r.values)} if r.values else {})}
            for r in selector.match_expressions
        ]
    return body


def _peer_manifest(peer: Peer) -> dict[str, object]:
    if peer.ip_block is not None:
        block: dict[str, object] = {"cidr": str(peer.ip_block.cidr)}
        if peer.ip_block.excepts:
            block["except"] = [str(e) for e in peer.ip_block.excepts]
        return {"ipBlock": block}
    body: dict[str, object] = {}
    if peer.pod_selector is not None:
        body["podSelector"] = selector_manifest(peer.pod_selector)
    if peer.namespace_selector is not None:
        body["namespaceSelector"] = selector_manifest(peer.namespace_selector)
    return body


def _port_manifest(entry: PolicyPort) -> dict[str, object]:
    body: dict[str, object] = {"protocol": entry.protocol}
    if entry.port is not None:
        body["port"] = entry.port
    if entry.end_port is not None:
        body["endPort"] = entry.end_port
    return body


def _rule_manifest(rule: Rule, peers_field: str) -> dict[str, object]:
    return {peers_field: [_peer_manifest(p) for p in rule.peers], "ports": [_port_manifest(p) for p in rule.ports]}


def to_manifests(state: ClusterState) -> list[dict[str, object]]:
    """Namespace, Pod and NetworkPolicy manifests that parse back to `state`."""
    docs: list[dict[str, object]] = [
        {"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": ns.name, "labels": dict(ns.labels)}}
        for ns in state.namespaces
    ]
    for pod in state.pods:
        ports = [{"containerPort": p.port, "protocol": p.protocol, **({"name": p.name} if p.name else {})}
                 for p in pod.ports]
        spec: dict[str, object] = {"containers": [{"name": "main", "ports": ports}]}
        if pod.node_name:
            spec["nodeName"] = pod.node_name
        if pod.host_network:
            spec["hostNetwork"] = True
        meta = {"name": pod.name, "namespace": pod.namespace, "labels": dict(pod.labels)}
        body: dict[str, object] = {"apiVersion": "v1", "kind": "Pod", "metadata": meta, "spec": spec}
        if pod.ips_known:
            status: dict[str, object] = {"phase": pod.phase}
            if pod.ips:
                status["podIP"] = str(pod.ips[0])
                status["podIPs"] = [{"ip": str(ip)} for ip in pod.ips]
            body["status"] = status
        docs.append(body)
    for policy in state.policies:
        docs.append({
            "apiVersion": "networking.k8s.io/v1", "kind": "NetworkPolicy",
            "metadata": {"name": policy.name, "namespace": policy.namespace},
            "spec": {
                "podSelector": selector_manifest(policy.pod_selector),
                "policyTypes": sorted(policy.policy_types),
                "ingress": [_rule_manifest(r, "from") for r in policy.ingress],
                "egress": [_rule_manifest(r, "to") for r in policy.egress],
            },
        })
    return docs


# --- flows: every match field (exact and masked) and every action, for the wire encoders ------

_GENERIC_MATCH = ("conj_id", "ct_state", "ct_mark", *(f"reg{i}" for i in range(8)), "tun_id", "tun_src", "tun_dst",
                  "in_port", "dl_src", "dl_dst")
_V4, _V6 = ("nw_src", "nw_dst"), ("ipv6_src", "ipv6_dst")
#: protocol shorthand → fields it allows (nd_target is added by `flow_matches` with an ND type)
_FAMILY_MATCH: dict[str | None, tuple[str, ...]] = {
    None: (), "ip": _V4, "ipv6": _V6, "arp": ("arp_op", "arp_spa", "arp_tpa", "arp_sha", "arp_tha"),
    "icmp": (*_V4, "icmp_type", "icmp_code"), "icmp6": (*_V6, "icmpv6_type", "icmpv6_code"),
    **{p: (*_V4, "tp_dst") for p in ("tcp", "udp", "sctp")}, **{p: (*_V6, "tp_dst") for p in ("tcp6", "udp6", "sctp6")},
}


@st.composite
def match_field_values(draw: st.DrawFn, name: str) -> MatchField:
    """A value of field `name`, exact or under a mask (prefixes for IPv6, which OVS requires)."""
    spec = MATCH_FIELDS[name]
    if spec.kind == "port":
        return MatchField(name, draw(st.one_of(st.integers(1, OFPP_MAX - 1), st.just(OFPP_LOCAL))))
    if spec.kind == "ct_state":
        return MatchField(name, draw(st.integers(0, CT_STATE_ALL)), draw(st.integers(1, CT_STATE_ALL)))
    value = draw(st.integers(0, spec.full))
    if not spec.maskable or draw(st.booleans()):
        return MatchField(name, value)
    prefixes = st.integers(0, spec.bits).map(lambda k: spec.full ^ ((1 << k) - 1))
    return MatchField(name, value, draw(prefixes if spec.kind == "ipv6" else st.one_of(st.integers(1, spec.full),
                                                                                       prefixes)))


@st.composite
def flow_matches(draw: st.DrawFn) -> Match:
    family = draw(st.sampled_from([*_FAMILY_MATCH, "other", "nd"]))
    names = set(draw(st.sets(st.sampled_from(_GENERIC_MATCH))))
    fields: list[MatchField] = []
    if family == "other":
        fields.append(MatchField("dl_type", draw(st.sampled_from([0x88CC, 0x8035, 0x8847]))))
    elif family == "nd":
        fields += Match.build("icmp6", icmpv6_type=draw(st.sampled_from([135, 136]))).fields
        names |= draw(st.sets(st.sampled_from([*_V6, "nd_target", "icmpv6_code"])))
    elif family is not None:
        fields += Match.build(family).fields
        names |= draw(st.sets(st.sampled_from(_FAMILY_MATCH[family]))) if _FAMILY_MATCH[family] else set()
        if family in ("ip", "ipv6") and draw(st.booleans()):
            fields.append(MatchField("nw_proto", draw(st.sampled_from([2, 47, 50, 89]))))
    fields += [draw(match_field_values(n)) for n in sorted(names)]
    if family == "nd":
        fields = [MatchField("icmpv6_code", 0) if f.name == "icmpv6_code" else f for f in fields]
    return Match(tuple(draw(st.permutations(fields))))


@st.composite
def flow_actions(draw: st.DrawFn, table: int, match: Match) -> tuple[Action, ...]:
    """Actions OVS accepts after `match`: conjunctions alone, or any mix ending in goto_table."""
    if draw(st.integers(0, 4)) == 0:
        conj = st.builds(lambda i, n, k: Conjunction(i, min(k, n), n),
                         st.integers(0, 0xFFFFFFFF), st.integers(2, 64), st.integers(1, 64))
        return tuple(draw(st.lists(conj, min_size=1, max_size=3)))
    dl_type = match.value("dl_type")
    writable = sorted(writable_fields(match))
    choices: list[st.SearchStrategy[Action]] = [
        st.builds(Output, st.one_of(st.integers(1, OFPP_MAX - 1), st.just(OFPP_LOCAL))),
        st.just(OutputInPort()), st.builds(Resubmit, st.integers(0, 253)),
        st.sampled_from(writable).flatmap(lambda n: st.builds(
            SetField, st.just(n), st.integers(0, 0xFF if n == "arp_op" else ACTION_FIELDS[n].full))),
        st.sampled_from([(a, b) for a in [*writable, "ct_mark"] for b in writable
                         if ACTION_FIELDS[a].bits == ACTION_FIELDS[b].bits and not {a, b} & SET_ONLY_FIELDS]).map(
            lambda p: Move(*p)),
        st.builds(Controller, st.binary(min_size=1, max_size=20)),
    ]
    if dl_type in (0x0800, 0x86DD):
        may_commit = not (match.value("ct_state") or 0) & CT_STATE_FLAGS["inv"]  # OVS: no commit on +inv
        marks = st.lists(st.builds(SetField, st.just("ct_mark"), st.integers(0, 2**32 - 1)), max_size=3)
        regs = [n for n in ACTION_FIELDS if n.startswith("reg")]
        choices += [
            st.just(DecTtl()),
            st.builds(lambda c, t, z, e: Ct((c or bool(e)) and may_commit, t, z, tuple(e) if may_commit else ()),
                      st.booleans(), st.one_of(st.none(), st.integers(0, 253)), st.integers(0, 0xFFFF), marks),
            st.builds(LearnReply, st.integers(0, 253), st.integers(0, 0xFFFF), st.integers(0, 0xFFFF),
                      st.integers(0, 2**64 - 2), st.sampled_from([4, 6]), st.sampled_from(regs), st.integers(0, 31)),
        ]
    acts: list[Action] = draw(st.lists(st.one_of(choices), max_size=5))
    if table < 253 and draw(st.booleans()):
        acts.append(GotoTable(draw(st.integers(table + 1, 253))))
    return tuple(acts)


@st.composite
def any_flows(draw: st.DrawFn) -> Flow:
    """Any Flow value: every match field with and without masks, IPv4/IPv6/ARP/ND, every action."""
    table = draw(st.integers(0, 253))
    match = draw(flow_matches())
    return Flow(table, draw(st.integers(0, 0xFFFF)), match, draw(flow_actions(table, match)),
                draw(st.one_of(st.just(0), st.integers(0, 2**64 - 2))))


# --- hostile inputs, for the fuzz tests (tests/test_fuzz_*.py) --------------------------------
#
# `junk` is any JSON value; `mutated_manifests()` replaces 1-3 subtrees of a valid manifest
# with junk (so most of a document stays meaningful and the parser goes deep); `hostile_text`
# adds what a user's editor or a broken generator produces: control characters, escapes,
# path traversal, over-long and non-ASCII names. `hostile_bytes()` turns a valid document's
# bytes into what a disk, a pipe or a half-written file can hold: truncation, invalid UTF-8,
# a BOM, NULs, nesting deeper than the parsers recurse, and a megabyte of it.

HOSTILE_STRINGS = (
    "", " ", "\n", "\t", "-", ".", "..", "../../../tmp/escape", "/", "a/b", "a:b", "0", "-1", "1e309", "NaN",
    "\x00", "\x1b[2J\x1b[31mRED", "a\nb", "é" * 8, "☃", "\u202etxt.exe", "\udcff", "a" * 300, "%s%n", "{}", "[]",
    "null", "~", "TCP", "In", "Ingress", "10.0.0.0/8", "::/0", "ffff::1", "52:54:00:00:01:01",
)
hostile_text = st.sampled_from(HOSTILE_STRINGS) | st.text(max_size=20)
hostile_numbers = st.sampled_from([0, -1, 1, 65535, 65536, 2**31, 2**63, 2**64, -(2**63), 10**30]) \
    | st.floats(allow_nan=False, allow_infinity=False) | st.integers(-(2**40), 2**40)

junk = st.recursive(
    st.none() | st.booleans() | st.integers(-(2**40), 2**40) | st.floats(allow_nan=False)
    | st.text(max_size=20) | st.sampled_from(["TCP", "In", "10.0.0.0/8", "Ingress", "a/b", "-", "", "0"]),
    lambda children: st.lists(children, max_size=3) | st.dictionaries(st.text(max_size=12), children, max_size=3),
    max_leaves=8,
)
hostile_junk = st.recursive(
    st.none() | st.booleans() | hostile_numbers | hostile_text,
    lambda children: st.lists(children, max_size=3) | st.dictionaries(hostile_text, children, max_size=3),
    max_leaves=8,
)

VALID_MANIFESTS: tuple[dict[str, object], ...] = (
    {"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": "x", "labels": {"ns": "x"}}},
    {"apiVersion": "v1", "kind": "Pod",
     "metadata": {"name": "a", "namespace": "x", "labels": {"pod": "a"}},
     "spec": {"nodeName": "n1", "containers": [{"name": "c", "ports": [
         {"containerPort": 80, "name": "http", "protocol": "TCP"}]}]},
     "status": {"podIP": "10.244.1.2", "podIPs": [{"ip": "10.244.1.2"}], "phase": "Running"}},
    {"apiVersion": "networking.k8s.io/v1", "kind": "NetworkPolicy",
     "metadata": {"name": "p", "namespace": "x"},
     "spec": {"podSelector": {"matchLabels": {"pod": "a"},
                              "matchExpressions": [{"key": "pod", "operator": "In", "values": ["a"]}]},
              "policyTypes": ["Ingress", "Egress"],
              "ingress": [{"from": [{"ipBlock": {"cidr": "10.0.0.0/8", "except": ["10.1.0.0/16"]}},
                                    {"namespaceSelector": {}, "podSelector": {"matchLabels": {"a": "b"}}}],
                           "ports": [{"protocol": "TCP", "port": 80, "endPort": 90}, {"port": "http"}]}],
              "egress": [{"to": [{"podSelector": {}}], "ports": [{"protocol": "UDP"}]}]}},
    {"apiVersion": "v1", "kind": "Node", "metadata": {"name": "n1"},
     "spec": {"podCIDR": "10.244.1.0/24", "podCIDRs": ["10.244.1.0/24"]},
     "status": {"addresses": [{"type": "InternalIP", "address": "192.168.0.1"},
                              {"type": "Hostname", "address": "n1"}]}},
)


def tree_paths(node: object, prefix: tuple[object, ...] = ()) -> list[tuple[object, ...]]:
    """Every path (keys and indexes) into a JSON value, the root `()` first."""
    found = [prefix]
    if isinstance(node, dict):
        for key, value in node.items():
            found += tree_paths(value, (*prefix, key))
    elif isinstance(node, list):
        for i, value in enumerate(node):
            found += tree_paths(value, (*prefix, i))
    return found


@st.composite
def mutated_tree(draw: st.DrawFn, base: object, values: st.SearchStrategy[object] = junk,
                 min_changes: int = 1, max_changes: int = 3) -> object:
    """`base` (deep-copied) with 1-3 subtrees replaced by `values`, or a key deleted."""
    doc = copy.deepcopy(base)
    for _ in range(draw(st.integers(min_changes, max_changes))):
        paths = [p for p in tree_paths(doc) if p]
        if not paths:
            break
        path = draw(st.sampled_from(paths))
        parent: Any = doc
        for step in path[:-1]:
            parent = parent[step]
        if isinstance(parent, dict) and draw(st.integers(0, 4)) == 0:
            del parent[path[-1]]
        else:
            parent[path[-1]] = draw(values)
    return doc


def mutated_manifests(values: st.SearchStrategy[object] = junk) -> st.SearchStrategy[dict[str, Any]]:
    """One of VALID_MANIFESTS with 1-3 subtrees replaced by `values` (or deleted)."""
    return st.sampled_from(VALID_MANIFESTS).flatmap(lambda base: mutated_tree(base, values)).map(
        lambda doc: cast(dict[str, Any], doc))


class Blob(bytes):
    """Bytes whose repr stays short (hypothesis prints a failing example: not a megabyte)."""

    def __repr__(self) -> str:
        if len(self) <= 200:
            return bytes.__repr__(self)
        return f"Blob({bytes(self[:60])!r} ... {bytes(self[-20:])!r}, {len(self)} bytes)"


class LongText(str):
    """A string whose repr stays short (an environment variable of 100 kB, say)."""

    def __repr__(self) -> str:
        if len(self) <= 200:
            return str.__repr__(self)
        return f"LongText({str(self[:40])!r} ... {len(self)} characters)"


def blob(data: bytes) -> bytes:
    return Blob(data) if len(data) > 200 else data


def deep_nesting(depth: int, json_style: bool = True) -> bytes:
    """A value nested `depth` levels (deeper than Python's recursion limit parses)."""
    if json_style:
        return Blob(b'{"a": ' * depth + b"1" + b"}" * depth)
    return Blob(b"# yaml\n" + b"[" * depth + b"]" * depth)


@st.composite
def _hostile_bytes(draw: st.DrawFn, text: bytes) -> bytes:
    """`text` damaged the way files and pipes get damaged (or left alone, now and then).
    Deep YAML and a megabyte cost PyYAML up to a second each: they are drawn less often."""
    kind = draw(st.sampled_from(("same", "same", "same", "truncate", "truncate", "splice", "splice", "invalid-utf8",
                                 "invalid-utf8", "bom", "nul", "binary", "empty", "deep-json", "deep-yaml", "huge")))
    if kind == "same":
        return text
    if kind == "truncate":
        return text[:draw(st.integers(0, max(0, len(text) - 1)))]
    if kind == "splice":
        at = draw(st.integers(0, len(text)))
        return text[:at] + draw(st.binary(max_size=8)) + text[at:]
    if kind == "invalid-utf8":
        at = draw(st.integers(0, len(text)))
        bad = draw(st.sampled_from([b"\xff", b"\xc3", b"\xed\xa0\x80", b"\xf8\x88\x80\x80\x80"]))
        return text[:at] + bad + text[at:]
    if kind == "bom":
        return b"\xef\xbb\xbf" + text
    if kind == "nul":
        return text.replace(b":", b":\x00", 1)
    if kind == "deep-json":
        return deep_nesting(draw(st.sampled_from([200, 5_000, 100_000])))
    if kind == "deep-yaml":  # PyYAML's scanner is quadratic in the depth: past its recursion limit is enough
        return deep_nesting(draw(st.sampled_from([200, 1_000])), json_style=False)
    if kind == "huge":  # a megabyte: one long value (where the document has a "x"), and blank padding
        long = b'"' + b"x" * draw(st.sampled_from([100_000, 1_000_000])) + b'"'
        return text.replace(b'"x"', long, 1) + b" " * draw(st.sampled_from([0, 200_000]))
    if kind == "binary":
        return draw(st.binary(min_size=1, max_size=64))
    return b""


def hostile_bytes(text: bytes) -> st.SearchStrategy[bytes]:
    """`text` damaged the way files and pipes get damaged (or left alone, now and then)."""
    return _hostile_bytes(text).map(blob)
