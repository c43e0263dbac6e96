"""The one place that turns flows into `ovs-ofctl` text and back.

`render_flow` emits exactly the line `ovs-ofctl -O OpenFlow15 --no-stats --no-names
dump-flows` prints for that flow (without its leading space): OVS's field order,
protocol shorthands (`tcp6`, not `dl_type=0x86dd,nw_proto=6`), `set_field`, `goto_table`,
C-style `%#x` hex (zero is `0`), glibc IPv6 text (`::1.2.3.4`), cookie/table/priority
omitted at their defaults. `ovs-ofctl add-flows`/`replace-flows` read that line as is, so a
golden file, a bundle input and a dump all look alike and compare as text.

Give ovs-ofctl `-O OpenFlow13` or `-O OpenFlow15`: for everything rendered here both dump
the same text (checked in tests/test_flow_ovs_roundtrip.py), and OF1.5 also turns a
`load:` written by someone else into `set_field` (docs/ovs-canonical-forms.md). With the
default OpenFlow 1.0, OVS prints `load:`/`mod_dl_src:` and installs `goto_table:N` as
`resubmit(,N)`; the parser refuses those forms rather than guess. Port names are refused
too: dump with `--no-names`.
"""

from __future__ import annotations

import re
import socket
from collections.abc import Callable, Iterable, Iterator

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
)
from sdn_netpol.compiler.flowfields import (
    ACTION_FIELDS,
    CT_STATE_FLAGS,
    DECIMAL_ACTION_FIELDS,
    ETH_TYPE_IPV6,
    MATCH_FIELDS,
    OFPP_LOCAL,
    OFPP_MAX,
    PROTOCOLS,
    FieldSpec,
    parse_field_text,
)
from sdn_netpol.compiler.flowset import FlowSet

DEFAULT_PRIORITY = 32768
_SHORTHAND = {v: k for k, v in PROTOCOLS.items()}
_DECIMAL = frozenset({"conj_id", "nw_proto", "arp_op", "icmp_type", "icmp_code",
                      "icmpv6_type", "icmpv6_code"})
_NXM = {"eth_src": "NXM_OF_ETH_SRC", "eth_dst": "NXM_OF_ETH_DST", "arp_op": "NXM_OF_ARP_OP",
        "arp_sha": "NXM_NX_ARP_SHA", "arp_tha": "NXM_NX_ARP_THA",
        "arp_spa": "NXM_OF_ARP_SPA", "arp_tpa": "NXM_OF_ARP_TPA",
        "tun_id": "NXM_NX_TUN_ID", "tun_dst": "NXM_NX_TUN_IPV4_DST",
        "ct_mark": "NXM_NX_CT_MARK", "ct_label": "NXM_NX_CT_LABEL", **{f"reg{i}": f"NXM_NX_REG{i}" for i in range(8)},
        "ipv6_src": "NXM_NX_IPV6_SRC", "ipv6_dst": "NXM_NX_IPV6_DST", "nd_target": "NXM_NX_ND_TARGET",
        "icmpv6_type": "NXM_NX_ICMPV6_TYPE", "nd_tll": "NXM_NX_ND_TLL",
        "nd_reserved": "ERICOXM_OF_ICMPV6_ND_RESERVED", "nd_options_type": "ERICOXM_OF_ICMPV6_ND_OPTIONS_TYPE"}
_FROM_NXM = {v: k for k, v in _NXM.items()}
_PRINTED_AS = {"icmpv6_type": "icmp_type", "icmpv6_code": "icmp_code"}
_BEFORE_SHORTHAND = ("conj_id", "ct_state", "ct_mark", "ct_label")
_STATS_KEYS = frozenset({"duration", "n_packets", "n_bytes", "idle_age", "hard_age"})


# ---- rendering -------------------------------------------------------------------------

