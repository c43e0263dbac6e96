"""The flow value layer, without a switch: values, text round trip, port masks, diff.

The hypothesis strategies here (`matches`, `flows`, `flow_sets`) generate only flows OVS
accepts; tests/test_flow_ovs_roundtrip.py reuses them against a real OVS.
"""

from __future__ import annotations

import itertools
import random
from dataclasses import replace

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from netaddr import IPAddress, IPNetwork

from sdn_netpol.compiler.diff import FlowDiff, apply, diff
from sdn_netpol.compiler.flow import (
    OFPP_LOCAL,
    Action,
    Conjunction,
    Ct,
    DecTtl,
    Flow,
    GotoTable,
    Match,
    MatchField,
    Move,
    Output,
    OutputInPort,
    Resubmit,
    SetField,
    ct_state,
    writable_fields,
)
from sdn_netpol.compiler.flowfields import ACTION_FIELDS, MATCH_FIELDS, SET_ONLY_FIELDS
from sdn_netpol.compiler.flowset import DuplicateFlowError, FlowSet
from sdn_netpol.compiler.ofctl import (
    parse_flow,
    parse_flows,
    render_diff,
    render_flow,
    render_flows,
)
from sdn_netpol.compiler.portmask import port_range_masks

# ---- strategies --------------------------------------------------------------------------

GENERIC = ["conj_id", "ct_mark", *(f"reg{i}" for i in range(8)), "tun_id", "tun_src",
           "tun_dst", "in_port", "dl_src", "dl_dst"]
FAMILY_FIELDS = {
    "ip": ["nw_src", "nw_dst"], "ipv6": ["ipv6_src", "ipv6_dst"],
    "arp": ["arp_op", "arp_spa", "arp_tpa", "arp_sha", "arp_tha"],
    "icmp": ["nw_src", "icmp_type", "icmp_code"], "icmp6": ["ipv6_dst", "icmpv6_type"],
}
L4 = ["tcp", "udp", "sctp", "tcp6", "udp6", "sctp6"]
OTHER_DL_TYPES = [0x88CC, 0x8035, 0x8847, 0x88B5]  # LLDP, RARP, MPLS, experimental


@st.composite
def field_values(draw: st.DrawFn, name: str) -> tuple[int, int | None]:
    spec = MATCH_FIELDS[name]
    if name == "in_port":
        return draw(st.one_of(st.integers(1, 0xFEFF), st.just(OFPP_LOCAL))), None
    value = draw(st.integers(0, spec.full))
    if not spec.maskable or draw(st.booleans()):
        return value, None
    prefixes = st.sampled_from([spec.full ^ ((1 << k) - 1) for k in range(spec.bits + 1)])
    if spec.kind == "ipv6":
        return value, draw(prefixes)
    return value, draw(st.one_of(st.integers(0, spec.full), prefixes))


@st.composite
def matches(draw: st.DrawFn) -> Match:
    family = draw(st.sampled_from([None, "ip", "ipv6", "arp", "icmp", "icmp6", "other", *L4]))
    names = draw(st.sets(st.sampled_from(GENERIC), max_size=4))
    fields = [MatchField(n, *draw(field_values(n))) for n in names]
    if draw(st.booleans()):
        fields.append(MatchField("ct_state", *draw(st.tuples(
            st.integers(0, 0x3F), st.integers(1, 0x3F)))))
    if family == "other":
        fields.append(MatchField("dl_type", draw(st.sampled_from(OTHER_DL_TYPES))))
    elif family is not None:
        base = Match.build(family)
        fields.extend(base.fields)
        extra = FAMILY_FIELDS.get(family, ["tp_dst"] if family in L4 else [])
        if family in ("ip", "ipv6") and draw(st.booleans()):
            fields.append(MatchField("nw_proto", draw(st.sampled_from([47, 50, 89]))))
        chosen = draw(st.sets(st.sampled_from(extra), max_size=len(extra))) if extra else set()
        fields.extend(MatchField(n, *draw(field_values(n))) for n in chosen)
        if family == "icmp6" and draw(st.booleans()):
            fields = [f for f in fields if f.name != "icmpv6_type"]
            fields.append(MatchField("icmpv6_type", draw(st.sampled_from([135, 136]))))
            fields.append(MatchField("nd_target", *draw(field_values("nd_target"))))
    return Match(tuple(draw(st.permutations(fields))))


