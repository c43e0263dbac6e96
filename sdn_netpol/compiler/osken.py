"""The one place that turns flows into os-ken OpenFlow 1.3 messages and back.

`to_flow_mod` builds an `OFPFlowMod` (add / modify-strict / delete-strict) with OXM fields
where OpenFlow 1.3 has them and Nicira extensions (NXM fields reg*, ct_state, ct_mark,
conj_id, tun_ipv4_*; NX actions resubmit, conjunction, ct, reg_move) where it does not.
`from_flow_stats` reads one entry of a flow-stats reply back into a `Flow`, so the
controller can diff what the switch holds against what it should hold. It also reads the
ONF copy-field action OVS answers for a `move` that was installed with OpenFlow 1.5 (as
`ovs-ofctl -O OpenFlow15` installs it), which os-ken 4.2 leaves undecoded.

`ofwire.py` writes the same FlowMod bytes with struct, ~15x faster, and is what the
controller sends; this module stays the reference mapping it is tested against
(tests/test_ofwire.py) and the reader of what the switch answers.

No I/O: the caller owns the datapath and sends the messages. The datapath only lends its
`ofproto`/`ofproto_parser` modules, which os-ken messages need to serialise.
"""

from __future__ import annotations

import base64
import socket
import struct
from collections.abc import Callable, Iterable, Mapping
from typing import Any

from netaddr import IPAddress
from os_ken.ofproto import nicira_ext
from os_ken.ofproto import ofproto_v1_3 as ofp
from os_ken.ofproto import ofproto_v1_3_parser as parser

from sdn_netpol.compiler.diff import FlowDiff
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
    subfield_of,
)
from sdn_netpol.compiler.flowfields import (
    ACTION_FIELDS,
    IPPROTO_SCTP,
    IPPROTO_TCP,
    IPPROTO_UDP,
    MATCH_FIELDS,
    OFPP_LOCAL,
    FieldSpec,
)
from sdn_netpol.compiler.ofwire import ND_OPTIONS_TYPE, ND_RESERVED, Command, OxmField

_COMMANDS: Mapping[Command, int] = {
    "add": ofp.OFPFC_ADD, "modify_strict": ofp.OFPFC_MODIFY_STRICT,
    "delete_strict": ofp.OFPFC_DELETE_STRICT,
}
_RECIRC_NONE = 0xFF  # NXActionCT recirc_table meaning "no table"
_NX_CT_F_COMMIT = 1
_RESUBMIT_IN_PORT = 0xFFF8  # NXActionResubmitTable in_port meaning "keep in_port"
_ONF_EXPERIMENTER, _ONF_COPY_FIELD = 0x4F4E4600, 3200  # ONF EXT-320 copy_field (OF1.3)

_MATCH_TO_OXM: Mapping[str, str] = {
    "in_port": "in_port", "dl_src": "eth_src", "dl_dst": "eth_dst", "dl_type": "eth_type",
    "nw_proto": "ip_proto", "nw_src": "ipv4_src", "nw_dst": "ipv4_dst",
    "ipv6_src": "ipv6_src", "ipv6_dst": "ipv6_dst", "arp_op": "arp_op",
    "arp_spa": "arp_spa", "arp_tpa": "arp_tpa", "arp_sha": "arp_sha", "arp_tha": "arp_tha",
    "icmp_type": "icmpv4_type", "icmp_code": "icmpv4_code", "icmpv6_type": "icmpv6_type",
    "icmpv6_code": "icmpv6_code", "nd_target": "ipv6_nd_target", "tun_id": "tunnel_id",
    "tun_src": "tun_ipv4_src", "tun_dst": "tun_ipv4_dst", "ct_state": "ct_state",
    "ct_mark": "ct_mark", "ct_label": "ct_label", "conj_id": "conj_id", **{f"reg{i}": f"reg{i}" for i in range(8)},
}
_TP_DST = {IPPROTO_TCP: "tcp_dst", IPPROTO_UDP: "udp_dst", IPPROTO_SCTP: "sctp_dst"}
_OXM_TO_MATCH = {
    **{v: k for k, v in _MATCH_TO_OXM.items()}, **{v: "tp_dst" for v in _TP_DST.values()},
}
_UNNAMED: Mapping[str, OxmField] = {"nd_reserved": ND_RESERVED, "nd_options_type": ND_OPTIONS_TYPE}
_ACTION_TO_OXM: Mapping[str, str] = {
    **{n: n for n in ACTION_FIELDS}, "tun_id": "tunnel_id", "tun_dst": "tun_ipv4_dst",
    "nd_target": "ipv6_nd_target", "nd_tll": "ipv6_nd_tll",
    **{n: f"field_{oxm.oxm_type}" for n, oxm in _UNNAMED.items()},
}
_OXM_TO_ACTION = {v: k for k, v in _ACTION_TO_OXM.items()}