def render_flow(flow: Flow) -> str:
    """One line, as `ovs-ofctl -O OpenFlow15 --no-stats --no-names dump-flows` prints it."""
    head = (f"cookie={flow.cookie:#x}, " if flow.cookie else "") + (
        f"table={flow.table}, " if flow.table else "")
    match = render_match(flow.match, flow.priority)
    return f"{head}{match}{' ' if match else ''}actions={render_actions(flow.actions)}"


def render_flows(flows: Iterable[Flow]) -> str:
    """A `replace-flows`/`add-flows` file (and a golden file): one sorted line per flow."""
    return "".join(render_flow(f) + "\n" for f in sorted(flows))


def render_match(match: Match, priority: int = DEFAULT_PRIORITY) -> str:
    """The match part (with `priority=` first unless it is OVS's default 32768)."""
    parts = [] if priority == DEFAULT_PRIORITY else [f"priority={priority}"]
    shorthand, absorbed = _shorthand(match)
    fields = [f for f in match if f.name not in absorbed]
    head = [f for f in fields if f.name in _BEFORE_SHORTHAND]
    parts += [_render_field(f) for f in head]
    parts += [shorthand] if shorthand else []
    parts += [_render_field(f) for f in fields[len(head):]]
    return ",".join(parts)


def _shorthand(match: Match) -> tuple[str | None, frozenset[str]]:
    """OVS's protocol word and the fields it stands for (`tcp6` = dl_type + nw_proto)."""
    dl_type, nw_proto = match.value("dl_type"), match.value("nw_proto")
    if dl_type is None:
        return None, frozenset()
    both = _SHORTHAND.get((dl_type, nw_proto))
    if both is not None and nw_proto is not None:
        return both, frozenset({"dl_type", "nw_proto"})
    alone = _SHORTHAND.get((dl_type, None))
    return alone, frozenset({"dl_type"}) if alone else frozenset()


def _render_field(f: MatchField) -> str:
    return f"{_PRINTED_AS.get(f.name, f.name)}={_render_value(f)}"


def _render_value(f: MatchField) -> str:
    spec = MATCH_FIELDS[f.name]
    if spec.kind == "ct_state":
        return "".join(("+" if f.value & bit else "-") + name
                       for name, bit in CT_STATE_FLAGS.items() if (f.mask or 0) & bit)
    if spec.kind == "port":
        return _port(f.value)
    if f.name == "dl_type":
        return f"0x{f.value:04x}"
    if spec.kind in ("mac", "ipv4", "ipv6"):
        return _address(spec, f.value) + _address_mask(spec, f.mask)
    if f.mask is None:
        return str(f.value) if f.name in _DECIMAL or spec.bits == 16 else _hex(f.value)
    if spec.bits == 16:
        return f"0x{f.value:x}/0x{f.mask:x}"
    return f"{_hex(f.value)}/{_hex(f.mask)}"


def _hex(value: int) -> str:
    """C's `%#x`: `0` for zero, `0x1f` otherwise (what OVS prints for regs, marks, ids)."""
    return f"{value:#x}" if value else "0"


def _port(port: int) -> str:
    return "LOCAL" if port == OFPP_LOCAL else str(port)


def _address(spec: FieldSpec, value: int) -> str:
    if spec.kind == "mac":
        return ":".join(f"{b:02x}" for b in value.to_bytes(6, "big"))
    if spec.kind == "ipv4":
        return ".".join(str(b) for b in value.to_bytes(4, "big"))
    return socket.inet_ntop(socket.AF_INET6, value.to_bytes(16, "big"))  # glibc's text


def _address_mask(spec: FieldSpec, mask: int | None) -> str:
    if mask is None:
        return ""
    prefix = spec.bits - (spec.full ^ mask).bit_length()
    is_cidr = spec.kind != "mac" and mask == spec.full ^ ((1 << (spec.bits - prefix)) - 1)
    return f"/{prefix}" if is_cidr else "/" + _address(spec, mask)


def render_actions(actions: Iterable[Action]) -> str:
    rendered = [_render_action(a) for a in actions]
    return ",".join(rendered) if rendered else "drop"