def _writable(match: Match) -> list[str]:
    return sorted(writable_fields(match))


@st.composite
def actions_for(draw: st.DrawFn, table: int, match: Match) -> tuple[Action, ...]:
    if draw(st.integers(0, 4)) == 0:
        conj = st.builds(lambda i, n, k: Conjunction(i, min(k, n), n),
                         st.integers(0, 0xFFFFFFFF), st.integers(2, 64), st.integers(1, 64))
        return tuple(draw(st.lists(conj, min_size=1, max_size=3)))
    dl_type = match.value("dl_type")
    writable = _writable(match)
    choices: list[st.SearchStrategy[Action]] = [
        st.builds(Output, st.one_of(st.integers(1, 0xFEFF), st.just(OFPP_LOCAL))),
        st.just(OutputInPort()), st.builds(Resubmit, st.integers(0, 253)),
        st.sampled_from(writable).flatmap(lambda n: st.builds(
            SetField, st.just(n), st.integers(0, 0xFF if n == "arp_op" else ACTION_FIELDS[n].full))),
        st.sampled_from([(a, b) for a in [*writable, "ct_mark"] for b in writable
                         if ACTION_FIELDS[a].bits == ACTION_FIELDS[b].bits and not {a, b} & SET_ONLY_FIELDS]).map(
            lambda p: Move(*p)),
    ]
    if dl_type in (0x0800, 0x86DD):
        marks = st.lists(st.builds(SetField, st.just("ct_mark"), st.integers(0, 2**32 - 1)),
                         max_size=2)
        may_commit = not (match.value("ct_state") or 0) & 0x10  # OVS: no commit on +inv
        choices += [st.just(DecTtl()), st.builds(
            lambda c, t, z, e: Ct((c or bool(e)) and may_commit, t, z,
                                  tuple(e) if may_commit else ()), st.booleans(),
            st.one_of(st.none(), st.integers(0, 253)), st.integers(0, 0xFFFF), marks)]
    acts: list[Action] = draw(st.lists(st.one_of(choices), max_size=4))
    if table < 253 and draw(st.booleans()):
        acts.append(GotoTable(draw(st.integers(table + 1, 253))))
    return tuple(acts)


@st.composite
def flows(draw: st.DrawFn) -> Flow:
    table = draw(st.integers(0, 253))
    match = draw(matches())
    return Flow(table, draw(st.integers(0, 0xFFFF)), match, draw(actions_for(table, match)),
                draw(st.one_of(st.just(0), st.integers(0, 2**64 - 2))))


def flow_sets(max_size: int = 20) -> st.SearchStrategy[FlowSet]:
    return st.lists(flows(), max_size=max_size, unique_by=lambda f: f.id).map(FlowSet)


# ---- values ------------------------------------------------------------------------------

def test_match_is_canonical_regardless_of_construction_order() -> None:
    a = Match.build("tcp", nw_dst=IPNetwork("10.0.0.0/8"), tp_dst=(0x1000, 0xF000),
                    ct_state=ct_state(trk=True, new=True), in_port=3)
    b = Match.build(None, tp_dst=(0x1000, 0xF000), in_port=3, ct_state="+new+trk",
                    nw_dst="10.0.0.0/255.0.0.0", nw_proto=6, dl_type=0x0800)
    assert a == b and hash(a) == hash(b) and render_flow(Flow(0, 1, a)) == render_flow(
        Flow(0, 1, b))


@given(matches(), st.randoms())
def test_shuffled_fields_build_the_same_match(match: Match, rnd: random.Random) -> None:
    fields = list(match.fields)
    rnd.shuffle(fields)
    assert Match(tuple(fields)) == match