# ---- Flow -> OFPFlowMod ----------------------------------------------------------------

def to_flow_mod(flow: Flow, datapath: Any, command: Command = "add") -> Any:
    """One OFPFlowMod. modify_strict and delete_strict use cookie_mask=0 (any cookie);
    modify_strict therefore leaves the switch's cookie as it was (see diff.py)."""
    instructions = _instructions(flow.actions) if command != "delete_strict" else []
    return parser.OFPFlowMod(
        datapath, cookie=flow.cookie if command == "add" else 0, cookie_mask=0,
        table_id=flow.table, command=_COMMANDS[command], priority=flow.priority,
        out_port=ofp.OFPP_ANY, out_group=ofp.OFPG_ANY, match=to_match(flow.match),
        instructions=instructions,
    )


def to_flow_mods(change: FlowDiff, datapath: Any) -> list[Any]:
    """A diff as messages: deletes, then modifies, then adds (identities never overlap)."""
    return [*(to_flow_mod(f, datapath, "delete_strict") for f in change.deletes),
            *(to_flow_mod(f, datapath, "modify_strict") for f in change.modifies),
            *(to_flow_mod(f, datapath, "add") for f in change.adds)]


def to_match(match: Match) -> Any:
    kwargs: dict[str, object] = {}
    for f in match:
        spec = MATCH_FIELDS[f.name]
        value = _to_wire(spec, f.value)
        name = _TP_DST[match.value("nw_proto") or 0] if f.name == "tp_dst" else (
            _MATCH_TO_OXM[f.name])
        kwargs[name] = value if f.mask is None else (value, _to_wire(spec, f.mask))
    return parser.OFPMatch(**kwargs)


def _to_wire(spec: FieldSpec, value: int) -> object:
    """os-ken wants MACs and IPs as text, ports as OpenFlow 1.3 32-bit numbers."""
    if spec.kind == "mac":
        return ":".join(f"{b:02x}" for b in value.to_bytes(6, "big"))
    if spec.kind == "ipv4":
        return socket.inet_ntoa(value.to_bytes(4, "big"))  # ~10x faster than netaddr's str()
    if spec.kind == "ipv6":
        return socket.inet_ntop(socket.AF_INET6, value.to_bytes(16, "big"))
    if spec.kind == "port" and value == OFPP_LOCAL:
        return ofp.OFPP_LOCAL
    return value


def _instructions(actions: tuple[Action, ...]) -> list[Any]:
    goto = [a for a in actions if isinstance(a, GotoTable)]
    applied = [_to_action(a) for a in actions if not isinstance(a, GotoTable)]
    result = [parser.OFPInstructionActions(ofp.OFPIT_APPLY_ACTIONS, applied)] if applied else []
    return result + [parser.OFPInstructionGotoTable(g.table) for g in goto]