def _render_action(a: Action) -> str:
    if isinstance(a, Output):
        return "LOCAL" if a.port >= OFPP_MAX else f"output:{a.port}"
    if isinstance(a, OutputInPort):
        return "IN_PORT"
    if isinstance(a, Resubmit):
        return f"resubmit(,{a.table})"
    if isinstance(a, GotoTable):
        return f"goto_table:{a.table}"
    if isinstance(a, Conjunction):
        return f"conjunction({a.id},{a.clause}/{a.n_clauses})"
    if isinstance(a, Ct):
        return _render_ct(a)
    if isinstance(a, SetField):
        spec = ACTION_FIELDS[a.field]
        value = _hex(a.value) if spec.kind == "int" and a.field not in DECIMAL_ACTION_FIELDS else (
            str(a.value) if spec.kind == "int" else _address(spec, a.value))
        mask = "" if a.mask is None else f"/{_hex(a.mask)}"
        return f"set_field:{value}{mask}->{a.field}"
    if isinstance(a, Move):
        return f"move:{_NXM[a.src_field]}[]->{_NXM[a.dst_field]}[]"
    if isinstance(a, LearnReply):
        return _render_learn(a)
    if isinstance(a, Controller):
        return f"controller(userdata={'.'.join(f'{b:02x}' for b in a.userdata)})"
    return "dec_ttl"


_LEARN_ADDRESSES = {4: ("0x800", "NXM_OF_IP"), 6: ("0x86dd", "NXM_NX_IPV6")}
_LEARN_RE = re.compile(
    r"learn\(table=(\d+)(?:,idle_timeout=(\d+))?(?:,priority=(\d+))?(?:,cookie=(0x[0-9a-f]+))?,eth_type=(0x800|0x86dd),"
    r"nw_proto=132,(NXM_OF_IP|NXM_NX_IPV6)_SRC\[\]=\6_DST\[\],\6_DST\[\]=\6_SRC\[\],"
    r"OXM_OF_SCTP_SRC\[\]=OXM_OF_SCTP_DST\[\],OXM_OF_SCTP_DST\[\]=OXM_OF_SCTP_SRC\[\],"
    r"load:0x1->NXM_NX_REG(\d+)\[(\d+)\]\)")


def _render_learn(a: LearnReply) -> str:
    """Exactly as OVS 3.1 dumps it (measured), so the text round trip is exact."""
    eth_type, address = _LEARN_ADDRESSES[a.ip_version]
    options = f"table={a.table}"  # OVS leaves out what has its default value
    options += f",idle_timeout={a.idle_timeout}" if a.idle_timeout else ""
    options += f",priority={a.priority}" if a.priority != DEFAULT_PRIORITY else ""
    options += f",cookie={a.cookie:#x}" if a.cookie else ""
    return (f"learn({options},"
            f"eth_type={eth_type},nw_proto=132,{address}_SRC[]={address}_DST[],{address}_DST[]={address}_SRC[],"
            "OXM_OF_SCTP_SRC[]=OXM_OF_SCTP_DST[],OXM_OF_SCTP_DST[]=OXM_OF_SCTP_SRC[],"
            f"load:0x1->NXM_NX_REG{a.flag_reg[3:]}[{a.flag_bit}])")


def _parse_learn(m: re.Match[str]) -> LearnReply:
    return LearnReply(table=int(m[1]), priority=int(m[3] or DEFAULT_PRIORITY), idle_timeout=int(m[2] or 0),
                      cookie=int(m[4] or "0", 16),
                      ip_version=4 if m[5] == "0x800" else 6, flag_reg=f"reg{m[7]}", flag_bit=int(m[8]))


def _render_ct(ct: Ct) -> str:
    args = ["commit"] if ct.commit else []
    args += [f"table={ct.table}"] if ct.table is not None else []
    args += [f"zone={ct.zone}"] if ct.zone else []
    args += [f"exec({render_actions(ct.exec_actions)})"] if ct.exec_actions else []
    return f"ct({','.join(args)})"


