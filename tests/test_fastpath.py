"""The fast path for established connections (docs/pipeline.md, "Established connections: the
fast path"): real TCP/UDP/SCTP frames through a real OVS 3.1 (userspace conntrack), flows
replaced as the controller would replace them; plus the fingerprints' own properties.

Verdicts are read from the Output table's counters, the path a packet took from the fast
tables' counters, and what a connection was stamped with from `dpctl/dump-conntrack`.
"""

from __future__ import annotations

import re
import struct
from collections.abc import Callable, Iterator

import pytest

from sdn_netpol.compiler.compile import compile_node
from sdn_netpol.compiler.fastpath import fingerprints
from sdn_netpol.compiler.flowset import FlowSet
from sdn_netpol.compiler.ofctl import render_flows
from sdn_netpol.compiler.pipeline import FINGERPRINT_BITS, Table
from sdn_netpol.compiler.topology import assign_ports
from sdn_netpol.ovs import OvsInstance
from sdn_netpol.policy.state import ClusterState
from tests.builders import Part, build, pod
from tests.flow_walk import tunnel_packet, walk
from tests.ovs_fixtures import add_internal_ports, private_ovs
from tests.test_pipeline_ovs import _ipv4, sctp_init, udp

BR = "br-int"
GATEWAY_MAC = "0a:00:00:00:00:fe"


def _server_policy(ports: str) -> str:
    return f"""
apiVersion: networking.k8s.io/v1
kind: NetworkPolicy
metadata: {{name: server, namespace: x}}
spec:
  podSelector: {{matchLabels: {{app: server}}}}
  ingress:
  - from: [podSelector: {{matchLabels: {{app: client}}}}]
    ports: {ports}
"""


CLIENT_ISOLATED = """
apiVersion: networking.k8s.io/v1
kind: NetworkPolicy
metadata: {name: client-isolated, namespace: x}
spec:
  podSelector: {matchLabels: {app: client}}
  policyTypes: [Ingress]
"""
SERVER_ISOLATED = """
apiVersion: networking.k8s.io/v1
kind: NetworkPolicy
metadata: {name: server, namespace: x}
spec:
  podSelector: {matchLabels: {app: server}}
  policyTypes: [Ingress]
"""
UNRELATED = """
apiVersion: networking.k8s.io/v1
kind: NetworkPolicy
metadata: {name: unrelated, namespace: x}
spec:
  podSelector: {matchLabels: {app: other}}
  ingress:
  - from: [podSelector: {matchLabels: {app: other}}]
"""
ALLOWED = "[{protocol: TCP, port: 80}, {protocol: UDP, port: 53}, {protocol: SCTP, port: 3868}]"


def cluster(*policies: str, client_labels: dict[str, str] | None = None) -> ClusterState:
    parts: list[Part] = [
        pod("x/a", "10.244.1.1", client_labels or {"app": "client"}, node="node1"),
        pod("x/b", "10.244.1.2", {"app": "server"}, node="node1"),
        pod("x/c", "10.244.1.3", {"app": "other"}, node="node1"),
        *policies,
    ]
    return build(*parts)


BASE = cluster(_server_policy(ALLOWED), CLIENT_ISOLATED)


# ---- frames ------------------------------------------------------------------------------

def _checksum(data: bytes) -> int:
    if len(data) % 2:
        data += b"\0"
    total = sum(struct.unpack(f"!{len(data) // 2}H", data))
    while total >> 16:
        total = (total & 0xFFFF) + (total >> 16)
    return ~total & 0xFFFF


def tcp(sport: int, dport: int, flags: str, seq: int, ack: int = 0, payload: bytes = b"") -> Callable[
        [str, str], tuple[int, bytes]]:
    """A TCP segment with a correct checksum (userspace conntrack checks it)."""
    bits = sum({"F": 1, "S": 2, "R": 4, "P": 8, "A": 16}[f] for f in flags)

    def build_for(src: str, dst: str) -> tuple[int, bytes]:
        header = struct.pack("!HHIIBBHHH", sport, dport, seq, ack, 5 << 4, bits, 65535, 0, 0)
        pseudo = bytes(map(int, src.split("."))) + bytes(map(int, dst.split("."))) + struct.pack(
            "!BBH", 0, 6, len(header) + len(payload))
        csum = _checksum(pseudo + header + payload)
        return 6, header[:16] + struct.pack("!H", csum) + header[18:] + payload

    return build_for