def _to_action(a: Action) -> Any:
    if isinstance(a, Output):
        return parser.OFPActionOutput(ofp.OFPP_LOCAL if a.port == OFPP_LOCAL else a.port, 0)
    if isinstance(a, OutputInPort):
        return parser.OFPActionOutput(ofp.OFPP_IN_PORT, 0)
    if isinstance(a, Resubmit):
        return parser.NXActionResubmitTable(in_port=_RESUBMIT_IN_PORT, table_id=a.table)
    if isinstance(a, Conjunction):
        return parser.NXActionConjunction(clause=a.clause - 1, n_clauses=a.n_clauses, id_=a.id)
    if isinstance(a, Ct):
        return parser.NXActionCT(
            flags=_NX_CT_F_COMMIT if a.commit else 0, zone_src="", zone_ofs_nbits=a.zone,
            recirc_table=_RECIRC_NONE if a.table is None else a.table, alg=0,
            actions=[_to_action(e) for e in a.exec_actions])
    if isinstance(a, SetField) and a.mask is not None:  # a run of <= 64 bits: NXAST_REG_LOAD, as OVS
        offset, n_bits = subfield_of(a.mask) or (0, 0)
        return parser.NXActionRegLoad(ofs_nbits=nicira_ext.ofs_nbits(offset, offset + n_bits - 1),
                                      dst=_ACTION_TO_OXM[a.field], value=a.value >> offset)
    if isinstance(a, SetField):
        value = _to_wire(ACTION_FIELDS[a.field], a.value) if a.field not in _UNNAMED else (
            base64.b64encode(a.value.to_bytes(_UNNAMED[a.field].size, "big")).decode())
        return parser.OFPActionSetField(**{_ACTION_TO_OXM[a.field]: value})
    if isinstance(a, Move):
        return parser.NXActionRegMove(
            src_field=_ACTION_TO_OXM[a.src_field], dst_field=_ACTION_TO_OXM[a.dst_field],
            n_bits=ACTION_FIELDS[a.src_field].bits)
    if isinstance(a, DecTtl):
        return parser.OFPActionDecNwTtl()
    if isinstance(a, LearnReply):
        return _to_learn(a)
    if isinstance(a, Controller):
        return parser.NXActionController2(userdata=list(a.userdata))
    raise TypeError(f"not an action: {a!r}")  # GotoTable is an instruction


# ---- OFPFlowStats -> Flow --------------------------------------------------------------

def from_flow_stats(stats: Any) -> Flow:
    """One entry of an OFPFlowStatsReply body. Raises ValueError on anything Flow cannot
    express (timeouts, other instructions or actions), so a diff never hides it."""
    if stats.idle_timeout or stats.hard_timeout:
        raise ValueError(f"flow with timeouts is not supported: {stats}")
    return Flow(stats.table_id, stats.priority, from_match(stats.match),
                _from_instructions(stats.instructions), stats.cookie)


def from_match(match: Any) -> Match:
    fields = []
    for oxm_name, raw in match.items():
        name = _OXM_TO_MATCH.get(oxm_name.removesuffix("_nxm"))
        if name is None:
            raise ValueError(f"unsupported match field {oxm_name!r}")
        spec = MATCH_FIELDS[name]
        value, mask = raw if isinstance(raw, tuple) else (raw, None)
        fields.append(MatchField(name, _from_wire(spec, value),
                                 None if mask is None else _from_wire(spec, mask)))
    return Match(tuple(fields))


def _from_wire(spec: FieldSpec, value: object) -> int:
    if isinstance(value, str):
        if spec.kind == "mac":
            return int(value.replace(":", ""), 16)
        return int(IPAddress(value))
    if not isinstance(value, int):
        raise ValueError(f"{spec.name}: unexpected value {value!r}")
    return OFPP_LOCAL if spec.kind == "port" and value == ofp.OFPP_LOCAL else value


def _from_instructions(instructions: Iterable[Any]) -> tuple[Action, ...]:
    actions: list[Action] = []
    for inst in instructions:
        if isinstance(inst, parser.OFPInstructionGotoTable):
            actions.append(GotoTable(inst.table_id))
        elif (isinstance(inst, parser.OFPInstructionActions)
              and inst.type == ofp.OFPIT_APPLY_ACTIONS):
            actions.extend(_from_action(a) for a in inst.actions)
        else:
            raise ValueError(f"unsupported instruction {inst}")
    return tuple(actions)