def test_masks_are_canonical() -> None:
    assert Match.build("ip", nw_src="10.1.2.3/8") == Match.build("ip", nw_src="10.0.0.0/8")
    assert Match.build("ip", nw_src="10.1.2.3/32") == Match.build(
        "ip", nw_src=IPAddress("10.1.2.3"))
    assert Match.build("ip", nw_src="0.0.0.0/0") == Match.build("ip")
    assert Match.build(reg3=(5, 0xFFFFFFFF)) == Match.build(reg3=5)
    assert Match.build(dl_dst="01:00:00:00:00:00/01:00:00:00:00:00").value("dl_dst") == 1 << 40


@pytest.mark.parametrize("build", [
    lambda: Match.build(tp_dst=80),  # no protocol
    lambda: Match.build("ip", tp_dst=80),  # no L4 protocol
    lambda: Match.build("ipv6", nw_src="10.0.0.0/8"),
    lambda: Match.build("ip", nw_src="fd00::/64"),  # IPv6 text in an IPv4 field
    lambda: Match.build("icmp6", nd_target="fd00::1"),  # nd_target needs type 135/136
    lambda: Match.build("ipv6", ipv6_src="::/0:0:1::"),  # OVS cannot read this mask back
    lambda: Match.build("tcp", icmp_type=8),
    lambda: Match.build(in_port=(1, 0xFF)),  # not maskable
    lambda: Match.build(in_port=0),
    lambda: Match.build(ct_state=(0x21, 0xFF)),  # snat/dnat bits are not supported
    lambda: Match.build("ip", dl_type=0x0800),  # matched twice
    lambda: Match.build(bogus=1),
])
def test_match_refuses_what_ovs_would_reject_or_drop(build: object) -> None:
    with pytest.raises(ValueError):
        build()  # type: ignore[operator]


IP = Match.build("ip")


@pytest.mark.parametrize("build", [
    lambda: Flow(0, 1, IP, (Conjunction(1, 1, 2), Output(1))),  # conjunction + other
    lambda: Flow(3, 1, IP, (GotoTable(3),)),  # not forward
    lambda: Flow(3, 1, IP, (GotoTable(4), Output(1))),  # not last
    lambda: Flow(0, 1, Match.build("arp"), (Ct(commit=True),)),  # ct needs IP
    lambda: Flow(0, 1, Match(), (DecTtl(),)),
    lambda: Flow(0, 1, IP, (SetField("arp_op", 2),)),  # arp field on IP
    lambda: SetField("arp_op", 256),  # OVS keeps arp_op in 8 bits
    lambda: Flow(0, 1, IP, (SetField("ct_mark", 1),)),  # only inside ct(commit, exec())
    lambda: Flow(0, 1, IP, (Ct(exec_actions=(SetField("ct_mark", 1),)),)),  # exec w/o commit
    lambda: Flow(0, 1, IP.replace(ct_state="+inv"), (Ct(commit=True),)),
    lambda: Flow(0, 1, IP, (Move("eth_src", "reg0"),)),  # widths differ
    lambda: Flow(254, 1, IP),
    lambda: Flow(0, 1, IP, cookie=2**64 - 1),
    lambda: Conjunction(1, 1, 1),
])
def test_flow_refuses_what_ovs_would_reject(build: object) -> None:
    with pytest.raises(ValueError):
        build()  # type: ignore[operator]


def test_flowset_refuses_two_flows_with_one_identity() -> None:
    a = Flow(1, 10, IP, (Output(1),))
    with pytest.raises(DuplicateFlowError):
        FlowSet([a, replace(a, actions=(Output(2),))])
    assert len(FlowSet([a, replace(a)])) == 1  # equal flows are one flow


@given(st.lists(flows(), max_size=15, unique_by=lambda f: f.id), st.randoms())
def test_flowset_iterates_in_one_order_whatever_the_input_order(
        items: list[Flow], rnd: random.Random) -> None:
    shuffled = items[:]
    rnd.shuffle(shuffled)
    assert list(FlowSet(items)) == list(FlowSet(shuffled)) == sorted(items)
    ordered = list(FlowSet(items))
    assert all((a.table, -a.priority) <= (b.table, -b.priority)
               for a, b in itertools.pairwise(ordered))