class Switch:
    """node1's br-int in a private OVS, its flows replaced the way the controller replaces them."""

    def __init__(self, ovs: OvsInstance) -> None:
        self.ovs = ovs
        self.context = assign_ports(BASE, "node1")
        self.flows = FlowSet()

    def load(self, state: ClusterState) -> FlowSet:
        self.context = assign_ports(state, "node1")
        self.flows = compile_node(state, self.context)
        self.ovs.replace_flows(BR, render_flows(self.flows))
        return self.flows

    def port(self, ref: str) -> int:
        return next(b.ofport for b in self.context.bindings if str(b.pod) == ref)

    def counters(self) -> dict[tuple[int, str], int]:
        return {(f.table, f.match): f.n_packets for f in self.ovs.dump_flows(BR)}

    def send(self, src: str, dst: str, l4: Callable[[str, str], tuple[int, bytes]] | tuple[int, bytes]) -> str:
        """One frame from pod SRC to pod DST; 'output:N' or 'dropped'."""
        sender = next(b for b in self.context.bindings if str(b.pod) == src)
        receiver = next(b for b in self.context.bindings if str(b.pod) == dst)
        s_ip, d_ip = str(sender.ips[0]), str(receiver.ips[0])
        proto, body = l4(s_ip, d_ip) if callable(l4) else l4
        frame = (bytes.fromhex(GATEWAY_MAC.replace(":", "")) + bytes.fromhex(str(sender.mac).replace(":", ""))
                 + b"\x08\x00" + _ipv4(s_ip, d_ip, proto, body))
        before = self._delivered()
        self.ovs.ofctl("packet-out", BR, f"in_port={sender.ofport} packet={frame.hex()} actions=table")
        changed = [k for k, v in self._delivered().items() if v != before.get(k)]
        assert len(changed) <= 1
        return changed[0] if changed else "dropped"

    def _delivered(self) -> dict[str, int]:
        return {f.actions: f.n_packets for f in self.ovs.dump_flows(BR)
                if f.table == Table.OUTPUT and f.actions.startswith("output:")}

    def fast_hits(self) -> int:
        """Packets the per-pod fast-path flows (36 and 56, priority 200) took so far."""
        return sum(f.n_packets for f in self.ovs.dump_flows(BR)
                   if f.table in (Table.EGRESS_FAST, Table.INGRESS_FAST) and "ct_label" in f.match)

    def rule_hits(self) -> int:
        """Packets the policy rule tables' conj_id flows took (the rule counters)."""
        return sum(f.n_packets for f in self.ovs.dump_flows(BR)
                   if Table.EGRESS_ADMIN <= f.table <= Table.INGRESS_BASELINE and "conj_id" in f.match)

    def labels(self) -> list[int]:
        return [int(m, 16) for m in re.findall(r"labels=(0x[0-9a-f]+)", self.ovs.appctl("dpctl/dump-conntrack"))]


@pytest.fixture(scope="module")
def ovs(tmp_path_factory: pytest.TempPathFactory) -> Iterator[OvsInstance]:
    context = assign_ports(BASE, "node1")
    with private_ovs(tmp_path_factory.mktemp("ovs"), "fastpath-test", BR) as inst:
        add_internal_ports(inst, BR, (b.ofport for b in context.bindings))
        yield inst


@pytest.fixture
def switch(ovs: OvsInstance) -> Switch:
    ovs.appctl("dpctl/flush-conntrack")
    sw = Switch(ovs)
    sw.load(BASE)
    return sw


class Stream:
    """One TCP connection a -> b:80, handshake done; `data()` sends its next segment."""

    def __init__(self, switch: Switch, sport: int = 40000) -> None:
        self.switch, self.sport, self.seq = switch, sport, 1001
        assert switch.send("x/a", "x/b", tcp(sport, 80, "S", 1000)) == f"output:{switch.port('x/b')}"
        # the reply passes although a is isolated for ingress: replies bypass policy
        assert switch.send("x/b", "x/a", tcp(80, sport, "SA", 5000, 1001)) == f"output:{switch.port('x/a')}"
        assert switch.send("x/a", "x/b", tcp(sport, 80, "A", 1001, 5001)) == f"output:{switch.port('x/b')}"

    def data(self) -> str:
        verdict = self.switch.send("x/a", "x/b", tcp(self.sport, 80, "PA", self.seq, 5001, b"ping"))
        self.seq += 4
        return verdict


# ---- real packets ------------------------------------------------------------------------