def _from_output(a: Any) -> Action:
    if a.port == ofp.OFPP_IN_PORT:
        return OutputInPort()
    return Output(OFPP_LOCAL if a.port == ofp.OFPP_LOCAL else a.port)


def _from_resubmit(a: Any) -> Action:
    if a.in_port != _RESUBMIT_IN_PORT:
        raise ValueError(f"resubmit with an in_port is not supported: {a}")
    return Resubmit(a.table_id)


def _from_ct(a: Any) -> Action:
    if a.zone_src or a.alg or a.flags & ~_NX_CT_F_COMMIT:
        raise ValueError(f"unsupported ct form: {a}")
    exec_actions = tuple(_from_action(e) for e in a.actions)
    return Ct(bool(a.flags & _NX_CT_F_COMMIT), None if a.recirc_table == _RECIRC_NONE
              else a.recirc_table, a.zone_ofs_nbits,
              tuple(e for e in exec_actions if isinstance(e, SetField)))


def _from_controller(a: Any) -> Action:
    """Only the form Controller writes: userdata and nothing else (OVS leaves out every
    property at its default: reason=action, max_len=65535, controller_id=0, no pause)."""
    extra = set(vars(a)) & {"max_len", "controller_id", "reason", "pause"}
    if extra or not getattr(a, "userdata", None):
        raise ValueError(f"unsupported controller() form: {a}")
    return Controller(bytes(a.userdata))


def _from_set_field(a: Any) -> Action:
    name = _OXM_TO_ACTION.get(a.key.removesuffix("_nxm"))
    if name is None:
        raise ValueError(f"unsupported set_field target {a.key!r}")
    if name in _UNNAMED:  # os-ken's UnknownType: the value bytes in base64
        return SetField(name, int.from_bytes(base64.b64decode(a.value), "big"))
    return SetField(name, _from_wire(ACTION_FIELDS[name], a.value))


def _from_reg_load(a: Any) -> Action:
    """NXAST_REG_LOAD: how OVS answers an OpenFlow 1.3 read of a masked set_field."""
    name = _OXM_TO_ACTION.get(a.dst.removesuffix("_nxm"))
    if name is None:
        raise ValueError(f"unsupported load target {a.dst!r}")
    offset, n_bits = a.ofs_nbits >> 6, (a.ofs_nbits & 0x3F) + 1
    mask = ((1 << n_bits) - 1) << offset
    if mask == ACTION_FIELDS[name].full:
        return SetField(name, a.value)
    return SetField(name, a.value << offset, mask)


def _from_move(a: Any) -> Action:
    return _move(a.src_field, a.dst_field, a.n_bits, a.src_ofs, a.dst_ofs)


def _from_experimenter(a: Any) -> Action:
    """OVS answers an OpenFlow 1.3 read of a `move` installed with OpenFlow 1.5 (as
    `ovs-ofctl -O OpenFlow15` does) with the ONF copy-field extension, which os-ken 4.2
    does not decode: read its fixed layout here."""
    data = bytes(a.data)
    exp_type, n_bits, src_ofs, dst_ofs = struct.unpack_from("!H2xHHH2x", data, 0)
    if a.experimenter != _ONF_EXPERIMENTER or exp_type != _ONF_COPY_FIELD:
        raise ValueError(f"unsupported experimenter action {a}")
    src, src_len = ofp.oxm_parse_header(data, 12)
    dst, _ = ofp.oxm_parse_header(data, 12 + src_len)
    return _move(ofp.oxm_to_user_header(src), ofp.oxm_to_user_header(dst),
                 n_bits, src_ofs, dst_ofs)