def render_diff(diff: FlowDiff) -> str:
    """The diff as one `ovs-ofctl --bundle add-flows` input (per-line commands).

    Deletes and modifies name only the identity; modify_strict keeps the switch's cookie
    and counters, which is why `diff` routes cookie changes through `add` (see diff.py).
    """
    lines = [f"delete_strict {_identity(f)}" for f in diff.deletes]
    lines += [f"modify_strict {_identity(f)} actions={render_actions(f.actions)}"
              for f in diff.modifies]
    lines += [f"add {render_flow(f)}" for f in diff.adds]
    return "".join(line + "\n" for line in lines)


def _identity(flow: Flow) -> str:
    match = render_match(flow.match, flow.priority)
    return f"table={flow.table}" + (f",{match}" if match else "")


# ---- parsing ---------------------------------------------------------------------------

def parse_flows(text: str) -> FlowSet:
    """Lines of `render_flows` or of `dump-flows` output (its header line is skipped)."""
    return FlowSet(parse_flow(line) for line in text.splitlines()
                   if line.strip() and not _is_comment_or_header(line))


def _is_comment_or_header(line: str) -> bool:
    stripped = line.strip()
    return stripped.startswith("#") or stripped.split(" ", 1)[0].endswith("_FLOW")


def parse_flow(line: str) -> Flow:
    """A flow line as we render it, as `add-flows` takes it, or as `dump-flows` prints it."""
    found = re.search(r"(?:^|[\s,])actions=", line)
    if found is None:
        raise ValueError(f"no actions= in flow {line!r}")
    head, actions = line[:found.start()], line[found.end():]
    table, priority, cookie, tokens = 0, DEFAULT_PRIORITY, 0, []
    for token in _tokens(head):
        key, _, value = token.partition("=")
        if key == "table":
            table = int(value)
        elif key == "priority":
            priority = int(value)
        elif key == "cookie":
            cookie = int(value, 0)
        elif key not in _STATS_KEYS:
            tokens.append(token)
    return Flow(table, priority, _parse_match_tokens(tokens), parse_actions(actions), cookie)


def flow_from_parts(table: int, priority: int, cookie: int, match: str, actions: str) -> Flow:
    """A flow from the pieces a dump-flows parser already split (match text, actions text)."""
    return Flow(table, priority, parse_match(match), parse_actions(actions), cookie)


def parse_match(text: str) -> Match:
    """`tcp,nw_dst=10.0.0.0/8,tp_dst=0x1000/0xf000` -> Match (no priority here)."""
    return _parse_match_tokens(list(_tokens(text)))


def _tokens(text: str) -> Iterator[str]:
    return (t for t in re.split(r"[,\s]+", text) if t)


def _parse_match_tokens(tokens: list[str]) -> Match:
    words = [t for t in tokens if "=" not in t]
    pairs = [t.partition("=")[::2] for t in tokens if "=" in t]
    unknown = [w for w in words if w not in PROTOCOLS]
    if unknown:
        raise ValueError(f"unknown match words {unknown} (port names? dump with --no-names)")
    fields = [MatchField(name, value) for w in words
              for name, value in _protocol_fields(w)]
    is_v6 = any(PROTOCOLS[w][0] == ETH_TYPE_IPV6 for w in words) or (
        ("dl_type", "0x86dd") in pairs)
    for key, text in pairs:
        name = _match_name(key, is_v6)
        fields.append(MatchField(name, *parse_field_text(MATCH_FIELDS[name], text)))
    return Match(tuple(fields))


def _protocol_fields(word: str) -> list[tuple[str, int]]:
    dl_type, nw_proto = PROTOCOLS[word]
    return [("dl_type", dl_type)] + ([("nw_proto", nw_proto)] if nw_proto is not None else [])