def test_established_tcp_skips_the_rule_tables_once_stamped(switch: Switch) -> None:
    stream = Stream(switch)
    prints = fingerprints(switch.flows, [switch.port("x/a"), switch.port("x/b")])
    expected = prints[("Egress", switch.port("x/a"))] | prints[("Ingress", switch.port("x/b"))] << FINGERPRINT_BITS
    assert switch.labels() == [expected]  # the SYN's commit wrote both halves
    fast, rules = switch.fast_hits(), switch.rule_hits()
    for _ in range(5):
        assert stream.data() == f"output:{switch.port('x/b')}"
    assert switch.fast_hits() - fast == 2 * 5  # egress and ingress fast flow, every packet
    assert switch.rule_hits() == rules  # the rule counters saw only the SYN and the first ACK


def test_a_narrowed_allow_cuts_an_established_stream(switch: Switch) -> None:
    stream = Stream(switch)
    assert stream.data() == f"output:{switch.port('x/b')}"
    switch.load(cluster(_server_policy("[{protocol: TCP, port: 81}]"), CLIENT_ISOLATED))
    assert stream.data() == "dropped"
    assert stream.data() == "dropped"


def test_a_removed_allow_cuts_an_established_stream(switch: Switch) -> None:
    stream = Stream(switch)
    assert stream.data() == f"output:{switch.port('x/b')}"
    switch.load(cluster(SERVER_ISOLATED, CLIENT_ISOLATED))  # the allow is gone, the server still isolated
    assert stream.data() == "dropped"


def test_a_client_relabelled_out_of_the_peer_selector_loses_its_connection(switch: Switch) -> None:
    stream = Stream(switch)
    assert stream.data() == f"output:{switch.port('x/b')}"
    switch.load(cluster(_server_policy(ALLOWED), CLIENT_ISOLATED, client_labels={"app": "nobody"}))
    assert stream.data() == "dropped"


def test_an_unrelated_policy_changes_no_fingerprint_and_cuts_nothing(switch: Switch) -> None:
    stream = Stream(switch)
    ports = [switch.port("x/a"), switch.port("x/b")]
    before = fingerprints(switch.flows, ports)
    switch.load(cluster(_server_policy(ALLOWED), CLIENT_ISOLATED, UNRELATED))
    assert fingerprints(switch.flows, ports) == before
    fast = switch.fast_hits()
    assert stream.data() == f"output:{switch.port('x/b')}"
    assert switch.fast_hits() - fast == 2  # still the fast path


def test_a_widened_allow_rechecks_once_then_stamps_the_new_fingerprint(switch: Switch) -> None:
    stream = Stream(switch)
    switch.load(cluster(_server_policy(ALLOWED.replace("]", ", {protocol: TCP, port: 8080}]")), CLIENT_ISOLATED))
    ports = [switch.port("x/a"), switch.port("x/b")]
    prints = fingerprints(switch.flows, ports)
    fast, rules = switch.fast_hits(), switch.rule_hits()
    assert stream.data() == f"output:{switch.port('x/b')}"  # walked the rules, still allowed
    assert switch.rule_hits() == rules + 1
    assert switch.fast_hits() == fast + 1  # egress (unchanged) was fast, ingress re-checked
    assert switch.labels() == [prints[("Egress", ports[0])] | prints[("Ingress", ports[1])] << FINGERPRINT_BITS]
    assert stream.data() == f"output:{switch.port('x/b')}"
    assert switch.fast_hits() == fast + 3  # re-stamped: both fast again


def test_udp_after_a_reply_takes_the_fast_path_and_is_cut_by_a_withdrawal(switch: Switch) -> None:
    b = f"output:{switch.port('x/b')}"
    assert switch.send("x/a", "x/b", udp(40000, 53)) == b
    assert switch.send("x/b", "x/a", udp(53, 40000)) == f"output:{switch.port('x/a')}"  # reply bypass
    fast = switch.fast_hits()
    assert switch.send("x/a", "x/b", udp(40000, 53)) == b
    assert switch.fast_hits() == fast + 2
    switch.load(cluster(_server_policy("[{protocol: TCP, port: 80}, {protocol: SCTP, port: 3868}]"), CLIENT_ISOLATED))
    assert switch.send("x/a", "x/b", udp(40000, 53)) == "dropped"


def test_sctp_never_takes_the_fast_path_and_stays_per_port(switch: Switch) -> None:
    b = f"output:{switch.port('x/b')}"
    assert switch.send("x/a", "x/b", sctp_init(5000, 3868)) == b
    assert switch.send("x/b", "x/a", sctp_init(3868, 5000)) == f"output:{switch.port('x/a')}"
    fast = switch.fast_hits()
    assert switch.send("x/a", "x/b", sctp_init(5000, 3868)) == b  # +est: walks the rules, allowed
    assert switch.send("x/a", "x/b", sctp_init(5000, 9999)) == "dropped"  # +est (no ports), other port
    assert switch.fast_hits() == fast