def _move(src_oxm: str, dst_oxm: str, n_bits: int, src_ofs: int, dst_ofs: int) -> Move:
    src = _OXM_TO_ACTION.get(src_oxm.removesuffix("_nxm"), src_oxm)
    dst = _OXM_TO_ACTION.get(dst_oxm.removesuffix("_nxm"), dst_oxm)
    move = Move(src, dst)
    if src_ofs or dst_ofs or n_bits != ACTION_FIELDS[move.src_field].bits:
        raise ValueError(f"partial-field move is not supported: {src_oxm}->{dst_oxm}")
    return move


# learn(): the reply of an SCTP packet, as NXM/OXM field copies (see flow.LearnReply)
_LEARN_FIELDS = {4: ("ipv4_src_nxm", "ipv4_dst_nxm", 32, 0x0800), 6: ("ipv6_src_nxm", "ipv6_dst_nxm", 128, 0x86DD)}


def _learn_specs(a: LearnReply) -> list[Any]:
    src, dst, bits, eth_type = _LEARN_FIELDS[a.ip_version]
    return [
        parser.NXFlowSpecMatch(src=eth_type, dst=("eth_type_nxm", 0), n_bits=16),
        parser.NXFlowSpecMatch(src=IPPROTO_SCTP, dst=("ip_proto_nxm", 0), n_bits=8),
        parser.NXFlowSpecMatch(src=(dst, 0), dst=(src, 0), n_bits=bits),
        parser.NXFlowSpecMatch(src=(src, 0), dst=(dst, 0), n_bits=bits),
        parser.NXFlowSpecMatch(src=("sctp_dst", 0), dst=("sctp_src", 0), n_bits=16),
        parser.NXFlowSpecMatch(src=("sctp_src", 0), dst=("sctp_dst", 0), n_bits=16),
        parser.NXFlowSpecLoad(src=1, dst=(a.flag_reg, a.flag_bit), n_bits=1),
    ]


def _to_learn(a: LearnReply) -> Any:
    return parser.NXActionLearn(table_id=a.table, specs=_learn_specs(a), idle_timeout=a.idle_timeout,
                                priority=a.priority, cookie=a.cookie)


def _from_learn(a: Any) -> Action:
    """Only the reply-learning shape we emit is understood; anything else is reported."""
    load = a.specs[-1] if a.specs else None
    if load is None or not isinstance(load, parser.NXFlowSpecLoad) or not isinstance(load.dst, tuple):
        raise ValueError(f"unsupported learn action {a}")
    version = 6 if any(isinstance(s.dst, tuple) and s.dst[0].startswith("ipv6") for s in a.specs) else 4
    learned = LearnReply(a.table_id, a.priority, a.idle_timeout, a.cookie, version, load.dst[0], load.dst[1])
    if [_spec_key(s) for s in a.specs] != [_spec_key(s) for s in _learn_specs(learned)]:
        raise ValueError(f"unsupported learn action {a}")
    return learned


def _spec_key(spec: Any) -> tuple[object, ...]:
    return (type(spec).__name__, spec.src, spec.dst, spec.n_bits)


_FROM_ACTION: Mapping[type, Callable[[Any], Action]] = {
    parser.NXActionLearn: _from_learn,
    parser.OFPActionOutput: _from_output,
    parser.NXActionResubmitTable: _from_resubmit,
    parser.NXActionConjunction: lambda a: Conjunction(a.id, a.clause + 1, a.n_clauses),
    parser.NXActionCT: _from_ct,
    parser.OFPActionSetField: _from_set_field,
    parser.NXActionRegMove: _from_move,
    parser.NXActionRegLoad: _from_reg_load,
    parser.OFPActionDecNwTtl: lambda a: DecTtl(),
    parser.NXActionController2: _from_controller,
    parser.OFPActionExperimenterUnknown: _from_experimenter,
}


def _from_action(a: Any) -> Action:
    convert = _FROM_ACTION.get(type(a))
    if convert is None:
        raise ValueError(f"unsupported action {a}")
    return convert(a)
