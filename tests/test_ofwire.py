"""compiler/ofwire.py writes exactly the FlowMod bytes os-ken writes (compiler/osken.py, the
reference): for every golden flow, every pipeline/base flow of a node, one flow per field of
the vocabulary, and generated flows; every command. Anything it cannot encode raises."""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from netaddr import EUI, IPAddress, IPNetwork

from sdn_netpol.cli.flowtext import compile_inputs
from sdn_netpol.cli.golden import GoldenCase, cases
from sdn_netpol.compiler import ofwire
from sdn_netpol.compiler.base_flows import local_pod_flows, node_route_flows, pipeline_flows, remote_pod_flows
from sdn_netpol.compiler.flow import (
    OFPP_LOCAL,
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
    SetField,
    writable_fields,
)
from sdn_netpol.compiler.flowfields import ACTION_FIELDS, ACTION_PREREQUISITES, MATCH_FIELDS, SET_ONLY_FIELDS
from sdn_netpol.compiler.ofwire import Command, EncodeError, encode_flow_mod
from sdn_netpol.compiler.osken import to_flow_mod
from sdn_netpol.compiler.topology import NodeContext, assign_ports
from sdn_netpol.controller import wire
from sdn_netpol.inputs.node_inputs import load_inputs
from sdn_netpol.model.labels import Labels
from sdn_netpol.model.objects import Pod
from sdn_netpol.policy.state import ClusterState
from tests.strategies import any_flows

GOLDEN = Path(__file__).resolve().parent.parent / "flows"
COMMANDS: tuple[Command, ...] = ("add", "modify_strict", "delete_strict")


def os_kens(flow: Flow, command: Command) -> bytes:
    return wire.serialise(to_flow_mod(flow, wire.DESC, command))


def assert_same_bytes(flows: list[Flow]) -> None:
    for flow in flows:
        for command in COMMANDS:
            assert encode_flow_mod(flow, command) == os_kens(flow, command), (command, flow)


# ---- the flows the compiler makes ---------------------------------------------------------

@pytest.mark.parametrize("case", cases(GOLDEN), ids=lambda c: f"{c.example}-{c.node}")
def test_every_golden_flow_encodes_as_os_ken_does(case: GoldenCase) -> None:
    flows, _ = compile_inputs(load_inputs([case.cluster, case.policy]), case.node, case.ports)
    assert len(flows) > 20
    assert_same_bytes(list(flows))


def _edge_node() -> tuple[NodeContext, list[Pod]]:
    """A node with every edge: tunnel, gateway with a peer MAC, dual-stack pods, routes by
    pod CIDR to one node and per pod to another."""
    pods = [Pod("ns", "local-a", Labels({}), (IPAddress("10.1.0.5"), IPAddress("fd00:1::5")), "n0"),
            Pod("ns", "local-b", Labels({}), (IPAddress("fd00:1::6"),), "n0"),
            Pod("ns", "far", Labels({}), (IPAddress("10.2.0.7"), IPAddress("fd00:2::7")), "n1"),
            Pod("ns", "other", Labels({}), (IPAddress("10.9.0.8"),), "n2")]
    context = assign_ports(ClusterState.build((), pods, ()), "n0", ports={"ns/local-a": 0xFEFF})
    context = replace(context, gateway_port=7, gateway_peer_mac=EUI("52:54:00:00:01:01"),
                      node_cidrs=(("n1", IPNetwork("10.2.0.0/16")), ("n1", IPNetwork("fd00:2::/64"))))
    return context, pods


def test_every_pipeline_and_base_flow_of_a_node_encodes_as_os_ken_does() -> None:
    node, pods = _edge_node()
    flows = [*pipeline_flows(node), *node_route_flows(node)]
    for binding in node.bindings:
        flows += local_pod_flows(binding)
    for pod in pods:
        flows += remote_pod_flows(pod, node)
    kinds = {type(a).__name__ for f in flows for a in f.actions}
    assert kinds >= {"Ct", "LearnReply", "Move", "Resubmit", "OutputInPort", "Output", "DecTtl", "SetField"}
    assert_same_bytes(flows)


# ---- every field and action of the vocabulary ---------------------------------------------

#: the protocol each match field needs (flow.py refuses it otherwise)
_NEEDS = {"ipv6_src": "ipv6", "ipv6_dst": "ipv6", "nw_src": "ip", "nw_dst": "ip", "nw_proto": "ip",
          "icmp_type": "icmp", "icmp_code": "icmp", "icmpv6_type": "icmp6", "icmpv6_code": "icmp6",
          **{f: "arp" for f in ("arp_op", "arp_spa", "arp_tpa", "arp_sha", "arp_tha")}}


def _single_field_matches(name: str) -> list[Match]:
    spec = MATCH_FIELDS[name]
    value = 0x8899AABBCCDDEEFF0011223344556677 & spec.full
    if name == "in_port":
        return [Match.build(in_port=5), Match.build(in_port=OFPP_LOCAL)]
    if name == "ct_state":
        return [Match.build(ct_state="+trk+new-est")]
    if name == "tp_dst":
        return [Match.build(p, tp_dst=v) for p in ("tcp", "udp", "sctp", "tcp6", "udp6", "sctp6")
                for v in (8080, (0x1000, 0xF000))]
    if name == "nd_target":
        return [Match.build("icmp6", icmpv6_type=135, nd_target=(value, spec.full ^ 0xFF))]
    proto = _NEEDS.get(name)
    masks = [None, spec.full ^ 0xFF] if spec.maskable else [None]
    if name == "dl_type":
        return [Match.build(dl_type=0x88CC)]
    return [Match((*Match.build(proto).fields, MatchField(name, value & (m or spec.full), m))) for m in masks]