def test_by_cookie_selects_like_dump_flows_cookie_mask() -> None:
    rule = [Flow(1, p, Match.build(reg0=p), cookie=0x0102_0000 | p) for p in (1, 2)]
    other = Flow(1, 3, Match.build(reg0=3), cookie=0x0103_0001)
    flows_ = FlowSet([*rule, other])
    assert set(flows_.by_cookie(0x0102_0000, 0xFFFF_0000)) == set(rule)
    assert list(flows_.by_cookie(0x0103_0001)) == [other]


# ---- ovs-ofctl text ----------------------------------------------------------------------

@settings(max_examples=300)
@given(flows())
def test_text_render_then_parse_gives_back_the_flow(flow: Flow) -> None:
    line = render_flow(flow)
    assert "\n" not in line
    assert parse_flow(line) == flow


@given(flow_sets())
def test_rendered_flow_file_parses_back_to_the_same_set(flows_: FlowSet) -> None:
    assert parse_flows(render_flows(flows_)) == flows_


def test_render_uses_ovs_canonical_text() -> None:
    arp = Match.build("arp", arp_op=1, arp_tpa="10.244.1.1")
    responder = Flow(4, 100, arp, (
        Move("eth_src", "eth_dst"), SetField.of("eth_src", "aa:bb:cc:dd:ee:ff"),
        SetField("arp_op", 2), Move("arp_sha", "arp_tha"), Move("arp_spa", "arp_tpa"),
        SetField.of("arp_spa", "10.244.1.1"), OutputInPort()), cookie=0x12)
    assert render_flow(responder) == (
        "cookie=0x12, table=4, priority=100,arp,arp_tpa=10.244.1.1,arp_op=1 actions="
        "move:NXM_OF_ETH_SRC[]->NXM_OF_ETH_DST[],set_field:aa:bb:cc:dd:ee:ff->eth_src,"
        "set_field:2->arp_op,move:NXM_NX_ARP_SHA[]->NXM_NX_ARP_THA[],"
        "move:NXM_OF_ARP_SPA[]->NXM_OF_ARP_TPA[],set_field:10.244.1.1->arp_spa,IN_PORT")
    m = Match.build("tcp6", reg0=0, ct_state="+trk+new-est", ct_mark=(0, 1),
                    ipv6_src="::1:0", tp_dst=(0, 0x8000))
    assert render_flow(Flow(0, 32768, m, (Ct(True, None, 3, (SetField("ct_mark", 0),)),))) == (
        "ct_state=+new-est+trk,ct_mark=0/0x1,tcp6,reg0=0,ipv6_src=::0.1.0.0,"
        "tp_dst=0x0/0x8000 actions=ct(commit,zone=3,exec(set_field:0->ct_mark))")
    assert render_flow(Flow(0, 32768)) == "actions=drop"


def test_parser_reads_a_dump_with_stats() -> None:
    line = (" cookie=0x1234, duration=0.006s, table=1, n_packets=3, n_bytes=180, idle_age=2,"
            " priority=200,ip,nw_src=10.0.0.0/8 actions=conjunction(10,1/3),conjunction(11,2/2)")
    assert parse_flow(line) == Flow(1, 200, Match.build("ip", nw_src="10.0.0.0/8"),
                                    (Conjunction(10, 1, 3), Conjunction(11, 2, 2)), 0x1234)


@pytest.mark.parametrize("line", [
    "priority=1,ip actions=load:0x1->NXM_NX_REG0[]",  # OpenFlow 1.0 dump form
    "priority=1,ip actions=mod_dl_src:aa:bb:cc:dd:ee:ff",
    "priority=1,in_port=tun0 actions=drop",  # a port name
    "priority=1,idle_timeout=5,ip actions=drop",
])
def test_parser_refuses_what_flow_cannot_express(line: str) -> None:
    with pytest.raises(ValueError):
        parse_flow(line)


# ---- port masks --------------------------------------------------------------------------

def _blocks(lo: int, hi: int) -> list[tuple[int, int]]:
    return [(v, v + (~m & 0xFFFF)) for v, m in port_range_masks(lo, hi)]