# ---- without a switch --------------------------------------------------------------------

def test_fingerprints_are_pure_and_never_zero() -> None:
    context = assign_ports(BASE, "node1")
    ports = [b.ofport for b in context.bindings]
    first = fingerprints(compile_node(BASE, context), ports)
    again = fingerprints(compile_node(cluster(_server_policy(ALLOWED), CLIENT_ISOLATED), context), ports)
    assert first == again and all(first.values())
    # a, b and c: every pod's verdicts differ (client isolated for ingress, server allows a, c open)
    assert len({first[("Ingress", p)] for p in ports}) == 3


def test_the_table_walk_skips_the_rules_only_with_the_current_fingerprint() -> None:
    state = build(pod("x/b", "10.244.1.2", {"app": "server"}, node="node1"),
                  pod("y/f", "10.244.2.9", {"app": "client"}, node="node2"),
                  _server_policy("[{protocol: TCP, port: 80}]").replace("podSelector: {matchLabels: {app: client}}",
                                                                       "namespaceSelector: {}"))
    context = assign_ports(state, "node1")
    flows = compile_node(state, context)
    server = next(b for b in context.bindings if str(b.pod) == "x/b")
    packet = tunnel_packet(context, "10.244.2.9", "10.244.1.2", 80)
    current = fingerprints(flows, [server.ofport])[("Ingress", server.ofport)] << FINGERPRINT_BITS
    new = walk(flows, packet)
    assert new.outputs == [server.ofport] and new.label == current  # the first packet stamps it
    fast = walk(flows, packet, "+est+trk", ct_label=current)
    assert fast.outputs == [server.ofport] and Table.INGRESS_RULE not in fast.tables
    stale = walk(flows, packet, "+est+trk", ct_label=current ^ (1 << 64))
    assert stale.outputs == [server.ofport] and Table.INGRESS_RULE in stale.tables and stale.label == current
    closed = walk(flows, {**packet, "tp_dst": 81}, "+est+trk", ct_label=current ^ (1 << 64))
    assert closed.dropped


def test_a_dual_stack_pod_is_stamped_per_family_and_fast_in_both() -> None:
    state = build(pod("x/d", ["10.244.1.5", "fd00:10:244:1::5"], {"app": "server"}, node="node1"),
                  _server_policy("[{protocol: TCP, port: 80}]"))
    context = assign_ports(state, "node1")
    flows = compile_node(state, context)
    port = context.bindings[0].ofport
    stamps = [f for f in flows if f.table in (Table.EGRESS_STAMP, Table.INGRESS_STAMP) and f.priority == 200]
    assert sorted((f.table, f.match.value("dl_type")) for f in stamps) == [
        (Table.EGRESS_STAMP, 0x0800), (Table.EGRESS_STAMP, 0x86DD),
        (Table.INGRESS_STAMP, 0x0800), (Table.INGRESS_STAMP, 0x86DD)]
    fast = [f for f in flows if f.table in (Table.EGRESS_FAST, Table.INGRESS_FAST) and f.priority == 200
            and f.match.get("ct_label") is not None]
    assert len(fast) == 2 and all(port in (f.match.value("in_port"), f.match.value("reg2")) for f in fast)


ADMIN_DENY = """
apiVersion: policy.networking.k8s.io/v1alpha1
kind: AdminNetworkPolicy
metadata: {name: deny-other}
spec:
  priority: 10
  subject: {pods: {namespaceSelector: {}, podSelector: {matchLabels: {app: server}}}}
  ingress:
  - name: deny-other
    action: Deny
    from: [{pods: {namespaceSelector: {}, podSelector: {matchLabels: {app: other}}}}]
"""


def test_an_admin_policy_changes_only_its_subjects_fingerprints() -> None:
    context = assign_ports(BASE, "node1")
    ports = {str(b.pod): b.ofport for b in context.bindings}
    before = fingerprints(compile_node(BASE, context), ports.values())
    with_admin = cluster(_server_policy(ALLOWED), CLIENT_ISOLATED, ADMIN_DENY)
    after = fingerprints(compile_node(with_admin, assign_ports(with_admin, "node1")), ports.values())
    changed = {key for key in before if before[key] != after[key]}
    assert changed == {("Ingress", ports["x/b"])}  # the Deny decides only the server's ingress