def _match_name(key: str, is_v6: bool) -> str:
    if is_v6 and key in ("icmp_type", "icmp_code"):
        return key.replace("icmp", "icmpv6")
    if key not in MATCH_FIELDS:
        raise ValueError(f"unsupported match field or flow property {key!r}")
    return key


def parse_actions(text: str) -> tuple[Action, ...]:
    """`ct(commit,zone=5,exec(set_field:0x1->ct_mark)),resubmit(,5)` -> actions."""
    text = text.strip()
    if text == "drop":
        return ()
    return tuple(_parse_action(t) for t in _split_top(text))


def _split_top(text: str) -> list[str]:
    """Split at commas outside parentheses."""
    parts, depth, start = [], 0, 0
    for i, ch in enumerate(text):
        depth += {"(": 1, ")": -1}.get(ch, 0)
        if ch == "," and depth == 0:
            parts.append(text[start:i])
            start = i + 1
    parts.append(text[start:])
    return [p.strip() for p in parts if p.strip()]


_ACTION_RE: list[tuple[re.Pattern[str], Callable[[re.Match[str]], Action]]] = [
    (re.compile(r"output:(\d+)|(\d+)"), lambda m: Output(int(m[1] or m[2]))),
    (re.compile(r"(?:output:)?LOCAL"), lambda m: Output(OFPP_LOCAL)),
    (re.compile(r"IN_PORT"), lambda m: OutputInPort()),
    (re.compile(r"resubmit\(,(\d+)\)"), lambda m: Resubmit(int(m[1]))),
    (re.compile(r"goto_table:(\d+)"), lambda m: GotoTable(int(m[1]))),
    (re.compile(r"conjunction\((\d+),(\d+)/(\d+)\)"),
     lambda m: Conjunction(int(m[1]), int(m[2]), int(m[3]))),
    (re.compile(r"set_field:(.+)->(\w+)"), lambda m: _set_field(m[2], m[1])),
    (re.compile(r"move:(\w+)\[\]->(\w+)\[\]"),
     lambda m: Move(_FROM_NXM.get(m[1], m[1]), _FROM_NXM.get(m[2], m[2]))),
    (re.compile(r"dec_ttl"), lambda m: DecTtl()),
    (re.compile(r"ct\((.*)\)"), lambda m: _parse_ct(m[1])),
    (_LEARN_RE, _parse_learn),
    (re.compile(r"controller\(userdata=([0-9a-f]{2}(?:\.[0-9a-f]{2})*)\)"),
     lambda m: Controller(bytes.fromhex(m[1].replace(".", "")))),
]


def _parse_action(token: str) -> Action:
    for pattern, build in _ACTION_RE:
        found = pattern.fullmatch(token)
        if found is not None:
            return build(found)
    raise ValueError(f"unsupported action {token!r} (an OpenFlow 1.0 dump? use -O OpenFlow13)")


def _set_field(name: str, text: str) -> SetField:
    if name not in ACTION_FIELDS:
        raise ValueError(f"unsupported set_field target {name!r}")
    value, mask = parse_field_text(ACTION_FIELDS[name], text)
    return SetField(name, value, mask)  # a mask only where SetField allows one (ct_label)


def _parse_ct(args: str) -> Ct:
    commit, table, zone = False, None, 0
    exec_actions: tuple[Action, ...] = ()
    for arg in _split_top(args):
        if arg == "commit":
            commit = True
        elif arg.startswith("table="):
            table = int(arg[6:])
        elif arg.startswith("zone=") and arg[5:].isdigit():
            zone = int(arg[5:])
        elif arg.startswith("exec(") and arg.endswith(")"):
            exec_actions = parse_actions(arg[5:-1])
        else:
            raise ValueError(f"unsupported ct argument {arg!r}")
    if not all(isinstance(a, SetField) for a in exec_actions):
        raise ValueError(f"ct exec(...) holds more than set_field: {args!r}")
    return Ct(commit, table, zone, tuple(a for a in exec_actions if isinstance(a, SetField)))