@pytest.mark.parametrize("name", list(MATCH_FIELDS))
def test_every_match_field_exact_and_masked_encodes_as_os_ken_does(name: str) -> None:
    assert_same_bytes([Flow(3, 100, m, (GotoTable(4),)) for m in _single_field_matches(name)])


@pytest.mark.parametrize("name", list(ACTION_FIELDS))
def test_every_action_field_set_and_moved_encodes_as_os_ken_does(name: str) -> None:
    match = Match.build("arp") if name.startswith("arp") else (
        Match.build("icmp6", icmpv6_type=136, icmpv6_code=0) if name in ACTION_PREREQUISITES else Match.build("ip"))
    spec = ACTION_FIELDS[name]
    value = 0x1234 if name == "arp_op" else 0x8899AABBCCDDEEFF & spec.full
    movable = sorted(writable_fields(match) - SET_ONLY_FIELDS - {name})
    same_width = next((n for n in movable if ACTION_FIELDS[n].bits == spec.bits
                       and n.startswith("arp") == name.startswith("arp")), name)
    half = (1 << 64) - 1
    labels = (SetField(name, value), SetField(name, value & half, half),
              SetField(name, 0xAB << 64, half << 64)) if name == "ct_label" else ()
    actions = (Ct(commit=True, exec_actions=(SetField("ct_mark", value & 0xFFFFFFFF),)),) if name == "ct_mark" else (
        (Ct(commit=True, exec_actions=labels),) if name == "ct_label" else (
        SetField(name, value & (0xFF if name == "arp_op" else spec.full)),
        *(() if name in SET_ONLY_FIELDS else (Move(name, same_width),))))
    flows = [Flow(0, 1, match, actions)]
    if name == "ct_mark":
        flows.append(Flow(0, 1, match, (Move("ct_mark", "reg0"),)))
    assert_same_bytes(flows)


def test_every_encoded_field_name_is_the_vocabulary() -> None:
    assert {*ofwire.MATCH_OXM, "tp_dst"} == set(MATCH_FIELDS)
    assert set(ofwire.ACTION_OXM) == set(ACTION_FIELDS)
    ranks = [f.oxm_type for f in (*ofwire.MATCH_OXM.values(), *ofwire.TP_DST_OXM.values())]
    assert len(set(ranks)) == len(ranks)  # os-ken's sort key decides every order, no tie


def test_learn_and_ct_with_nested_actions_encode_as_os_ken_does() -> None:
    for version, proto in ((4, "sctp"), (6, "sctp6")):
        learn = LearnReply(31, 0, 65535, 2**64 - 2, version, "reg7", 31)
        ct = Ct(commit=True, table=200, zone=0xFFFF, exec_actions=(SetField("ct_mark", 1), SetField("ct_mark", 2)))
        assert_same_bytes([Flow(4, 9, Match.build(proto), (ct, learn, DecTtl(), GotoTable(253)), 7)])


@settings(max_examples=400, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(any_flows())
def test_any_flow_encodes_as_os_ken_does(flow: Flow) -> None:
    assert_same_bytes([flow])


# ---- no silent fallback -------------------------------------------------------------------

def _with(obj: object, **attrs: object) -> object:
    """`obj` with attributes forced past validation: what a future compiler might make."""
    for name, value in attrs.items():
        object.__setattr__(obj, name, value)
    return obj


def test_a_match_field_without_an_encoding_raises() -> None:
    match = _with(Match.build("ip"), fields=(MatchField("vlan_vid", 1),))
    with pytest.raises(EncodeError, match="vlan_vid"):
        encode_flow_mod(Flow(0, 1, match))  # type: ignore[arg-type]


def test_tp_dst_of_a_protocol_without_ports_raises() -> None:
    match = _with(Match.build("ip", nw_proto=47), fields=(MatchField("dl_type", 0x800), MatchField("nw_proto", 47),
                                                         MatchField("tp_dst", 80)))
    with pytest.raises(EncodeError, match="tp_dst"):
        encode_flow_mod(Flow(0, 1, match))  # type: ignore[arg-type]


def test_an_action_without_an_encoding_raises() -> None:
    class Meter(Output):
        pass

    with pytest.raises(EncodeError, match="Meter"):
        encode_flow_mod(Flow(0, 1, Match(), (Meter(3),)))
    with pytest.raises(EncodeError, match="metadata"):
        encode_flow_mod(Flow(0, 1, Match(), (_with(SetField("reg0", 1), field="metadata"),)))  # type: ignore[arg-type]
    with pytest.raises(EncodeError, match="metadata"):
        encode_flow_mod(Flow(0, 1, Match(), (_with(Move("reg0", "reg1"), dst_field="metadata"),)))  # type: ignore[arg-type]


def test_an_unknown_command_raises() -> None:
    with pytest.raises(EncodeError, match="modify"):
        encode_flow_mod(Flow(0, 1, Match(), (Conjunction(1, 1, 2),)), "modify")  # type: ignore[arg-type]


def test_controller_userdata_of_every_length_encodes_as_os_ken_pads_it() -> None:
    """os-ken pads the userdata property by its own rule (4-byte steps, plus 4 when that
    reaches a multiple of 8): every length up to 64 must come out byte for byte the same."""
    for n in range(1, 65):
        tag = Controller(bytes(range(n)))
        assert_same_bytes([Flow(41, 110, Match.build(None, in_port=3), (tag,), 9),
                           Flow(70, 205, Match.build("ip"), (Ct(commit=True, zone=1), tag, GotoTable(80)))])