def _fewest_aligned_blocks(lo: int, hi: int) -> int:
    """Exhaustive dynamic programme: fewest[x] = fewest aligned blocks tiling x..hi, trying
    every aligned block that can start at x (aligned blocks nest or are disjoint, so an
    optimal cover may as well be a tiling)."""
    fewest = {hi + 1: 0}
    for x in range(hi, lo - 1, -1):
        sizes = [1 << k for k in range(17) if x % (1 << k) == 0 and x + (1 << k) - 1 <= hi]
        fewest[x] = 1 + min(fewest[x + s] for s in sizes)
    return fewest[lo]


def test_port_range_masks_of_a_single_port_and_of_everything() -> None:
    assert port_range_masks(80, 80) == ((80, 0xFFFF),)
    assert port_range_masks(0, 65535) == ((0, 0),)
    assert port_range_masks(32768, 65535) == ((0x8000, 0x8000),)
    assert len(port_range_masks(1, 65534)) == 30  # the worst case, 2*16-2


@given(st.integers(0, 65535).flatmap(lambda lo: st.tuples(st.just(lo), st.integers(lo, 65535))))
def test_port_range_masks_cover_exactly_the_range(bounds: tuple[int, int]) -> None:
    lo, hi = bounds
    blocks = _blocks(lo, hi)
    assert blocks[0][0] == lo and blocks[-1][1] == hi
    assert all(a[1] + 1 == b[0] for a, b in itertools.pairwise(blocks))
    for value, mask in port_range_masks(lo, hi):
        assert value & mask == value and (~mask & 0xFFFF) & ((~mask & 0xFFFF) + 1) == 0


def test_port_range_masks_are_minimal_on_all_small_ranges() -> None:
    for lo in range(0, 80):
        for hi in range(lo, 80):
            assert len(port_range_masks(lo, hi)) == _fewest_aligned_blocks(lo, hi), (lo, hi)


@given(st.integers(0, 65535).flatmap(
    lambda lo: st.tuples(st.just(lo), st.integers(lo, min(65535, lo + 3000)))))
def test_port_range_masks_are_minimal(bounds: tuple[int, int]) -> None:
    assert len(port_range_masks(*bounds)) == _fewest_aligned_blocks(*bounds)


def test_port_range_masks_refuse_bad_ranges() -> None:
    for lo, hi in [(10, 9), (-1, 5), (0, 65536)]:
        with pytest.raises(ValueError):
            port_range_masks(lo, hi)


# ---- diff --------------------------------------------------------------------------------

@given(flow_sets(), flow_sets())
def test_apply_of_diff_gives_the_new_set(old: FlowSet, new: FlowSet) -> None:
    change = diff(old, new)
    assert apply(old, change) == new
    touched = [{f.id for f in part} for part in (change.adds, change.modifies, change.deletes)]
    assert not touched[2] & (touched[0] | touched[1])  # deletes never race adds/modifies


@given(flow_sets())
def test_diff_of_equal_sets_is_empty(flows_: FlowSet) -> None:
    assert diff(flows_, FlowSet(list(flows_))) == FlowDiff()
    assert not diff(flows_, flows_)


@given(flow_sets(max_size=10).filter(len), st.data())
def test_changing_one_flows_actions_is_one_modify(flows_: FlowSet, data: st.DataObject) -> None:
    victim = data.draw(st.sampled_from(list(flows_)))
    new_actions = (Output(7),) if victim.actions != (Output(7),) else (Output(8),)
    changed = replace(victim, actions=new_actions)
    new = FlowSet([changed if f is victim else f for f in flows_])
    assert diff(flows_, new) == FlowDiff(modifies=(changed,))


def test_a_cookie_change_is_an_add_that_overwrites() -> None:
    old = Flow(1, 10, IP, (Output(1),), cookie=1)
    new = replace(old, cookie=2, actions=(Output(2),))
    change = diff(FlowSet([old]), FlowSet([new]))
    assert change == FlowDiff(adds=(new,))
    assert render_diff(change) == "add cookie=0x2, table=1, priority=10,ip actions=output:2\n"


def test_apply_refuses_a_diff_that_does_not_fit() -> None:
    stray = Flow(1, 10, IP)
    with pytest.raises(ValueError):
        apply(FlowSet(), FlowDiff(deletes=(stray,)))
    with pytest.raises(ValueError):
        apply(FlowSet(), FlowDiff(modifies=(stray,)))
